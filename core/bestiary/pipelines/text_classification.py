"""The "text-classification" pipeline (alias "sentiment-analysis"): labels and scores for a text or a text pair.

Scores are a softmax over the logits for single-label models, a sigmoid for
one-label and multi-label models, and the raw logits for regression
(``function_to_apply`` overrides the choice). Results follow transformers:
a text gives ``[{"label", "score"}]`` for its best label; with ``top_k``
given, the ``top_k`` best labels (every label for ``top_k=None``). A pair is
passed as ``{"text": ..., "text_pair": ...}``.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar


from bestiary.errors import ProcessingError
from bestiary.pipelines._text_batching import TokenBatching
from bestiary.pipelines._scores import scores_from_logits
from bestiary.pipelines.base import Pipeline

logger = logging.getLogger(__name__)

FUNCTIONS = ("softmax", "sigmoid", "none")
_UNSET = object()


class TextClassificationPipeline(TokenBatching, Pipeline):
    """Classify texts (or text pairs) with a sequence-classification model.

    Call arguments: ``top_k`` (int, or None for every label),
    ``function_to_apply`` ("softmax", "sigmoid", "none"), and tokenizer
    arguments such as ``truncation`` or ``max_length``.
    """

    task: ClassVar[str] = "text-classification"
    needs: ClassVar[tuple[str, ...]] = ("tokenizer",)

    def __call__(self, inputs: Any, **params: Any) -> Any:
        """Classify one input or a list of inputs."""
        top_k_given = "top_k" in params or "top_k" in self.defaults
        if _is_pair_list(inputs):
            inputs = {"text": inputs[0][0], "text_pair": inputs[0][1]}
        results = super().__call__(inputs, **params)
        if isinstance(inputs, str) and not top_k_given:
            return [results]  # transformers wraps a single text's best label in a list
        return results

    def split_params(self, params: dict[str, Any]) -> tuple[dict, dict, dict]:
        """Route ``top_k`` and ``function_to_apply`` to postprocessing, the rest to the tokenizer."""
        params = dict(params)
        top_k = params.pop("top_k", _UNSET)
        function = params.pop("function_to_apply", None)
        if function is not None:
            function = str(getattr(function, "value", function)).lower()
            if function not in FUNCTIONS:
                raise ProcessingError(f"function_to_apply={function!r} is not valid; use one of {', '.join(FUNCTIONS)}.")
        if top_k is not _UNSET and top_k is not None and int(top_k) < 1:
            raise ProcessingError(f"top_k must be a positive integer or None (every label), got {top_k!r}.")
        return params, {}, {"top_k": top_k, "function_to_apply": function}

    def preprocess(self, item: Any, **tokenizer_kwargs: Any) -> dict[str, Any]:
        """Tokenize a text or a ``{"text", "text_pair"}`` dict."""
        return self.preprocess_many([item], **tokenizer_kwargs)[0]

    def preprocess_many(self, items: list[Any], **tokenizer_kwargs: Any) -> list[dict[str, Any]]:
        """Tokenize the inputs: one tokenizer call for all single texts, one for all pairs."""
        texts, pairs = [], []
        for index, item in enumerate(items):
            if isinstance(item, str):
                texts.append(index)
            elif isinstance(item, dict) and "text" in item:
                pairs.append(index)
            elif isinstance(item, dict):
                raise ProcessingError(f"A text-pair input needs the keys 'text' and 'text_pair', got {sorted(item)}.")
            else:
                raise ProcessingError(
                    f"text-classification takes a text, a list of texts, or {{'text': ..., 'text_pair': ...}} for "
                    f"a pair; got {type(item).__name__}."
                )
        prepared: list[dict[str, Any]] = [{} for _ in items]
        if texts:
            encoded = self.tokenizer([items[i] for i in texts], **tokenizer_kwargs)
            for row, index in enumerate(texts):
                prepared[index] = {key: values[row] for key, values in encoded.items()}
        for index in pairs:  # a pair may lack text_pair, so pairs are tokenized one by one
            encoded = self.tokenizer(items[index]["text"], items[index].get("text_pair"), **tokenizer_kwargs)
            prepared[index] = dict(encoded)
        return prepared

    def forward(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Run the classifier."""
        return {"logits": self.model(**self.model_inputs(batch)).logits, "_rows": batch["_rows"]}

    def postprocess(self, output: dict[str, Any], top_k: Any = _UNSET, function_to_apply: str | None = None) -> Any:
        """Labels with scores: the best one (legacy form), or the ``top_k`` best sorted by score."""
        scores = scores_from_logits(output["logits"][0], self.model.config, function_to_apply)
        id2label = self.model.config.id2label or {}
        labels = [id2label.get(i, f"LABEL_{i}") for i in range(scores.shape[0])]
        if top_k is _UNSET:
            best = int(scores.argmax())
            return {"label": labels[best], "score": float(scores[best])}
        ranked = sorted(
            ({"label": label, "score": float(score)} for label, score in zip(labels, scores.tolist())),
            key=lambda entry: entry["score"],
            reverse=True,
        )
        return ranked if top_k is None else ranked[: int(top_k)]


def _is_pair_list(inputs: Any) -> bool:
    """True for transformers' other pair form: ``[[text, text_pair]]``."""
    return (
        isinstance(inputs, list)
        and len(inputs) == 1
        and isinstance(inputs[0], (list, tuple))
        and len(inputs[0]) == 2
        and all(isinstance(text, str) for text in inputs[0])
    )


__all__ = ["TextClassificationPipeline"]
