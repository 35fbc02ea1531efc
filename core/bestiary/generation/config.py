"""``GenerationConfig``: validated settings of ``generate()``, stored as ``generation_config.json``.

Precedence is explicit. ``generate()`` builds the settings of one call from
three layers, highest first:

1. keyword arguments of ``generate()`` (and the fields set on a
   ``generation_config=`` passed to it),
2. the model's own generation config (``model.generation_config``, read from
   ``generation_config.json`` or derived from the model config),
3. the library defaults declared on the fields below (greedy decoding, 20 new
   tokens when neither ``max_new_tokens`` nor ``max_length`` is set).

Only fields that were *set* in a layer count (pydantic's
``model_fields_set``); a default never overrides anything. The same record
tells which settings the user chose, so that a setting which does not apply
to the chosen strategy is warned about only when the user set it.

This module imports pydantic only (no torch).
"""

from __future__ import annotations

import difflib
import json
import logging
import os
from enum import Enum
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from bestiary.config import atomic_write_text, read_config_file
from bestiary.errors import GenerationError
from bestiary.hub import HubOptions, resolve_file

logger = logging.getLogger(__name__)

GENERATION_CONFIG_NAME = "generation_config.json"
TRANSFORMERS_VERSION = "5.24.0"
DEFAULT_MAX_NEW_TOKENS = 20
CACHE_IMPLEMENTATIONS = (
    "dynamic",
    "static",
    "sliding_window",
    "sink",
    "quantized",
    "offloaded",
    "offloaded_static",
)
# Keys that transformers writes into generation_config.json but that are not settings.
_BOOKKEEPING_KEYS = {"transformers_version", "_from_model_config", "_commit_hash"}
# Settings of transformers' GenerationConfig that bestiary does not implement: kept for round trips like any
# unknown key, but never taken for a misspelling ("top_h" is one letter away from "top_p").
_TRANSFORMERS_ONLY_KEYS = frozenset({
    "use_mtp", "top_h", "exponential_decay_length_penalty", "token_healing", "guidance_scale",
    "assistant_early_exit", "assistant_ensemble_weight", "speculation_type", "disable_compile",
    "continuous_batching_config", "low_memory", "constraints", "force_words_ids",
})
_NEAR_MISS_CUTOFF = 0.8  # difflib similarity above which an unknown key is reported as a likely typo
_reported_near_misses: set[str] = set()
# Arguments of generate() that people sometimes put into a config by mistake.
_GENERATE_ARGUMENTS = (
    "logits_processor",
    "stopping_criteria",
    "prefix_allowed_tokens_fn",
    "assistant_model",
    "streamer",
    "tokenizer",
    "assistant_tokenizer",
)


class GenerationMode(str, Enum):
    """The decoding strategy a configuration selects."""

    GREEDY_SEARCH = "greedy_search"
    SAMPLE = "sample"
    BEAM_SEARCH = "beam_search"
    BEAM_SAMPLE = "beam_sample"
    GROUP_BEAM_SEARCH = "group_beam_search"
    CONTRASTIVE_SEARCH = "contrastive_search"
    ASSISTED_GENERATION = "assisted_generation"
    DOLA_GENERATION = "dola_generation"


class WatermarkingConfig(BaseModel):
    """Settings of the green-list watermark of Kirchenbauer et al. (2023).

    At each step the previous ``context_width`` tokens seed a generator that
    picks a fraction ``greenlist_ratio`` of the vocabulary ("green" tokens);
    ``bias`` is added to their logits. The detector counts green tokens and
    reports a z-score.
    """

    model_config = ConfigDict(extra="forbid")

    greenlist_ratio: float = Field(0.25, gt=0.0, lt=1.0)
    bias: float = Field(2.0, ge=0.0)
    hashing_key: int = 15485863
    seeding_scheme: Literal["lefthash", "selfhash"] = "lefthash"
    context_width: int = Field(1, ge=1)


