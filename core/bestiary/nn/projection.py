"""Linear projections of one input by several layers, computed together when decoding.

    query, key, value = project(hidden_states, (attn.q_proj, attn.k_proj, attn.v_proj))

Equals ``tuple(layer(x) for layer in layers)``. When ``x`` is a single float32
row on the CPU, gradients are off, and every layer is a plain ``nn.Linear``
with a float32 weight or a GGUF ``QuantizedLinear``, all the products run in
one native call (:mod:`.matvec_source`): one parallel region instead of one
per layer, and about twice the memory bandwidth of a BLAS matrix-vector
product on small matrices. Anything else (a layer with hooks, a subclass,
another dtype or device, training) takes the plain path.

``BESTIARY_NATIVE_MATVEC=0`` turns the native path off.
"""

from __future__ import annotations

import ctypes
import logging
import os
import weakref
from collections.abc import Sequence

import torch
from torch import nn

from bestiary.nn.matvec_source import MATVEC_SOURCE

__all__ = ["project", "native_matvec_available"]

logger = logging.getLogger(__name__)

ENV_VAR = "BESTIARY_NATIVE_MATVEC"
KIND_F32 = 3
PARALLEL_MIN_WORK = 1 << 16
"""Multiply-adds below which one thread does the whole call (a second costs more than it saves)."""


class _Matrix(ctypes.Structure):
    _fields_ = [
        ("kind", ctypes.c_int64),
        ("rows", ctypes.c_int64),
        ("values", ctypes.c_void_p),
        ("scales", ctypes.c_void_p),
        ("mins", ctypes.c_void_p),
        ("bias", ctypes.c_void_p),
    ]


_library: ctypes.CDLL | None = None
_library_state = "unloaded"  # "unloaded" | "loaded" | "unavailable"


def _load_library() -> ctypes.CDLL | None:
    global _library, _library_state
    if _library_state == "unloaded":
        _library_state = "unavailable"
        if os.environ.get(ENV_VAR, "1").strip() not in ("0", "false", "no", "off"):
            from bestiary.native import compile_library

            built = compile_library("matvec", MATVEC_SOURCE)
            if built is not None and built[0].bm_supported():
                _library = built[0]
                _library.bm_matvec.restype = ctypes.c_int
                _library.bm_matvec.argtypes = [
                    ctypes.c_void_p, ctypes.c_int64, ctypes.POINTER(_Matrix), ctypes.c_int64, ctypes.c_void_p, ctypes.c_int
                ]
                _library_state = "loaded"
            elif built is not None:
                logger.info("Native matvec kernels need AVX2, FMA and F16C; decoding uses torch.")
    return _library


def native_matvec_available() -> bool:
    """Whether the native decoding kernels are built and usable on this machine."""
    return _load_library() is not None


class _Plan:
    """The ctypes description of a fixed tuple of layers, valid while their tensors stay put."""

    def __init__(self, layers: Sequence[nn.Module], tensors: list[torch.Tensor | None]) -> None:
        self.in_features = layers[0].in_features
        self.sizes = [layer.out_features for layer in layers]
        self.total = sum(self.sizes)
        self.work = self.total * self.in_features
        self.pointers = _pointers(tensors)
        self.matrices = (_Matrix * len(layers))()
        for slot, layer, (values, scales, mins, bias) in zip(self.matrices, layers, _groups_of_four(tensors)):
            slot.kind = KIND_F32 if values.dtype is torch.float32 else _quantized_kind(layer)
            slot.rows = layer.out_features
            slot.values, slot.scales, slot.mins, slot.bias = (_ptr(t) for t in (values, scales, mins, bias))


def _ptr(tensor: torch.Tensor | None) -> int | None:
    return None if tensor is None else tensor.data_ptr()


def _pointers(tensors: list[torch.Tensor | None]) -> tuple[int | None, ...]:
    return tuple(_ptr(t) for t in tensors)


def _groups_of_four(items: list) -> list[tuple]:
    return [tuple(items[i : i + 4]) for i in range(0, len(items), 4)]


