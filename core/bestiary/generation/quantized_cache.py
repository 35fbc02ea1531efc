"""``QuantizedCache``: keys and values stored as int8 or int4, with a full-precision residual window.

Each layer keeps its most recent tokens (up to ``residual_length``) in full
precision. When the residual window fills, its tokens are quantized and
appended to the quantized store; nothing is quantized twice. Quantization
is asymmetric min-max over groups of ``q_group_size`` channels of each
token and head (one scale and one offset per group); int4 values are packed
two per byte. Attention reads the dequantized store followed by the
residual window, so memory shrinks about 4x (int8) or 8x (int4) relative
to float32 at a small accuracy cost; with ``residual_length`` at least the
sequence length nothing is quantized and results equal the dynamic cache.
"""

from __future__ import annotations

import torch

from bestiary.errors import GenerationError
from bestiary.generation.cache import Cache, DynamicCache


def quantize(x: torch.Tensor, nbits: int, group_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Quantize ``x`` [..., dim] per group of ``group_size`` channels; return (codes uint8, scale, offset)."""
    dim = x.shape[-1]
    if dim % group_size:
        raise GenerationError(f"q_group_size ({group_size}) must divide the head dimension ({dim}).")
    groups = x.float().reshape(*x.shape[:-1], dim // group_size, group_size)
    low = groups.amin(dim=-1, keepdim=True)
    high = groups.amax(dim=-1, keepdim=True)
    levels = 2**nbits - 1
    scale = ((high - low) / levels).clamp(min=1e-8)
    codes = torch.round((groups - low) / scale).clamp(0, levels).to(torch.uint8).reshape(x.shape)
    if nbits == 4:
        codes = codes[..., 0::2] | (codes[..., 1::2] << 4)
    return codes, scale, low


def dequantize(codes: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor, nbits: int, dtype: torch.dtype) -> torch.Tensor:
    """Inverse of :func:`quantize` (up to rounding)."""
    if nbits == 4:
        codes = torch.stack([codes & 0x0F, codes >> 4], dim=-1).reshape(*codes.shape[:-1], codes.shape[-1] * 2)
    groups = codes.reshape(*scale.shape[:-1], -1).float()
    return (groups * scale + offset).reshape(codes.shape).to(dtype)


class QuantizedCache(Cache):
    """A cache storing old keys/values as ``nbits`` (8 or 4) integers and the last ``residual_length`` in full precision."""

    def __init__(self, nbits: int = 8, residual_length: int = 128, q_group_size: int = 64) -> None:
        if nbits not in (4, 8):
            raise GenerationError(f"QuantizedCache supports nbits=8 or nbits=4, got {nbits}.")
        if residual_length < 1:
            raise GenerationError(f"residual_length must be at least 1, got {residual_length}.")
        if q_group_size < 1 or (nbits == 4 and q_group_size % 2):
            raise GenerationError(f"q_group_size must be a positive (even, for int4) number of channels, got {q_group_size}.")
        self.nbits = nbits
        self.residual_length = residual_length
        self.q_group_size = q_group_size
        self._residual = DynamicCache()
        self._stores: list[list[tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]]] = []
        self._quantized_length: list[int] = []

    def _group_size(self, dim: int) -> int:
        return min(self.q_group_size, dim)

    def _dequantized(self, layer_idx: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor] | None:
        chunks = self._stores[layer_idx]
        if not chunks:
            return None
        keys = [dequantize(*k, self.nbits, dtype) for k, _ in chunks]
        values = [dequantize(*v, self.nbits, dtype) for _, v in chunks]
        return torch.cat(keys, dim=2), torch.cat(values, dim=2)

    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        if layer_idx == len(self._stores):
            self._stores.append([])
            self._quantized_length.append(0)
        recent_keys, recent_values = self._residual.update(key, value, layer_idx)
        old = self._dequantized(layer_idx, key.dtype)
        if old is None:
            keys, values = recent_keys, recent_values
        else:
            keys = torch.cat([old[0], recent_keys], dim=2)
            values = torch.cat([old[1], recent_values], dim=2)
        if self._residual.get_seq_length(layer_idx) >= self.residual_length:
            group = self._group_size(key.shape[-1])
            self._stores[layer_idx].append(
                (quantize(recent_keys, self.nbits, group), quantize(recent_values, self.nbits, group))
            )
            self._quantized_length[layer_idx] += recent_keys.shape[2]
            keys, values = keys.clone(), values.clone()  # the residual buffer is reused below
            self._clear_residual(layer_idx)
        return keys, values

    def _clear_residual(self, layer_idx: int) -> None:
        self._residual._lengths[layer_idx] = 0

    def get_seq_length(self, layer_idx: int = 0) -> int:
        if layer_idx >= len(self._stores):
            return 0
        return self._quantized_length[layer_idx] + self._residual.get_seq_length(layer_idx)

    def quantized_length(self, layer_idx: int = 0) -> int:
        """How many tokens of ``layer_idx`` are stored quantized."""
        return self._quantized_length[layer_idx] if layer_idx < len(self._quantized_length) else 0

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self._residual.reorder_cache(beam_idx)
        self._stores = [
            [(tuple(t.index_select(0, beam_idx.to(t.device)) for t in k), tuple(t.index_select(0, beam_idx.to(t.device)) for t in v)) for k, v in chunks]
            for chunks in self._stores
        ]

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._residual.batch_repeat_interleave(repeats)
        self._stores = [
            [(tuple(t.repeat_interleave(repeats, 0) for t in k), tuple(t.repeat_interleave(repeats, 0) for t in v)) for k, v in chunks]
            for chunks in self._stores
        ]

    def crop(self, max_length: int) -> None:
        if max_length < 0:
            max_length = self.get_seq_length() + max_length
        for layer_idx, quantized in enumerate(self._quantized_length):
            if max_length < quantized:
                raise GenerationError(
                    "Cannot roll the quantized cache back into its quantized part; use a larger residual_length "
                    "or the dynamic cache for assisted decoding."
                )
            self._residual._lengths[layer_idx] = min(self._residual._lengths[layer_idx], max_length - quantized)

    def reset(self) -> None:
        self._residual.reset()
        self._stores, self._quantized_length = [], []


__all__ = ["QuantizedCache", "dequantize", "quantize"]
