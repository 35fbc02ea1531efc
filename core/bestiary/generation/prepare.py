"""Turn the arguments of ``generate()`` into a :class:`GenerationPlan`: settings, inputs, cache, processors.

Steps, in order: merge the settings (call > model > defaults) and pick the
strategy; warn about the settings the user chose that this strategy
ignores; prepare inputs (prompt ids or embeddings, padding mask, encoder
outputs for encoder-decoder models) and expand them for beams or several
return sequences; fix the lengths; choose the cache; build logits
processors and stopping criteria; create the :class:`ModelRunner`.
"""

from __future__ import annotations

import difflib
import inspect
import logging
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from bestiary.errors import GenerationError
from bestiary.generation.cache import Cache, DynamicCache, EncoderDecoderCache, create_cache
from bestiary.generation.config import DEFAULT_MAX_NEW_TOKENS, GenerationConfig, GenerationMode
from bestiary.generation.logits_process import LogitsProcessorList, build_logits_processors
from bestiary.generation.runner import ModelRunner
from bestiary.generation.stopping import StoppingCriteriaList, build_stopping_criteria

logger = logging.getLogger(__name__)

# generate() keyword arguments that are neither settings nor model inputs.
_CACHE_ARGUMENTS = ("past_key_values", "cache")


@dataclass
class GenerationPlan:
    """Everything a decoding strategy needs for one ``generate()`` call."""

    model: Any
    config: GenerationConfig
    mode: GenerationMode
    runner: ModelRunner
    processors: LogitsProcessorList
    criteria: StoppingCriteriaList
    eos: torch.Tensor | None
    pad_token_id: int | None
    batch_size: int
    prompt_length: int
    is_encoder_decoder: bool = False
    encoder_outputs: Any = None
    placeholder_length: int = 0  # leading columns that stand for inputs_embeds (removed from outputs)
    assistant_model: Any = None
    tokenizer: Any = None
    assistant_tokenizer: Any = None
    user_cache: bool = False
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        """Device of the token buffers."""
        return self.runner.sequences.device

    @property
    def record_scores(self) -> bool:
        """Whether processed scores are returned."""
        return self.config.return_dict_in_generate and self.config.output_scores

    @property
    def record_logits(self) -> bool:
        """Whether raw logits are returned."""
        return self.config.return_dict_in_generate and self.config.output_logits


def merge_settings(
    model: Any, generation_config: GenerationConfig | None, settings: dict[str, Any]
) -> tuple[GenerationConfig, set[str]]:
    """Merge call settings over ``generation_config`` over the model's config; return it and the user-set names."""
    base = getattr(model, "generation_config", None) or GenerationConfig()
    layers = dict(base.explicit_settings())
    user_set = set(settings)
    if generation_config is not None:
        if not isinstance(generation_config, GenerationConfig):
            raise GenerationError(
                f"generation_config must be a GenerationConfig, got {type(generation_config).__name__}; "
                "pass settings as keyword arguments instead."
            )
        layers.update(generation_config.explicit_settings())
        user_set |= set(generation_config.model_fields_set)
    layers.update(settings)
    return GenerationConfig(**layers), user_set


