"""Whisper decoding: the decoder prompt, Whisper's logits rules, and sequential long-form transcription.

``generate()`` follows the algorithm of the Whisper paper (section 3.8) as
transformers implements it, so that greedy decoding gives the same tokens:

1. The decoder prompt is ``<|startoftranscript|>``, a language token (given,
   or detected from the first window), a task token (``<|transcribe|>`` or
   ``<|translate|>``) and ``<|notimestamps|>`` unless timestamps are asked for.
2. Logits rules: tokens suppressed everywhere (``suppress_tokens``), tokens
   suppressed at the first step (``begin_suppress_tokens``) and, with
   timestamps, the timestamp grammar (timestamps come in pairs, never go
   back, the first token is a timestamp, timestamps win when their total
   probability beats every text token).
3. Audio longer than one window (30 s) is transcribed window after window:
   each window's output is cut into segments at pairs of timestamp tokens,
   and the next window starts at the last complete segment, so timestamps
   continue past 30 s.

Each window is decoded greedily by :meth:`WhisperGenerationMixin._decode_window`
with an encoder-decoder key/value cache.
"""

from __future__ import annotations

import copy
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from pydantic import BaseModel, ConfigDict
from torch.nn import functional as F

from bestiary.config import atomic_write_text
from bestiary.errors import ConfigError, GenerationError
from bestiary.generation.mixin import GenerationMixin
from bestiary.hub import HubOptions, resolve_file
from bestiary.outputs import BaseModelOutput, ModelOutput
from bestiary_whisper.cache import EncoderDecoderCache
from bestiary_whisper.languages import TASKS, language_token

logger = logging.getLogger(__name__)

GENERATION_CONFIG_NAME = "generation_config.json"
TIME_PRECISION = 0.02  # seconds per timestamp token
FEATURE_TIME_PRECISION = 0.01  # seconds per mel frame

