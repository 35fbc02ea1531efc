"""``Pipeline``: preprocess, run the model, postprocess; batched, with a progress bar.

A task pipeline subclasses :class:`Pipeline`, says which processors it
needs (``needs``), and implements ``preprocess``, ``forward`` and
``postprocess``. Batching is generic: ``preprocess`` returns one item's
tensors, ``collate`` stacks a batch (override it when items need padding),
``forward`` runs a batch, ``split`` cuts the batch output back into items.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar, Iterable, Iterator

import torch

logger = logging.getLogger(__name__)

PROGRESS_THRESHOLD = 8


class Pipeline:
    """Base class of every task pipeline."""

    task: ClassVar[str] = ""
    # processor kinds this pipeline needs: "tokenizer", "image_processor", "feature_extractor", "processor"
    needs: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        model: Any,
        *,
        tokenizer: Any = None,
        image_processor: Any = None,
        feature_extractor: Any = None,
        processor: Any = None,
        device: str | torch.device | None = None,
        batch_size: int = 1,
        progress: bool | None = None,
        **defaults: Any,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.feature_extractor = feature_extractor
        self.processor = processor
        if device is not None:
            self.model.to(device)
        self.device = next(model.parameters()).device if hasattr(model, "parameters") else torch.device("cpu")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
        self.batch_size = batch_size
        self.progress = progress
        self.defaults = defaults
        self._check_processors()

    def _check_processors(self) -> None:
        missing = [kind for kind in self.needs if getattr(self, kind) is None]
        if missing:
            raise ValueError(
                f"The {self.task!r} pipeline needs {', '.join(missing)}; pass it to pipeline(), "
                "or load the model from a folder that holds its processor files."
            )

    # -- the three steps --------------------------------------------------
    def preprocess(self, item: Any, **params: Any) -> dict[str, Any]:
        """Turn one input into model inputs (tensors with a leading batch dimension of 1)."""
        raise NotImplementedError

    def forward(self, batch: dict[str, Any], **params: Any) -> dict[str, Any]:
        """Run the model on a collated batch."""
        raise NotImplementedError

    def postprocess(self, output: dict[str, Any], **params: Any) -> Any:
        """Turn one item's model output into the user-facing result."""
        raise NotImplementedError

    # -- batching -----------------------------------------------------------
    def collate(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        """Stack items' tensors along the batch dimension (others become lists)."""
        batch: dict[str, Any] = {}
        for key in items[0]:
            values = [item[key] for item in items]
            if all(isinstance(v, torch.Tensor) for v in values) and len({v.shape[1:] for v in values}) == 1:
                batch[key] = torch.cat(values, dim=0)
            else:
                batch[key] = values
        return batch

    def split(self, output: dict[str, Any], size: int) -> list[dict[str, Any]]:
        """Cut a batch output back into ``size`` per-item outputs."""
        items: list[dict[str, Any]] = [{} for _ in range(size)]
        for key, value in output.items():
            for index in range(size):
                if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == size:
                    items[index][key] = value[index : index + 1]
                elif isinstance(value, (list, tuple)) and len(value) == size:
                    items[index][key] = value[index]
                else:
                    items[index][key] = value
        return items

    def split_params(self, params: dict[str, Any]) -> tuple[dict, dict, dict]:
        """Route call arguments to (preprocess, forward, postprocess); all get everything by default."""
        return params, params, params

    # -- calling ----------------------------------------------------------
    def __call__(self, inputs: Any, **params: Any) -> Any:
        """Run the pipeline on one input or a list of inputs."""
        params = {**self.defaults, **params}
        batch_size = params.pop("batch_size", self.batch_size)
        single = not self.is_batch(inputs)
        items = [inputs] if single else list(inputs)
        results = list(self.iterate(items, batch_size=batch_size, **params))
        return results[0] if single else results

    def is_batch(self, inputs: Any) -> bool:
        """Whether ``inputs`` is a list of independent inputs (not one input)."""
        return isinstance(inputs, (list, tuple)) and not isinstance(inputs, str)

    def iterate(self, items: Iterable[Any], *, batch_size: int | None = None, **params: Any) -> Iterator[Any]:
        """Yield results one by one, processing ``batch_size`` items per model call."""
        batch_size = batch_size or self.batch_size
        pre, fwd, post = self.split_params(params)
        items = list(items)
        for chunk in self._progress(_chunks(items, batch_size), len(items), batch_size):
            prepared = [self.preprocess(item, **pre) for item in chunk]
            with torch.inference_mode():
                output = self.forward(self._to_device(self.collate(prepared)), **fwd)
            for item_output in self.split(output, len(prepared)):
                yield self.postprocess(item_output, **post)

    def _to_device(self, batch: dict[str, Any]) -> dict[str, Any]:
        return {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}

    def _progress(self, chunks: list, total: int, batch_size: int) -> Iterable:
        show = self.progress if self.progress is not None else total >= PROGRESS_THRESHOLD
        if not show:
            return chunks
        from tqdm.auto import tqdm

        return tqdm(chunks, desc=self.task or type(self).__name__, unit="batch", total=len(chunks))


def _chunks(items: list, size: int) -> list[list]:
    return [items[start : start + size] for start in range(0, len(items), size)]