def _quantized_kind(layer: nn.Module) -> int:
    return layer._kind  # QuantizedLinear's native kind (Q8_0 0, Q4_0 1, Q4_1 2)


def _layer_tensors(layer: nn.Module, in_features: int) -> tuple[torch.Tensor | None, ...] | None:
    """``(values, scales, mins, bias)`` of a layer the kernel can read, or None."""
    if layer._forward_hooks or layer._forward_pre_hooks or layer.in_features != in_features:
        return None
    params, buffers = layer._parameters, layer._buffers
    bias = params.get("bias")
    if bias is not None and (bias.dtype is not torch.float32 or bias.device.type != "cpu" or not bias.is_contiguous()):
        return None
    if type(layer) is nn.Linear:
        weight = params["weight"]
        if weight.dtype is not torch.float32 or weight.device.type != "cpu" or not weight.is_contiguous():
            return None
        return weight, None, None, bias
    if getattr(type(layer), "native_matvec", False):
        values = buffers["qweight"]
        if values.device.type != "cpu" or not values.is_contiguous():
            return None
        return values, buffers["scales"], buffers["mins"], bias
    return None


_plans: "weakref.WeakKeyDictionary[nn.Module, dict[tuple[int, ...], _Plan | None]]" = weakref.WeakKeyDictionary()


def _plan_for(layers: Sequence[nn.Module], in_features: int) -> _Plan | None:
    tensors: list[torch.Tensor | None] = []
    for layer in layers:
        found = _layer_tensors(layer, in_features)
        if found is None:
            return None
        tensors.extend(found)
    by_layers = _plans.get(layers[0])
    if by_layers is None:
        by_layers = _plans[layers[0]] = {}
    key = tuple(id(layer) for layer in layers)
    plan = by_layers.get(key)
    if plan is None or plan.pointers != _pointers(tensors):
        plan = by_layers[key] = _Plan(layers, tensors)
    return plan


def _fast_path_applies(x: torch.Tensor) -> bool:
    return (
        x.dtype is torch.float32
        and x.device.type == "cpu"
        and x.shape[-1] == x.numel()
        and x.is_contiguous()
        and not (torch.is_grad_enabled() and x.requires_grad)
        and not torch.compiler.is_compiling()
    )


_global_hooks = (
    nn.modules.module._global_forward_hooks,
    nn.modules.module._global_forward_pre_hooks,
)


def native_project(x: torch.Tensor, layers: Sequence[nn.Module]) -> tuple[torch.Tensor, ...] | None:
    """The native path of :func:`project`; None where it does not apply."""
    if not _fast_path_applies(x) or any(_global_hooks) or (torch.is_grad_enabled() and _needs_grad(layers)):
        return None
    library = _library if _library is not None else _load_library()
    if library is None:
        return None
    plan = _plan_for(layers, x.shape[-1])
    if plan is None:
        return None
    out = torch.empty(plan.total)
    threads = torch.get_num_threads() if plan.work >= PARALLEL_MIN_WORK else 1
    status = library.bm_matvec(x.data_ptr(), plan.in_features, plan.matrices, len(plan.sizes), out.data_ptr(), threads)
    if status != 0:
        raise MemoryError("the native matvec kernel could not allocate its scratch memory")
    lead = x.shape[:-1]
    if len(plan.sizes) == 1:
        return (out.view(*lead, plan.total),)
    return tuple(part.view(*lead, size) for part, size in zip(out.split(plan.sizes), plan.sizes))


def _needs_grad(layers: Sequence[nn.Module]) -> bool:
    return any(p.requires_grad for layer in layers for p in layer._parameters.values() if p is not None)


def project(x: torch.Tensor, layers: Sequence[nn.Module]) -> tuple[torch.Tensor, ...]:
    """Return ``layer(x)`` for each of ``layers`` (one native call when decoding one row)."""
    out = native_project(x, layers)
    return out if out is not None else tuple(layer(x) for layer in layers)
