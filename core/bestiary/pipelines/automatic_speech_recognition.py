"""The "automatic-speech-recognition" pipeline: audio in, text out, with timestamps where the model has them.

Two model families are served:

- **sequence-to-sequence** models with ``generate()`` (Whisper). As in
  transformers, generation uses 5 beams and up to 256 new tokens unless the
  checkpoint's generation config (or the call) says otherwise. Audio up to
  one window (30 s) is transcribed in one pass; longer audio is transcribed
  window after window by the model itself, with timestamps continuing past
  30 s. ``return_timestamps=True`` returns the timed segments as ``chunks``.
- **CTC** models (Wav2Vec2). Each output frame gives a character; greedy
  decoding collapses repeats and blanks. ``return_timestamps="char"`` or
  ``"word"`` returns the frame span of every character or word, in seconds.

``chunk_length_s`` switches to chunked batching: the audio is cut into
overlapping chunks (``stride_length_s`` of context on each side, a sixth of
the chunk by default) that run as one batch. CTC chunks keep only the frames
of their central part; Whisper chunks are stitched where their texts overlap.

Inputs: file paths, file bytes, ``{"array" | "raw", "sampling_rate"}`` or
``{"path" | "bytes"}`` dicts, or arrays/tensors with ``sampling_rate=``
given to the call (a raw array without a sampling rate is an error, never
a guess). Multi-channel audio is averaged to mono (logged); other sampling
rates are resampled (logged). Each input gives ``{"text": ...}`` (plus
``"chunks"`` with timestamps); a list of inputs gives a list. Timestamps
past the end of the audio (a model may predict them) are clipped to it.
"""

from __future__ import annotations

import inspect
import logging
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterable, Iterator

import numpy as np
import torch

from bestiary.errors import ProcessingError
from bestiary.pipelines.base import Pipeline

logger = logging.getLogger(__name__)

_OWN_PARAMS = {"return_timestamps", "chunk_length_s", "stride_length_s", "sampling_rate", "generate_kwargs", "batch_size"}
TIME_PRECISION = 0.02  # seconds per Whisper timestamp token
# transformers' pipeline defaults for generation, used unless the checkpoint's generation config sets them
DEFAULT_NUM_BEAMS = 5
DEFAULT_MAX_NEW_TOKENS = 256


@dataclass
class _Piece:
    """One model input: a whole recording or one chunk of it."""

    item: int
    waveform: np.ndarray
    start: int = 0  # first sample, in the recording
    stride_left: int = 0  # samples of left context (decoded by the neighbour)
    stride_right: int = 0
    output: dict[str, Any] = field(default_factory=dict)


