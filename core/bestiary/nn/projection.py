"""Linear projections of one input by several layers, computed together when decoding.

    query, key, value = project(hidden_states, (attn.q_proj, attn.k_proj, attn.v_proj))

Equals ``tuple(layer(x) for layer in layers)``. When ``x`` is a single float32
row on the CPU, gradients are off, and every layer is a plain ``nn.Linear``
with a float32 weight or a GGUF ``QuantizedLinear``, all the products run in
one native call (:mod:`.matvec_source`): one parallel region instead of one
per layer, and about twice the memory bandwidth of a BLAS matrix-vector
product on small matrices. Anything else (a layer with hooks, a subclass,
another dtype or device, training) takes the plain path.

Block-quantized (GGUF) weights are multiplied with float32 activations by
default: the result is "dequantize, then multiply" up to float32 rounding.
:func:`set_quantized_activations` (or ``BESTIARY_QUANTIZE_ACTIVATIONS=1``)
switches to 8-bit activations as llama.cpp computes them, about 1.8x faster
kernels but much less exact: on SmolLM2-135M (Q4_1 layers, Q8_0 output head)
one decode step's logits moved by 7% and the greedy answer to "What is the
capital of France?" no longer named Paris, because hidden states with outlier
features lose their small entries to a shared 8-bit block scale.

``BESTIARY_NATIVE_MATVEC=0`` turns the native path off.
"""

from __future__ import annotations

import ctypes
import os
import time
import weakref
from collections.abc import Sequence

import torch
from torch import nn

from bestiary.nn import kernels
from bestiary.nn.kernels import ENV_VAR, KIND_F32
from bestiary.nn.thread_choice import ThreadChoice

__all__ = ["project", "native_project", "native_matvec_available", "quantized_activations", "set_quantized_activations"]

ACTIVATIONS_ENV_VAR = "BESTIARY_QUANTIZE_ACTIVATIONS"
_OFF = ("0", "false", "no", "off")
PARALLEL_MIN_WORK = 1 << 16
"""Multiply-adds below which one thread does the whole call (a second costs more than it saves)."""


_quantize_activations = os.environ.get(ACTIVATIONS_ENV_VAR, "0").strip().lower() not in _OFF


def set_quantized_activations(enabled: bool) -> None:
    """Multiply block-quantized weights with 8-bit (True) or float32 (False, the default) activations."""
    global _quantize_activations
    _quantize_activations = bool(enabled)


def quantized_activations() -> bool:
    """Whether block-quantized weights are multiplied with 8-bit activations (see :func:`set_quantized_activations`)."""
    return _quantize_activations


def native_matvec_available() -> bool:
    """Whether the native decoding kernels are built and usable on this machine (builds them if needed).

    Call it before ``torch.compile`` of a decode step: compiled graphs use the kernels only if loaded.
    """
    return kernels.library() is not None


class _Plan:
    """The ctypes description of a fixed tuple of layers, valid while their tensors stay put."""

    def __init__(self, layers: Sequence[nn.Module], tensors: list[tuple[dict, str, torch.Tensor | None]]) -> None:
        self.layers = tuple(weakref.ref(layer) for layer in layers)
        self.in_features = layers[0].in_features
        self.sizes = [layer.out_features for layer in layers]
        self.count = len(self.sizes)
        self.total = sum(self.sizes)
        self.slices = [(sum(self.sizes[:index]), size) for index, size in enumerate(self.sizes)]
        self.work = self.total * self.in_features
        # (owner dict, key, tensor) for every tensor the kernel reads, checked on each call, so a replaced
        # weight rebuilds the plan instead of being read at a stale address.
        self.watched = [(owner, key, t) for owner, key, t in tensors if t is not None]
        # A module moved with .to(), or a tensor given new storage through .data, changes an address
        # without replacing the tensor object.
        self.addresses = [(t, t.data_ptr()) for _, _, t in self.watched]
        entries = []
        for index, layer in enumerate(layers):
            values, scales, mins, bias = (t for _, _, t in tensors[4 * index : 4 * index + 4])
            entries.append((_kind(values, layer), layer.out_features, values, scales, mins, bias))
        self.matrices = _matrices(entries)
        self.thread_choice = ThreadChoice()  # all threads, or one when the machine is busy (see thread_choice)

    def still_valid(self, layers: Sequence[nn.Module]) -> bool:
        for ref, layer in zip(self.layers, layers):
            if ref() is not layer or layer._forward_hooks or layer._forward_pre_hooks:
                return False
        for owner, key, tensor in self.watched:
            if owner.get(key) is not tensor:
                return False
        for tensor, address in self.addresses:
            if tensor.data_ptr() != address:
                return False
        return True


