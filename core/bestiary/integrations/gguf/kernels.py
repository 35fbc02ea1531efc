"""Matrix products with block-quantized weights (Q8_0, Q4_0, Q4_1) kept packed in memory.

Backends, chosen by :func:`set_kernel_backend` or ``BESTIARY_GGUF_KERNELS``:

- ``"native"``: C kernels (:mod:`.native`) that dequantize a block in registers
  and multiply it at once; used for up to :data:`NATIVE_MAX_ROWS` input rows
  (decoding). More rows (prefill) are served by dequantizing chunks of weight
  rows with the native dequantizer and multiplying with torch's GEMM.
- ``"compile"``: the torch formula compiled by ``torch.compile`` (inductor);
  falls back to ``"eager"`` if compiling fails.
- ``"eager"``: plain torch; weight rows are dequantized chunk by chunk (never
  the whole matrix at once) and multiplied.
- ``"auto"`` (default): ``"native"`` if the C kernels build here, else ``"eager"``.

All backends accumulate in float32 and agree with "dequantize, then matmul"
to float32 rounding. Inside a graph being compiled by ``torch.compile`` the
plain torch formula is used, so whole-model compilation fuses it.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Callable

import torch

from bestiary.errors import ConfigError

from .ggml_types import GGMLQuantizationType, resolve_type
from .native import KIND_Q4_0, KIND_Q4_1, KIND_Q8_0, NativeKernels, cache_dir, load_native_kernels

__all__ = [
    "BACKENDS",
    "NATIVE_MAX_ROWS",
    "kernel_backend",
    "native_backend_active",
    "set_kernel_backend",
    "quantized_matmul",
    "packed_matmul",
    "dequantize_packed",
    "pack_q4_values",
    "q4_values",
    "KINDS",
]

logger = logging.getLogger(__name__)

Q = GGMLQuantizationType
KINDS: dict[GGMLQuantizationType, int] = {Q.Q8_0: KIND_Q8_0, Q.Q4_0: KIND_Q4_0, Q.Q4_1: KIND_Q4_1}
BACKENDS = ("auto", "native", "compile", "eager")
ENV_VAR = "BESTIARY_GGUF_KERNELS"
NATIVE_MAX_ROWS = 8
"""Input rows up to which the fused native kernel is used; beyond, dequantize chunks + GEMM."""
PARALLEL_MIN_WORK = 1 << 18
"""Multiply-adds below which the native kernel runs on one thread: small products gain little
from a second thread, and on a busy machine waiting for a preempted one costs milliseconds."""
CHUNK_ELEMENTS = 1 << 21
"""Weight values dequantized per step by the chunked path (8 MB of float32)."""

_state_lock = threading.Lock()
_requested: str | None = None
_resolved: str | None = None
_compiled: dict[str, Callable[..., torch.Tensor]] = {}
_native_kernels: NativeKernels | None = None  # set while the resolved backend is "native"
_threads = 1


def set_kernel_backend(name: str) -> None:
    """Choose the backend for quantized layers: ``"auto"``, ``"native"``, ``"compile"`` or ``"eager"``."""
    if name not in BACKENDS:
        raise ConfigError(f"Unknown GGUF kernel backend {name!r}; choose one of {BACKENDS}.")
    global _requested, _resolved, _native_kernels
    with _state_lock:
        _requested, _resolved, _native_kernels = name, None, None


def kernel_backend() -> str:
    """Return the backend in use: ``"native"``, ``"compile"`` or ``"eager"`` (``"auto"`` resolved)."""
    global _resolved, _native_kernels
    if _resolved is not None:
        return _resolved
    with _state_lock:
        requested = _requested or os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
        if requested not in BACKENDS:
            logger.warning("%s=%r is not one of %s; using 'auto'", ENV_VAR, requested, BACKENDS)
            requested = "auto"
        if requested in ("auto", "native"):
            resolved = "native" if load_native_kernels() is not None else "eager"
            if requested == "native" and resolved != "native":
                logger.warning("Native GGUF kernels were requested but are unavailable; using eager torch.")
        else:
            resolved = requested
        _native_kernels = load_native_kernels() if resolved == "native" else None
        _resolved = resolved
        return resolved


def native_backend_active() -> bool:
    """Whether the resolved backend is ``"native"`` (so single rows may use :mod:`bestiary.nn.projection`)."""
    return _native_kernels is not None


def _native() -> NativeKernels:
    if _native_kernels is None:
        raise RuntimeError("native GGUF kernels are not loaded")
    return _native_kernels


def _ptr(tensor: torch.Tensor | None) -> int | None:
    return tensor.data_ptr() if tensor is not None else None


# ---------------------------------------------------------------- torch formulas


_NIBBLE_SHIFTS = torch.arange(0, 32, 4, dtype=torch.int64).view(1, 1, 8, 1)


def q4_values(words: torch.Tensor) -> torch.Tensor:
    """Unpack interleaved Q4 words ``[rows, 8 * groups]`` to values 0..15, ``[rows, 2 * groups, 32]``.

    Nibble ``v`` of word ``L`` of a group is the group's value ``8v + L`` (see :mod:`.native_source`).
    """
    rows = words.shape[0]
    grouped = (words.to(torch.int64) & 0xFFFFFFFF).view(rows, -1, 1, 8)
    values = (grouped >> _NIBBLE_SHIFTS) & 0x0F  # [rows, groups, v, lane]
    return values.view(rows, -1, 32)


def dequantize_packed(
    kind: int, values: torch.Tensor, scales: torch.Tensor, mins: torch.Tensor | None, cols: int | None = None
) -> torch.Tensor:
    """Return float32 weights ``[rows, cols]`` from packed rows (plain torch; traceable by torch.compile).

    The arithmetic is GGUF's (``scale * q`` for Q8_0, ``scale * (q - 8)`` for Q4_0,
    ``scale * q + min`` for Q4_1), so the values equal ``gguf.quants.dequantize``.
    """
    rows = values.shape[0]
    scale = scales.to(torch.float32).unsqueeze(-1)
    if kind == KIND_Q8_0:
        return (values.view(rows, -1, 32).to(torch.float32) * scale).reshape(rows, -1)
    cols = cols or scales.shape[1] * 32
    nibbles = q4_values(values)
    if kind == KIND_Q4_0:
        weight = scale * (nibbles - 8).to(torch.float32)
    else:
        if mins is None:
            raise ValueError("Q4_1 weights need their block minimums (mins)")
        weight = scale * nibbles.to(torch.float32) + mins.to(torch.float32).unsqueeze(-1)
    return weight.reshape(rows, -1)[:, :cols]


def pack_q4_values(values: torch.Tensor) -> torch.Tensor:
    """Interleave values 0..15 ``[rows, blocks, 32]`` into int32 words ``[rows, 8 * groups]``."""
    rows, blocks = values.shape[:2]
    if blocks % 2:
        values = torch.cat([values, values.new_zeros(rows, 1, 32)], dim=1)
    grouped = values.to(torch.int32).reshape(rows, -1, 8, 8)  # [rows, groups, v, lane]
    words = grouped[:, :, 0].clone()
    for v in range(1, 8):  # int32 shifts wrap, so nibble 7 lands in the sign bit as intended
        words |= grouped[:, :, v] << (4 * v)
    return words.reshape(rows, -1)


def _fused_torch_matmul(
    x: torch.Tensor, kind: int, values: torch.Tensor, scales: torch.Tensor, mins: torch.Tensor | None
) -> torch.Tensor:
    """``x @ W.T`` as one expression, which inductor fuses into a single reduction."""
    weight = dequantize_packed(kind, values, scales, mins, x.shape[1])
    return (x.unsqueeze(1) * weight.unsqueeze(0)).sum(dim=-1)


def _compiled_matmul() -> Callable[..., torch.Tensor] | None:
    if "matmul" in _compiled:
        return _compiled["matmul"]
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache_dir() / "inductor"))
    try:
        compiled = torch.compile(_fused_torch_matmul, dynamic=False)
    except Exception as error:  # torch.compile is unavailable on some platforms
        logger.warning("torch.compile unavailable for GGUF kernels (%s); using eager torch.", error)
        compiled = None
    _compiled["matmul"] = compiled
    return compiled


# ---------------------------------------------------------------- dispatch


def _dequantize_rows(
    kind: int, values: torch.Tensor, scales: torch.Tensor, mins: torch.Tensor | None, k: int, start: int, stop: int,
    native: bool,
) -> torch.Tensor:
    if not native:
        return dequantize_packed(
            kind, values[start:stop], scales[start:stop], None if mins is None else mins[start:stop], k
        )
    out = torch.empty(stop - start, k, dtype=torch.float32)
    _native().dequantize(
        kind, _ptr(values), _ptr(scales), _ptr(mins), start, stop - start, k, _ptr(out), torch.get_num_threads()
    )
    return out


def _chunked_matmul(
    x: torch.Tensor, kind: int, values: torch.Tensor, scales: torch.Tensor, mins: torch.Tensor | None, native: bool
) -> torch.Tensor:
    rows, k = values.shape[0], x.shape[1]
    step = max(1, CHUNK_ELEMENTS // k)
    if rows <= step:
        return x @ _dequantize_rows(kind, values, scales, mins, k, 0, rows, native).T
    out = torch.empty(x.shape[0], rows, dtype=torch.float32)
    for start in range(0, rows, step):
        stop = min(rows, start + step)
        torch.mm(x, _dequantize_rows(kind, values, scales, mins, k, start, stop, native).T, out=out[:, start:stop])
    return out


def _native_matmul(
    x: torch.Tensor, kind: int, values: torch.Tensor, scales: torch.Tensor, mins: torch.Tensor | None
) -> torch.Tensor:
    rows, (m, k) = values.shape[0], x.shape
    out = torch.empty(m, rows)
    threads = _threads if m * k * rows >= PARALLEL_MIN_WORK else 1
    status = _native().matmul(
        kind, x.data_ptr(), m, k, values.data_ptr(), scales.data_ptr(), None if mins is None else mins.data_ptr(),
        rows, out.data_ptr(), threads,
    )
    if status != 0:
        raise MemoryError("native GGUF matmul could not allocate its scratch memory")
    return out


def packed_matmul(
    x: torch.Tensor, kind: int, values: torch.Tensor, scales: torch.Tensor, mins: torch.Tensor | None
) -> torch.Tensor:
    """:func:`quantized_matmul` with the kernel kind already resolved (the layers' per-call path).

    Decoding-sized float32 CPU inputs go straight to the native kernel; the checks
    are ordered cheapest first because this runs for every layer of every token.
    """
    global _threads
    if (
        _native_kernels is not None
        and x.shape[0] <= NATIVE_MAX_ROWS
        and x.dtype is torch.float32
        and not x.is_cuda
        and not torch.compiler.is_compiling()
        and x.is_contiguous()
    ):
        _threads = torch.get_num_threads()
        return _native_matmul(x, kind, values, scales, mins)
    return _dispatch(x, kind, values, scales, mins)


def quantized_matmul(
    x: torch.Tensor,
    ggml_type: GGMLQuantizationType | str,
    values: torch.Tensor,
    scales: torch.Tensor,
    mins: torch.Tensor | None = None,
) -> torch.Tensor:
    """Return float32 ``x @ W.T`` for ``x`` ``[M, K]`` and a packed weight ``W`` ``[N, K]``.

    ``values``: int8 ``[N, K]`` (Q8_0) or uint8 ``[N, K/2]`` (Q4_0/Q4_1);
    ``scales`` and ``mins`` (Q4_1 only): float16 ``[N, K/32]``.
    """
    kernel_backend()
    return packed_matmul(x, KINDS[resolve_type(ggml_type)], values, scales, mins)


def _dispatch(
    x: torch.Tensor, kind: int, values: torch.Tensor, scales: torch.Tensor, mins: torch.Tensor | None
) -> torch.Tensor:
    x = x.to(torch.float32)
    if torch.compiler.is_compiling():
        return x @ dequantize_packed(kind, values, scales, mins, x.shape[1]).T
    x = x.contiguous()
    on_cpu = x.device.type == "cpu" and values.device.type == "cpu"
    backend = kernel_backend() if on_cpu else "eager"
    if backend == "native":
        if x.shape[0] <= NATIVE_MAX_ROWS:
            return _native_matmul(x, kind, values, scales, mins)
        return _chunked_matmul(x, kind, values, scales, mins, native=True)
    if backend == "compile" and x.shape[0] <= NATIVE_MAX_ROWS:
        compiled = _compiled_matmul()
        if compiled is not None:
            try:
                return compiled(x, kind, values, scales, mins)
            except Exception as error:
                logger.warning("torch.compile of the GGUF kernel failed (%s); using eager torch.", error)
                _compiled["matmul"] = None
    if not on_cpu:
        return x @ dequantize_packed(kind, values, scales, mins, x.shape[1]).T
    return _chunked_matmul(x, kind, values, scales, mins, native=False)
