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

Each window is decoded by the core engine (``GenerationMixin.generate``
with an :class:`~bestiary.generation.cache.EncoderDecoderCache`): greedy by
default, and any strategy the engine offers with one hypothesis per row
(sampling, beam search).

Whisper-specific settings (``lang_to_id``, ``task_to_id``,
``no_timestamps_token_id``, ``max_initial_timestamp_index``,
``prev_sot_token_id``, ``is_multilingual``, ``forced_decoder_ids``) are
extra keys of the checkpoint's :class:`~bestiary.generation.config.GenerationConfig`,
read from ``generation_config.json`` as transformers writes them.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch.nn import functional as F

from bestiary.errors import GenerationError
from bestiary.generation.config import GENERATION_CONFIG_NAME, GenerationConfig
from bestiary.generation.logits_process import LogitsProcessor
from bestiary.generation.mixin import GenerationMixin
from bestiary.hub import HubOptions, resolve_file
from bestiary.outputs import BaseModelOutput, ModelOutput
from bestiary_whisper.languages import TASKS, language_token

logger = logging.getLogger(__name__)

TIME_PRECISION = 0.02  # seconds per timestamp token
FEATURE_TIME_PRECISION = 0.01  # seconds per mel frame
# transformers' Whisper options bestiary does not implement (yet).
_NOT_SUPPORTED = frozenset(
    {"return_token_timestamps", "compression_ratio_threshold", "logprob_threshold", "no_speech_threshold"}
)
# Settings of one generate() call that only make sense for the whole audio, not for one window.
_WHISPER_ONLY = ("language", "task", "return_timestamps", "is_multilingual", "condition_on_prev_tokens")


def whisper_generation_config(config: Any) -> GenerationConfig:
    """Generation settings a checkpoint without ``generation_config.json`` gets from its model config.

    Like transformers, Whisper's token suppression lists and legacy
    ``forced_decoder_ids`` come along with the special tokens.
    """
    settings = GenerationConfig.from_model_config(config).explicit_settings()
    for name in ("suppress_tokens", "begin_suppress_tokens", "forced_decoder_ids"):
        value = getattr(config, name, None)
        if value is not None:
            settings[name] = list(value)
    return GenerationConfig(**settings)