class GenerationConfig(BaseModel):
    """Every setting of ``generate()``, validated; fields carry transformers' names and defaults."""

    model_config = ConfigDict(
        extra="allow",
        validate_assignment=True,
        protected_namespaces=(),
        arbitrary_types_allowed=True,
    )

    # -- length and stopping -------------------------------------------------
    max_length: int | None = Field(None, gt=0, description="Total length (prompt included) to stop at.")
    max_new_tokens: int | None = Field(None, gt=0, description="Tokens to generate; 20 when no length is set.")
    min_length: int = Field(0, ge=0)
    min_new_tokens: int | None = Field(None, ge=0)
    early_stopping: bool | Literal["never"] = False
    max_time: float | None = Field(None, gt=0)
    stop_strings: str | list[str] | None = None
    # -- strategy ------------------------------------------------------------
    do_sample: bool = False
    num_beams: int = Field(1, ge=1)
    num_beam_groups: int = Field(1, ge=1)
    penalty_alpha: float | None = Field(None, ge=0.0, le=1.0)
    dola_layers: Literal["low", "high"] | list[int] | None = None
    # -- cache ---------------------------------------------------------------
    use_cache: bool = True
    cache_implementation: str | None = None
    cache_config: dict[str, Any] | None = None
    max_cache_len: int | None = Field(None, gt=0)
    compile_decode: bool = Field(False, description="torch.compile the one-token decode step (static caches).")
    compile_config: dict[str, Any] | None = Field(None, description="Keyword arguments of torch.compile (backend, mode...).")
    prefill_chunk_size: int | None = Field(None, gt=0)
    # -- logits manipulation -------------------------------------------------
    temperature: float = Field(1.0, ge=0.0)
    top_k: int = Field(50, ge=0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    min_p: float | None = Field(None, ge=0.0, le=1.0)
    typical_p: float = Field(1.0, gt=0.0, le=1.0)
    epsilon_cutoff: float = Field(0.0, ge=0.0, lt=1.0)
    eta_cutoff: float = Field(0.0, ge=0.0, lt=1.0)
    diversity_penalty: float = Field(0.0, ge=0.0)
    repetition_penalty: float = Field(1.0, gt=0.0)
    encoder_repetition_penalty: float = Field(1.0, gt=0.0)
    length_penalty: float = 1.0
    no_repeat_ngram_size: int = Field(0, ge=0)
    encoder_no_repeat_ngram_size: int = Field(0, ge=0)
    bad_words_ids: list[list[int]] | None = None
    renormalize_logits: bool = False
    forced_bos_token_id: int | None = None
    forced_eos_token_id: int | list[int] | None = None
    remove_invalid_values: bool = False
    suppress_tokens: list[int] | None = None
    begin_suppress_tokens: list[int] | None = None
    sequence_bias: list[tuple[list[int], float]] | None = None
    watermarking_config: WatermarkingConfig | None = None
    # -- outputs -------------------------------------------------------------
    num_return_sequences: int = Field(1, ge=1)
    output_attentions: bool = False
    output_hidden_states: bool = False
    output_scores: bool = False
    output_logits: bool = False
    return_dict_in_generate: bool = False
    # -- special tokens ------------------------------------------------------
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    decoder_start_token_id: int | list[int] | None = None
    # -- assisted decoding ---------------------------------------------------
    is_assistant: bool = Field(False, description="Accepted for compatibility with transformers' files; unused.")
    num_assistant_tokens: int = Field(20, ge=1)
    num_assistant_tokens_schedule: Literal["constant", "heuristic", "heuristic_transient"] = "constant"
    assistant_confidence_threshold: float | None = Field(None, ge=0.0, lt=1.0)
    prompt_lookup_num_tokens: int | None = Field(None, ge=1)
    max_matching_ngram_size: int = Field(2, ge=1)
    assistant_lookbehind: int = Field(10, ge=1, description="Accepted for compatibility; universal assisted decoding re-encodes the whole text.")
    target_lookbehind: int = Field(10, ge=1, description="Accepted for compatibility; universal assisted decoding re-encodes the whole text.")

    # -- validation ----------------------------------------------------------
    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise GenerationError(describe_validation_error(exc)) from None
        for name in self.__pydantic_extra__ or {}:
            _report_near_miss(name)

    def __setattr__(self, name: str, value: Any) -> None:
        try:
            super().__setattr__(name, value)
        except ValidationError as exc:
            raise GenerationError(describe_validation_error(exc)) from None
        if name not in type(self).model_fields:
            _report_near_miss(name)

    @field_validator("sequence_bias", mode="before")
    @classmethod
    def _sequence_bias_as_pairs(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return [(list(key) if isinstance(key, (tuple, list)) else [key], bias) for key, bias in value.items()]
        return value

    @field_validator("stop_strings", mode="before")
    @classmethod
    def _stop_strings_not_empty(cls, value: Any) -> Any:
        if isinstance(value, str) and not value:
            raise ValueError("stop_strings must not be empty; pass None to disable")
        if isinstance(value, (list, tuple)) and any(not isinstance(s, str) or not s for s in value):
            raise ValueError("stop_strings must be non-empty strings")
        return value

    @field_validator("cache_implementation", mode="before")
    @classmethod
    def _known_cache(cls, value: str | None) -> str | None:
        if isinstance(value, str) and value.startswith(("hybrid", "offloaded_hybrid")):
            # transformers' checkpoints of models with sliding layers name their static hybrid cache;
            # the model's own per-layer windows already apply, so fall back to the default cache
            return "offloaded" if value.startswith("offloaded") else None
        if value is not None and value not in CACHE_IMPLEMENTATIONS:
            raise ValueError(f"unknown cache {value!r}; choose one of {', '.join(CACHE_IMPLEMENTATIONS)}")
        return value

    @field_validator("bad_words_ids")
    @classmethod
    def _bad_words_not_empty(cls, value: list[list[int]] | None) -> list[list[int]] | None:
        if value is not None:
            if any(len(words) == 0 for words in value):
                raise ValueError("each entry must hold at least one token id")
            if any(token < 0 for words in value for token in words):
                raise ValueError("token ids must be non-negative")
        return value

    @model_validator(mode="after")
    def _check_combinations(self) -> "GenerationConfig":
        problems = self.combination_problems()
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def combination_problems(self) -> list[str]:
        """Contradictory settings, each message naming the fields involved and the fix."""
        problems = []
        if self.num_beams % self.num_beam_groups:
            problems.append(
                f"num_beam_groups ({self.num_beam_groups}) must divide num_beams ({self.num_beams}); "
                "pick num_beams as a multiple of num_beam_groups"
            )
        if self.num_beam_groups > 1 and self.do_sample:
            problems.append("num_beam_groups > 1 (diverse beam search) cannot be combined with do_sample=True")
        if self.num_return_sequences > 1:
            if self.num_beams == 1 and not self.do_sample:
                problems.append(
                    f"num_return_sequences={self.num_return_sequences} needs several hypotheses: "
                    "set do_sample=True or num_beams >= num_return_sequences"
                )
            elif self.num_beams > 1 and self.num_return_sequences > self.num_beams:
                problems.append(
                    f"num_return_sequences ({self.num_return_sequences}) must not exceed num_beams ({self.num_beams})"
                )
        if self.do_sample and self.temperature == 0.0:
            problems.append("temperature=0 with do_sample=True divides by zero; use do_sample=False for greedy decoding")
        if self.max_length is not None and self.min_length > self.max_length:
            problems.append(f"min_length ({self.min_length}) exceeds max_length ({self.max_length})")
        if (
            self.max_new_tokens is not None
            and self.min_new_tokens is not None
            and self.min_new_tokens > self.max_new_tokens
        ):
            problems.append(f"min_new_tokens ({self.min_new_tokens}) exceeds max_new_tokens ({self.max_new_tokens})")
        if self.pad_token_id is not None and self.pad_token_id < 0:
            problems.append(f"pad_token_id must be a non-negative token id, got {self.pad_token_id}")
        if self.suppress_tokens is not None:
            for name in ("forced_bos_token_id", "forced_eos_token_id"):
                forced = _as_id_set(getattr(self, name))
                if forced and forced <= set(self.suppress_tokens):
                    problems.append(f"{name} {sorted(forced)} is also in suppress_tokens; remove it from one of them")
        for name in _GENERATE_ARGUMENTS:
            if name in (self.__pydantic_extra__ or {}):
                problems.append(f"{name} is an argument of generate(), not a GenerationConfig field; pass it to generate()")
        return problems

    # -- derived values -------------------------------------------------------
    @property
    def eos_token_ids(self) -> list[int]:
        """The end-of-sequence ids as a list (empty when none is set)."""
        return sorted(_as_id_set(self.eos_token_id), key=_order_of(self.eos_token_id))

    def get_generation_mode(self, assistant_model: Any = None) -> GenerationMode:
        """The strategy these settings select (an assistant model or prompt lookup makes greedy/sample assisted)."""
        if self.num_beams == 1:
            if self.do_sample:
                mode = GenerationMode.SAMPLE
            elif self.penalty_alpha is not None and self.penalty_alpha > 0 and self.top_k > 1:
                mode = GenerationMode.CONTRASTIVE_SEARCH
            else:
                mode = GenerationMode.GREEDY_SEARCH
        elif self.num_beam_groups > 1:
            mode = GenerationMode.GROUP_BEAM_SEARCH
        elif self.do_sample:
            mode = GenerationMode.BEAM_SAMPLE
        else:
            mode = GenerationMode.BEAM_SEARCH
        assisted = assistant_model is not None or self.prompt_lookup_num_tokens is not None
        if mode in (GenerationMode.GREEDY_SEARCH, GenerationMode.SAMPLE):
            if assisted:
                return GenerationMode.ASSISTED_GENERATION
            if self.dola_layers is not None:
                return GenerationMode.DOLA_GENERATION
        return mode

    def inapplicable_settings(self, mode: GenerationMode, names: set[str]) -> dict[str, str]:
        """Among ``names`` (the settings a user chose), those the strategy ``mode`` ignores, with the reason."""
        sampling = mode in (GenerationMode.SAMPLE, GenerationMode.BEAM_SAMPLE) or (
            mode in (GenerationMode.ASSISTED_GENERATION, GenerationMode.DOLA_GENERATION) and self.do_sample
        )
        beams = mode in (GenerationMode.BEAM_SEARCH, GenerationMode.BEAM_SAMPLE, GenerationMode.GROUP_BEAM_SEARCH)
        rules = {
            "temperature": (sampling, "only sampling uses it; set do_sample=True"),
            "top_p": (sampling, "only sampling uses it; set do_sample=True"),
            "min_p": (sampling, "only sampling uses it; set do_sample=True"),
            "typical_p": (sampling, "only sampling uses it; set do_sample=True"),
            "epsilon_cutoff": (sampling, "only sampling uses it; set do_sample=True"),
            "eta_cutoff": (sampling, "only sampling uses it; set do_sample=True"),
            "top_k": (
                sampling or mode is GenerationMode.CONTRASTIVE_SEARCH,
                "only sampling and contrastive search use it",
            ),
            "length_penalty": (beams, "only beam search uses it; set num_beams > 1"),
            "early_stopping": (beams, "only beam search uses it; set num_beams > 1"),
            "num_beam_groups": (beams, "only beam search uses it; set num_beams > 1"),
            "diversity_penalty": (
                mode is GenerationMode.GROUP_BEAM_SEARCH,
                "only diverse beam search uses it; set num_beam_groups > 1",
            ),
            "penalty_alpha": (
                mode is GenerationMode.CONTRASTIVE_SEARCH,
                "contrastive search needs num_beams=1, do_sample=False and top_k > 1",
            ),
            "dola_layers": (mode is GenerationMode.DOLA_GENERATION, "DoLa works with greedy decoding or sampling only"),
            "prompt_lookup_num_tokens": (
                mode is GenerationMode.ASSISTED_GENERATION,
                "prompt lookup works with greedy decoding or sampling only",
            ),
            "num_assistant_tokens": (
                mode is GenerationMode.ASSISTED_GENERATION,
                "only assisted decoding uses it; pass assistant_model=",
            ),
            "num_assistant_tokens_schedule": (
                mode is GenerationMode.ASSISTED_GENERATION,
                "only assisted decoding uses it; pass assistant_model=",
            ),
        }
        for name in ("output_scores", "output_logits", "output_attentions", "output_hidden_states"):
            rules[name] = (self.return_dict_in_generate, "it needs return_dict_in_generate=True")
        if not self.use_cache:
            for name in ("cache_implementation", "cache_config", "compile_decode"):
                rules[name] = (False, "use_cache=False turns the cache off")
        return {name: reason for name, (applies, reason) in rules.items() if name in names and not applies}

    # -- merging ----------------------------------------------------------------
    def explicit_settings(self) -> dict[str, Any]:
        """The fields set on this config (not left at their defaults) plus extra keys."""
        data = {name: getattr(self, name) for name in self.model_fields_set if name in type(self).model_fields}
        for name, value in (self.__pydantic_extra__ or {}).items():
            if name not in _BOOKKEEPING_KEYS:
                data[name] = value
        return data

    def updated(self, **settings: Any) -> "GenerationConfig":
        """A new config: this one's explicit settings overridden by ``settings`` (validated)."""
        return type(self)(**{**self.explicit_settings(), **settings})

    def update(self, **kwargs: Any) -> dict[str, Any]:
        """Set the known fields from ``kwargs`` in place; return the keyword arguments that are not fields."""
        known = {name: value for name, value in kwargs.items() if name in type(self).model_fields}
        fresh = self.updated(**known)
        self.__dict__.update(fresh.__dict__)
        self.__pydantic_fields_set__.update(known)
        return {name: value for name, value in kwargs.items() if name not in known}

    # -- construction -------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str | os.PathLike | None = None, **overrides: Any) -> "GenerationConfig":
        """Build a config from a ``generation_config.json`` dict (``overrides`` win)."""
        fields = cls.model_fields
        merged = {
            k: v
            for k, v in {**data, **overrides}.items()
            # files written by transformers 5 may hold null for "unset"; a field that takes no None keeps its default
            if k not in _BOOKKEEPING_KEYS and not (v is None and k in fields and fields[k].default is not None)
        }
        try:
            return cls(**merged)
        except GenerationError as exc:
            where = f" in {source}" if source else ""
            raise GenerationError(f"Invalid generation config{where}: {exc}") from None

    @classmethod
    def from_model_config(cls, model_config: Any) -> "GenerationConfig":
        """A config holding the special-token ids of a model ``Config`` (what a checkpoint without generation_config.json gets)."""
        text_config = model_config.get_text_config() if hasattr(model_config, "get_text_config") else model_config
        data = {}
        for name in ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id"):
            value = getattr(text_config, name, None)
            if value is None:
                value = getattr(model_config, name, None)
            if value is not None:
                data[name] = value
        return cls(**data)

    @classmethod
    def from_pretrained(
        cls,
        path_or_repo: str | os.PathLike,
        config_file_name: str | os.PathLike | None = None,
        **kwargs: Any,
    ) -> "GenerationConfig":
        """Load ``config_file_name`` (default ``generation_config.json``) from a folder, file or hub repo.

        Hub options (``revision``, ``cache_dir``, ``local_files_only``,
        ``token``, ``subfolder``) are accepted; other keyword arguments
        override values read from the file.
        """
        options = HubOptions.from_kwargs(kwargs)
        name = str(config_file_name or GENERATION_CONFIG_NAME)
        path = resolve_file(path_or_repo, name, options)
        return cls.from_dict(read_config_file(path), source=path, **kwargs)

    # -- serialisation --------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The explicitly set values (what transformers writes), JSON-ready."""
        data = {}
        for name, value in sorted(self.explicit_settings().items()):
            if isinstance(value, BaseModel):
                value = value.model_dump()
            elif name == "sequence_bias" and value is not None:
                value = [[list(ids), bias] for ids, bias in value]
            data[name] = value
        data["transformers_version"] = TRANSFORMERS_VERSION
        return data

    def to_json_string(self) -> str:
        """The config as indented JSON."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def save_pretrained(self, save_directory: str | os.PathLike, config_file_name: str | os.PathLike | None = None) -> Path:
        """Write the config into ``save_directory`` (atomically) as ``config_file_name``; return the path."""
        directory = Path(save_directory)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / str(config_file_name or GENERATION_CONFIG_NAME)
        atomic_write_text(path, self.to_json_string())
        return path

    def __repr__(self) -> str:
        return f"GenerationConfig {self.to_json_string()}"

    __str__ = __repr__


def _report_near_miss(name: str) -> None:
    """Warn (once per key) when an unknown key is close to a setting's name: a typo would otherwise do nothing."""
    if name.startswith("_") or name in _BOOKKEEPING_KEYS or name in _TRANSFORMERS_ONLY_KEYS or name in _reported_near_misses:
        return
    close = difflib.get_close_matches(name, list(GenerationConfig.model_fields), n=1, cutoff=_NEAR_MISS_CUTOFF)
    if close:
        _reported_near_misses.add(name)
        logger.warning(
            "GenerationConfig got the unknown key %r, which no setting reads (unknown keys are only kept for "
            "round trips); did you mean %r?", name, close[0],
        )


def _as_id_set(value: int | list[int] | None) -> set[int]:
    if value is None:
        return set()
    if isinstance(value, int):
        return {value}
    return set(value)


def _order_of(value: int | list[int] | None):
    order = {token: index for index, token in enumerate([value] if isinstance(value, int) else (value or []))}
    return lambda token: order.get(token, 0)


def describe_validation_error(exc: ValidationError) -> str:
    """One line per problem, naming the field (or fields) and what is wrong."""
    problems = []
    for error in exc.errors():
        location = ".".join(str(part) for part in error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        if location:
            problems.append(f"{location}: {message} (got {error.get('input')!r})")
        else:
            problems.append(message)
    return "Invalid generation settings: " + "; ".join(problems)


__all__ = [
    "CACHE_IMPLEMENTATIONS",
    "DEFAULT_MAX_NEW_TOKENS",
    "GENERATION_CONFIG_NAME",
    "GenerationConfig",
    "GenerationMode",
    "WatermarkingConfig",
]
