"""``ModelRunner``: runs a model on the tokens of one ``generate()`` call and keeps its bookkeeping.

A decoding strategy appends tokens with :meth:`ModelRunner.append` and asks
for the next logits with :meth:`ModelRunner.step`, which feeds the model
every appended token it has not seen yet (one token per step in steady
state, the whole prompt on the first step, several for assisted decoding).

Per-call state lives in preallocated buffers, so a step costs no
concatenation:

- ``sequences`` [rows, max_length]: prompt and generated tokens; the column
  index is the token's absolute position (its cache slot).
- ``mask`` [rows, max_length]: the 2D padding mask (None when nothing is
  padded, which lets the model use its fast causal path); columns after the
  prompt are ones.
- ``positions`` [rows, max_length]: rotary position ids from the mask
  (``cumsum - 1``), so a left-padded row continues from its own last real
  token and matches an unpadded run of the same prompt.

Model inputs go through the model's ``prepare_inputs_for_generation`` hook
and model outputs through ``_update_model_kwargs_for_generation`` (see
:mod:`bestiary.generation.mixin`), so encoder-decoder models and VLMs adapt
the inputs without touching the strategies.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch

from bestiary.errors import GenerationError
from bestiary.generation.cache import Cache

logger = logging.getLogger(__name__)


class ModelRunner:
    """Feeds a model the tokens of one generation call, step by step."""

    def __init__(
        self,
        model: Any,
        input_ids: torch.LongTensor,
        *,
        attention_mask: torch.Tensor | None,
        cache: Cache | None,
        max_length: int,
        model_kwargs: dict[str, Any] | None = None,
        compile_step: bool = False,
        compile_options: dict[str, Any] | None = None,
        prefill_chunk_size: int | None = None,
    ) -> None:
        rows, prompt_length = input_ids.shape
        if prompt_length > max_length:
            raise GenerationError(f"The prompt holds {prompt_length} tokens, more than max_length={max_length}.")
        device = input_ids.device
        self.model = model
        self.cache = cache
        self.model_kwargs: dict[str, Any] = dict(model_kwargs or {})
        self.max_length = max_length
        self.rows = rows
        self.sequences = torch.empty(rows, max_length, dtype=torch.long, device=device)
        self.sequences[:, :prompt_length] = input_ids
        self.length = prompt_length
        self.prompt_length = prompt_length
        self.processed = cache.get_seq_length() if cache is not None else 0
        if self.processed >= prompt_length and prompt_length > 0:
            raise GenerationError(
                f"The cache already holds {self.processed} tokens but input_ids has only {prompt_length}: pass the "
                "whole conversation so far (the cached tokens followed by the new ones) as input_ids."
            )
        self.first_step = True
        self.compile_step = compile_step
        self.compile_options = dict(compile_options or {})
        self.prefill_chunk_size = prefill_chunk_size
        self._arange = torch.arange(max_length, device=device)
        padded = attention_mask is not None and not bool(attention_mask.all())
        if attention_mask is not None and attention_mask.shape != input_ids.shape:
            raise GenerationError(
                f"attention_mask has shape {tuple(attention_mask.shape)} but input_ids has {tuple(input_ids.shape)}; "
                "they must match (the mask covers every token, cached ones included)."
            )
        if padded:
            self.mask = torch.ones(rows, max_length, dtype=torch.long, device=device)
            self.mask[:, :prompt_length] = attention_mask
            positions = self.mask.cumsum(-1) - 1
            self.positions = positions.masked_fill(self.mask == 0, 0)
        else:
            self.mask = None
            self.positions = self._arange.unsqueeze(0).expand(rows, max_length)
        self._supports_logits_to_keep = _accepts(model, "logits_to_keep")

    # -- tokens ----------------------------------------------------------------
    @property
    def input_ids(self) -> torch.LongTensor:
        """All tokens so far (a view of the buffer)."""
        return self.sequences[:, : self.length]

    def append(self, tokens: torch.LongTensor) -> None:
        """Append ``tokens`` [rows, n] (they are fed to the model on the next :meth:`step`)."""
        count = tokens.shape[1]
        if self.length + count > self.max_length:
            raise GenerationError(f"Generation would exceed max_length={self.max_length}.")
        self.sequences[:, self.length : self.length + count] = tokens
        self.length += count

    def rollback(self, length: int) -> None:
        """Forget every token after the first ``length`` (and crop the cache accordingly)."""
        self.length = length
        if self.processed > length:
            if self.cache is not None:
                self.cache.crop(length)
            self.processed = length

    def reorder(self, rows: torch.LongTensor) -> None:
        """Make row ``i`` a copy of row ``rows[i]`` (beam search), cache included."""
        self.sequences = self.sequences.index_select(0, rows)
        if self.mask is not None:
            self.mask = self.mask.index_select(0, rows)
            self.positions = self.positions.index_select(0, rows)
        if self.cache is not None and self.processed:
            self.cache.reorder_cache(rows)
        self.model_kwargs = _select_rows(self.model_kwargs, rows, self.rows)

    # -- running the model ------------------------------------------------------------
    def step(
        self,
        *,
        logits_to_keep: int = 1,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> Any:
        """Run the model on the appended tokens it has not seen; return its output."""
        if self.cache is None:
            start, new_ids = 0, self.sequences[:, : self.length]
        else:
            start, new_ids = self.processed, self.sequences[:, self.processed : self.length]
        if new_ids.shape[1] == 0:
            raise GenerationError("Nothing to feed the model: append tokens before calling step().")
        chunk = self.prefill_chunk_size
        if chunk and self.cache is not None and new_ids.shape[1] > max(chunk, logits_to_keep):
            # long prompts in pieces: bounded activation memory; the last piece yields the logits
            head = new_ids.shape[1] - max(logits_to_keep, 1)
            for offset in range(0, head, chunk):
                piece = new_ids[:, offset : min(offset + chunk, head)]
                self.call(piece, start + offset)
            start, new_ids = start + head, new_ids[:, head:]
        outputs = self.call(
            new_ids,
            start,
            logits_to_keep=logits_to_keep,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
        )
        self.processed = self.length if self.cache is not None else 0
        return outputs

    def call(
        self,
        new_ids: torch.LongTensor,
        start: int,
        *,
        logits_to_keep: int = 1,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
        repeat_rows: int = 1,
    ) -> Any:
        """Run the model on ``new_ids`` placed at absolute position ``start`` (rows may be repeated ``repeat_rows`` times)."""
        count = new_ids.shape[1]
        end = start + count
        compiled = (
            self.compile_step
            and count == 1
            and not self.first_step
            and not output_hidden_states
            and not output_attentions
            and repeat_rows == 1
        )
        cache_position = self._arange[start:end]
        position_ids = self.positions[:, start:end]
        attention_mask = None
        if self.mask is not None:
            # a compiled step sees the whole buffer, so its shape never changes (masks index it by position)
            attention_mask = self.mask if compiled else self.mask[:, :end]
        if repeat_rows > 1:
            position_ids = position_ids.repeat_interleave(repeat_rows, dim=0)
            if attention_mask is not None:
                attention_mask = attention_mask.repeat_interleave(repeat_rows, dim=0)
        if self.cache is not None:
            position_ids = self.cache.rotary_positions(position_ids, attention_mask)
        model_kwargs = self.model_kwargs
        if repeat_rows > 1:
            model_kwargs = _repeat_rows(model_kwargs, repeat_rows, self.rows)
        inputs = self.model.prepare_inputs_for_generation(
            new_ids,
            past_key_values=self.cache,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache_position=cache_position,
            is_first_step=self.first_step,
            use_cache=self.cache is not None,
            **model_kwargs,
        )
        if self._supports_logits_to_keep:
            inputs["logits_to_keep"] = logits_to_keep
        if output_hidden_states:
            inputs["output_hidden_states"] = True
        if output_attentions:
            inputs["output_attentions"] = True
        if compiled:
            outputs = self._compiled_forward(inputs)
        else:
            outputs = self.model(**inputs)
        if repeat_rows == 1:
            self.model_kwargs = self.model._update_model_kwargs_for_generation(
                outputs, self.model_kwargs, num_new_tokens=count
            )
        self.first_step = False
        return outputs

    def _compiled_forward(self, inputs: dict[str, Any]) -> Any:
        cache = inputs.get("past_key_values")
        if cache is not None:
            cache.begin_step(inputs["cache_position"])
        step = compiled_decode_step(self.model, self.compile_options)
        # Views into the growing sequence buffers have strides that depend on max_length; contiguous
        # copies (a few integers) keep the compiled step's guards independent of it.
        inputs = {key: _fresh(value) if isinstance(value, torch.Tensor) else value for key, value in inputs.items()}
        mask, slots = inputs.get("attention_mask"), getattr(cache, "max_cache_len", None)
        if mask is not None and slots and mask.shape[-1] < slots:
            # The same for the padding mask: stretched to the cache's slots (later slots are empty or in
            # the future, so their mask value is never used).
            inputs["attention_mask"] = torch.nn.functional.pad(mask, (0, slots - mask.shape[-1]), value=1)
        logits = step(inputs)
        return _LogitsOnly(logits, cache)


def _fresh(tensor: torch.Tensor) -> torch.Tensor:
    """A copy with standard strides (``contiguous()`` keeps a view whose size-1 dims have odd strides)."""
    return tensor.clone(memory_format=torch.contiguous_format)


class _LogitsOnly:
    """The part of a model output the decode loop reads after a compiled step."""

    def __init__(self, logits: torch.Tensor, cache: Cache | None) -> None:
        self.logits = logits
        self.past_key_values = cache
        self.hidden_states = None
        self.attentions = None

    def get(self, key: str, default: Any = None) -> Any:
        value = getattr(self, key, None)
        return default if value is None else value

    def __contains__(self, key: str) -> bool:
        return getattr(self, key, None) is not None


def compiled_decode_step(model: Any, options: dict[str, Any] | None = None):
    """``torch.compile`` of a one-token forward that returns the logits, built once per model and options.

    The compiled function is kept on the model, so later ``generate()`` calls
    (with new caches of the same shapes) reuse it without recompiling.
    """
    options = {"dynamic": False, "fullgraph": False, **(options or {})}
    if "options" not in options:
        options["options"] = _default_compile_options()
        if options.get("backend", "inductor") == "inductor" and _on_cpu(model):
            options["options"].update(cpu_decode_inductor_options())
    key = repr(sorted(options.items()))
    steps = model.__dict__.setdefault("_bestiary_compiled_decode_steps", {})
    step = steps.get(key)
    if step is None:
        def decode(inputs: dict[str, Any]) -> torch.Tensor:
            return model(**inputs).logits

        step = torch.compile(decode, **options)
        if _on_cpu(model):
            from bestiary.nn.projection import native_matvec_available

            native_matvec_available()  # compiled graphs call the native projections only if already loaded
            if not options["fullgraph"]:
                step = _with_native_steps(step)
        steps[key] = step
        logger.info("Compiling the decode step of %s (the first steps are slow).", type(model).__name__)
    return step


def _with_native_steps(compiled: Callable[[dict[str, Any]], torch.Tensor]) -> Callable[[dict[str, Any]], torch.Tensor]:
    """The compiled step, free to run the native decoder step between two graphs (one C call per token)."""
    from bestiary.nn.decoder_step import native_steps_between_graphs

    def step(inputs: dict[str, Any]) -> torch.Tensor:
        with native_steps_between_graphs():
            return compiled(inputs)

    return step


def _default_compile_options() -> dict[str, Any]:
    # Checking the guards of every module attribute before each step costs about 2.5 ms per token for a
    # 30-layer model; the compiled step belongs to one model, whose modules generate() does not swap.
    # Parameters and buffers are still read at each call, so weights changed in place are seen.
    skip_module_guards = getattr(torch.compiler, "skip_guard_on_all_nn_modules_unsafe", None)
    return {"guard_filter_fn": skip_module_guards} if skip_module_guards is not None else {}


# Matrix-vector products of decoding read each weight once. On CPU, oneDNN/MKL stream them at about
# 10 GB/s for the shapes of small LLMs, while inductor's code for the same product written as a
# multiply-and-sum reaches 18-26 GB/s (bench/bench_generate.py measures the effect). Inductor's
# "decompose_mm_pass" does that rewrite for one-row products; its size limit (2048) is raised so
# the output projection (vocabulary x hidden) is included too.
_CPU_DECOMPOSE_LIMIT = 1 << 20


def cpu_decode_inductor_options() -> dict[str, Any]:
    """Inductor options for a one-token decode step on CPU: one-row matmuls become streamed reductions."""
    try:
        from torch._inductor.fx_passes import decompose_mem_bound_mm as decompose

        if decompose.cpu_max_other_dimension_decomposition < _CPU_DECOMPOSE_LIMIT:
            decompose.cpu_max_other_dimension_decomposition = _CPU_DECOMPOSE_LIMIT
    except (ImportError, AttributeError):  # another torch version: keep its defaults
        logger.debug("inductor's decompose_mm_pass limits are not adjustable in this torch version")
    return {"post_grad_fusion_options": {"decompose_mm_pass": {}}}


def _on_cpu(model: Any) -> bool:
    try:
        return next(model.parameters()).device.type == "cpu"
    except (StopIteration, AttributeError):
        return False


def _accepts(model: Any, name: str) -> bool:
    import inspect

    try:
        parameters = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False
    return name in parameters


def _select_rows(kwargs: dict[str, Any], rows: torch.Tensor, batch: int) -> dict[str, Any]:
    """Reorder per-row tensors of ``kwargs`` (those whose first dimension is the batch)."""
    selected = {}
    for key, value in kwargs.items():
        if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == batch:
            selected[key] = value.index_select(0, rows.to(value.device))
        else:
            selected[key] = value
    return selected


def _repeat_rows(kwargs: dict[str, Any], repeats: int, batch: int) -> dict[str, Any]:
    repeated = {}
    for key, value in kwargs.items():
        if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == batch:
            repeated[key] = value.repeat_interleave(repeats, dim=0)
        else:
            repeated[key] = value
    return repeated


__all__ = ["ModelRunner", "compiled_decode_step"]
