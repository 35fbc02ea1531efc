"""The "question-answering" pipeline: extract the answer to a question from a context.

A context too long for the model is cut into overlapping windows
(``max_seq_len`` tokens each, ``doc_stride`` tokens of overlap). In each
window the start and end logits of the context tokens are turned into
probabilities (a softmax each); a span's score is p(start) * p(end), for
spans of at most ``max_answer_len`` tokens that lie inside the context.
Spans from every window are ranked together. Each answer is
``{"score", "start", "end", "answer"}`` where ``start``/``end`` are character
offsets in the context and ``answer == context[start:end]``; with
``align_to_words`` (the default) a span is widened to whole words.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

import torch

from bestiary.errors import ProcessingError
from bestiary.pipelines._text_batching import TokenBatching
from bestiary.pipelines.base import Pipeline

logger = logging.getLogger(__name__)

_MASKED_LOGIT = -10000.0
_OPTIONS = {
    "top_k": 1,
    "doc_stride": 128,
    "max_answer_len": 15,
    "max_seq_len": 384,
    "handle_impossible_answer": False,
    "align_to_words": True,
}


class QuestionAnsweringPipeline(TokenBatching, Pipeline):
    """Extractive question answering with a model that gives span start/end logits.

    Call it as ``qa(question=..., context=...)``, ``qa({"question": ...,
    "context": ...})`` or with lists of either. Arguments: ``top_k`` (1),
    ``doc_stride`` (128), ``max_answer_len`` (15 tokens), ``max_seq_len``
    (384, at most the tokenizer's limit), ``handle_impossible_answer``
    (False: when True, the empty answer competes with a score of
    p(start=CLS) * p(end=CLS)), ``align_to_words`` (True).
    """

    task: ClassVar[str] = "question-answering"
    needs: ClassVar[tuple[str, ...]] = ("tokenizer",)

    def __call__(
        self,
        inputs: Any = None,
        *,
        question: str | list[str] | None = None,
        context: str | list[str] | None = None,
        **params: Any,
    ) -> Any:
        """Answer one question (a dict, or ``question=``/``context=``) or a list of them."""
        if inputs is None:
            if question is None or context is None:
                raise ProcessingError(
                    "question-answering needs a question and a context: qa(question=..., context=...) or "
                    "qa({'question': ..., 'context': ...})."
                )
            inputs = _pair_inputs(question, context)
        elif question is not None or context is not None:
            raise ProcessingError("Pass the inputs either positionally or as question=/context=, not both.")
        return super().__call__(inputs, **params)

    def split_params(self, params: dict[str, Any]) -> tuple[dict, dict, dict]:
        """Check the options once per call; windowing goes to preprocess, span choice to postprocess."""
        unknown = set(params) - set(_OPTIONS)
        if unknown:
            raise TypeError(f"question-answering got unknown arguments {sorted(unknown)}; it takes {sorted(_OPTIONS)}.")
        options = {**_OPTIONS, **params}
        limit = self.tokenizer.model_max_length
        max_seq_len = int(options["max_seq_len"])
        if "max_seq_len" not in params and limit < max_seq_len:
            max_seq_len = int(limit)
        for name in ("top_k", "max_answer_len", "max_seq_len"):
            if int(options[name]) < 1:
                raise ProcessingError(f"{name} must be at least 1, got {options[name]!r}.")
        if int(options["doc_stride"]) < 0:
            raise ProcessingError(f"doc_stride must be 0 or more, got {options['doc_stride']!r}.")
        pre = {"max_seq_len": max_seq_len, "doc_stride": int(options["doc_stride"])}
        post = {
            "top_k": int(options["top_k"]),
            "max_answer_len": int(options["max_answer_len"]),
            "handle_impossible_answer": bool(options["handle_impossible_answer"]),
            "align_to_words": bool(options["align_to_words"]),
        }
        return pre, {}, post

    def preprocess(self, item: Any, max_seq_len: int = 384, doc_stride: int = 128) -> dict[str, Any]:
        """Tokenize (question, context) into one or more overlapping windows of at most ``max_seq_len`` tokens."""
        if not isinstance(item, dict) or not isinstance(item.get("question"), str) or not isinstance(item.get("context"), str):
            raise ProcessingError(
                "Each question-answering input must be {'question': str, 'context': str}; "
                f"got {item!r:.200}."
            )
        question, context = item["question"].lstrip(), item["context"]
        question_tokens = len(self.tokenizer(question, add_special_tokens=False)["input_ids"])
        room = max_seq_len - question_tokens - self.tokenizer.num_special_tokens_to_add(pair=True)
        if room < 1:
            raise ProcessingError(
                f"The question has {question_tokens} tokens, which leaves no room for the context within "
                f"max_seq_len={max_seq_len}; raise max_seq_len or shorten the question."
            )
        stride = min(doc_stride, room - 1)
        if stride < doc_stride:
            logger.info("doc_stride lowered from %d to %d: windows have %d context tokens.", doc_stride, stride, room)
        encoded = self.tokenizer(
            question,
            context,
            truncation="only_second",
            max_length=max_seq_len,
            stride=stride,
            return_overflowing_tokens=True,
            return_offsets_mapping=True,
        )
        windows = []
        for index in range(len(encoded["input_ids"])):
            sequence_ids = encoded.sequence_ids(index)
            windows.append(
                {
                    "context_mask": [sid == 1 for sid in sequence_ids],
                    "offsets": [tuple(pair) for pair in encoded["offset_mapping"][index]],
                    "word_ids": encoded.word_ids(index),
                }
            )
        features: dict[str, Any] = {"input_ids": encoded["input_ids"]}
        for key in ("attention_mask", "token_type_ids"):
            if key in encoded:
                features[key] = encoded[key]
        if "attention_mask" not in features:
            features["attention_mask"] = [[1] * len(ids) for ids in encoded["input_ids"]]
        features["windows"] = windows
        features["context"] = context
        return features

    def forward(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Run the model on every window of the batch."""
        outputs = self.model(**self.model_inputs(batch))
        return {
            "start_logits": outputs.start_logits,
            "end_logits": outputs.end_logits,
            "attention_mask": batch["attention_mask"],
            "windows": batch["windows"],
            "context": batch["context"],
            "_rows": batch["_rows"],
        }

    def postprocess(
        self,
        output: dict[str, Any],
        top_k: int = 1,
        max_answer_len: int = 15,
        handle_impossible_answer: bool = False,
        align_to_words: bool = True,
    ) -> dict[str, Any] | list[dict[str, Any]]:
        """Rank spans over all windows; return the best answer, or the ``top_k`` best as a list."""
        context = output["context"]
        best: dict[tuple[int, int], float] = {}
        null_score = 1.0
        for window_index, window in enumerate(output["windows"]):
            keep = output["attention_mask"][window_index].bool()
            start = output["start_logits"][window_index][keep].float()
            end = output["end_logits"][window_index][keep].float()
            in_context = torch.tensor(window["context_mask"], dtype=torch.bool, device=start.device)
            allowed = in_context.clone()
            if handle_impossible_answer:
                allowed[0] = True
            start_probs = start.masked_fill(~allowed, _MASKED_LOGIT).softmax(dim=-1)
            end_probs = end.masked_fill(~allowed, _MASKED_LOGIT).softmax(dim=-1)
            if handle_impossible_answer:
                null_score = min(null_score, float(start_probs[0] * end_probs[0]))
            words = _word_bounds(window) if align_to_words else {}
            found: set[tuple[int, int]] = set()
            for score, first, last in _window_spans(start_probs, end_probs, in_context, max_answer_len):
                span = _char_span(window, first, last, words)
                if span[1] <= span[0] or span in found:
                    continue
                found.add(span)
                best[span] = max(score, best.get(span, -1.0))
                if len(found) == top_k:  # later spans of this window score lower
                    break
        answers = [
            {"score": score, "start": start, "end": end, "answer": context[start:end]}
            for (start, end), score in best.items()
        ]
        if handle_impossible_answer:
            answers.append({"score": null_score, "start": 0, "end": 0, "answer": ""})
        answers.sort(key=lambda answer: answer["score"], reverse=True)
        answers = answers[:top_k]
        if not answers:
            answers = [{"score": 0.0, "start": 0, "end": 0, "answer": ""}]
        return answers[0] if top_k == 1 else answers


def _window_spans(
    start_probs: torch.Tensor, end_probs: torch.Tensor, in_context: torch.Tensor, max_answer_len: int
) -> list[tuple[float, int, int]]:
    """Every valid (score, start, end) token span of one window, best first."""
    length = start_probs.shape[0]
    scores = start_probs[:, None] * end_probs[None, :]
    offsets = torch.arange(length, device=scores.device)
    span_length = offsets[None, :] - offsets[:, None]
    valid = (span_length >= 0) & (span_length < max_answer_len) & in_context[:, None] & in_context[None, :]
    starts, ends = valid.nonzero(as_tuple=True)
    values = scores[starts, ends]
    order = values.argsort(descending=True, stable=True)
    return list(zip(values[order].tolist(), starts[order].tolist(), ends[order].tolist()))


def _word_bounds(window: dict[str, Any]) -> dict[int, tuple[int, int]]:
    """Character (start, end) of every context word of one window, from its tokens' offsets."""
    bounds: dict[int, tuple[int, int]] = {}
    for word, inside, (start, end) in zip(window["word_ids"], window["context_mask"], window["offsets"]):
        if inside and word is not None:
            low, high = bounds.get(word, (start, end))
            bounds[word] = (min(low, start), max(high, end))
    return bounds


def _char_span(window: dict[str, Any], first: int, last: int, words: dict[int, tuple[int, int]]) -> tuple[int, int]:
    """Character offsets in the context of tokens ``first``..``last``, widened to the words in ``words``."""
    offsets, word_ids = window["offsets"], window["word_ids"]
    start, end = offsets[first][0], offsets[last][1]
    if word_ids[first] in words:
        start = min(start, words[word_ids[first]][0])
    if word_ids[last] in words:
        end = max(end, words[word_ids[last]][1])
    return start, end


def _pair_inputs(question: str | list[str], context: str | list[str]) -> Any:
    """Turn ``question=``/``context=`` arguments into one dict or a list of dicts."""
    if isinstance(question, str) and isinstance(context, str):
        return {"question": question, "context": context}
    questions = [question] if isinstance(question, str) else list(question)
    contexts = [context] if isinstance(context, str) else list(context)
    if len(questions) == 1 and len(contexts) > 1:
        questions = questions * len(contexts)
    if len(contexts) == 1 and len(questions) > 1:
        contexts = contexts * len(questions)
    if len(questions) != len(contexts):
        raise ProcessingError(
            f"Got {len(questions)} questions and {len(contexts)} contexts; pass as many of each, or one of either."
        )
    return [{"question": q, "context": c} for q, c in zip(questions, contexts)]


__all__ = ["QuestionAnsweringPipeline"]