class AutomaticSpeechRecognitionPipeline(Pipeline):
    """Transcribe audio with a CTC model (Wav2Vec2) or a speech sequence-to-sequence model (Whisper).

    Call arguments: ``return_timestamps`` (Whisper: True for segments; CTC:
    "char" or "word"), ``chunk_length_s`` / ``stride_length_s`` (chunked
    batching), ``sampling_rate`` (of raw arrays), ``batch_size``,
    ``generate_kwargs`` (a dict) and any other keyword argument of the
    model's ``generate()`` (``language``, ``task``, ``max_new_tokens``, ...).
    """

    task: ClassVar[str] = "automatic-speech-recognition"
    needs: ClassVar[tuple[str, ...]] = ("feature_extractor",)
    optional: ClassVar[tuple[str, ...]] = ("tokenizer",)

    def __init__(self, model: Any, *, processor: Any = None, **kwargs: Any) -> None:
        if processor is not None:
            kwargs["feature_extractor"] = kwargs.get("feature_extractor") or getattr(processor, "feature_extractor", None)
            kwargs["tokenizer"] = kwargs.get("tokenizer") or getattr(processor, "tokenizer", None)
        super().__init__(model, processor=processor, **kwargs)
        if self.tokenizer is None:
            raise ValueError(
                "The automatic-speech-recognition pipeline needs a tokenizer to turn ids into text; pass tokenizer= "
                "(or processor=), or load the model from a folder that holds its tokenizer files."
            )
        config = model.config
        self.is_seq2seq = bool(getattr(config, "is_encoder_decoder", False))
        if self.is_seq2seq and not hasattr(model, "generate"):
            raise ValueError(f"{type(model).__name__} is encoder-decoder but has no generate(); it cannot transcribe.")
        if not self.is_seq2seq and getattr(config, "vocab_size", None) is None:
            raise ValueError(f"{type(model).__name__} is not a CTC model (its config has no vocab_size).")

    @property
    def sampling_rate(self) -> int:
        """The sampling rate the model expects."""
        return int(self.feature_extractor.sampling_rate)

    # -- arguments ----------------------------------------------------------------------------
    def _options(self, params: dict[str, Any]) -> dict[str, Any]:
        params = dict(params)
        options = {key: params.pop(key, None) for key in _OWN_PARAMS}
        generate_kwargs = dict(options.pop("generate_kwargs") or {})
        if params:
            if not self.is_seq2seq:
                raise TypeError(
                    f"automatic-speech-recognition with a CTC model got unknown arguments {sorted(params)}; it takes "
                    f"{', '.join(sorted(_OWN_PARAMS - {'generate_kwargs'}))}."
                )
            generate_kwargs.update(params)
        options["generate_kwargs"] = generate_kwargs
        timestamps = options["return_timestamps"]
        if self.is_seq2seq:
            if timestamps not in (None, False, True):
                raise ProcessingError(
                    f"return_timestamps={timestamps!r} is not available for {type(self.model).__name__}: use True "
                    "for segment timestamps (word-level timestamps for Whisper are not supported yet)."
                )
        elif timestamps not in (None, False, "char", "word"):
            raise ProcessingError(
                f"return_timestamps={timestamps!r} is not valid for a CTC model; use 'char' or 'word'."
            )
        options["return_timestamps"] = timestamps or None
        chunk = options["chunk_length_s"]
        if chunk is not None and (not isinstance(chunk, (int, float)) or chunk <= 0):
            raise ProcessingError(f"chunk_length_s must be a positive number of seconds, got {chunk!r}.")
        stride = options["stride_length_s"]
        if stride is not None and chunk is None:
            raise ProcessingError("stride_length_s only applies with chunk_length_s; set chunk_length_s too.")
        return options

    # -- running ------------------------------------------------------------------------------
    def iterate(self, items: Iterable[Any], *, batch_size: int | None = None, **params: Any) -> Iterator[Any]:
        """Yield the transcription of each input, processing ``batch_size`` pieces per model call."""
        options = self._options(params)
        batch_size = batch_size or options["batch_size"] or self.batch_size
        items = list(items)
        pieces: list[_Piece] = []
        durations = []
        for index, item in enumerate(items):
            waveform = self._waveform(item, options["sampling_rate"])
            durations.append(len(waveform) / self.sampling_rate)
            if options["chunk_length_s"]:
                pieces.extend(self._chunk(index, waveform, options["chunk_length_s"], options["stride_length_s"]))
            else:
                pieces.append(_Piece(index, waveform))
        groups = self._batches(pieces, batch_size, chunked=bool(options["chunk_length_s"]))
        for group in self._progress(groups, len(pieces), batch_size):
            with torch.inference_mode():
                if self.is_seq2seq:
                    self._run_seq2seq(group, options)
                else:
                    self._run_ctc(group)
        for index in range(len(items)):
            own = [piece for piece in pieces if piece.item == index]
            if self.is_seq2seq:
                yield self._postprocess_seq2seq(own, options, durations[index])
            else:
                yield self._postprocess_ctc(own, options)

    def _waveform(self, item: Any, sampling_rate: int | None) -> np.ndarray:
        """One recording as a mono float32 waveform at the model's rate."""
        if isinstance(item, (list, tuple)) and item and not isinstance(item[0], (int, float, np.number)):
            raise ProcessingError("An input of automatic-speech-recognition is one recording; a nested list is not one.")
        is_array = isinstance(item, (np.ndarray, list, tuple)) or isinstance(item, torch.Tensor)
        if is_array:
            if sampling_rate is None:
                raise ProcessingError(
                    "The sampling rate of a raw audio array is unknown: pass sampling_rate=<Hz> to the pipeline call, "
                    f"or the input as {{'array': samples, 'sampling_rate': rate}} (the model expects "
                    f"{self.sampling_rate} Hz). bestiary does not guess it."
                )
            array = item.detach().cpu().numpy() if isinstance(item, torch.Tensor) else np.asarray(item)
            item = {"array": array, "sampling_rate": sampling_rate}
        return self.feature_extractor.prepare_audio(item, sampling_rate)[0]

    def _chunk(self, index: int, waveform: np.ndarray, chunk_s: float, stride_s: Any) -> list[_Piece]:
        """Cut a recording into chunks of ``chunk_s`` seconds overlapping by the left and right strides."""
        rate = self.sampling_rate
        align = self._samples_per_frame()
        if stride_s is None:
            stride_s = chunk_s / 6
        left_s, right_s = (stride_s, stride_s) if isinstance(stride_s, (int, float)) else tuple(stride_s)
        chunk = int(round(chunk_s * rate / align) * align)
        left = int(round(left_s * rate / align) * align)
        right = int(round(right_s * rate / align) * align)
        if chunk <= left + right:
            raise ProcessingError(
                f"chunk_length_s={chunk_s} must be longer than the two strides ({left_s} + {right_s} s)."
            )
        step = chunk - left - right
        pieces = []
        start = 0
        total = len(waveform)
        while True:
            end = start + chunk
            last = end >= total
            pieces.append(
                _Piece(
                    index,
                    waveform[start:end],
                    start=start,
                    stride_left=0 if start == 0 else left,
                    stride_right=0 if last else right,
                )
            )
            if last:
                return pieces
            start += step

    def _samples_per_frame(self) -> int:
        if self.is_seq2seq:
            return int(getattr(self.feature_extractor, "hop_length", 1))
        return int(getattr(self.model.config, "inputs_to_logits_ratio", 1))

    def _batches(self, pieces: list[_Piece], batch_size: int, chunked: bool) -> list[list[_Piece]]:
        """Group pieces into model calls; Whisper's long recordings are batched apart from short ones."""
        if not self.is_seq2seq or chunked:
            return [pieces[i : i + batch_size] for i in range(0, len(pieces), batch_size)]
        window = int(getattr(self.feature_extractor, "n_samples", 0)) or None
        short = [p for p in pieces if window is None or len(p.waveform) <= window]
        long = [p for p in pieces if window is not None and len(p.waveform) > window]
        return [group[i : i + batch_size] for group in (short, long) for i in range(0, len(group), batch_size)]

    def _features(self, waveforms: list[np.ndarray], **kwargs: Any) -> dict[str, torch.Tensor]:
        if "device" in inspect.signature(self.feature_extractor.__call__).parameters:
            kwargs["device"] = self.device  # spectrograms are computed where the model runs
        features = self.feature_extractor(waveforms, sampling_rate=self.sampling_rate, return_tensors="pt", **kwargs)
        dtype = getattr(self.model, "dtype", None)
        moved = {}
        for key, value in features.items():
            if isinstance(value, torch.Tensor):
                value = value.to(self.device)
                if value.is_floating_point() and dtype is not None:
                    value = value.to(dtype)
            moved[key] = value
        return moved

    # -- CTC ------------------------------------------------------------------------------------
    def _run_ctc(self, group: list[_Piece]) -> None:
        features = self._features([piece.waveform for piece in group], padding=True)
        name = getattr(self.model, "main_input_name", "input_values")
        inputs = {name: features[name]}
        if "attention_mask" in features:
            inputs["attention_mask"] = features["attention_mask"]
        logits = self.model(**inputs).logits
        ids = logits.argmax(dim=-1).cpu()
        for row, piece in enumerate(group):
            frames = int(self.model._get_feat_extract_output_lengths(len(piece.waveform)))
            ratio = self._samples_per_frame()
            left = int(round(piece.stride_left / ratio))
            right = int(round(piece.stride_right / ratio))
            piece.output = {"ids": ids[row, left : max(left, frames - right)].tolist()}

    def _postprocess_ctc(self, pieces: list[_Piece], options: dict[str, Any]) -> dict[str, Any]:
        ids = [token for piece in pieces for token in piece.output["ids"]]
        timestamps = options["return_timestamps"]
        if not timestamps:
            return {"text": self.tokenizer.decode(ids)}
        decoded = self.tokenizer.decode(ids, output_char_offsets=True, output_word_offsets=timestamps == "word")
        seconds = self._samples_per_frame() / self.sampling_rate
        offsets = decoded.word_offsets if timestamps == "word" else decoded.char_offsets
        key = "word" if timestamps == "word" else "char"
        chunks = [
            {"text": entry[key], "timestamp": (entry["start_offset"] * seconds, entry["end_offset"] * seconds)}
            for entry in offsets
        ]
        return {"text": decoded.text, "chunks": chunks}

    # -- sequence to sequence --------------------------------------------------------------------
    def _run_seq2seq(self, group: list[_Piece], options: dict[str, Any]) -> None:
        window = int(getattr(self.feature_extractor, "n_samples", 0)) or None
        waveforms = [piece.waveform for piece in group]
        long_form = window is not None and max(len(w) for w in waveforms) > window
        if long_form:
            features = self._features(waveforms, padding="longest", truncation=False, return_attention_mask=True)
        else:
            features = self._features(waveforms, return_attention_mask=True)
        name = getattr(self.model, "main_input_name", "input_features")
        kwargs = {**self._generation_defaults(options["generate_kwargs"]), **options["generate_kwargs"]}
        is_whisper = getattr(self.model.config, "model_type", "") == "whisper"
        if is_whisper:
            kwargs["return_segments"] = True
            if options["return_timestamps"] or long_form:
                kwargs["return_timestamps"] = True  # long audio is transcribed window by window, which needs them
        result = self.model.generate(**{name: features[name]}, attention_mask=features.get("attention_mask"), **kwargs)
        sequences = result.sequences if hasattr(result, "sequences") else result
        segments = getattr(result, "segments", None)
        for row, piece in enumerate(group):
            piece.output = {
                "tokens": sequences[row].cpu(),
                "segments": segments[row] if segments is not None else None,
            }

    def _generation_defaults(self, requested: dict[str, Any]) -> dict[str, Any]:
        """transformers' pipeline defaults (beam search with 5 beams, 256 new tokens) unless the checkpoint sets them."""
        config = getattr(self.model, "generation_config", None)
        explicit = set(config.explicit_settings()) if hasattr(config, "explicit_settings") else set()
        defaults: dict[str, Any] = {}
        if "num_beams" not in explicit and "num_beams" not in requested:
            defaults["num_beams"] = DEFAULT_NUM_BEAMS
        if "max_new_tokens" not in explicit and not {"max_new_tokens", "max_length"} & set(requested):
            limit = getattr(self.model.config, "max_target_positions", None)
            tokens = DEFAULT_MAX_NEW_TOKENS
            if limit is not None and tokens + 8 > limit:
                tokens = limit // 2
            defaults["max_new_tokens"] = tokens
        return defaults

    def _timestamp_begin(self) -> int | None:
        begin = getattr(self.tokenizer, "timestamp_begin", None)
        if begin is not None:
            return int(begin)
        no_timestamps = getattr(getattr(self.model, "generation_config", None), "no_timestamps_token_id", None)
        return no_timestamps + 1 if no_timestamps is not None else None

    def _text(self, tokens: Any) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True)

    def _postprocess_seq2seq(self, pieces: list[_Piece], options: dict[str, Any], duration: float) -> dict[str, Any]:
        pad = getattr(self.model.generation_config, "pad_token_id", None)
        if len(pieces) == 1 and not options["chunk_length_s"]:
            output = pieces[0].output
            tokens = _strip_right_padding(output["tokens"].tolist(), pad)
            result: dict[str, Any] = {"text": self._text(tokens)}
            if options["return_timestamps"]:
                end = round(duration, 2)
                result["chunks"] = [
                    {
                        "text": self._text(segment["tokens"]),
                        "timestamp": (min(round(float(segment["start"]), 2), end), min(round(float(segment["end"]), 2), end)),
                    }
                    for segment in output["segments"] or []
                ]
            return result
        return self._merge_chunks(pieces, options, duration, pad)

    def _merge_chunks(self, pieces: list[_Piece], options: dict[str, Any], duration: float, pad: int | None) -> dict[str, Any]:
        """Stitch the transcripts of overlapping chunks where their texts agree."""
        begin = self._timestamp_begin()
        rate = self.sampling_rate
        merged: list[int | float] = []
        for piece in pieces:
            offset = piece.start / rate
            items: list[int | float] = []
            for token in _strip_right_padding(piece.output["tokens"].tolist(), pad):
                if begin is not None and token >= begin:
                    items.append(min(round(offset + (token - begin) * TIME_PRECISION, 2), round(duration, 2)))
                else:
                    items.append(int(token))
            merged = merge_overlapping(merged, items) if merged else items
        text_ids = [item for item in merged if isinstance(item, int)]
        result: dict[str, Any] = {"text": self._text(text_ids)}
        if options["return_timestamps"]:
            result["chunks"] = [
                {"text": self._text(ids), "timestamp": (start, end)}
                for start, end, ids in segments_from_items(merged, end_of_audio=round(duration, 2))
            ]
        return result