def _ptr(tensor: torch.Tensor | None) -> int | None:
    return None if tensor is None else tensor.data_ptr()


def _kind(values: torch.Tensor, layer: nn.Module) -> int:
    """The kernel's matrix kind: float32, or the QuantizedLinear's own (Q8_0 0, Q4_0 1, Q4_1 2)."""
    return KIND_F32 if values.dtype is torch.float32 else layer._kind


def _matrices(entries: list[tuple]) -> ctypes.Array:
    """The kernel's description of ``(kind, rows, values, scales, mins, bias)`` entries (tensors or None)."""
    matrices = (kernels.Matrix * len(entries))()
    for slot, (kind, rows, *tensors) in zip(matrices, entries):
        slot.kind, slot.rows = kind, rows
        slot.values, slot.scales, slot.mins, slot.bias = (_ptr(t) for t in tensors)
    return matrices


def _usable(tensor: torch.Tensor, dtype: torch.dtype | None = None) -> bool:
    return tensor.device.type == "cpu" and tensor.is_contiguous() and (dtype is None or tensor.dtype is dtype)


def _layer_tensors(layer: nn.Module, in_features: int) -> list[tuple[dict, str, torch.Tensor | None]] | None:
    """``(owner, key, tensor)`` for values, scales, mins and bias of a layer the kernel can read, or None."""
    if layer._forward_hooks or layer._forward_pre_hooks or layer.in_features != in_features:
        return None
    params, buffers = layer._parameters, layer._buffers
    bias = params.get("bias")
    if bias is not None and not _usable(bias, torch.float32):
        return None
    if type(layer) is nn.Linear:
        weight = params["weight"]
        if not _usable(weight, torch.float32):
            return None
        return [(params, "weight", weight), (params, "", None), (params, "", None), (params, "bias", bias)]
    if getattr(layer, "native_matvec", False) and _usable(buffers["qweight"]):
        return [(buffers, key, buffers[key]) for key in ("qweight", "scales", "mins")] + [(params, "bias", bias)]
    return None


_plans: dict[tuple[int, ...], _Plan] = {}
_MAX_PLANS = 4096


def _plan_for(layers: Sequence[nn.Module], in_features: int) -> _Plan | None:
    key = tuple(map(id, layers))
    plan = _plans.get(key)
    if plan is not None and plan.in_features == in_features and plan.still_valid(layers):
        return plan
    tensors: list[tuple[dict, str, torch.Tensor | None]] = []
    for layer in layers:
        found = _layer_tensors(layer, in_features)
        if found is None:
            return None
        tensors.extend(found)
    if len(_plans) >= _MAX_PLANS:  # plans of freed models: start over rather than grow without bound
        _plans.clear()
    plan = _plans[key] = _Plan(layers, tensors)
    return plan


_global_hooks = (
    nn.modules.module._global_forward_hooks,
    nn.modules.module._global_forward_pre_hooks,
)
_is_compiling = torch.compiler.is_compiling


def native_project(x: torch.Tensor, layers: Sequence[nn.Module]) -> tuple[torch.Tensor, ...] | None:
    """The native path of :func:`project`; None where it does not apply."""
    # This runs about four times per layer for every decoded token: the checks are ordered and chosen
    # for cost (x.is_cpu, not x.device; narrow views, not Tensor.split).
    if _is_compiling():
        return _traced_project(x, layers)
    if (
        x.dtype is not torch.float32
        or not x.is_cpu
        or x.shape[-1] != x.numel()
        or not x.is_contiguous()
        or any(_global_hooks)
    ):
        return None
    if torch.is_grad_enabled() and (x.requires_grad or _needs_grad(layers)):
        return None
    library = kernels.library()
    if library is None:
        return None
    plan = _plan_for(layers, x.shape[-1])
    if plan is None:
        return None
    out = torch.empty((*x.shape[:-1], plan.total))
    threads = plan.thread_choice.threads(torch.get_num_threads() if plan.work >= PARALLEL_MIN_WORK else 1)
    start = time.perf_counter()
    status = library.bm_matvec(
        x.data_ptr(), plan.in_features, plan.matrices, plan.count, out.data_ptr(), threads, _quantize_activations
    )
    plan.thread_choice.record(threads, time.perf_counter() - start)
    if status != 0:
        raise MemoryError("the native matvec kernel could not allocate its scratch memory")
    if plan.count == 1:
        return (out,)
    return tuple([out.narrow(-1, start, size) for start, size in plan.slices])


def _needs_grad(layers: Sequence[nn.Module]) -> bool:
    return any(p.requires_grad for layer in layers for p in layer._parameters.values() if p is not None)


