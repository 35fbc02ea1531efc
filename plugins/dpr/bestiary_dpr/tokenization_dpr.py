"""DPR tokenizers: BERT WordPiece tokenizers, plus the reader's question/titles/texts encoding and span decoding.

The question and context encoder tokenizers are the core :class:`Tokenizer`
under DPR's names. :class:`DPRReaderTokenizer` builds the reader's inputs,
``[CLS] question [SEP] title [SEP] passage``, and
:meth:`DPRReaderTokenizer.decode_best_spans` turns reader logits into answer
spans taken from the passage text only (never from the question or title).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any, ClassVar, NamedTuple

from bestiary.errors import ProcessingError
from bestiary.processing.tokenization import TOKENIZER_CONFIG_FILE, BatchEncoding, Tokenizer

logger = logging.getLogger(__name__)

_BERT_SPECIAL_TOKENS = {
    "unk_token": "[UNK]",
    "sep_token": "[SEP]",
    "pad_token": "[PAD]",
    "cls_token": "[CLS]",
    "mask_token": "[MASK]",
}


class DPRSpanPrediction(NamedTuple):
    """One answer span found by :meth:`DPRReaderTokenizer.decode_best_spans`.

    ``start_index`` and ``end_index`` (inclusive) index the reader's input
    tokens of passage ``doc_id``; ``span_score`` is the sum of the start and
    end logits, ``relevance_score`` the passage's relevance logit.
    """

    span_score: Any
    relevance_score: Any
    doc_id: int
    start_index: int
    end_index: int
    text: str


class _DPRTokenizer(Tokenizer):
    """A BERT tokenizer under a DPR name: BERT's special tokens and inputs, saved with DPR's class name."""

    transformers_names: ClassVar[tuple[str, ...]] = ()
    default_input_names: ClassVar[tuple[str, ...]] = ("input_ids", "token_type_ids", "attention_mask")

    def __init__(self, tokenizer_object: Any = None, **kwargs: Any) -> None:
        if kwargs.get("model_input_names") is None:
            kwargs["model_input_names"] = list(self.default_input_names)
        kwargs["tokenizer_class"] = self.transformers_names[0]
        super().__init__(tokenizer_object, **kwargs)
        vocab = self.backend_tokenizer
        for name, token in _BERT_SPECIAL_TOKENS.items():
            if self._named_tokens.get(name) is None and vocab.token_to_id(token) is not None:
                self._named_tokens[name] = token


class DPRQuestionEncoderTokenizer(_DPRTokenizer):
    """Tokenizer of :class:`~bestiary_dpr.modeling_dpr.DPRQuestionEncoder` (a BERT WordPiece tokenizer)."""

    transformers_names = ("DPRQuestionEncoderTokenizer", "DPRQuestionEncoderTokenizerFast")


class DPRContextEncoderTokenizer(_DPRTokenizer):
    """Tokenizer of :class:`~bestiary_dpr.modeling_dpr.DPRContextEncoder`; encode passages as (title, text) pairs."""

    transformers_names = ("DPRContextEncoderTokenizer", "DPRContextEncoderTokenizerFast")


class DPRReaderTokenizer(_DPRTokenizer):
    """Tokenizer of :class:`~bestiary_dpr.modeling_dpr.DPRReader`.

    Call it with ``questions``, ``titles`` and ``texts`` to get one row
    ``[CLS] question [SEP] title [SEP] text`` per passage; decode the reader's
    output with :meth:`decode_best_spans`.
    """

    transformers_names = ("DPRReaderTokenizer", "DPRReaderTokenizerFast")
    default_input_names = ("input_ids", "attention_mask")

    def __call__(  # type: ignore[override]
        self,
        questions: str | Sequence[str],
        titles: str | Sequence[str] | None = None,
        texts: str | Sequence[str] | None = None,
        padding: bool | str = False,
        truncation: bool | str = False,
        max_length: int | None = None,
        return_tensors: str | None = None,
        return_attention_mask: bool | None = None,
        **kwargs: Any,
    ) -> BatchEncoding:
        """Encode one question with several passages (or one question per passage).

        With both ``titles`` and ``texts`` each row is ``[CLS] question [SEP]
        title [SEP] text``, cut to ``max_length`` when ``truncation`` is on
        (to ``model_max_length`` when no ``max_length`` is given); otherwise
        this behaves like the plain tokenizer on ``questions`` (and the one of
        ``titles``/``texts`` that is given, as a pair).
        """
        common = dict(padding=padding, truncation=truncation, max_length=max_length, return_tensors=return_tensors)
        if titles is None and texts is None:
            return super().__call__(questions, return_attention_mask=return_attention_mask, **common, **kwargs)
        if titles is None or texts is None:
            pair = titles if texts is None else texts
            return super().__call__(questions, pair, return_attention_mask=return_attention_mask, **common, **kwargs)
        titles = [titles] if isinstance(titles, str) else list(titles)
        texts = [texts] if isinstance(texts, str) else list(texts)
        if len(titles) != len(texts):
            raise ProcessingError(
                f"DPRReaderTokenizer got {len(titles)} titles but {len(texts)} texts; pass one title per text "
                "(an empty string for a passage without title)."
            )
        questions = [questions] * len(titles) if isinstance(questions, str) else list(questions)
        if len(questions) != len(titles):
            raise ProcessingError(
                f"DPRReaderTokenizer got {len(questions)} questions for {len(titles)} passages; pass one question "
                "(used for every passage) or one question per passage."
            )
        heads = super().__call__(questions, titles, padding=False, truncation=False)["input_ids"]
        bodies = super().__call__(texts, add_special_tokens=False, padding=False, truncation=False)["input_ids"]
        limit = max_length
        if truncation not in (False, None, "do_not_truncate") and limit is None and self.model_max_length < 1e20:
            limit = self.model_max_length
        cut = truncation not in (False, None, "do_not_truncate") and limit is not None
        rows = [(head + body)[:limit] if cut else head + body for head, body in zip(heads, bodies)]
        encoded: dict[str, Any] = {"input_ids": rows}
        if return_attention_mask is not False:
            pad_id = self.pad_token_id
            encoded["attention_mask"] = [[int(token != pad_id) for token in row] for row in rows]
        return self.pad(
            encoded,
            padding=padding,
            max_length=max_length if padding == "max_length" else None,
            return_attention_mask=return_attention_mask,
            return_tensors=return_tensors,
        )

    def decode_best_spans(
        self,
        reader_input: BatchEncoding | dict[str, Any],
        reader_output: Any,
        num_spans: int = 16,
        max_answer_length: int = 64,
        num_spans_per_passage: int = 4,
    ) -> list[DPRSpanPrediction]:
        """Return the best answer spans, passages by descending relevance, spans by descending score.

        Spans are looked for only in each passage's text: after the second
        ``[SEP]`` (the one closing the title) and before the trailing padding.
        Within a passage a span may not contain, or lie inside, a span already
        chosen. At most ``num_spans_per_passage`` spans per passage and
        ``num_spans`` in total are returned.
        """
        for name, value in (
            ("num_spans", num_spans),
            ("max_answer_length", max_answer_length),
            ("num_spans_per_passage", num_spans_per_passage),
        ):
            if int(value) < 1:
                raise ProcessingError(f"decode_best_spans: {name} must be at least 1, got {value}.")
        input_ids = _rows(reader_input["input_ids"])
        start_logits, end_logits, relevance_logits = _reader_logits(reader_output)
        if len(input_ids) != len(relevance_logits):
            raise ProcessingError(
                f"decode_best_spans: reader_input has {len(input_ids)} passages but reader_output scores "
                f"{len(relevance_logits)}; pass the inputs the reader was run on."
            )
        order = sorted(range(len(relevance_logits)), key=lambda i: float(relevance_logits[i]), reverse=True)
        predictions: list[DPRSpanPrediction] = []
        for doc_id in order:
            ids = input_ids[doc_id]
            first, last = self.passage_bounds(ids)
            if first >= last:
                continue
            starts = [float(x) for x in start_logits[doc_id][first:last]]
            ends = [float(x) for x in end_logits[doc_id][first:last]]
            for start, end in best_spans(starts, ends, max_answer_length, num_spans_per_passage):
                start, end = start + first, end + first
                predictions.append(
                    DPRSpanPrediction(
                        span_score=start_logits[doc_id][start] + end_logits[doc_id][end],
                        relevance_score=relevance_logits[doc_id],
                        doc_id=doc_id,
                        start_index=start,
                        end_index=end,
                        text=self.decode(ids[start : end + 1]),
                    )
                )
            if len(predictions) >= num_spans:
                break
        return predictions[:num_spans]

    def passage_bounds(self, ids: Sequence[int]) -> tuple[int, int]:
        """Return [first, last) token indices of the passage text in one reader input row.

        The text starts after the second ``[SEP]`` (question and title each end
        with one) and ends before trailing padding. A row cut inside the title
        has no text: first == last.
        """
        sep, pad = self.sep_token_id, self.pad_token_id
        last = len(ids)
        while last > 0 and pad is not None and ids[last - 1] == pad:
            last -= 1
        seps = [index for index in range(1, last) if ids[index] == sep]
        if len(seps) < 2:
            return last, last
        return seps[1] + 1, last


def best_spans(
    start_logits: Sequence[float], end_logits: Sequence[float], max_answer_length: int, top_spans: int
) -> list[tuple[int, int]]:
    """Return up to ``top_spans`` (start, end) pairs (inclusive) by descending start + end logit.

    Spans longer than ``max_answer_length`` tokens are not considered; a span
    that contains or lies inside an already chosen span is skipped.
    """
    candidates = []
    for start, start_score in enumerate(start_logits):
        for end in range(start, min(start + max_answer_length, len(end_logits))):
            candidates.append((start_score + end_logits[end], start, end))
    # Stable sort on the score alone: ties keep (start, end) order, as transformers does.
    candidates.sort(key=lambda item: item[0], reverse=True)
    chosen: list[tuple[int, int]] = []
    for _, start, end in candidates:
        if any(start <= s <= e <= end or s <= start <= end <= e for s, e in chosen):
            continue
        chosen.append((start, end))
        if len(chosen) == top_spans:
            break
    return chosen


def _rows(value: Any) -> list[list[int]]:
    rows = value.tolist() if hasattr(value, "tolist") else [list(row) for row in value]
    if rows and not isinstance(rows[0], list):
        rows = [rows]
    return rows


def _reader_logits(output: Any) -> tuple[Any, Any, Any]:
    """(start, end, relevance) logits from a DPRReaderOutput, a tuple or a dict."""
    if hasattr(output, "start_logits"):
        return output.start_logits, output.end_logits, output.relevance_logits
    if isinstance(output, dict):
        return output["start_logits"], output["end_logits"], output["relevance_logits"]
    try:
        return output[0], output[1], output[2]
    except (IndexError, TypeError, KeyError):
        raise ProcessingError(
            "decode_best_spans needs the reader's output: a DPRReaderOutput or (start_logits, end_logits, "
            f"relevance_logits); got {type(output).__name__}."
        ) from None


_BY_TRANSFORMERS_NAME: dict[str, type[_DPRTokenizer]] = {
    name: cls
    for cls in (DPRQuestionEncoderTokenizer, DPRContextEncoderTokenizer, DPRReaderTokenizer)
    for name in cls.transformers_names
}
_BY_ARCHITECTURE = {
    "DPRQuestionEncoder": DPRQuestionEncoderTokenizer,
    "DPRContextEncoder": DPRContextEncoderTokenizer,
    "DPRReader": DPRReaderTokenizer,
}


class DPRTokenizerSelector:
    """What ``AutoTokenizer`` loads for ``model_type="dpr"``: the DPR tokenizer a checkpoint asks for.

    The class comes from ``tokenizer_class`` in ``tokenizer_config.json``,
    else from the ``architectures`` of ``config.json``, else the question
    encoder's tokenizer (transformers' default for DPR).
    """

    transformers_names: ClassVar[tuple[str, ...]] = tuple(_BY_TRANSFORMERS_NAME)

    def __init__(self) -> None:
        raise TypeError("DPRTokenizerSelector is not instantiated; call DPRTokenizerSelector.from_pretrained(path).")

    @classmethod
    def class_for(cls, path_or_repo: str | os.PathLike, **kwargs: Any) -> type[_DPRTokenizer]:
        """Return the DPR tokenizer class the checkpoint at ``path_or_repo`` declares."""
        from bestiary.config import CONFIG_NAME
        from bestiary.hub import HubOptions, resolve_file
        from bestiary.processing.base import read_json_object

        options = HubOptions.from_kwargs(dict(kwargs))
        path = resolve_file(path_or_repo, TOKENIZER_CONFIG_FILE, options, required=False)
        declared = str(read_json_object(path).get("tokenizer_class") or "") if path is not None else ""
        if declared in _BY_TRANSFORMERS_NAME:
            return _BY_TRANSFORMERS_NAME[declared]
        path = resolve_file(path_or_repo, CONFIG_NAME, options, required=False)
        architectures = (read_json_object(path).get("architectures") or []) if path is not None else []
        for name in architectures:
            if name in _BY_ARCHITECTURE:
                return _BY_ARCHITECTURE[name]
        return DPRQuestionEncoderTokenizer

    @classmethod
    def from_pretrained(cls, path_or_repo: str | os.PathLike, **kwargs: Any) -> _DPRTokenizer:
        """Load the checkpoint's tokenizer with the DPR class it declares."""
        chosen = cls.class_for(path_or_repo, **kwargs)
        logger.debug("Loading %s as %s", path_or_repo, chosen.__name__)
        return chosen.from_pretrained(path_or_repo, **kwargs)


__all__ = [
    "DPRQuestionEncoderTokenizer",
    "DPRContextEncoderTokenizer",
    "DPRReaderTokenizer",
    "DPRSpanPrediction",
    "DPRTokenizerSelector",
    "best_spans",
]
