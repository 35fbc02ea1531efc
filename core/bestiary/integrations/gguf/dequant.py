"""Dequantizing GGML tensors: native C decoders when they build here, else torch, whole blocks at a time.

The native decoders (:mod:`.dequant_native`: Q8_0, Q4_0, Q4_1, Q5_0, Q5_1,
Q4_K, Q5_K, Q6_K) read each block once and write float32 values straight into
the output tensor. The torch decoders (every supported type, and the fallback
when no C compiler is present) take a ``uint8`` tensor of blocks
``[n_blocks, type_size]`` and return float32 values ``[n_blocks, block_size]``.
Both follow the reference (``gguf.quants``) operation by operation, so results
agree with it bit for bit in float32. Large tensors are decoded in chunks of
blocks straight into an output tensor of the requested dtype, so float32
temporaries stay small.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import numpy as np
import torch

from bestiary.errors import CheckpointError

from .dequant_native import ENV_VAR as DEQUANT_ENV_VAR
from .dequant_native import NATIVE_TYPE_IDS, load_dequant_kernels
from .ggml_types import GGMLQuantizationType, block_layout, resolve_type

__all__ = ["dequantize", "native_decoder_available", "SUPPORTED_TYPES", "DEFAULT_CHUNK_ELEMENTS"]

Q = GGMLQuantizationType
BlockDecoder = Callable[[torch.Tensor], torch.Tensor]

DEFAULT_CHUNK_ELEMENTS = 1 << 22
"""Values decoded per step by the torch decoders (16 MB of float32 temporaries)."""

DECODE_THREADS: int | None = 1
"""Threads of the native decoders (None: ``torch.get_num_threads()``). Decoding is bound by memory
and page faults; on a busy 2-core machine a second thread made loading SmolLM2 1.8x slower."""

NATIVE_CHUNK_ELEMENTS = 1 << 16
"""Values decoded per step by the native decoders when the output is not float32 (256 KB, stays in cache)."""


def _half(blocks: torch.Tensor, offset: int) -> torch.Tensor:
    """Return the float16 stored at byte ``offset`` of every block, as float32 ``[n, 1]``."""
    return blocks[:, offset : offset + 2].contiguous().view(torch.float16).to(torch.float32)


def _shifts(*values: int) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.uint8)


def _nibbles(packed: torch.Tensor) -> torch.Tensor:
    """Split ``[n, 16]`` bytes into ``[n, 32]`` values: low nibbles first, then high nibbles."""
    return torch.cat([packed & 0x0F, packed >> 4], dim=1)


def _bits32(packed: torch.Tensor) -> torch.Tensor:
    """Return the 32 bits of a little-endian ``[n, 4]`` word as ``[n, 32]`` values 0/1."""
    bits = (packed.unsqueeze(-1) >> torch.arange(8, dtype=torch.uint8)) & 1
    return bits.reshape(packed.shape[0], 32)


def _q8_0(blocks: torch.Tensor) -> torch.Tensor:
    scale = _half(blocks, 0)
    return blocks[:, 2:].view(torch.int8).to(torch.float32) * scale


def _q4_0(blocks: torch.Tensor) -> torch.Tensor:
    scale = _half(blocks, 0)
    values = _nibbles(blocks[:, 2:18]).to(torch.int8) - 8
    return scale * values.to(torch.float32)


def _q4_1(blocks: torch.Tensor) -> torch.Tensor:
    scale, low = _half(blocks, 0), _half(blocks, 2)
    return scale * _nibbles(blocks[:, 4:20]).to(torch.float32) + low


def _q5_0(blocks: torch.Tensor) -> torch.Tensor:
    scale = _half(blocks, 0)
    values = _nibbles(blocks[:, 6:22]) | (_bits32(blocks[:, 2:6]) << 4)
    return scale * (values.to(torch.int8) - 16).to(torch.float32)


def _q5_1(blocks: torch.Tensor) -> torch.Tensor:
    scale, low = _half(blocks, 0), _half(blocks, 2)
    values = _nibbles(blocks[:, 8:24]) | (_bits32(blocks[:, 4:8]) << 4)
    return scale * values.to(torch.float32) + low


def _q2_k(blocks: torch.Tensor) -> torch.Tensor:
    n = blocks.shape[0]
    scales, packed = blocks[:, :16], blocks[:, 16:80]
    scale, scale_min = _half(blocks, 80), _half(blocks, 82)
    step = (scale * (scales & 0x0F).to(torch.float32)).reshape(n, 16, 1)
    low = (scale_min * (scales >> 4).to(torch.float32)).reshape(n, 16, 1)
    values = (packed.reshape(n, 2, 1, 32) >> _shifts(0, 2, 4, 6).reshape(1, 1, 4, 1)) & 3
    values = values.reshape(n, 16, 16).to(torch.float32)
    return (step * values - low).reshape(n, 256)


def _q3_k_scales(packed: torch.Tensor) -> torch.Tensor:
    """Unpack the sixteen 6-bit signed sub-block scales of Q3_K (12 bytes) to float32."""
    n = packed.shape[0]
    low = (packed[:, :8].reshape(n, 1, 8) >> _shifts(0, 4).reshape(1, 2, 1)).reshape(n, 16)
    high = (packed[:, 8:12].reshape(n, 1, 4) >> _shifts(0, 2, 4, 6).reshape(1, 4, 1)).reshape(n, 16)
    scales = (low & 0x0F) | ((high & 0x03) << 4)
    return (scales.to(torch.int8) - 32).to(torch.float32)


def _q3_k(blocks: torch.Tensor) -> torch.Tensor:
    n = blocks.shape[0]
    high_mask, packed = blocks[:, :32], blocks[:, 32:96]
    step = (_half(blocks, 108) * _q3_k_scales(blocks[:, 96:108])).reshape(n, 16, 1)
    low = (packed.reshape(n, 2, 1, 32) >> _shifts(0, 2, 4, 6).reshape(1, 1, 4, 1)).reshape(n, 16, 16) & 3
    high = (high_mask.reshape(n, 1, 1, 32) >> torch.arange(8, dtype=torch.uint8).reshape(1, 1, 8, 1))
    high = (high.reshape(n, 16, 16) & 1) ^ 1  # a set bit means "no offset"
    values = (low.to(torch.int8) - (high << 2).to(torch.int8)).to(torch.float32)
    return (step * values).reshape(n, 256)


def _k_scale_min(packed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Unpack the eight 6-bit scales and eight 6-bit mins of Q4_K/Q5_K (12 bytes)."""
    n = packed.shape[0]
    grouped = packed.reshape(n, 3, 4)
    first, second, third = grouped[:, 0], grouped[:, 1], grouped[:, 2]
    scales = torch.cat([first & 0x3F, (third & 0x0F) | ((first >> 2) & 0x30)], dim=-1)
    mins = torch.cat([second & 0x3F, (third >> 4) | ((second >> 2) & 0x30)], dim=-1)
    return scales, mins


