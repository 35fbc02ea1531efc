"""Batching for text pipelines: pad token tensors to a common length, cut outputs back per input.

An item (one pipeline input) may produce several rows, for example the
windows of a long question-answering context. ``preprocess`` returns each
item's token ids (``input_ids``, ``attention_mask``, ``token_type_ids``) as a
list of ints, a list of rows, or a [rows, length] tensor;
:meth:`TokenBatching.collate` pads every row to the longest one and builds
one tensor per key, remembering how many rows each item has;
:meth:`TokenBatching.split` uses that count to cut the model output back
into items. Other values travel as per-item lists.

With a batch size above 1, :meth:`TokenBatching.iterate` tokenizes all
inputs first (:meth:`TokenBatching.preprocess_many`, one tokenizer call where
the pipeline allows it), groups inputs of similar length into batches, and
returns results in the original order, so little time goes to padding.
"""

from __future__ import annotations

import inspect
from typing import Any, Iterable, Iterator

import torch

from bestiary.errors import ProcessingError

ROWS_KEY = "_rows"
TOKEN_KEYS = ("input_ids", "attention_mask", "token_type_ids")


class TokenBatching:
    """Mixin for :class:`~bestiary.pipelines.base.Pipeline` subclasses that feed token ids to a model."""

    tokenizer: Any
    model: Any

    def iterate(self, items: Iterable[Any], *, batch_size: int | None = None, **params: Any) -> Iterator[Any]:
        """Yield one result per item, in order; batches hold items of similar token length."""
        batch_size = batch_size or self.batch_size
        items = list(items)
        if batch_size <= 1 or len(items) <= 1:
            yield from super().iterate(items, batch_size=batch_size, **params)  # type: ignore[misc]
            return
        pre, fwd, post = self.split_params(params)  # type: ignore[attr-defined]
        prepared = self.preprocess_many(items, **pre)
        order = sorted(range(len(items)), key=lambda i: max(map(len, token_rows(prepared[i]["input_ids"]))))
        chunks = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
        results: list[Any] = [None] * len(items)
        for chunk in self._progress(chunks, len(items), batch_size):  # type: ignore[attr-defined]
            batch = self._to_device(self.collate([prepared[i] for i in chunk]))  # type: ignore[attr-defined]
            with torch.inference_mode():
                output = self.forward(batch, **fwd)  # type: ignore[attr-defined]
            for index, item_output in zip(chunk, self.split(output, len(chunk))):
                results[index] = self.postprocess(item_output, **post)  # type: ignore[attr-defined]
        yield from results

    def preprocess_many(self, items: list[Any], **params: Any) -> list[dict[str, Any]]:
        """Preprocess several inputs; pipelines override this to tokenize them in one call."""
        return [self.preprocess(item, **params) for item in items]  # type: ignore[attr-defined]

    def _pad_value(self, key: str) -> int:
        if key == "input_ids":
            pad_id = self.tokenizer.pad_token_id
            if pad_id is None:
                raise ProcessingError(
                    "Inputs of different lengths must be padded, but the tokenizer has no padding token. Pass "
                    "batch_size=1, or set one (tokenizer.pad_token = tokenizer.eos_token)."
                )
            return int(pad_id)
        if key == "token_type_ids":
            return int(getattr(self.tokenizer, "pad_token_type_id", 0))
        return 0

    def collate(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        """Pad every row of token ids to the longest one and build one tensor per key; other values become lists."""
        side = getattr(self.tokenizer, "padding_side", "right")
        ids = [token_rows(item["input_ids"]) for item in items]
        length = max(len(row) for rows in ids for row in rows)
        batch: dict[str, Any] = {ROWS_KEY: [len(rows) for rows in ids]}
        for key in items[0]:
            values = [item[key] for item in items]
            if key in TOKEN_KEYS:
                rows = [row for item_value in values for row in token_rows(item_value)]
                value = self._pad_value(key) if any(len(row) < length for row in rows) else 0
                filler = [[value] * (length - len(row)) for row in rows]
                padded = [row + fill if side == "right" else fill + row for row, fill in zip(rows, filler)]
                batch[key] = torch.tensor(padded, dtype=torch.long)
            else:
                batch[key] = values
        return batch

    def split(self, output: dict[str, Any], size: int) -> list[dict[str, Any]]:
        """Cut a batch output back into per-item outputs using the row counts recorded by :meth:`collate`."""
        rows = output.get(ROWS_KEY) or [1] * size
        bounds = [0]
        for count in rows:
            bounds.append(bounds[-1] + count)
        total = bounds[-1]
        items: list[dict[str, Any]] = [{} for _ in range(size)]
        for key, value in output.items():
            if key == ROWS_KEY:
                continue
            for index in range(size):
                if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == total:
                    items[index][key] = value[bounds[index] : bounds[index + 1]]
                elif isinstance(value, (list, tuple)) and len(value) == size:
                    items[index][key] = value[index]
                else:
                    items[index][key] = value
        return items

    def model_inputs(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """The token tensors of ``batch`` that the model's ``forward`` takes by name."""
        accepted = _forward_parameters(self.model)
        return {key: batch[key] for key in TOKEN_KEYS if key in batch and key in accepted}


def token_rows(value: Any) -> list[list[int]]:
    """The rows of one item's token ids: a list of ints is one row; a list of lists or a 2-D tensor, several."""
    if isinstance(value, torch.Tensor):
        return value.reshape(-1, value.shape[-1]).tolist()
    if value and isinstance(value[0], (list, tuple)):
        return [list(row) for row in value]
    return [list(value)]


def _forward_parameters(model: Any) -> frozenset[str]:
    cached = getattr(model, "_bestiary_forward_parameters", None)
    if cached is None:
        cached = frozenset(inspect.signature(model.forward).parameters)
        try:
            object.__setattr__(model, "_bestiary_forward_parameters", cached)
        except (AttributeError, TypeError):
            pass
    return cached
