"""Quantizing torch tensors to GGML types, byte for byte as the reference ``gguf.quants`` does.

:func:`quantize` returns the bytes a GGUF file stores: for block types a
``uint8`` tensor ``[..., bytes_per_row]``; for F32/F16 the values in that dtype;
for BF16 the raw ``uint8`` bytes (numpy has no bfloat16). Rounding follows the
reference step by step (float32 arithmetic, round-half-away-from-zero for
Q8_0, truncation after +0.5/+8.5 for Q4), so the bytes match exactly.
"""

from __future__ import annotations

import torch

from bestiary.errors import ConfigError

from .ggml_types import GGMLQuantizationType, block_layout, resolve_type

__all__ = ["quantize", "QUANTIZABLE_TYPES", "can_quantize"]

Q = GGMLQuantizationType
BLOCK = 32


def _fp16_bytes(values: torch.Tensor) -> torch.Tensor:
    """float32 ``[n, 1]`` to the two little-endian bytes of its float16, ``[n, 2]``."""
    return values.to(torch.float16).view(torch.uint8)


def _round_half_away(values: torch.Tensor) -> torch.Tensor:
    """Round to nearest, ties away from zero, in the reference's exact float32 steps."""
    magnitude = values.abs()
    floored = magnitude.floor()
    return values.sign() * (floored + (2 * (magnitude - floored)).floor())


def _inverse(scale: torch.Tensor) -> torch.Tensor:
    return torch.where(scale == 0, torch.zeros_like(scale), 1 / scale)


def _pack_nibbles(values: torch.Tensor) -> torch.Tensor:
    """``[n, 32]`` values 0..15 to ``[n, 16]`` bytes: first half in low nibbles, second in high."""
    values = values.to(torch.uint8)
    return values[:, :16] | (values[:, 16:] << 4)


def _q8_0(blocks: torch.Tensor) -> torch.Tensor:
    scale = blocks.abs().amax(dim=1, keepdim=True) / 127
    values = _round_half_away(blocks * _inverse(scale))
    return torch.cat([_fp16_bytes(scale), values.to(torch.int8).view(torch.uint8)], dim=1)


def _q4_0(blocks: torch.Tensor) -> torch.Tensor:
    largest = blocks.gather(1, blocks.abs().argmax(dim=1, keepdim=True))
    scale = largest / -8
    values = torch.trunc(blocks * _inverse(scale) + 8.5).clamp(0, 15)
    return torch.cat([_fp16_bytes(scale), _pack_nibbles(values)], dim=1)


def _q4_1(blocks: torch.Tensor) -> torch.Tensor:
    high = blocks.amax(dim=1, keepdim=True)
    low = blocks.amin(dim=1, keepdim=True)
    scale = (high - low) / 15
    values = torch.trunc((blocks - low) * _inverse(scale) + 0.5).clamp(0, 15)
    return torch.cat([_fp16_bytes(scale), _fp16_bytes(low), _pack_nibbles(values)], dim=1)


def _bf16(values: torch.Tensor) -> torch.Tensor:
    """Round float32 to bfloat16 (nearest even, NaN kept quiet) and return the bytes."""
    bits = values.contiguous().view(torch.int32).to(torch.int64) & 0xFFFFFFFF
    is_nan = (bits & 0x7FFFFFFF) > 0x7F800000
    bits = torch.where(is_nan, (bits & 0xFFFF0000) | (64 << 16), bits)
    rounded = (bits + (0x7FFF + ((bits >> 16) & 1))) >> 16
    return rounded.to(torch.int32).to(torch.int16).view(torch.uint8)


_BLOCK_QUANTIZERS = {Q.Q8_0: _q8_0, Q.Q4_0: _q4_0, Q.Q4_1: _q4_1}

QUANTIZABLE_TYPES: tuple[GGMLQuantizationType, ...] = (Q.F32, Q.F16, Q.BF16, *_BLOCK_QUANTIZERS)
"""GGML types that :func:`quantize` writes."""


def can_quantize(shape: tuple[int, ...] | torch.Size, ggml_type: GGMLQuantizationType | str) -> bool:
    """Return whether a tensor of ``shape`` fits ``ggml_type``'s blocks along its last dimension."""
    block_size, _ = block_layout(resolve_type(ggml_type))
    return len(shape) > 0 and shape[-1] % block_size == 0


def quantize(
    tensor: torch.Tensor, ggml_type: GGMLQuantizationType | str, *, name: str = "<unnamed>"
) -> torch.Tensor:
    """Return the GGUF bytes (or F32/F16 values) of ``tensor`` stored as ``ggml_type``."""
    ggml_type = resolve_type(ggml_type)
    values = tensor.detach().to("cpu", torch.float32).contiguous()
    if ggml_type == Q.F32:
        return values
    if ggml_type == Q.F16:
        return values.to(torch.float16)
    if ggml_type == Q.BF16:
        return _bf16(values).reshape(*values.shape[:-1], values.shape[-1] * 2)
    if ggml_type not in _BLOCK_QUANTIZERS:
        supported = ", ".join(t.name for t in QUANTIZABLE_TYPES)
        raise ConfigError(f"Cannot quantize tensor {name} to {ggml_type.name}; supported: {supported}.")
    if not can_quantize(values.shape, ggml_type):
        raise ConfigError(
            f"Cannot quantize tensor {name} of shape {tuple(values.shape)} to {ggml_type.name}: its last "
            f"dimension must be a multiple of {BLOCK}. Store it as F32 or F16 instead."
        )
    _, type_size = block_layout(ggml_type)
    blocks = _BLOCK_QUANTIZERS[ggml_type](values.reshape(-1, BLOCK))
    return blocks.reshape(*values.shape[:-1], values.shape[-1] // BLOCK * type_size)