def _k_steps(blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    n = blocks.shape[0]
    scales, mins = _k_scale_min(blocks[:, 4:16])
    step = (_half(blocks, 0) * scales.to(torch.float32)).reshape(n, 8, 1)
    low = (_half(blocks, 2) * mins.to(torch.float32)).reshape(n, 8, 1)
    return step, low


def _low_high_nibbles(packed: torch.Tensor, groups: int) -> torch.Tensor:
    """``[n, groups*32]`` bytes to ``[n, 2*groups, 32]``: for each 32 bytes, low nibbles then high."""
    n = packed.shape[0]
    values = (packed.reshape(n, groups, 1, 32) >> _shifts(0, 4).reshape(1, 1, 2, 1)) & 0x0F
    return values.reshape(n, 2 * groups, 32)


def _q4_k(blocks: torch.Tensor) -> torch.Tensor:
    n = blocks.shape[0]
    step, low = _k_steps(blocks)
    values = _low_high_nibbles(blocks[:, 16:144], 4).to(torch.float32)
    return (step * values - low).reshape(n, 256)


def _q5_k(blocks: torch.Tensor) -> torch.Tensor:
    n = blocks.shape[0]
    step, low = _k_steps(blocks)
    high = blocks[:, 16:48].reshape(n, 1, 1, 32) >> torch.arange(8, dtype=torch.uint8).reshape(1, 1, 8, 1)
    high = (high & 1).reshape(n, 8, 32)
    values = (_low_high_nibbles(blocks[:, 48:176], 4) | (high << 4)).to(torch.float32)
    return (step * values - low).reshape(n, 256)


def _q6_k(blocks: torch.Tensor) -> torch.Tensor:
    n = blocks.shape[0]
    scales = blocks[:, 192:208].view(torch.int8).to(torch.float32)
    step = (_half(blocks, 208) * scales).reshape(n, 16, 1)
    low = (blocks[:, :128].reshape(n, 2, 1, 64) >> _shifts(0, 4).reshape(1, 1, 2, 1)) & 0x0F
    low = low.reshape(n, 8, 32)
    high = (blocks[:, 128:192].reshape(n, 2, 1, 32) >> _shifts(0, 2, 4, 6).reshape(1, 1, 4, 1)) & 0x03
    high = high.reshape(n, 8, 32)
    values = ((low | (high << 4)).to(torch.int8) - 32).reshape(n, 16, 16).to(torch.float32)
    return (step * values).reshape(n, 256)


_BLOCK_DECODERS: dict[GGMLQuantizationType, BlockDecoder] = {
    Q.Q8_0: _q8_0,
    Q.Q4_0: _q4_0,
    Q.Q4_1: _q4_1,
    Q.Q5_0: _q5_0,
    Q.Q5_1: _q5_1,
    Q.Q2_K: _q2_k,
    Q.Q3_K: _q3_k,
    Q.Q4_K: _q4_k,
    Q.Q5_K: _q5_k,
    Q.Q6_K: _q6_k,
}

_FLOAT_STORAGE = {Q.F32: torch.float32, Q.F16: torch.float16, Q.BF16: torch.bfloat16}

SUPPORTED_TYPES: tuple[GGMLQuantizationType, ...] = (*_FLOAT_STORAGE, *_BLOCK_DECODERS)
"""GGML types that :func:`dequantize` decodes."""


def _as_bytes(raw: torch.Tensor | np.ndarray) -> torch.Tensor:
    if isinstance(raw, np.ndarray):
        raw = torch.from_numpy(np.ascontiguousarray(raw).reshape(-1).view(np.uint8))
    if raw.dtype != torch.uint8:
        raw = raw.contiguous().view(torch.uint8)
    return raw.reshape(-1)


def _unsupported(name: str, ggml_type: GGMLQuantizationType) -> CheckpointError:
    supported = ", ".join(t.name for t in SUPPORTED_TYPES)
    return CheckpointError(
        f"Tensor {name} has GGML type {ggml_type.name}, which bestiary cannot dequantize yet. "
        f"Supported types: {supported}. Re-quantize the model to one of them (llama.cpp's "
        "llama-quantize does this)."
    )


def dequantize(
    raw: torch.Tensor | np.ndarray,
    ggml_type: GGMLQuantizationType | str | int,
    shape: Sequence[int],
    *,
    dtype: torch.dtype | None = None,
    name: str = "<unnamed>",
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
    native: bool | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Return the values of a GGML tensor as a ``dtype`` tensor (float32 by default) of ``shape``.

    ``raw`` holds the tensor's bytes as stored in the file (any dtype; it is
    reinterpreted as bytes). ``name`` is used in error messages. ``native``
    forces (True) or forbids (False) the C decoders; by default they are used
    when they build here. ``out``, a contiguous tensor of ``shape`` and
    ``dtype``, receives the values instead of a new tensor. Float storage types
    (F32, F16, BF16) converted to their own dtype return a view of ``raw``.
    """
    ggml_type = resolve_type(ggml_type)
    dtype = dtype or torch.float32
    shape = tuple(int(dim) for dim in shape)
    data = _as_bytes(raw)
    n_elements = math.prod(shape)
    if ggml_type not in SUPPORTED_TYPES:
        raise _unsupported(name, ggml_type)
    block_size, type_size = block_layout(ggml_type)
    expected = n_elements // block_size * type_size
    if n_elements % block_size or data.numel() != expected:
        raise CheckpointError(
            f"Tensor {name}: {data.numel()} bytes of {ggml_type.name} do not hold shape {shape} "
            f"({expected} bytes expected, blocks of {block_size} values); the file is corrupt."
        )
    if out is not None and (tuple(out.shape) != shape or out.dtype != dtype or not out.is_contiguous()):
        raise CheckpointError(
            f"Tensor {name}: out= must be a contiguous {dtype} tensor of shape {shape}, "
            f"got {out.dtype} {tuple(out.shape)}."
        )
    if ggml_type in _FLOAT_STORAGE:
        values = data.view(_FLOAT_STORAGE[ggml_type]).reshape(shape)
        return values.to(dtype) if out is None else out.copy_(values)
    blocks = data.view(-1, type_size)
    kernels = _native_kernels(ggml_type, native, name)
    if kernels is not None:
        return _decode_native(kernels, blocks, ggml_type, block_size, dtype, out, name).reshape(shape)
    decoded = _decode_blocks(blocks, _BLOCK_DECODERS[ggml_type], block_size, dtype, chunk_elements, out)
    return decoded.reshape(shape)


def native_decoder_available(ggml_type: GGMLQuantizationType | str | int) -> bool:
    """Return whether ``ggml_type`` is decoded by the native C decoders on this machine."""
    return _native_kernels(resolve_type(ggml_type), None, "<probe>") is not None


def _native_kernels(ggml_type: GGMLQuantizationType, native: bool | None, name: str) -> Any:
    if native is False or ggml_type.name not in NATIVE_TYPE_IDS:
        if native:
            raise CheckpointError(f"Tensor {name}: no native decoder for {ggml_type.name}; pass native=None.")
        return None
    kernels = load_dequant_kernels()
    if kernels is None and native:
        raise CheckpointError(
            f"Tensor {name}: native GGUF decoders are unavailable here (no C compiler, a failed build, "
            f"or {DEQUANT_ENV_VAR}=torch); pass native=None to use torch."
        )
    return kernels


def _decode_native(
    kernels: Any,
    blocks: torch.Tensor,
    ggml_type: GGMLQuantizationType,
    block_size: int,
    dtype: torch.dtype,
    out: torch.Tensor | None,
    name: str,
) -> torch.Tensor:
    """Decode ``blocks`` with the C decoder into ``out`` (or a new tensor), chunk by chunk for non-float32."""
    n_blocks, type_size = blocks.shape
    type_id = NATIVE_TYPE_IDS[ggml_type.name]
    threads = DECODE_THREADS if DECODE_THREADS is not None else torch.get_num_threads()
    blocks = blocks.contiguous()
    result = out.view(-1) if out is not None else torch.empty(n_blocks * block_size, dtype=dtype)
    if n_blocks == 0:
        return result
    if dtype == torch.float32:
        status = kernels.dequantize(type_id, blocks.data_ptr(), n_blocks, result.data_ptr(), threads)
    else:
        step = max(1, NATIVE_CHUNK_ELEMENTS // block_size)
        scratch = torch.empty(min(step, n_blocks) * block_size, dtype=torch.float32)
        status = 0
        for start in range(0, n_blocks, step):
            count = min(step, n_blocks - start)
            status |= kernels.dequantize(
                type_id, blocks[start].data_ptr(), count, scratch.data_ptr(), threads if count >= 4096 else 1
            )
            result[start * block_size : (start + count) * block_size].copy_(scratch[: count * block_size])
    if status != 0:
        raise CheckpointError(f"Tensor {name}: the native decoder rejected GGML type {ggml_type.name}.")
    return result


def _decode_blocks(
    blocks: torch.Tensor,
    decoder: BlockDecoder,
    block_size: int,
    dtype: torch.dtype,
    chunk_elements: int,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    n_blocks = blocks.shape[0]
    step = max(1, chunk_elements // block_size)
    if out is not None:
        out = out.view(n_blocks, block_size)
    elif n_blocks <= step:
        return decoder(blocks).to(dtype).reshape(-1)
    else:
        out = torch.empty(n_blocks, block_size, dtype=dtype)
    for start in range(0, n_blocks, step):
        out[start : start + step] = decoder(blocks[start : start + step])
    return out.reshape(-1)
