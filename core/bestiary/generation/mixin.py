"""``GenerationMixin``: ``generate()``, ``generate_stream()`` and the hooks models override.

A causal LM gets generation by inheriting this mixin (``class
LlamaForCausalLM(LlamaPreTrainedModel, GenerationMixin)``). The mixin needs
a ``forward`` that accepts ``input_ids``, ``attention_mask`` (2D, over every
position so far), ``position_ids``, ``past_key_values``, ``cache_position``
and, ideally, ``logits_to_keep``; it returns an output with ``logits``.

Hooks a model family may override
---------------------------------

``prepare_inputs_for_generation(input_ids, *, past_key_values, attention_mask,
position_ids, cache_position, is_first_step, use_cache, **model_kwargs)``
    Build the keyword arguments of one forward call. ``input_ids`` holds only
    the tokens the model has not seen yet; ``position_ids`` are their rotary
    positions (derived from the padding mask); ``cache_position`` their
    absolute slots; ``model_kwargs`` the extra inputs given to
    ``generate()``. The default passes everything through, drops the inputs
    named in ``_prefill_only_generation_inputs`` (``pixel_values``,
    ``inputs_embeds``, ...) after the first step, and renames inputs for
    encoder-decoder models: the decoder tokens and mask become
    ``decoder_input_ids`` / ``decoder_attention_mask``, the encoder's padding
    mask (kept as ``encoder_attention_mask`` in ``model_kwargs``) becomes
    ``attention_mask``, and ``encoder_outputs`` passes through. A VLM with 3D rotary
    positions (Qwen2-VL) overrides it to compute its position ids on the first
    step and to offset later ones by a stored delta.

``_update_model_kwargs_for_generation(outputs, model_kwargs, *, num_new_tokens)``
    Carry state from one forward to the next (return the new
    ``model_kwargs``). The default returns them unchanged (the runner keeps
    masks, positions and the cache); Qwen2-VL stores ``rope_deltas`` here.

``_prepare_encoder_outputs(encoder_inputs, model_kwargs, config)``
    Encoder-decoder models: run the encoder once and put ``encoder_outputs``
    into ``model_kwargs``. The default calls ``self.get_encoder()`` with the
    main input (``main_input_name``, e.g. ``input_features`` for Whisper) and
    the encoder's ``attention_mask``. The decoder then starts from
    ``decoder_start_token_id`` (or ``decoder_input_ids=``) and uses an
    :class:`~bestiary.generation.cache.EncoderDecoderCache`.

``early_exit_logits(hidden_states)``
    DoLa: the vocabulary head applied to an intermediate layer's hidden
    states. The default applies the final norm (``<base model>.norm``) and the
    output embeddings.

Loading: the mixin reads ``generation_config.json`` when the model is loaded
with ``from_pretrained`` (falling back to the special tokens of the model
config). Because ``PreTrainedModel`` comes before the mixin in a model's
MRO, the mixin installs its loading step on each subclass (see
``__init_subclass__``), chained after any hook the class already has.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any, AsyncIterator, ClassVar, Iterator, Sequence

import torch

from bestiary.errors import GenerationError
from bestiary.generation.config import GenerationConfig, GenerationMode

logger = logging.getLogger(__name__)

_LOADS_GENERATION_CONFIG = "_bestiary_loads_generation_config"


class GenerationMixin:
    """Adds ``generate()`` and friends to a model class."""

    # model inputs used on the first step only (later steps read them from the cache)
    _prefill_only_generation_inputs: ClassVar[frozenset[str]] = frozenset(
        {
            "inputs_embeds",
            "pixel_values",
            "pixel_values_videos",
            "image_grid_thw",
            "video_grid_thw",
            "image_sizes",
            "pixel_attention_mask",
            "input_features",
            "input_values",
        }
    )

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        inherited = getattr(cls, "_after_pretrained_load", None)
        if inherited is None or getattr(inherited, _LOADS_GENERATION_CONFIG, False):
            return

        def _after_pretrained_load(self: Any, path_or_repo: Any, options: Any, _inherited: Any = inherited) -> None:
            _inherited(self, path_or_repo, options)
            self._load_generation_config(path_or_repo, options)

        setattr(_after_pretrained_load, _LOADS_GENERATION_CONFIG, True)
        _after_pretrained_load.__doc__ = "Run the inherited loading hook, then read generation_config.json."
        cls._after_pretrained_load = _after_pretrained_load

    # -- the generation config ---------------------------------------------------
    @property
    def generation_config(self) -> GenerationConfig | None:
        """The model's default generation settings (from generation_config.json, or the model config's special tokens)."""
        config = self.__dict__.get("_generation_config")
        if config is None and hasattr(self, "config"):
            config = GenerationConfig.from_model_config(self.config)
            self.__dict__["_generation_config"] = config
        return config

    @generation_config.setter
    def generation_config(self, value: GenerationConfig | None) -> None:
        if value is not None and not isinstance(value, GenerationConfig):
            raise GenerationError(f"generation_config must be a GenerationConfig, got {type(value).__name__}.")
        self.__dict__["_generation_config"] = value

    def _load_generation_config(self, path_or_repo: str | os.PathLike, options: Any) -> None:
        from bestiary.errors import HubError
        from bestiary.generation.config import GENERATION_CONFIG_NAME
        from bestiary.hub import resolve_file

        try:
            path = resolve_file(path_or_repo, GENERATION_CONFIG_NAME, options, required=False)
        except HubError as exc:
            logger.debug("No generation config for %s: %s", path_or_repo, exc)
            path = None
        if path is None:
            self.generation_config = GenerationConfig.from_model_config(self.config)
            return
        from bestiary.config import read_config_file

        self.generation_config = GenerationConfig.from_dict(read_config_file(path), source=path)

    def can_generate(self) -> bool:
        """Whether this model can run ``generate()``."""
        return True

    # -- hooks ------------------------------------------------------------------------
    def prepare_inputs_for_generation(
        self,
        input_ids: torch.LongTensor,
        *,
        past_key_values: Any = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache_position: torch.Tensor | None = None,
        is_first_step: bool = False,
        use_cache: bool = True,
        **model_kwargs: Any,
    ) -> dict[str, Any]:
        """Keyword arguments of one forward call over the unseen tokens ``input_ids`` (see the module docstring)."""
        is_encoder_decoder = bool(getattr(self.config, "is_encoder_decoder", False))
        inputs: dict[str, Any] = {
            "past_key_values": past_key_values,
            "cache_position": cache_position,
            "use_cache": use_cache,
        }
        if is_encoder_decoder:
            inputs["decoder_input_ids"] = input_ids
            inputs["decoder_attention_mask"] = attention_mask
            inputs["decoder_position_ids"] = position_ids
        else:
            inputs["input_ids"] = input_ids
            inputs["attention_mask"] = attention_mask
            inputs["position_ids"] = position_ids
        for key, value in model_kwargs.items():
            if key in self._prefill_only_generation_inputs and not is_first_step:
                continue
            if key == "encoder_attention_mask" and is_encoder_decoder:
                key = "attention_mask"  # the encoder's padding mask, for cross-attention
            inputs[key] = value
        embeds = inputs.pop("inputs_embeds", None)
        if embeds is not None and not is_encoder_decoder:
            inputs["inputs_embeds"] = embeds[:, -input_ids.shape[1] :]
            inputs["input_ids"] = None
        if is_encoder_decoder and "decoder_position_ids" not in _forward_parameters(self):
            inputs.pop("decoder_position_ids")
        return inputs

    def _update_model_kwargs_for_generation(
        self, outputs: Any, model_kwargs: dict[str, Any], *, num_new_tokens: int = 1
    ) -> dict[str, Any]:
        """State carried between forward calls (the default carries nothing beyond ``model_kwargs``)."""
        return model_kwargs

    def _prepare_encoder_outputs(
        self, encoder_inputs: torch.Tensor, model_kwargs: dict[str, Any], config: GenerationConfig
    ) -> dict[str, Any]:
        """Run the encoder once and store ``encoder_outputs`` in ``model_kwargs`` (encoder-decoder models)."""
        if not hasattr(self, "get_encoder"):
            raise GenerationError(f"{type(self).__name__} is encoder-decoder but has no get_encoder().")
        encoder = self.get_encoder()
        name = getattr(encoder, "main_input_name", getattr(self, "main_input_name", "input_ids"))
        encoder_kwargs = {name: encoder_inputs}
        if model_kwargs.get("attention_mask") is not None:
            encoder_kwargs["attention_mask"] = model_kwargs["attention_mask"]
        if config.output_attentions:
            encoder_kwargs["output_attentions"] = True
        if config.output_hidden_states:
            encoder_kwargs["output_hidden_states"] = True
        model_kwargs = dict(model_kwargs)
        model_kwargs["encoder_outputs"] = encoder(**encoder_kwargs)
        return model_kwargs

    def early_exit_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Vocabulary logits of an intermediate layer's hidden states: final norm, then the output embeddings (DoLa)."""
        head = self.get_output_embeddings()
        if head is None:
            raise GenerationError(f"{type(self).__name__} has no output embeddings; DoLa needs a language-modelling head.")
        base = getattr(self, getattr(self, "base_model_prefix", ""), None) if getattr(self, "base_model_prefix", "") else None
        norm = getattr(base, "norm", None) if base is not None else None
        if norm is not None:
            hidden_states = norm(hidden_states)
        return head(hidden_states)

    # -- public API ----------------------------------------------------------------
    @torch.no_grad()
    def generate(
        self,
        inputs: torch.Tensor | None = None,
        generation_config: GenerationConfig | None = None,
        logits_processor: Sequence[Any] | None = None,
        stopping_criteria: Sequence[Any] | None = None,
        prefix_allowed_tokens_fn: Any = None,
        assistant_model: Any = None,
        streamer: Any = None,
        tokenizer: Any = None,
        assistant_tokenizer: Any = None,
        **kwargs: Any,
    ) -> Any:
        """Generate token ids; returns a LongTensor [rows, length], or an output dataclass with ``return_dict_in_generate``.

        ``kwargs`` are generation settings (any :class:`GenerationConfig`
        field, overriding ``generation_config`` and the model's defaults) and
        model inputs (``attention_mask``, ``past_key_values``,
        ``inputs_embeds``, ``pixel_values``...). ``tokenizer`` is needed for
        ``stop_strings`` and, with ``assistant_tokenizer``, for universal
        assisted decoding. ``streamer`` receives the prompt, then each new
        token (see :mod:`bestiary.generation.streamers`).
        """
        plan, steps = self._start_generation(
            inputs,
            generation_config,
            logits_processor,
            stopping_criteria,
            prefix_allowed_tokens_fn,
            assistant_model,
            tokenizer,
            assistant_tokenizer,
            kwargs,
            streaming=streamer is not None,
        )
        if streamer is not None:
            streamer.put(plan.runner.input_ids[:, plan.placeholder_length :].cpu())
        try:
            while True:
                step = next(steps)
                if streamer is not None:
                    streamer.put(step.tokens.cpu())
        except StopIteration as stop:
            result = stop.value
        finally:
            if streamer is not None:
                streamer.end()
        return result

    def generate_stream(
        self,
        inputs: torch.Tensor | None = None,
        generation_config: GenerationConfig | None = None,
        *,
        logits_processor: Sequence[Any] | None = None,
        stopping_criteria: Sequence[Any] | None = None,
        prefix_allowed_tokens_fn: Any = None,
        assistant_model: Any = None,
        tokenizer: Any = None,
        assistant_tokenizer: Any = None,
        skip_special_tokens: bool = True,
        **kwargs: Any,
    ) -> Iterator[Any]:
        """Yield a :class:`~bestiary.generation.outputs.GenerationStep` per decoding step, without threads.

        Works with batches (each step carries a token per row and which rows
        finished). With ``tokenizer=``, each step also carries every row's
        newly printable text. Takes the same settings as :meth:`generate`
        (beam search cannot stream).
        """
        from bestiary.generation.streamers import IncrementalDecoder

        plan, steps = self._start_generation(
            inputs,
            generation_config,
            logits_processor,
            stopping_criteria,
            prefix_allowed_tokens_fn,
            assistant_model,
            tokenizer,
            assistant_tokenizer,
            kwargs,
            streaming=True,
        )
        decoders = None
        if tokenizer is not None:
            decoders = [IncrementalDecoder(tokenizer, skip_special_tokens=skip_special_tokens) for _ in range(plan.runner.rows)]
        finished_before = [False] * plan.runner.rows
        for step in steps:
            if decoders is not None:
                rows = step.tokens.tolist()
                finished = step.finished.tolist()
                step.text = []
                for index, decoder in enumerate(decoders):
                    text = "" if finished_before[index] else decoder.push(rows[index])
                    if finished[index] and not finished_before[index]:
                        text += decoder.flush()
                    step.text.append(text)
                finished_before = finished
            yield step

    async def agenerate_stream(self, inputs: torch.Tensor | None = None, **kwargs: Any) -> AsyncIterator[Any]:
        """Async form of :meth:`generate_stream`: each step runs in a worker thread, so the event loop stays free."""
        steps = self.generate_stream(inputs, **kwargs)
        done = object()
        while True:
            step = await asyncio.to_thread(next, steps, done)
            if step is done:
                return
            yield step

    def compute_transition_scores(
        self,
        sequences: torch.Tensor,
        scores: Sequence[torch.Tensor],
        beam_indices: torch.Tensor | None = None,
        normalize_logits: bool = False,
    ) -> torch.Tensor:
        """The score of each generated token [rows, steps] from ``scores`` (and ``beam_indices`` for beam search)."""
        stacked = torch.stack(list(scores), dim=0)  # [steps, rows(*beams), vocab]
        if normalize_logits:
            stacked = stacked.float().log_softmax(dim=-1)
        if beam_indices is None:
            steps = stacked.shape[0]
            beam_indices = torch.arange(stacked.shape[1], device=stacked.device)[:, None].expand(-1, steps)
        else:
            steps = int((beam_indices >= 0).sum(dim=-1).max())
            beam_indices = beam_indices[:, :steps]
        valid = beam_indices >= 0
        rows = beam_indices.clamp(min=0)
        tokens = sequences[:, sequences.shape[1] - steps :]
        picked = stacked[torch.arange(steps, device=stacked.device)[None, :], rows, tokens]
        return picked.masked_fill(~valid, 0.0)

    # -- internals ----------------------------------------------------------------
    def _start_generation(
        self,
        inputs: torch.Tensor | None,
        generation_config: GenerationConfig | None,
        logits_processor: Sequence[Any] | None,
        stopping_criteria: Sequence[Any] | None,
        prefix_allowed_tokens_fn: Any,
        assistant_model: Any,
        tokenizer: Any,
        assistant_tokenizer: Any,
        kwargs: dict[str, Any],
        *,
        streaming: bool,
    ) -> tuple[Any, Iterator[Any]]:
        from bestiary.generation.prepare import prepare_generation

        with torch.no_grad():
            plan = prepare_generation(
                self,
                inputs,
                generation_config=generation_config,
                logits_processor=logits_processor,
                stopping_criteria=stopping_criteria,
                prefix_allowed_tokens_fn=prefix_allowed_tokens_fn,
                assistant_model=assistant_model,
                tokenizer=tokenizer,
                assistant_tokenizer=assistant_tokenizer,
                streaming=streaming,
                kwargs=kwargs,
            )
        return plan, _no_grad_steps(_strategy(plan.mode)(plan))


