"""The "fill-mask" pipeline: the most likely tokens for each mask token in a text.

For a text with one mask the result is a list of ``top_k`` candidates, each
``{"score", "token", "token_str", "sequence"}`` (``sequence`` is the text with
the candidate in place of the mask). A text with several masks gives one
such list per mask. ``targets`` limits the candidates to the given words;
a word that is not a single vocabulary token is replaced by its first token,
with a warning (as transformers does).
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

import torch

from bestiary.errors import ProcessingError
from bestiary.pipelines._text_batching import TokenBatching
from bestiary.pipelines.base import Pipeline

logger = logging.getLogger(__name__)


class FillMaskPipeline(TokenBatching, Pipeline):
    """Predict masked tokens with a masked-language model.

    Call arguments: ``top_k`` (default 5), ``targets`` (a word or a list of
    words to score instead of the whole vocabulary), ``tokenizer_kwargs``.
    """

    task: ClassVar[str] = "fill-mask"
    needs: ClassVar[tuple[str, ...]] = ("tokenizer",)

    def __call__(self, inputs: Any, **params: Any) -> Any:
        """Fill the masks of one text or of a list of texts."""
        results = super().__call__(inputs, **params)
        if isinstance(inputs, list) and len(inputs) == 1:  # transformers unwraps a one-text list
            return results[0]
        return results

    def split_params(self, params: dict[str, Any]) -> tuple[dict, dict, dict]:
        """Resolve ``targets`` to token ids once per call and route the arguments."""
        unknown = set(params) - {"top_k", "targets", "tokenizer_kwargs"}
        if unknown:
            raise TypeError(f"fill-mask got unknown arguments {sorted(unknown)}; it takes top_k, targets, tokenizer_kwargs.")
        if self.tokenizer.mask_token_id is None:
            raise ProcessingError(
                "The fill-mask pipeline needs a tokenizer with a mask token; this one has none "
                "(set tokenizer.mask_token, or use a masked-language model's tokenizer)."
            )
        top_k = params.get("top_k", 5)
        if top_k is None or int(top_k) < 1:
            raise ProcessingError(f"top_k must be a positive integer, got {top_k!r}.")
        targets = params.get("targets")
        target_ids = self.target_ids(targets) if targets is not None else None
        return (
            {"tokenizer_kwargs": params.get("tokenizer_kwargs") or {}},
            {},
            {"top_k": int(top_k), "target_ids": target_ids},
        )

    def target_ids(self, targets: str | list[str]) -> torch.Tensor:
        """Token ids of the candidate words (first token of words that are not in the vocabulary)."""
        if isinstance(targets, str):
            targets = [targets]
        vocab = self.tokenizer.get_vocab()
        ids: list[int] = []
        for target in targets:
            index = vocab.get(target)
            if index is None:
                pieces = self.tokenizer(target, add_special_tokens=False, return_attention_mask=False,
                                        return_token_type_ids=False)["input_ids"]
                if not pieces:
                    logger.warning("The target %r gives no token at all; it is ignored.", target)
                    continue
                index = pieces[0]
                logger.warning(
                    "The target %r is not one vocabulary token; scoring its first token %r instead.",
                    target,
                    self.tokenizer.convert_ids_to_tokens(index),
                )
            if index not in ids:
                ids.append(index)
        if not ids:
            raise ProcessingError(f"targets={targets!r} gives no usable token; pass at least one word of the vocabulary.")
        return torch.tensor(ids, dtype=torch.long)

    def preprocess(self, item: str, tokenizer_kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
        """Tokenize one text and check that it holds a mask token."""
        return self.preprocess_many([item], tokenizer_kwargs)[0]

    def preprocess_many(self, items: list[Any], tokenizer_kwargs: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Tokenize every text in one tokenizer call and check that each holds a mask token."""
        for item in items:
            if not isinstance(item, str):
                raise ProcessingError(f"fill-mask takes a text or a list of texts, got {type(item).__name__}.")
        encoded = self.tokenizer(list(items), **(tokenizer_kwargs or {}))
        mask_id = self.tokenizer.mask_token_id
        prepared = []
        for index, item in enumerate(items):
            row = {key: values[index] for key, values in encoded.items()}
            if mask_id not in row["input_ids"]:
                raise ProcessingError(
                    f"No mask token ({self.tokenizer.mask_token}) in the fill-mask input {item!r}; write it where "
                    "a word should be predicted."
                )
            prepared.append(row)
        return prepared

    def forward(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Run the model and keep the probability distributions at the mask positions of each text."""
        logits = self.model(**self.model_inputs(batch)).logits
        input_ids = batch["input_ids"]
        mask = batch.get("attention_mask", torch.ones_like(input_ids)).bool()
        is_mask = input_ids == self.tokenizer.mask_token_id
        probabilities, ids = [], []
        for row in range(input_ids.shape[0]):
            probabilities.append(logits[row, is_mask[row]].float().softmax(dim=-1))
            ids.append(input_ids[row, mask[row]])
        return {"probabilities": probabilities, "input_ids": ids}

    def postprocess(self, output: dict[str, Any], top_k: int = 5, target_ids: torch.Tensor | None = None) -> Any:
        """Rank candidates at each mask; one list for a single mask, a list of lists for several."""
        probabilities = output["probabilities"]
        input_ids = output["input_ids"]
        if target_ids is not None:
            probabilities = probabilities[:, target_ids.to(probabilities.device)]
            top_k = min(top_k, target_ids.shape[0])
        values, indices = probabilities.topk(top_k, dim=-1)
        positions = (input_ids == self.tokenizer.mask_token_id).nonzero().flatten().tolist()
        single = len(positions) == 1
        pad_id = self.tokenizer.pad_token_id
        results = []
        for position, row_values, row_indices in zip(positions, values.tolist(), indices.tolist()):
            candidates = []
            for score, index in zip(row_values, row_indices):
                token = int(target_ids[index]) if target_ids is not None else int(index)
                filled = input_ids.clone()
                filled[position] = token
                if pad_id is not None:
                    filled = filled[filled != pad_id]
                candidates.append(
                    {
                        "score": score,
                        "token": token,
                        "token_str": self.tokenizer.decode([token]),
                        "sequence": self.tokenizer.decode(filled.tolist(), skip_special_tokens=single),
                    }
                )
            results.append(candidates)
        return results[0] if single else results


__all__ = ["FillMaskPipeline"]