def split_kwargs(model: Any, kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Separate generation settings from model inputs, rejecting names that are neither."""
    fields = GenerationConfig.model_fields
    settings = {k: v for k, v in kwargs.items() if k in fields}
    model_kwargs = {k: v for k, v in kwargs.items() if k not in fields}
    accepted = _explicit_parameters(model.forward) | _explicit_parameters(model.prepare_inputs_for_generation)
    accepted |= {"input_ids", "inputs_embeds", "attention_mask", "encoder_outputs", "decoder_input_ids", "decoder_attention_mask"}
    accepted |= {*_CACHE_ARGUMENTS, getattr(model, "main_input_name", "input_ids")}
    accepted |= set(getattr(model, "_extra_generation_inputs", ()))
    if "token_type_ids" in model_kwargs and "token_type_ids" not in accepted:
        model_kwargs.pop("token_type_ids")  # tokenizers often return it; this model has no use for it
    unknown = [name for name in model_kwargs if name not in accepted]
    if unknown:
        hints = []
        for name in unknown:
            close = difflib.get_close_matches(name, list(fields) + sorted(accepted), n=1)
            hints.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise GenerationError(
            f"generate() got arguments that are neither generation settings nor inputs of {type(model).__name__}: "
            + ", ".join(hints)
            + ". See GenerationConfig for the settings."
        )
    return settings, model_kwargs


def _explicit_parameters(function: Any) -> set[str]:
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):
        return set()
    return {p.name for p in parameters if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}


def warn_inapplicable(config: GenerationConfig, mode: GenerationMode, user_set: set[str]) -> None:
    """Warn about settings the user chose that the selected strategy ignores (never about inherited ones)."""
    ignored = config.inapplicable_settings(mode, user_set)
    if ignored:
        details = "; ".join(f"{name} ({reason})" for name, reason in sorted(ignored.items()))
        logger.warning("Strategy %s ignores these settings: %s.", mode.value, details)


def prepare_generation(
    model: Any,
    inputs: torch.Tensor | None,
    *,
    generation_config: GenerationConfig | None,
    logits_processor: Sequence[Any] | None,
    stopping_criteria: Sequence[Any] | None,
    prefix_allowed_tokens_fn: Any,
    assistant_model: Any,
    tokenizer: Any,
    assistant_tokenizer: Any,
    streaming: bool,
    kwargs: dict[str, Any],
) -> GenerationPlan:
    """Build the plan of one ``generate()`` call (see the module docstring for the steps)."""
    settings, model_kwargs = split_kwargs(model, kwargs)
    config, user_set = merge_settings(model, generation_config, settings)
    mode = config.get_generation_mode(assistant_model)
    warn_inapplicable(config, mode, user_set)
    if streaming and mode in (GenerationMode.BEAM_SEARCH, GenerationMode.BEAM_SAMPLE, GenerationMode.GROUP_BEAM_SEARCH):
        raise GenerationError("Streaming needs one hypothesis per row; beam search reorders them. Use num_beams=1 to stream.")
    if assistant_tokenizer is not None and tokenizer is None:
        raise GenerationError("assistant_tokenizer= (universal assisted decoding) also needs the main model's tokenizer=.")

    cache = _user_cache(model_kwargs)
    is_encoder_decoder = bool(getattr(model.config, "is_encoder_decoder", False))
    if is_encoder_decoder:
        input_ids, attention_mask, encoder_outputs, model_kwargs = _encoder_decoder_inputs(model, inputs, config, model_kwargs)
        placeholder = 0
    else:
        input_ids, attention_mask, placeholder = _decoder_only_inputs(model, inputs, config, model_kwargs)
        encoder_outputs = None
    batch_size, prompt_length = input_ids.shape
    encoder_input_ids = _encoder_input_ids(model, inputs, input_ids, is_encoder_decoder, placeholder)

    expand = max(config.num_beams, config.num_return_sequences)
    if expand > 1:
        input_ids = input_ids.repeat_interleave(expand, dim=0)
        attention_mask = attention_mask.repeat_interleave(expand, dim=0) if attention_mask is not None else None
        model_kwargs = _expand_kwargs(model_kwargs, expand, batch_size)
        if cache is not None and cache.get_seq_length() > 0:
            cache.batch_repeat_interleave(expand)

    max_length = _max_length(model, config, user_set, prompt_length)
    config.__dict__["max_length"] = max_length  # the resolved limit (processors read it); not a user setting
    eos_ids = config.eos_token_ids
    eos = torch.tensor(eos_ids, dtype=torch.long, device=input_ids.device) if eos_ids else None
    pad_token_id = config.pad_token_id if config.pad_token_id is not None else (eos_ids[0] if eos_ids else None)

    user_cache = cache is not None
    compile_step = False
    if cache is not None:
        if "cache_implementation" in user_set and config.cache_implementation is not None:
            raise GenerationError(
                "Pass either past_key_values= (a cache object) or cache_implementation=, not both."
            )
    elif config.use_cache:
        implementation = config.cache_implementation
        if config.compile_decode and implementation is None:
            implementation = "static"
        cache_length = max(max_length, config.max_cache_len or 0)
        if config.compile_decode and not config.max_cache_len:
            # Compiled steps are specialised to the cache length: round it up so calls with other
            # max_new_tokens reuse the compiled step instead of compiling again.
            cache_length = -(-cache_length // COMPILED_CACHE_BUCKET) * COMPILED_CACHE_BUCKET
        cache = create_cache(implementation, model=model, max_cache_len=cache_length, options=config.cache_config)
    if is_encoder_decoder and cache is not None and not isinstance(cache, EncoderDecoderCache):
        cache = EncoderDecoderCache(cache, DynamicCache())
    if config.compile_decode:
        if cache is None or not cache.is_compileable:
            raise GenerationError(
                f"compile_decode=True needs a cache with fixed shapes; got {type(cache).__name__ if cache is not None else 'no cache'}. "
                "Use cache_implementation='static' (or leave it unset)."
            )
        compile_step = True

    padding_lengths = None
    if attention_mask is not None and not bool(attention_mask.all()):
        padding_lengths = (attention_mask != 0).int().argmax(dim=1)
    vocab_size = _vocab_size(model)
    processors = build_logits_processors(
        config,
        prompt_length=prompt_length,
        padding_lengths=padding_lengths,
        vocab_size=vocab_size,
        device=input_ids.device,
        custom=logits_processor,
        prefix_allowed_tokens_fn=prefix_allowed_tokens_fn,
        encoder_input_ids=encoder_input_ids,
    )
    criteria = build_stopping_criteria(config, max_length=max_length, tokenizer=tokenizer, custom=stopping_criteria)
    runner = ModelRunner(
        model,
        input_ids,
        attention_mask=attention_mask,
        cache=cache,
        max_length=max_length,
        model_kwargs=model_kwargs,
        compile_step=compile_step,
        compile_options=config.compile_config,
        prefill_chunk_size=config.prefill_chunk_size,
    )
    return GenerationPlan(
        model=model,
        config=config,
        mode=mode,
        runner=runner,
        processors=processors,
        criteria=criteria,
        eos=eos,
        pad_token_id=pad_token_id,
        batch_size=batch_size,
        prompt_length=prompt_length,
        is_encoder_decoder=is_encoder_decoder,
        encoder_outputs=encoder_outputs,
        placeholder_length=placeholder,
        assistant_model=assistant_model,
        tokenizer=tokenizer,
        assistant_tokenizer=assistant_tokenizer,
        user_cache=user_cache,
    )


def _encoder_input_ids(
    model: Any, inputs: torch.Tensor | None, input_ids: torch.Tensor, is_encoder_decoder: bool, placeholder: int
) -> torch.Tensor | None:
    """Token ids the encoder_* processors read: the encoder input, or the prompt of a decoder-only model."""
    if is_encoder_decoder:
        if isinstance(inputs, torch.Tensor) and inputs.dim() == 2 and not inputs.is_floating_point():
            return inputs
        return None
    return None if placeholder else input_ids


def _user_cache(model_kwargs: dict[str, Any]) -> Cache | None:
    caches = [model_kwargs.pop(name) for name in _CACHE_ARGUMENTS if name in model_kwargs]
    caches = [c for c in caches if c is not None]
    if len(caches) > 1:
        raise GenerationError("Pass the cache once, as past_key_values= (cache= is an alias).")
    if not caches:
        return None
    cache = caches[0]
    if isinstance(cache, (tuple, list)):
        cache = DynamicCache.from_legacy_cache(tuple(cache))
    if not isinstance(cache, Cache):
        raise GenerationError(f"past_key_values must be a Cache (for example DynamicCache()), got {type(cache).__name__}.")
    if cache.holds_beams and cache.get_seq_length() > 0:
        raise GenerationError(
            f"past_key_values ({type(cache).__name__}) holds the last running beams of an earlier beam search, not the "
            "sequences it returned, so the next turn cannot continue from it. Pass a fresh cache "
            "(past_key_values=DynamicCache()) or none, or call reset() on this one first."
        )
    cache.holds_beams = False
    return cache


def _decoder_only_inputs(
    model: Any, inputs: torch.Tensor | None, config: GenerationConfig, model_kwargs: dict[str, Any]
) -> tuple[torch.Tensor, torch.Tensor | None, int]:
    input_ids = model_kwargs.pop("input_ids", None)
    if inputs is not None and input_ids is not None:
        raise GenerationError("Pass the prompt once: either as the first argument or as input_ids=.")
    input_ids = inputs if inputs is not None else input_ids
    embeds = model_kwargs.get("inputs_embeds")
    attention_mask = model_kwargs.pop("attention_mask", None)
    device = _device(model)
    placeholder = 0
    if embeds is not None:
        if input_ids is None:
            placeholder = embeds.shape[1]
            fill = config.pad_token_id if config.pad_token_id is not None else 0
            input_ids = torch.full(embeds.shape[:2], fill, dtype=torch.long, device=embeds.device)
        elif input_ids.shape[:2] != embeds.shape[:2]:
            raise GenerationError(
                f"input_ids {tuple(input_ids.shape)} and inputs_embeds {tuple(embeds.shape[:2])} must cover the same tokens."
            )
    if input_ids is None:
        if config.bos_token_id is None:
            raise GenerationError("No prompt was given and the generation config has no bos_token_id; pass input_ids.")
        input_ids = torch.full((1, 1), config.bos_token_id, dtype=torch.long, device=device)
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
        raise GenerationError(
            f"input_ids must be a 2D LongTensor [batch, length], got {getattr(input_ids, 'shape', type(input_ids))}."
        )
    input_ids = input_ids.long()
    if attention_mask is None:
        if not placeholder:
            attention_mask = _infer_attention_mask(input_ids, config)
    elif attention_mask.dim() != 2:
        raise GenerationError("attention_mask passed to generate() must be 2D [batch, length].")
    if attention_mask is not None and input_ids.shape[0] > 1 and bool((attention_mask[:, -1] == 0).any()):
        logger.warning(
            "Right padding detected in a batch for a decoder-only model; tokenize with padding_side='left' "
            "for correct results."
        )
    return input_ids, attention_mask, placeholder


def _infer_attention_mask(input_ids: torch.Tensor, config: GenerationConfig) -> torch.Tensor | None:
    """Mask pad tokens when that is unambiguous (a pad id different from every eos id)."""
    pad = config.pad_token_id
    if pad is None or pad in config.eos_token_ids:
        return None
    if not bool((input_ids == pad).any()):
        return None
    return (input_ids != pad).long()


def _encoder_decoder_inputs(
    model: Any, inputs: torch.Tensor | None, config: GenerationConfig, model_kwargs: dict[str, Any]
) -> tuple[torch.Tensor, torch.Tensor | None, Any, dict[str, Any]]:
    main_name = getattr(model, "main_input_name", "input_ids")
    encoder_inputs = model_kwargs.pop(main_name, None)
    if inputs is not None and encoder_inputs is not None:
        raise GenerationError(f"Pass the encoder input once: either as the first argument or as {main_name}=.")
    encoder_inputs = inputs if inputs is not None else encoder_inputs
    if model_kwargs.get("encoder_outputs") is None:
        if encoder_inputs is None:
            raise GenerationError(f"An encoder-decoder model needs its encoder input ({main_name}=) or encoder_outputs=.")
        model_kwargs = model._prepare_encoder_outputs(encoder_inputs, model_kwargs, config)
    encoder_outputs = model_kwargs["encoder_outputs"]
    # the runner's attention_mask is the decoder's; the encoder's travels under its own name
    model_kwargs["encoder_attention_mask"] = model_kwargs.pop("attention_mask", None)
    decoder_input_ids = model_kwargs.pop("decoder_input_ids", None)
    batch = _batch_of(encoder_outputs, encoder_inputs)
    if decoder_input_ids is None:
        start = config.decoder_start_token_id if config.decoder_start_token_id is not None else config.bos_token_id
        if start is None:
            raise GenerationError("Encoder-decoder generation needs decoder_start_token_id (or bos_token_id) or decoder_input_ids=.")
        starts = [start] * batch if isinstance(start, int) else list(start)
        decoder_input_ids = torch.tensor(starts, dtype=torch.long, device=_device(model)).view(batch, -1)
    decoder_mask = model_kwargs.pop("decoder_attention_mask", None)
    for name in list(model_kwargs):
        if name.startswith("decoder_"):
            model_kwargs[name.removeprefix("decoder_")] = model_kwargs.pop(name)
    return decoder_input_ids.long(), decoder_mask, encoder_outputs, model_kwargs


def _batch_of(encoder_outputs: Any, encoder_inputs: torch.Tensor | None) -> int:
    if encoder_inputs is not None:
        return encoder_inputs.shape[0]
    hidden = getattr(encoder_outputs, "last_hidden_state", None)
    if hidden is None and isinstance(encoder_outputs, (tuple, list)):
        hidden = encoder_outputs[0]
    return hidden.shape[0]


def _expand_kwargs(model_kwargs: dict[str, Any], expand: int, batch: int) -> dict[str, Any]:
    expanded = {}
    for key, value in model_kwargs.items():
        if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == batch:
            expanded[key] = value.repeat_interleave(expand, dim=0)
        elif key == "encoder_outputs" and value is not None:
            expanded[key] = _expand_output(value, expand, batch)
        else:
            expanded[key] = value
    return expanded


def _expand_output(output: Any, expand: int, batch: int) -> Any:
    if hasattr(output, "keys") and hasattr(output, "__setitem__"):
        for key in list(output.keys()):
            value = output[key]
            if isinstance(value, torch.Tensor) and value.shape[0] == batch:
                output[key] = value.repeat_interleave(expand, dim=0)
        return output
    if isinstance(output, (tuple, list)):
        return type(output)(
            v.repeat_interleave(expand, dim=0) if isinstance(v, torch.Tensor) and v.shape[0] == batch else v for v in output
        )
    return output


COMPILED_CACHE_BUCKET = 256
"""Static caches of compiled decode steps get a multiple of this many slots (unless max_cache_len is set)."""


def _max_length(model: Any, config: GenerationConfig, user_set: set[str], prompt_length: int) -> int:
    """The total length limit: the caller's settings beat the model's, and max_new_tokens beats max_length within one layer."""
    explicit = config.model_fields_set
    caller_max_length = "max_length" in user_set and config.max_length is not None
    if config.max_new_tokens is not None:
        if "max_new_tokens" in user_set:
            if caller_max_length:
                logger.warning(
                    "Both max_new_tokens (%s) and max_length (%s) are set; max_new_tokens wins.",
                    config.max_new_tokens, config.max_length,
                )
            return prompt_length + config.max_new_tokens
        if not caller_max_length:
            return prompt_length + config.max_new_tokens
        logger.info(
            "max_length=%s passed to generate() replaces max_new_tokens=%s of the model's generation config.",
            config.max_length, config.max_new_tokens,
        )
    if "max_length" in explicit and config.max_length is not None:
        if config.max_length <= prompt_length:
            raise GenerationError(
                f"max_length={config.max_length} leaves no room after the {prompt_length}-token prompt; "
                "set max_new_tokens (tokens to generate) instead."
            )
        return config.max_length
    limit = prompt_length + DEFAULT_MAX_NEW_TOKENS
    positions = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if isinstance(positions, int) and prompt_length < positions:
        limit = min(limit, positions)
    return limit


def _vocab_size(model: Any) -> int:
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    weight = getattr(head, "weight", None)
    if weight is not None:
        return weight.shape[0]
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    return int(getattr(config, "vocab_size"))


def _device(model: Any) -> torch.device:
    try:
        return next(model.parameters()).device
    except (StopIteration, AttributeError):
        return torch.device("cpu")


__all__ = ["GenerationPlan", "merge_settings", "prepare_generation", "split_kwargs"]