def _no_grad_steps(steps: Iterator[Any]) -> Iterator[Any]:
    """Run a strategy generator with gradients off at every resumption."""
    while True:
        with torch.no_grad():
            try:
                step = next(steps)
            except StopIteration as stop:
                return stop.value
        yield step


def _strategy(mode: GenerationMode):
    if mode in (GenerationMode.GREEDY_SEARCH, GenerationMode.SAMPLE):
        from bestiary.generation.decoding import greedy_or_sample

        return greedy_or_sample
    if mode in (GenerationMode.BEAM_SEARCH, GenerationMode.BEAM_SAMPLE, GenerationMode.GROUP_BEAM_SEARCH):
        from bestiary.generation.beam_search import beam_search

        return beam_search
    if mode is GenerationMode.CONTRASTIVE_SEARCH:
        from bestiary.generation.contrastive import contrastive_search

        return contrastive_search
    if mode is GenerationMode.ASSISTED_GENERATION:
        from bestiary.generation.assisted import assisted_decoding

        return assisted_decoding
    if mode is GenerationMode.DOLA_GENERATION:
        from bestiary.generation.dola import dola_decoding

        return dola_decoding
    raise GenerationError(f"No decoding strategy for mode {mode!r}.")


_FORWARD_PARAMETERS: dict[type, frozenset[str]] = {}


def _forward_parameters(model: Any) -> frozenset[str]:
    import inspect

    cls = type(model)
    if cls not in _FORWARD_PARAMETERS:
        try:
            _FORWARD_PARAMETERS[cls] = frozenset(inspect.signature(model.forward).parameters)
        except (TypeError, ValueError):
            _FORWARD_PARAMETERS[cls] = frozenset()
    return _FORWARD_PARAMETERS[cls]


__all__ = ["GenerationMixin"]