LogitsRule = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class WhisperGenerationConfig(BaseModel):
    """Generation settings of a Whisper checkpoint (``generation_config.json``).

    Keys bestiary does not use (``alignment_heads``, ``forced_decoder_ids``,
    thresholds, ...) are kept and written back unchanged.
    """

    model_config = ConfigDict(extra="allow", validate_assignment=True, protected_namespaces=())

    decoder_start_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None
    max_length: int = 20
    max_new_tokens: int | None = None
    suppress_tokens: list[int] | None = None
    begin_suppress_tokens: list[int] | None = None
    no_timestamps_token_id: int | None = None
    prev_sot_token_id: int | None = None
    lang_to_id: dict[str, int] | None = None
    task_to_id: dict[str, int] | None = None
    is_multilingual: bool | None = None
    max_initial_timestamp_index: int | None = None
    return_timestamps: bool | None = None
    language: str | list[str] | None = None
    task: str | None = None
    forced_decoder_ids: list[list[int | None]] | None = None
    condition_on_prev_tokens: bool | None = None

    @classmethod
    def from_model_config(cls, config: Any) -> "WhisperGenerationConfig":
        """Settings a checkpoint without ``generation_config.json`` gets from its model config."""
        return cls(
            decoder_start_token_id=config.decoder_start_token_id,
            bos_token_id=config.bos_token_id,
            eos_token_id=config.eos_token_id,
            pad_token_id=config.pad_token_id,
            suppress_tokens=config.suppress_tokens,
            begin_suppress_tokens=config.begin_suppress_tokens,
            forced_decoder_ids=getattr(config, "forced_decoder_ids", None),
        )

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "WhisperGenerationConfig":
        """Read ``generation_config.json``; raise :class:`ConfigError` naming the file when it is invalid."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"Cannot read the generation settings in {path}: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path} must hold a JSON object.")
        data.pop("transformers_version", None)
        try:
            return cls.model_validate(data)
        except ValueError as exc:
            raise ConfigError(f"Invalid generation settings in {path}: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        """The settings as transformers writes them (unset values left out)."""
        data = {key: value for key, value in self.model_dump().items() if value is not None}
        data["transformers_version"] = "5.24.0"
        return dict(sorted(data.items()))

    def save_pretrained(self, save_directory: str | os.PathLike) -> Path:
        """Write ``generation_config.json`` into ``save_directory`` atomically."""
        path = Path(save_directory) / GENERATION_CONFIG_NAME
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
        return path

    def eos_ids(self) -> list[int]:
        """The end-of-sequence ids as a list."""
        if self.eos_token_id is None:
            return []
        return list(self.eos_token_id) if isinstance(self.eos_token_id, list) else [self.eos_token_id]


@dataclass
class WhisperGenerateOutput(ModelOutput):
    """What ``generate(..., return_dict_in_generate=True)`` or ``return_segments=True`` returns.

    ``sequences``: token ids; ``segments``: for each recording, a list of
    dicts with ``start`` and ``end`` (seconds, from the start of the audio),
    ``tokens`` and ``result`` (the window's full output).
    """

    sequences: Any = None
    segments: list[list[dict[str, Any]]] | None = None


# -- logits rules ------------------------------------------------------------------------------
class SuppressTokens:
    """Forbid some tokens at every step."""

    def __init__(self, tokens: Sequence[int]) -> None:
        self.tokens = sorted({int(t) for t in tokens})

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        vocab = scores.shape[-1]
        tokens = [t for t in self.tokens if 0 <= t < vocab]
        if tokens:
            scores = scores.clone()
            scores[:, tokens] = -float("inf")
        return scores


class SuppressTokensAtBegin:
    """Forbid some tokens (the blank and end of text) as the first generated token."""

    def __init__(self, tokens: Sequence[int], begin_index: int) -> None:
        self.suppress = SuppressTokens(tokens)
        self.begin_index = begin_index

    def set_begin_index(self, begin_index: int) -> None:
        """Index of the first generated token in the decoder input."""
        self.begin_index = begin_index

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        return self.suppress(input_ids, scores) if input_ids.shape[-1] == self.begin_index else scores


class TimestampRules:
    """Whisper's timestamp grammar.

    - ``<|notimestamps|>`` is never generated;
    - timestamps come in pairs (end of a segment, start of the next), except
      right before the end of text;
    - timestamps never decrease (and ``<|0.00|>`` is not repeated);
    - the first generated token is a timestamp no later than
      ``max_initial_timestamp_index``;
    - when the timestamps' total probability beats every single text token,
      a timestamp is generated.
    """

    def __init__(
        self, no_timestamps_token_id: int, eos_token_id: int, begin_index: int, max_initial_timestamp_index: int | None
    ) -> None:
        self.no_timestamps_token_id = no_timestamps_token_id
        self.timestamp_begin = no_timestamps_token_id + 1
        self.eos_token_id = eos_token_id
        self.begin_index = begin_index
        self.max_initial_timestamp_index = max_initial_timestamp_index

    def set_begin_index(self, begin_index: int) -> None:
        """Index of the first generated token in the decoder input."""
        self.begin_index = begin_index

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        begin = self.timestamp_begin
        scores = scores.clone()
        scores[:, self.no_timestamps_token_id] = -float("inf")
        lowest_allowed = []
        for row, sequence in enumerate(input_ids.tolist()):
            generated = sequence[self.begin_index :]
            last_is_timestamp = len(generated) >= 1 and generated[-1] >= begin
            before_last_is_timestamp = len(generated) < 2 or generated[-2] >= begin
            if last_is_timestamp:
                if before_last_is_timestamp:
                    scores[row, begin:] = -float("inf")  # a pair just closed: text must follow
                else:
                    scores[row, : self.eos_token_id] = -float("inf")  # a segment just ended: timestamp or end
            timestamps = [token for token in generated if token >= begin]
            lowest = begin
            if timestamps:
                lowest = timestamps[-1] if last_is_timestamp and not before_last_is_timestamp else timestamps[-1] + 1
            lowest_allowed.append(lowest)
        vocab = torch.arange(scores.shape[-1], device=scores.device)
        lowest_tensor = torch.tensor(lowest_allowed, device=scores.device).unsqueeze(-1)
        scores.masked_fill_((vocab >= begin) & (vocab < lowest_tensor), -float("inf"))
        if input_ids.shape[1] == self.begin_index:
            scores[:, :begin] = -float("inf")
            if self.max_initial_timestamp_index is not None:
                scores[:, begin + self.max_initial_timestamp_index + 1 :] = -float("inf")
        logprobs = F.log_softmax(scores.float(), dim=-1)
        timestamp_mass = logprobs[:, begin:].logsumexp(dim=-1)
        best_text = logprobs[:, :begin].max(dim=-1).values
        prefer_timestamp = (timestamp_mass > best_text).unsqueeze(-1)
        scores[:, :begin].masked_fill_(prefer_timestamp, -float("inf"))
        return scores


# -- helpers -----------------------------------------------------------------------------------
def concatenate_segments(
    segments_per_item: list[list[dict[str, Any]] | None],
    pad_token_id: int,
    device: torch.device,
    *,
    padding_side: str = "right",
    prefix: torch.Tensor | None = None,
    cut_off_length: int | None = None,
    drop_closing_timestamp: bool = False,
    timestamp_begin: int | None = None,
) -> torch.Tensor:
    """Join each item's segment tokens into one row and pad the rows to the longest.

    ``prefix`` (for example ``<|startofprev|>``) is put before each row after
    keeping its last ``cut_off_length`` tokens. With
    ``drop_closing_timestamp``, a segment ending with two timestamps loses the
    second (used when previous text conditions the next window).
    """
    rows: list[torch.Tensor] = []
    for segments in segments_per_item:
        if segments:
            pieces = []
            for segment in segments:
                tokens = segment["tokens"]
                if drop_closing_timestamp and len(tokens) > 2 and int(tokens[-2]) >= timestamp_begin:
                    tokens = tokens[:-1]
                pieces.append(tokens.to(device))
            row = torch.cat(pieces, dim=-1)
            if cut_off_length is not None:
                row = row[-cut_off_length:]
            if prefix is not None:
                row = torch.cat([prefix.to(device), row])
        elif prefix is not None:
            row = prefix.to(device)
        else:
            row = torch.empty(0, dtype=torch.long, device=device)
        rows.append(row.long())
    longest = max((len(row) for row in rows), default=0)
    padded = []
    for row in rows:
        extra = longest - len(row)
        padded.append(F.pad(row, (0, extra) if padding_side == "right" else (extra, 0), value=pad_token_id))
    return torch.stack(padded) if padded else torch.empty(0, 0, dtype=torch.long, device=device)


def split_into_segments(
    tokens: torch.Tensor,
    *,
    time_offset: float,
    window_frames: int,
    timestamp_begin: int,
    input_stride: int,
    result: Any,
    index_offset: int,
) -> tuple[list[dict[str, Any]], int]:
    """Cut one window's generated tokens into timed segments; return them and how many frames to advance.

    Segments end at each pair of timestamp tokens. When the window ends
    inside a segment (the last timestamp is the start of one that did not
    close), that unfinished segment is dropped and the next window starts at
    its start timestamp; otherwise the whole window was consumed.
    """
    values = tokens.tolist()
    is_timestamp = [token >= timestamp_begin for token in values]
    single_ending = is_timestamp[-2:] == [False, True]
    cuts = [i + 1 for i in range(len(values) - 1) if is_timestamp[i] and is_timestamp[i + 1]]

    def seconds(token: int) -> float:
        return time_offset + (token - timestamp_begin) * TIME_PRECISION

    segments: list[dict[str, Any]] = []
    if cuts:
        if single_ending:
            cuts.append(len(values))
        else:
            cuts[-1] += 1  # keep the closing timestamp in the last segment
        start = 0
        for position, cut in enumerate(cuts):
            piece = tokens[start:cut]
            last = position == len(cuts) - 1
            end_index = -2 if last and not single_ending else -1
            segments.append(
                {
                    "start": seconds(int(piece[0])),
                    "end": seconds(int(piece[end_index])),
                    "tokens": piece,
                    "idxs": (index_offset + start, index_offset + cut),
                    "result": result,
                }
            )
            start = cut
        if single_ending:
            advance = window_frames
        else:
            advance = (values[start - 2] - timestamp_begin) * input_stride
        return segments, advance
    end_position = int(window_frames * FEATURE_TIME_PRECISION / TIME_PRECISION)
    stamped = [i for i, flag in enumerate(is_timestamp) if flag]
    if stamped and values[stamped[-1]] != timestamp_begin:
        end_position = values[stamped[-1]] - timestamp_begin
    segments.append(
        {
            "start": time_offset,
            "end": time_offset + end_position * TIME_PRECISION,
            "tokens": tokens,
            "idxs": (index_offset, index_offset + len(values)),
            "result": result,
        }
    )
    return segments, window_frames


# -- the mixin ---------------------------------------------------------------------------------
class WhisperGenerationMixin(GenerationMixin):
    """``generate()`` and language detection for :class:`WhisperForConditionalGeneration`."""

    generation_config: WhisperGenerationConfig

    @staticmethod
    def default_generation_config(config: Any) -> WhisperGenerationConfig:
        """Generation settings derived from the model config (used when a checkpoint has none)."""
        return WhisperGenerationConfig.from_model_config(config)

    def _after_pretrained_load(self, path_or_repo: str | os.PathLike, options: HubOptions) -> None:
        path = resolve_file(path_or_repo, GENERATION_CONFIG_NAME, options, required=False)
        if path is not None:
            self.generation_config = WhisperGenerationConfig.from_file(path)
        else:
            logger.info("%s has no %s; generation settings come from config.json.", path_or_repo, GENERATION_CONFIG_NAME)

    # -- public API ----------------------------------------------------------------------------
    @torch.no_grad()
    def detect_language(
        self,
        input_features: torch.Tensor | None = None,
        encoder_outputs: Any = None,
        generation_config: WhisperGenerationConfig | None = None,
        num_segment_frames: int | None = None,
    ) -> torch.Tensor:
        """Return the most likely language token id of each recording (from its first window)."""
        config = generation_config or self.generation_config
        if not config.lang_to_id:
            raise GenerationError(
                "Language detection needs generation_config.lang_to_id (the language tokens); this checkpoint's "
                "generation_config.json has none, so it is probably English-only."
            )
        if (input_features is None) == (encoder_outputs is None):
            raise GenerationError("detect_language takes exactly one of input_features and encoder_outputs.")
        frames = num_segment_frames or self.config.num_segment_frames
        if encoder_outputs is None:
            window = input_features[:, :, :frames]
            if window.shape[-1] < frames:
                window = F.pad(window, (0, frames - window.shape[-1]))
            encoder_outputs = self.get_encoder()(window)
        hidden = encoder_outputs[0] if not isinstance(encoder_outputs, BaseModelOutput) else encoder_outputs.last_hidden_state
        start = torch.full((hidden.shape[0], 1), config.decoder_start_token_id, dtype=torch.long, device=hidden.device)
        logits = self(encoder_outputs=(hidden,), decoder_input_ids=start, use_cache=False).logits[:, -1]
        allowed = torch.full_like(logits, -float("inf"))
        language_ids = list(config.lang_to_id.values())
        allowed[:, language_ids] = logits[:, language_ids]
        return allowed.argmax(-1)

    @torch.no_grad()
    def generate(
        self,
        input_features: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        *,
        generation_config: WhisperGenerationConfig | None = None,
        language: str | Sequence[str] | None = None,
        task: str | None = None,
        return_timestamps: bool | None = None,
        is_multilingual: bool | None = None,
        prompt_ids: torch.Tensor | None = None,
        prompt_condition_type: str | None = None,
        condition_on_prev_tokens: bool | None = None,
        max_new_tokens: int | None = None,
        max_length: int | None = None,
        return_segments: bool = False,
        return_dict_in_generate: bool = False,
        encoder_outputs: Any = None,
        logits_processor: Sequence[LogitsRule] | None = None,
        inputs: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> torch.Tensor | WhisperGenerateOutput:
        """Transcribe or translate log-mel features; return token ids (or segments).

        ``input_features`` [batch, mel bins, frames]: up to one window (3000
        frames) is decoded in one pass; longer audio is transcribed window
        after window with timestamps (pass the feature extractor's
        ``attention_mask`` for a batch of different lengths).
        ``language`` ("fr", "french" or "<|fr|>", or one per recording) and
        ``task`` ("transcribe" or "translate") set the decoder prompt; without
        a language, multilingual checkpoints detect it. ``return_timestamps``
        lets the model emit timestamp tokens. Returns the generated tokens of
        each recording (prompt and end-of-text removed, right-padded with the
        pad token), like transformers; ``return_segments=True`` adds the timed
        segments and ``return_dict_in_generate=True`` returns an output object.
        """
        if input_features is None and inputs is not None:
            input_features = inputs
        config = self._generation_settings(generation_config, max_new_tokens, max_length, kwargs)
        if input_features is None and encoder_outputs is None:
            raise GenerationError("generate() needs input_features (a log-mel spectrogram) or encoder_outputs.")
        stride = self.config.input_stride
        window = self.config.num_segment_frames
        if input_features is not None:
            batch_size, total_frames = input_features.shape[0], input_features.shape[-1]
        else:
            hidden = encoder_outputs[0] if not isinstance(encoder_outputs, BaseModelOutput) else encoder_outputs.last_hidden_state
            batch_size, total_frames = hidden.shape[0], hidden.shape[1] * stride
        is_shortform = total_frames <= window
        return_timestamps = self._resolve_timestamps(config, return_timestamps, is_shortform)
        timestamp_begin = (
            config.no_timestamps_token_id + 1 if config.no_timestamps_token_id is not None else self.config.vocab_size + 1
        )
        self._set_language_and_task(config, language, task, is_multilingual)
        init_tokens = self._init_tokens(config, input_features, encoder_outputs, batch_size, return_timestamps)
        rules = self._logits_rules(config, return_timestamps, init_tokens.shape[1], logits_processor)
        condition = bool(config.condition_on_prev_tokens) if condition_on_prev_tokens is None else condition_on_prev_tokens
        condition_type = prompt_condition_type or "first-segment"
        if condition_type not in ("first-segment", "all-segments"):
            raise GenerationError(
                f"prompt_condition_type={prompt_condition_type!r} is not valid; use 'first-segment' or 'all-segments'."
            )
        if condition_type == "all-segments" and not condition:
            raise GenerationError("prompt_condition_type='all-segments' needs condition_on_prev_tokens=True.")

        if batch_size > 1 and not is_shortform:
            if attention_mask is None:
                raise GenerationError(
                    "Batched long-form transcription needs the attention_mask of the features (call the feature "
                    "extractor with return_attention_mask=True, padding='longest', truncation=False)."
                )
            max_frames = attention_mask.sum(-1).cpu().long()
        else:
            max_frames = torch.full((batch_size,), total_frames, dtype=torch.long)
        seek = torch.zeros(batch_size, dtype=torch.long)

        segments: list[list[dict[str, Any]]] = [[] for _ in range(batch_size)]
        if prompt_ids is not None:
            prompt_ids = torch.as_tensor(prompt_ids, dtype=torch.long, device=self.device)
            if condition_type == "first-segment":
                body = prompt_ids[1:] if int(prompt_ids[0]) == (config.prev_sot_token_id or -1) else prompt_ids
                segments = [[{"tokens": body}] for _ in range(batch_size)]
        conditioned = [condition] * batch_size
        active = list(range(batch_size))
        features = input_features
        last_window_output: torch.Tensor | None = None
        while bool((seek < max_frames).any()):
            keep = [i for i, item in enumerate(active) if seek[item] < max_frames[item]]
            if features is not None and len(keep) != len(active):
                features = features[keep]
            active = [active[i] for i in keep]
            time_offset = seek.double() * TIME_PRECISION / stride
            window_frames = (max_frames - seek).clamp(max=window)
            window_input = self._window_input(features, seek, window_frames, window, active)
            window_encoder = None if window_input is not None else encoder_outputs
            decoder_input_ids, decoder_mask = self._decoder_prompt(
                init_tokens[active], segments, active, conditioned, prompt_ids, condition_type, config, timestamp_begin
            )
            length_limit = self._length_limit(config, decoder_input_ids.shape[-1])
            for rule in rules:
                if hasattr(rule, "set_begin_index"):
                    rule.set_begin_index(decoder_input_ids.shape[-1])
            output = self._decode_window(window_input, window_encoder, decoder_input_ids, decoder_mask, rules, length_limit, config)
            last_window_output = output
            generated = output[:, decoder_input_ids.shape[-1] :]
            for row, item in enumerate(active):
                tokens = self._strip_padding(generated[row], config)
                conditioned[item] = condition
                found, advance = split_into_segments(
                    tokens,
                    time_offset=float(time_offset[item]),
                    window_frames=int(window_frames[item]),
                    timestamp_begin=timestamp_begin,
                    input_stride=stride,
                    result=output[row],
                    index_offset=decoder_input_ids.shape[-1],
                )
                seek[item] += advance
                segments[item] += found

        final = [items[1:] for items in segments] if prompt_ids is not None and condition_type == "first-segment" else segments
        if return_dict_in_generate and not return_timestamps and last_window_output is not None and is_shortform:
            return WhisperGenerateOutput(sequences=last_window_output, segments=final if return_segments else None)
        sequences = concatenate_segments(final, config.pad_token_id, self.device)
        if return_segments or return_dict_in_generate:
            return WhisperGenerateOutput(sequences=sequences, segments=final)
        return sequences

    # -- settings ------------------------------------------------------------------------------
    def _generation_settings(
        self,
        generation_config: WhisperGenerationConfig | None,
        max_new_tokens: int | None,
        max_length: int | None,
        kwargs: dict[str, Any],
    ) -> WhisperGenerationConfig:
        config = (generation_config or self.generation_config).model_copy(deep=True)
        if max_new_tokens is not None:
            config.max_new_tokens = max_new_tokens
        if max_length is not None:
            config.max_length = max_length
        unsupported = {}
        for key, value in kwargs.items():
            if key in ("num_beams", "num_return_sequences") and value in (None, 1):
                continue
            if key == "do_sample" and not value:
                continue
            if key == "temperature" and value in (None, 0, 0.0):
                continue
            if key in ("output_scores", "output_attentions", "output_hidden_states", "use_cache") and not value:
                continue
            if key in type(config).model_fields or key in (config.model_extra or {}):
                setattr(config, key, value)
            else:
                unsupported[key] = value
        if unsupported:
            raise GenerationError(
                f"Whisper's generate() does not support {sorted(unsupported)} here: it decodes greedily "
                "(no sampling, beams or temperature fallback). Remove these arguments."
            )
        if config.decoder_start_token_id is None:
            raise GenerationError("generation_config.decoder_start_token_id is not set; set it to <|startoftranscript|>.")
        if config.pad_token_id is None:
            config.pad_token_id = config.eos_ids()[0] if config.eos_ids() else 0
        return config

    def _resolve_timestamps(self, config: WhisperGenerationConfig, requested: bool | None, is_shortform: bool) -> bool:
        value = config.return_timestamps if requested is None else requested
        if not is_shortform:
            if value is False:
                raise GenerationError(
                    f"The audio is longer than one window ({self.config.num_segment_frames} mel frames, 30 s): "
                    "long-form transcription needs timestamps. Pass return_timestamps=True, or cut the audio."
                )
            logger.info("Long-form audio: transcribing window by window with timestamps.")
            value = True
        if value and config.no_timestamps_token_id is None:
            raise GenerationError(
                "return_timestamps=True needs generation_config.no_timestamps_token_id (the <|notimestamps|> id); "
                "this checkpoint's generation_config.json does not set it."
            )
        config.return_timestamps = bool(value)
        return bool(value)

    @staticmethod
    def _set_language_and_task(
        config: WhisperGenerationConfig, language: Any, task: str | None, is_multilingual: bool | None
    ) -> None:
        if is_multilingual is not None:
            config.is_multilingual = is_multilingual
        if config.is_multilingual is False and (language is not None or task is not None):
            raise GenerationError(
                "This checkpoint is English-only (generation_config.is_multilingual is false): it takes no language "
                "or task. Remove them, or pass is_multilingual=True if the model really is multilingual."
            )
        if language is not None:
            if not config.lang_to_id:
                raise GenerationError(
                    "language= needs generation_config.lang_to_id; this checkpoint's generation_config.json has none."
                )
            config.language = list(language) if isinstance(language, (list, tuple)) else language
        if task is not None:
            if task not in TASKS:
                raise GenerationError(f"task={task!r} is not supported; use one of {list(TASKS)}.")
            if not config.task_to_id:
                raise GenerationError("task= needs generation_config.task_to_id; this checkpoint's settings have none.")
            config.task = task

    def _language_id(self, config: WhisperGenerationConfig, language: str) -> int:
        token = language_token(language, config.lang_to_id or {})
        if token not in (config.lang_to_id or {}):
            raise GenerationError(
                f"Language {language!r} ({token}) is not one this checkpoint knows; its languages are "
                f"{sorted(config.lang_to_id or {})[:10]}... (generation_config.lang_to_id)."
            )
        return config.lang_to_id[token]

    def _init_tokens(
        self,
        config: WhisperGenerationConfig,
        input_features: torch.Tensor | None,
        encoder_outputs: Any,
        batch_size: int,
        return_timestamps: bool,
    ) -> torch.Tensor:
        """The decoder prompt of each recording: start, language, task, and maybe <|notimestamps|>."""
        language, task = config.language, config.task
        base: list[int | None] = [config.decoder_start_token_id]
        if task is None and language is None:
            forced = config.forced_decoder_ids or getattr(self.config, "forced_decoder_ids", None)
            if forced:
                logger.info("Using forced_decoder_ids from the generation settings; prefer language= and task=.")
                if forced[0][0] == 1:
                    expected = 1
                    while forced and forced[0][0] == expected:
                        base.append(forced[0][1])
                        forced = forced[1:]
                        expected += 1
                    if forced:
                        raise GenerationError(
                            f"forced_decoder_ids {config.forced_decoder_ids} do not follow Whisper's prompt pattern "
                            "(positions 1, 2, 3, ... without gaps)."
                        )
        language_undefined = len(base) <= 1 or base[1] is None
        if isinstance(language, list):
            if any(item is None for item in language):
                raise GenerationError("language= as a list must name a language for every recording (no None).")
            if len(language) != batch_size:
                raise GenerationError(
                    f"language= lists {len(language)} languages for a batch of {batch_size} recordings; "
                    "give one per recording, or a single language for all."
                )
            languages: list[Any] = list(language)
        else:
            languages = [language] * batch_size
        rows = [list(base) for _ in range(batch_size)]
        language_ids: list[int] | None = None
        if language is not None:
            language_ids = [self._language_id(config, item) for item in languages]
        elif config.lang_to_id and language_undefined:
            language_ids = self.detect_language(
                input_features=input_features,
                encoder_outputs=encoder_outputs if input_features is None else None,
                generation_config=config,
            ).tolist()
        for row_index, row in enumerate(rows):
            if language_ids is not None:
                if len(row) > 1:
                    row[1] = language_ids[row_index]
                else:
                    row.append(language_ids[row_index])
            if task is not None:
                row.append(config.task_to_id[task])
            elif language is not None and config.task_to_id:
                if not any(token in row for token in config.task_to_id.values()):
                    row.append(config.task_to_id["transcribe"])
            no_timestamps = config.no_timestamps_token_id
            if not return_timestamps and no_timestamps is not None and row[-1] != no_timestamps:
                row.append(no_timestamps)
            elif return_timestamps and row[-1] == no_timestamps:
                row.pop()
            rows[row_index] = [token for token in row if token is not None]
        return torch.tensor(rows, dtype=torch.long, device=self.device)

    def _logits_rules(
        self,
        config: WhisperGenerationConfig,
        return_timestamps: bool,
        begin_index: int,
        extra: Sequence[LogitsRule] | None,
    ) -> list[LogitsRule]:
        rules: list[LogitsRule] = []
        if config.begin_suppress_tokens:
            rules.append(SuppressTokensAtBegin(config.begin_suppress_tokens, begin_index))
        if config.suppress_tokens:
            rules.append(SuppressTokens(config.suppress_tokens))
        if return_timestamps:
            eos = config.eos_ids()[0] if config.eos_ids() else config.bos_token_id
            rules.append(
                TimestampRules(config.no_timestamps_token_id, eos, begin_index, config.max_initial_timestamp_index)
            )
        rules.extend(extra or [])
        return rules

    def _length_limit(self, config: WhisperGenerationConfig, prompt_length: int) -> int:
        """Total decoder length (prompt included) a window may reach."""
        limit = self.config.max_target_positions
        if config.max_new_tokens is not None:
            if config.max_new_tokens + prompt_length > limit:
                raise GenerationError(
                    f"The decoder prompt has {prompt_length} tokens and max_new_tokens={config.max_new_tokens}: "
                    f"together more than Whisper's max_target_positions={limit}. Lower max_new_tokens or the prompt."
                )
            return prompt_length + config.max_new_tokens
        initial = min(limit // 2 - 1, prompt_length)
        return min(config.max_length + initial, limit)

    # -- windows -----------------------------------------------------------------------------
    @staticmethod
    def _window_input(
        features: torch.Tensor | None,
        seek: torch.Tensor,
        window_frames: torch.Tensor,
        window: int,
        active: list[int],
    ) -> torch.Tensor | None:
        if features is None:
            return None
        pieces = []
        for row, item in enumerate(active):
            start = int(seek[item])
            piece = features[row : row + 1, :, start : start + int(window_frames[item])]
            if piece.shape[-1] < window:
                piece = F.pad(piece, (0, window - piece.shape[-1]))
            pieces.append(piece)
        return torch.cat(pieces, dim=0)

    def _decoder_prompt(
        self,
        init_tokens: torch.Tensor,
        segments: list[list[dict[str, Any]]],
        active: list[int],
        conditioned: list[bool],
        prompt_ids: torch.Tensor | None,
        condition_type: str,
        config: WhisperGenerationConfig,
        timestamp_begin: int,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The decoder input of a window, with previous text (and its attention mask) when conditioning."""
        if any(conditioned[item] for item in active) and len(segments[0]) > 0:
            previous = [segments[item] if conditioned[item] else None for item in active]
            if prompt_ids is not None and condition_type == "all-segments":
                prefix = prompt_ids
            else:
                prev_sot = config.prev_sot_token_id
                if prev_sot is None and config.suppress_tokens and len(config.suppress_tokens) >= 2:
                    prev_sot = config.suppress_tokens[-2]
                prefix = torch.tensor([prev_sot], device=init_tokens.device) if prev_sot is not None else None
            context = concatenate_segments(
                previous,
                config.pad_token_id,
                init_tokens.device,
                padding_side="left",
                prefix=prefix,
                cut_off_length=self.config.max_target_positions // 2 - 1,
                drop_closing_timestamp=True,
                timestamp_begin=timestamp_begin,
            )
            decoder_input_ids = torch.cat([context, init_tokens], dim=-1)
            return decoder_input_ids, decoder_input_ids != config.pad_token_id
        if prompt_ids is not None:
            context = prompt_ids[None].repeat(init_tokens.shape[0], 1)
            return torch.cat([context, init_tokens], dim=-1), None
        return init_tokens, None

    @staticmethod
    def _strip_padding(tokens: torch.Tensor, config: WhisperGenerationConfig) -> torch.Tensor:
        """Remove padding after the end of text, then the end-of-text token itself."""
        pad = config.pad_token_id
        eos_ids = config.eos_ids()
        if len(tokens) and int(tokens[-1]) == pad:
            count = int((tokens == pad).sum())
            if pad in eos_ids:
                count -= 1
            if count:
                tokens = tokens[:-count]
        if len(tokens) and int(tokens[-1]) in eos_ids:
            tokens = tokens[:-1]
        return tokens

    def _decode_window(
        self,
        window_input: torch.Tensor | None,
        encoder_outputs: Any,
        decoder_input_ids: torch.Tensor,
        decoder_attention_mask: torch.Tensor | None,
        rules: Sequence[LogitsRule],
        length_limit: int,
        config: WhisperGenerationConfig,
    ) -> torch.Tensor:
        """Greedy decoding of one window; return the full sequences (prompt included).

        A finished row (it produced an end-of-text token) continues with the
        pad token until every row has finished or ``length_limit`` is reached.
        """
        if encoder_outputs is None:
            encoder_outputs = self.get_encoder()(window_input)
        elif not isinstance(encoder_outputs, BaseModelOutput):
            encoder_outputs = BaseModelOutput(last_hidden_state=encoder_outputs[0])
        eos_ids = torch.tensor(config.eos_ids(), dtype=torch.long, device=decoder_input_ids.device)
        sequences = decoder_input_ids
        batch = sequences.shape[0]
        unfinished = torch.ones(batch, dtype=torch.bool, device=sequences.device)
        cache = EncoderDecoderCache()
        mask = decoder_attention_mask.long() if decoder_attention_mask is not None else None
        step_input = sequences
        while sequences.shape[-1] < length_limit:
            positions = None
            if mask is not None:
                positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)[:, -step_input.shape[-1] :]
            logits = self(
                encoder_outputs=encoder_outputs,
                decoder_input_ids=step_input,
                decoder_attention_mask=mask,
                decoder_position_ids=positions,
                past_key_values=cache,
                use_cache=True,
            ).logits[:, -1, :].float()
            for rule in rules:
                logits = rule(sequences, logits)
            next_tokens = logits.argmax(dim=-1)
            next_tokens = torch.where(unfinished, next_tokens, torch.full_like(next_tokens, config.pad_token_id))
            sequences = torch.cat([sequences, next_tokens[:, None]], dim=-1)
            if mask is not None:
                mask = torch.cat([mask, mask.new_ones(batch, 1)], dim=-1)
            if eos_ids.numel():
                unfinished = unfinished & ~torch.isin(next_tokens, eos_ids)
            if not bool(unfinished.any()):
                break
            step_input = next_tokens[:, None]
        return sequences


def copy_settings(config: WhisperGenerationConfig) -> WhisperGenerationConfig:
    """A deep copy of generation settings."""
    return copy.deepcopy(config)