def project(x: torch.Tensor, layers: Sequence[nn.Module]) -> tuple[torch.Tensor, ...]:
    """Return ``layer(x)`` for each of ``layers`` (one native call when decoding one row)."""
    out = native_project(x, layers)
    return out if out is not None else tuple(layer(x) for layer in layers)


# ---------------------------------------------------------------- inside torch.compile
#
# A graph being compiled cannot call ctypes, so the kernel is registered as a custom operator that
# inductor calls as an opaque kernel; the rest of the decode step (norms, rotary, attention) is
# still fused around it. The operator receives the tensors themselves and builds (and caches) its
# ctypes description from their addresses at run time.

_SCALES, _MINS, _BIAS = 1, 2, 4


def _traced_project(x: torch.Tensor, layers: Sequence[nn.Module]) -> tuple[torch.Tensor, ...] | None:
    if x.dtype is not torch.float32 or x.device.type != "cpu" or x.shape[-1] != x.numel() or torch.is_grad_enabled():
        return None
    if kernels.loaded() is None:  # loading cannot happen while tracing: call native_matvec_available() before compiling
        return None
    tensors: list[torch.Tensor] = []
    kinds: list[int] = []
    flags: list[int] = []
    for layer in layers:
        found = _layer_tensors(layer, x.shape[-1])
        if found is None:
            return None
        (values, scales, mins, bias) = (t for _, _, t in found)
        kinds.append(_kind(values, layer))
        flags.append((_SCALES if scales is not None else 0) | (_MINS if mins is not None else 0) | (_BIAS if bias is not None else 0))
        tensors.extend(t for t in (values, scales, mins, bias) if t is not None)
    if all(kind == KIND_F32 for kind in kinds):
        return None  # float32 weights: inductor's own streamed reductions (decompose_mm_pass) are as fast
    sizes = [layer.out_features for layer in layers]
    out = torch.ops.bestiary.matvec(x.reshape(-1), tensors, kinds, flags, sizes, _quantize_activations)
    out = out.view(*x.shape[:-1], sum(sizes))
    return (out,) if len(sizes) == 1 else out.split(sizes, -1)


_op_plans: dict[tuple[int, ...], ctypes.Array] = {}


def _op_matrices(tensors: list[torch.Tensor], kinds: list[int], flags: list[int], sizes: list[int]) -> ctypes.Array:
    key = (*kinds, *flags, *sizes, *(t.data_ptr() for t in tensors))
    matrices = _op_plans.get(key)
    if matrices is None:
        if len(_op_plans) >= _MAX_PLANS:
            _op_plans.clear()
        remaining = iter(tensors)

        def optional(present: int) -> torch.Tensor | None:
            return next(remaining) if present else None

        matrices = _op_plans[key] = _matrices(
            [
                (kind, rows, next(remaining), optional(flag & _SCALES), optional(flag & _MINS), optional(flag & _BIAS))
                for kind, flag, rows in zip(kinds, flags, sizes)
            ]
        )
    return matrices


def _matvec_op(
    x: torch.Tensor, tensors: list[torch.Tensor], kinds: list[int], flags: list[int], sizes: list[int], int8: bool
) -> torch.Tensor:
    """One row ``x`` times each weight described by ``tensors``/``kinds``/``flags``, outputs concatenated."""
    library = kernels.library()
    x = x.contiguous()
    out = torch.empty(sum(sizes))
    threads = torch.get_num_threads() if sum(sizes) * x.shape[0] >= PARALLEL_MIN_WORK else 1
    matrices = _op_matrices(tensors, kinds, flags, sizes)
    if library is None or library.bm_matvec(x.data_ptr(), x.shape[0], matrices, len(kinds), out.data_ptr(), threads, int8):
        raise RuntimeError("the native matvec kernel is unavailable or could not allocate its scratch memory")
    return out


def _matvec_fake(
    x: torch.Tensor, tensors: list[torch.Tensor], kinds: list[int], flags: list[int], sizes: list[int], int8: bool
) -> torch.Tensor:
    return x.new_empty(sum(sizes))


# Registered with the plain operator library (a CPU kernel and a fake), not torch.library.custom_op, whose
# Python wrappers add 8-25 us per call (a q/k/v call of SmolLM2: 48-53 us against 56-62 us, 2 threads);
# a decode step makes about 120 of them.
_operators = torch.library.Library("bestiary", "DEF")
_operators.define("matvec(Tensor x, Tensor[] tensors, int[] kinds, int[] flags, int[] sizes, bool int8) -> Tensor")
_operators.impl("matvec", _matvec_op, "CPU")
torch.library.register_fake("bestiary::matvec", _matvec_fake, lib=_operators)
