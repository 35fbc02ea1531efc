"""The "feature-extraction" pipeline: token states or one pooled (optionally normalised) vector per text.

``pooling="none"`` (the default) returns what transformers returns: the
last hidden state of each text as a nested list ``[1][tokens][hidden]``.
``"cls"`` takes the first token's state, ``"mean"`` averages the states of
the real (not padding) tokens, ``"pooler"`` takes the model's own pooled
output (BERT's pooler, DPR's embedding); each gives one ``[hidden]`` vector
per text. ``normalize=True`` scales pooled vectors to unit L2 norm, so inner
products are cosine similarities.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

import torch
from torch.nn import functional as F

from bestiary.errors import ProcessingError
from bestiary.pipelines._text_batching import TokenBatching
from bestiary.pipelines.base import Pipeline

logger = logging.getLogger(__name__)

POOLING_CHOICES = ("none", "cls", "mean", "pooler")


class FeatureExtractionPipeline(TokenBatching, Pipeline):
    """Embed texts with an encoder: per-token states, or a pooled vector per text.

    Call arguments: ``pooling`` ("none", "cls", "mean", "pooler"),
    ``normalize`` (bool), ``return_tensors`` (tensors instead of lists),
    ``truncation`` and ``tokenize_kwargs`` (passed to the tokenizer).
    """

    task: ClassVar[str] = "feature-extraction"
    needs: ClassVar[tuple[str, ...]] = ("tokenizer",)

    def split_params(self, params: dict[str, Any]) -> tuple[dict, dict, dict]:
        """Check the arguments once per call and route them to the three steps."""
        unknown = set(params) - {"pooling", "normalize", "return_tensors", "truncation", "tokenize_kwargs"}
        if unknown:
            raise TypeError(
                f"feature-extraction got unknown arguments {sorted(unknown)}; it takes pooling, normalize, "
                "return_tensors, truncation and tokenize_kwargs."
            )
        pooling = params.get("pooling")
        if pooling is not None and pooling not in POOLING_CHOICES:
            raise ProcessingError(f"pooling={pooling!r} is not valid; use one of {', '.join(POOLING_CHOICES)}.")
        normalize = bool(params.get("normalize", False))
        if normalize and pooling in (None, "none"):
            raise ProcessingError(
                "normalize=True needs a pooled vector: pass pooling='mean', 'cls' or 'pooler' as well."
            )
        tokenize_kwargs = dict(params.get("tokenize_kwargs") or {})
        if params.get("truncation") is not None:
            if "truncation" in tokenize_kwargs:
                raise ProcessingError("truncation is given twice: as an argument and inside tokenize_kwargs; keep one.")
            tokenize_kwargs["truncation"] = params["truncation"]
        forward = {"pooling": pooling, "normalize": normalize}
        return {"tokenize_kwargs": tokenize_kwargs}, forward, {"return_tensors": bool(params.get("return_tensors"))}

    def preprocess(self, item: str, tokenize_kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
        """Tokenize one text."""
        return self.preprocess_many([item], tokenize_kwargs)[0]

    def preprocess_many(self, items: list[Any], tokenize_kwargs: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Tokenize every text in one tokenizer call."""
        for item in items:
            if not isinstance(item, str):
                raise ProcessingError(f"feature-extraction takes a text or a list of texts, got {type(item).__name__}.")
        return _per_item(self.tokenizer(list(items), **(tokenize_kwargs or {})), len(items))

    def forward(self, batch: dict[str, Any], pooling: str | None = None, normalize: bool = False) -> dict[str, Any]:
        """Run the encoder and pool its output as asked."""
        inputs = self.model_inputs(batch)
        outputs = self.model(**inputs)
        states = getattr(outputs, "last_hidden_state", None)
        pooled = getattr(outputs, "pooler_output", None)
        if states is None and pooled is None:
            states = outputs[0]
        if pooling is None:
            pooling = "none" if states is not None else "pooler"
        mask = batch.get("attention_mask")
        if mask is None:
            mask = torch.ones(batch["input_ids"].shape, dtype=torch.long, device=batch["input_ids"].device)
        if pooling in ("none", "cls", "mean") and states is None:
            raise ProcessingError(
                f"pooling={pooling!r} needs per-token states, but {type(self.model).__name__} returns only "
                "pooler_output; use pooling='pooler'."
            )
        if pooling == "none":
            return {"token_states": states, "attention_mask": mask, "_rows": batch["_rows"]}
        if pooling == "cls":
            vectors = states[:, 0]
        elif pooling == "mean":
            vectors = mean_pool(states, mask)
        else:
            if pooled is None:
                raise ProcessingError(
                    f"pooling='pooler' needs a pooled output, but {type(self.model).__name__} returns none "
                    "(a model built without pooler); use pooling='cls' or 'mean'."
                )
            vectors = pooled
        if normalize:
            vectors = F.normalize(vectors.float(), p=2, dim=-1).to(vectors.dtype)
        return {"vectors": vectors, "_rows": batch["_rows"]}

    def postprocess(self, output: dict[str, Any], return_tensors: bool = False) -> Any:
        """One text's result: [1, tokens, hidden] states or a [hidden] vector, as lists unless tensors are asked."""
        if "vectors" in output:
            result = output["vectors"][0]
        else:
            keep = output["attention_mask"][0].bool()
            result = output["token_states"][0][keep].unsqueeze(0)
        return result if return_tensors else result.tolist()


def _per_item(encoded: Any, count: int) -> list[dict[str, Any]]:
    """Split a batched tokenizer output (lists) into one dict per text."""
    return [{key: values[index] for key, values in encoded.items()} for index in range(count)]


def mean_pool(states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Average token states over the positions where ``attention_mask`` is 1: [batch, tokens, hidden] -> [batch, hidden]."""
    weights = attention_mask.to(states.dtype).unsqueeze(-1)
    total = (states * weights).sum(dim=1)
    count = weights.sum(dim=1).clamp(min=1e-9)
    return total / count


__all__ = ["FeatureExtractionPipeline", "mean_pool", "POOLING_CHOICES"]