def _setting(config: GenerationConfig, name: str, default: Any = None) -> Any:
    """A field or Whisper-specific extra key of ``config`` (``lang_to_id``, ``no_timestamps_token_id``, ...)."""
    value = getattr(config, name, None)
    return default if value is None else value


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
class TimestampRules(LogitsProcessor):
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
    """``generate()`` (short- and long-form) and language detection for :class:`WhisperForConditionalGeneration`."""

    @property
    def generation_config(self) -> GenerationConfig:
        """The checkpoint's generation settings (``generation_config.json``, or derived from config.json)."""
        config = self.__dict__.get("_generation_config")
        if config is None:
            config = whisper_generation_config(self.config)
            self.__dict__["_generation_config"] = config
        return config

    @generation_config.setter
    def generation_config(self, value: GenerationConfig | None) -> None:
        if value is not None and not isinstance(value, GenerationConfig):
            raise GenerationError(f"generation_config must be a GenerationConfig, got {type(value).__name__}.")
        self.__dict__["_generation_config"] = value

    def _load_generation_config(self, path_or_repo: str | os.PathLike, options: HubOptions) -> None:
        from bestiary.config import read_config_file
        from bestiary.errors import HubError

        try:
            path = resolve_file(path_or_repo, GENERATION_CONFIG_NAME, options, required=False)
        except HubError as exc:
            logger.debug("No generation config for %s: %s", path_or_repo, exc)
            path = None
        if path is None:
            logger.info("%s has no %s; generation settings come from config.json.", path_or_repo, GENERATION_CONFIG_NAME)
            self.generation_config = whisper_generation_config(self.config)
        else:
            self.generation_config = GenerationConfig.from_dict(read_config_file(path), source=path)

    # -- public API ----------------------------------------------------------------------------
    @torch.no_grad()
    def detect_language(
        self,
        input_features: torch.Tensor | None = None,
        encoder_outputs: Any = None,
        generation_config: GenerationConfig | None = None,
        num_segment_frames: int | None = None,
    ) -> torch.Tensor:
        """Return the most likely language token id of each recording (from its first window)."""
        config = generation_config or self.generation_config
        lang_to_id = _setting(config, "lang_to_id")
        if not lang_to_id:
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
        hidden = _encoder_hidden(encoder_outputs)
        start = torch.full((hidden.shape[0], 1), config.decoder_start_token_id, dtype=torch.long, device=hidden.device)
        logits = self(encoder_outputs=(hidden,), decoder_input_ids=start, use_cache=False).logits[:, -1]
        allowed = torch.full_like(logits, -float("inf"))
        language_ids = list(lang_to_id.values())
        allowed[:, language_ids] = logits[:, language_ids]
        return allowed.argmax(-1)

    @torch.no_grad()
    def generate(
        self,
        input_features: torch.Tensor | None = None,
        generation_config: GenerationConfig | None = None,
        logits_processor: Sequence[Any] | None = None,
        stopping_criteria: Sequence[Any] | None = None,
        *,
        attention_mask: torch.Tensor | None = None,
        language: str | Sequence[str] | None = None,
        task: str | None = None,
        return_timestamps: bool | None = None,
        is_multilingual: bool | None = None,
        prompt_ids: torch.Tensor | None = None,
        prompt_condition_type: str | None = None,
        condition_on_prev_tokens: bool | None = None,
        return_segments: bool = False,
        encoder_outputs: Any = None,
        inputs: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> Any:
        """Transcribe or translate log-mel features; return token ids (or segments).

        ``input_features`` [batch, mel bins, frames]: up to one window (3000
        frames) is decoded in one pass; longer audio is transcribed window
        after window with timestamps (pass the feature extractor's
        ``attention_mask`` for a batch of different lengths).
        ``language`` ("fr", "french" or "<|fr|>", or one per recording) and
        ``task`` ("transcribe" or "translate") set the decoder prompt; without
        a language, multilingual checkpoints detect it. ``return_timestamps``
        lets the model emit timestamp tokens. Other keyword arguments are
        generation settings (``max_new_tokens``, ``num_beams``, ...).

        Returns the generated tokens of each recording (prompt and
        end-of-text removed, right-padded with the pad token), like
        transformers. ``return_segments=True`` returns a
        :class:`WhisperGenerateOutput` with the timed segments;
        ``return_dict_in_generate=True`` on short audio without timestamps
        returns the engine's output (whole sequences, prompt included).
        """
        if input_features is None and inputs is not None:
            input_features = inputs
        config = self._merged_settings(generation_config, kwargs)
        if input_features is None and encoder_outputs is None:
            raise GenerationError("generate() needs input_features (a log-mel spectrogram) or encoder_outputs.")
        stride = self.config.input_stride
        window = self.config.num_segment_frames
        if input_features is not None:
            if input_features.dim() != 3:
                raise GenerationError(
                    f"input_features must be [batch, mel bins, frames]; got shape {list(input_features.shape)}."
                )
            batch_size, total_frames = input_features.shape[0], input_features.shape[-1]
        else:
            hidden = _encoder_hidden(encoder_outputs)
            batch_size, total_frames = hidden.shape[0], hidden.shape[1] * stride
        is_shortform = total_frames <= window
        return_timestamps = self._resolve_timestamps(config, return_timestamps, is_shortform)
        no_timestamps = _setting(config, "no_timestamps_token_id")
        timestamp_begin = no_timestamps + 1 if no_timestamps is not None else self.config.vocab_size + 1
        self._set_language_and_task(config, language, task, is_multilingual)
        init_tokens = self._init_tokens(config, input_features, encoder_outputs, batch_size, return_timestamps)
        rules = list(logits_processor or [])
        if return_timestamps:
            eos_ids = config.eos_token_ids
            eos = eos_ids[0] if eos_ids else config.bos_token_id
            rules.insert(
                0,
                TimestampRules(
                    no_timestamps, eos, init_tokens.shape[1], _setting(config, "max_initial_timestamp_index")
                ),
            )
        condition = (
            bool(_setting(config, "condition_on_prev_tokens", False))
            if condition_on_prev_tokens is None
            else condition_on_prev_tokens
        )
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
                prev_sot = _setting(config, "prev_sot_token_id", -1)
                body = prompt_ids[1:] if int(prompt_ids[0]) == prev_sot else prompt_ids
                segments = [[{"tokens": body}] for _ in range(batch_size)]
        conditioned = [condition] * batch_size
        want_dict = bool(config.return_dict_in_generate) and is_shortform and not return_timestamps
        active = list(range(batch_size))
        features = input_features
        window_output: Any = None
        while bool((seek < max_frames).any()):
            keep = [row for row, item in enumerate(active) if seek[item] < max_frames[item]]
            if features is not None and len(keep) != len(active):
                features = features[keep]
            active = [active[row] for row in keep]
            time_offset = seek.double() * TIME_PRECISION / stride
            window_frames = (max_frames - seek).clamp(max=window)
            if features is not None:
                window_encoder = self.get_encoder()(self._window_input(features, seek, window_frames, window, active))
            else:
                window_encoder = encoder_outputs
            decoder_input_ids, decoder_mask = self._decoder_prompt(
                init_tokens[active], segments, active, conditioned, prompt_ids, condition_type, config, timestamp_begin
            )
            prompt_length = decoder_input_ids.shape[-1]
            for rule in rules:
                if hasattr(rule, "set_begin_index"):
                    rule.set_begin_index(prompt_length)
            window_output = self._decode_window(
                window_encoder, decoder_input_ids, decoder_mask, config, rules, stopping_criteria, want_dict
            )
            output_ids = window_output.sequences if want_dict else window_output
            generated = output_ids[:, prompt_length:]
            for row, item in enumerate(active):
                tokens = self._strip_padding(generated[row], config)
                conditioned[item] = condition
                found, advance = split_into_segments(
                    tokens,
                    time_offset=float(time_offset[item]),
                    window_frames=int(window_frames[item]),
                    timestamp_begin=timestamp_begin,
                    input_stride=stride,
                    result=output_ids[row],
                    index_offset=prompt_length,
                )
                seek[item] += advance
                segments[item] += found

        final = segments
        if prompt_ids is not None and condition_type == "first-segment":
            final = [items[1:] for items in segments]
        if want_dict and not return_segments:
            return window_output
        sequences = concatenate_segments(final, config.pad_token_id, self.device)
        if return_segments:
            return WhisperGenerateOutput(sequences=sequences, segments=final)
        return sequences

    # -- settings ------------------------------------------------------------------------------
    def _merged_settings(self, generation_config: GenerationConfig | None, kwargs: dict[str, Any]) -> GenerationConfig:
        """The model's settings, overridden by ``generation_config``, overridden by keyword arguments."""
        layers = dict(self.generation_config.explicit_settings())
        if generation_config is not None:
            if not isinstance(generation_config, GenerationConfig):
                raise GenerationError(
                    f"generation_config must be a GenerationConfig, got {type(generation_config).__name__}."
                )
            layers.update(generation_config.explicit_settings())
        not_yet = sorted(set(kwargs) & _NOT_SUPPORTED)
        if isinstance(kwargs.get("temperature"), (list, tuple)):
            not_yet.append("temperature (a list: temperature fallback)")
        if not_yet:
            raise GenerationError(
                f"Whisper's generate() in bestiary does not support {', '.join(not_yet)} yet (word-level timestamps "
                "from cross-attention and temperature fallback). Remove these arguments; segment timestamps come "
                "with return_timestamps=True."
            )
        settings = {key: kwargs.pop(key) for key in list(kwargs) if key in GenerationConfig.model_fields}
        if kwargs:
            raise GenerationError(
                f"Whisper's generate() got unknown arguments {sorted(kwargs)}: they are neither generation settings "
                "(GenerationConfig fields) nor Whisper options (language, task, return_timestamps, prompt_ids, ...)."
            )
        layers.update(settings)
        config = GenerationConfig(**layers)
        if config.num_return_sequences > 1:
            raise GenerationError(
                "num_return_sequences > 1 is not supported by Whisper's generate(): each recording gets one "
                "transcript (its windows are chained). Call generate() several times with do_sample=True instead."
            )
        if config.decoder_start_token_id is None:
            raise GenerationError("generation_config.decoder_start_token_id is not set; set it to <|startoftranscript|>.")
        if config.pad_token_id is None:
            config.pad_token_id = config.eos_token_ids[0] if config.eos_token_ids else 0
        return config

    def _resolve_timestamps(self, config: GenerationConfig, requested: bool | None, is_shortform: bool) -> bool:
        value = _setting(config, "return_timestamps") if requested is None else requested
        if not is_shortform:
            if value is False:
                raise GenerationError(
                    f"The audio is longer than one window ({self.config.num_segment_frames} mel frames, 30 s): "
                    "long-form transcription needs timestamps. Pass return_timestamps=True, or cut the audio."
                )
            logger.info("Long-form audio: transcribing window by window with timestamps.")
            value = True
        if value and _setting(config, "no_timestamps_token_id") is None:
            raise GenerationError(
                "return_timestamps=True needs generation_config.no_timestamps_token_id (the <|notimestamps|> id); "
                "this checkpoint's generation_config.json does not set it."
            )
        return bool(value)

    @staticmethod
    def _set_language_and_task(
        config: GenerationConfig, language: Any, task: str | None, is_multilingual: bool | None
    ) -> None:
        if is_multilingual is not None:
            config.is_multilingual = is_multilingual
        if _setting(config, "is_multilingual") is False and (language is not None or task is not None):
            raise GenerationError(
                "This checkpoint is English-only (generation_config.is_multilingual is false): it takes no language "
                "or task. Remove them, or pass is_multilingual=True if the model really is multilingual."
            )
        if language is not None:
            if not _setting(config, "lang_to_id"):
                raise GenerationError(
                    "language= needs generation_config.lang_to_id; this checkpoint's generation_config.json has none."
                )
            config.language = list(language) if isinstance(language, (list, tuple)) else language
        if task is not None:
            if task not in TASKS:
                raise GenerationError(f"task={task!r} is not supported; use one of {list(TASKS)}.")
            if not _setting(config, "task_to_id"):
                raise GenerationError("task= needs generation_config.task_to_id; this checkpoint's settings have none.")
            config.task = task

    @staticmethod
    def _language_id(config: GenerationConfig, language: str) -> int:
        lang_to_id = _setting(config, "lang_to_id", {})
        token = language_token(language, lang_to_id)
        if token not in lang_to_id:
            raise GenerationError(
                f"Language {language!r} ({token}) is not one this checkpoint knows; its languages are "
                f"{sorted(lang_to_id)[:10]}... (generation_config.lang_to_id)."
            )
        return lang_to_id[token]

    def _init_tokens(
        self,
        config: GenerationConfig,
        input_features: torch.Tensor | None,
        encoder_outputs: Any,
        batch_size: int,
        return_timestamps: bool,
    ) -> torch.Tensor:
        """The decoder prompt of each recording: start, language, task, and maybe <|notimestamps|>."""
        language, task = _setting(config, "language"), _setting(config, "task")
        lang_to_id = _setting(config, "lang_to_id")
        task_to_id = _setting(config, "task_to_id")
        no_timestamps = _setting(config, "no_timestamps_token_id")
        base: list[int | None] = [config.decoder_start_token_id]
        if task is None and language is None:
            forced = _setting(config, "forced_decoder_ids") or getattr(self.config, "forced_decoder_ids", None)
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
                            "forced_decoder_ids do not follow Whisper's prompt pattern (positions 1, 2, 3, ... "
                            "without gaps); set language= and task= instead."
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
        language_ids: list[int] | None = None
        if language is not None:
            language_ids = [self._language_id(config, item) for item in languages]
        elif lang_to_id and language_undefined:
            language_ids = self.detect_language(
                input_features=input_features,
                encoder_outputs=encoder_outputs if input_features is None else None,
                generation_config=config,
            ).tolist()
        rows = []
        for index in range(batch_size):
            row = list(base)
            if language_ids is not None:
                if len(row) > 1:
                    row[1] = language_ids[index]
                else:
                    row.append(language_ids[index])
            if task is not None:
                row.append(task_to_id[task])
            elif language is not None and task_to_id:
                if not any(token in row for token in task_to_id.values()):
                    row.append(task_to_id["transcribe"])
            if not return_timestamps and no_timestamps is not None and row[-1] != no_timestamps:
                row.append(no_timestamps)
            elif return_timestamps and row[-1] == no_timestamps:
                row.pop()
            rows.append([token for token in row if token is not None])
        return torch.tensor(rows, dtype=torch.long, device=self.device)

    def _length_limit(self, config: GenerationConfig, prompt_length: int) -> int:
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
        length = min((config.max_length or 20) + initial, limit)
        return max(length, prompt_length + 1)

    # -- windows -----------------------------------------------------------------------------
    @staticmethod
    def _window_input(
        features: torch.Tensor, seek: torch.Tensor, window_frames: torch.Tensor, window: int, active: list[int]
    ) -> torch.Tensor:
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
        config: GenerationConfig,
        timestamp_begin: int,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The decoder input of a window, with previous text (and its attention mask) when conditioning."""
        if any(conditioned[item] for item in active) and len(segments[0]) > 0:
            previous = [segments[item] if conditioned[item] else None for item in active]
            if prompt_ids is not None and condition_type == "all-segments":
                prefix = prompt_ids
            else:
                prev_sot = _setting(config, "prev_sot_token_id")
                suppress = config.suppress_tokens
                if prev_sot is None and suppress and len(suppress) >= 2:
                    prev_sot = suppress[-2]
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
            return decoder_input_ids, (decoder_input_ids != config.pad_token_id).long()
        if prompt_ids is not None:
            context = prompt_ids[None].repeat(init_tokens.shape[0], 1)
            return torch.cat([context, init_tokens], dim=-1), None
        return init_tokens, None

    @staticmethod
    def _strip_padding(tokens: torch.Tensor, config: GenerationConfig) -> torch.Tensor:
        """Remove padding after the end of text, then the end-of-text token itself."""
        pad = config.pad_token_id
        eos_ids = config.eos_token_ids
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
        encoder_outputs: Any,
        decoder_input_ids: torch.Tensor,
        decoder_attention_mask: torch.Tensor | None,
        config: GenerationConfig,
        rules: Sequence[Any],
        stopping_criteria: Sequence[Any] | None,
        return_dict: bool,
    ) -> Any:
        """Decode one window with the core engine; return the full sequences (prompt included).

        Token suppression comes from the settings (the engine builds those
        processors, starting at the end of this window's prompt); the
        timestamp rules and any user processors run after them.
        """
        fields = GenerationConfig.model_fields
        settings = {
            key: value
            for key, value in config.explicit_settings().items()
            if key not in _WHISPER_ONLY and not (key in fields and value == fields[key].default)
        }
        settings.update(
            max_length=self._length_limit(config, decoder_input_ids.shape[-1]),
            max_new_tokens=None,
            return_dict_in_generate=return_dict,
        )
        inputs: dict[str, Any] = {"encoder_outputs": encoder_outputs, "decoder_input_ids": decoder_input_ids}
        if decoder_attention_mask is not None:
            inputs["decoder_attention_mask"] = decoder_attention_mask
        return GenerationMixin.generate(
            self,
            None,
            generation_config=GenerationConfig(**settings),
            logits_processor=list(rules),
            stopping_criteria=stopping_criteria,
            **inputs,
        )


def _encoder_hidden(encoder_outputs: Any) -> torch.Tensor:
    if isinstance(encoder_outputs, torch.Tensor):
        return encoder_outputs
    if isinstance(encoder_outputs, BaseModelOutput):
        return encoder_outputs.last_hidden_state
    return encoder_outputs[0]
