"""Turning classifier logits into scored labels, shared by the classification pipelines."""

from __future__ import annotations

from typing import Any

import torch


def default_score_function(config: Any) -> str:
    """"softmax", "sigmoid" or "none", chosen from the config's problem type as transformers does."""
    problem = getattr(config, "problem_type", None)
    if problem == "regression":
        return "none"
    if problem == "multi_label_classification" or config.num_labels == 1:
        return "sigmoid"
    return "softmax"


def scores_from_logits(logits: torch.Tensor, config: Any, function_to_apply: str | None = None) -> torch.Tensor:
    """Scores for one item's logits (softmax, sigmoid, or the raw logits)."""
    logits = logits.float()
    function = function_to_apply or default_score_function(config)
    if function == "softmax":
        return logits.softmax(dim=-1)
    if function == "sigmoid":
        return torch.sigmoid(logits)
    if function == "none":
        return logits
    raise ValueError(f"function_to_apply must be 'softmax', 'sigmoid' or 'none', got {function_to_apply!r}.")


def top_labels(scores: torch.Tensor, config: Any, top_k: int | None) -> list[dict[str, Any]]:
    """The ``top_k`` best labels (all when None) with their scores, best first."""
    id2label = config.id2label or {}
    count = scores.shape[0] if top_k is None else min(int(top_k), scores.shape[0])
    values, indices = scores.topk(count)
    return [
        {"label": id2label.get(int(index), f"LABEL_{int(index)}"), "score": float(value)}
        for value, index in zip(values.tolist(), indices.tolist())
    ]