def _strip_right_padding(tokens: list[int], pad: int | None) -> list[int]:
    if pad is None:
        return tokens
    end = len(tokens)
    while end and tokens[end - 1] == pad:
        end -= 1
    return tokens[:end]


def merge_overlapping(left: list[Any], right: list[Any], min_matches: int = 1) -> list[Any]:
    """Join two transcripts of overlapping audio: align the end of ``left`` with the start of ``right``.

    Every overlap length is tried; the one where most text tokens agree wins
    (ties go to the longer overlap), and the two sides are cut in the middle
    of the overlap. Time markers (floats) never count as agreement. Without
    any agreement the transcripts are simply concatenated.
    """
    best_score, best_overlap = 0.0, 0
    for overlap in range(1, min(len(left), len(right)) + 1):
        tail, head = left[-overlap:], right[:overlap]
        matches = sum(1 for a, b in zip(tail, head) if isinstance(a, int) and a == b)
        if matches < min_matches:
            continue
        score = matches / overlap + overlap * 1e-4
        if score > best_score:
            best_score, best_overlap = score, overlap
    if best_overlap == 0:
        return left + right
    keep_left = len(left) - best_overlap + math.ceil(best_overlap / 2)
    return left[:keep_left] + right[math.ceil(best_overlap / 2) :]


def segments_from_items(items: list[Any], end_of_audio: float) -> list[tuple[float, float, list[int]]]:
    """Timed segments from a transcript of text ids (ints) and time markers (floats, seconds).

    Text between two markers is one segment; text before the first marker
    starts at 0 (or the previous segment's end) and text after the last one
    ends at ``end_of_audio``.
    """
    segments = []
    start: float | None = None
    last_time = 0.0
    text: list[int] = []
    for item in items:
        if isinstance(item, float):
            item = max(item, last_time)  # stitched chunks may disagree on times; keep them in order
            if text:
                begin = start if start is not None else last_time
                segments.append((begin, max(item, begin), text))
                text = []
                start = None
            else:
                start = item
            last_time = item
        else:
            text.append(item)
    if text:
        begin = start if start is not None else last_time
        segments.append((begin, max(end_of_audio, begin), text))
    return segments


__all__ = ["AutomaticSpeechRecognitionPipeline", "merge_overlapping", "segments_from_items"]
