"""Rotary position embeddings and their scaling variants.

Supported ``rope_type`` values: default, linear, dynamic (NTK), llama3,
yarn and longrope. ``normalise_rope_parameters`` turns any of the config
spellings (transformers v5 ``rope_parameters``, or the older ``rope_theta`` +
``rope_scaling``) into one dict.
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import torch
from torch import nn

from bestiary.nn.rope_params import ROPE_TYPES, normalise_rope_parameters, validate_rope_parameters  # noqa: F401


def _base_inv_freq(base: float, dim: int, device: torch.device | str = "cpu") -> torch.Tensor:
    exponents = torch.arange(0, dim, 2, dtype=torch.int64, device=device).to(torch.float) / dim
    return 1.0 / (base**exponents)


def compute_inv_freq(
    params: dict[str, Any], head_dim: int, max_position_embeddings: int, seq_len: int | None = None
) -> tuple[torch.Tensor, float]:
    """Return (inverse frequencies, attention scaling) for ``params`` on the CPU."""
    rope_type = params["rope_type"]
    base = float(params["rope_theta"])
    dim = int(head_dim * params.get("partial_rotary_factor", 1.0))
    if rope_type == "default":
        return _base_inv_freq(base, dim), 1.0
    if rope_type == "linear":
        return _base_inv_freq(base, dim) / params["factor"], 1.0
    if rope_type == "dynamic":
        return _dynamic_inv_freq(params, base, dim, max_position_embeddings, seq_len), 1.0
    if rope_type == "llama3":
        return _llama3_inv_freq(params, base, dim), 1.0
    if rope_type == "yarn":
        return _yarn_inv_freq(params, base, dim, max_position_embeddings)
    return _longrope_inv_freq(params, base, dim, max_position_embeddings, seq_len)


def _dynamic_inv_freq(params: dict, base: float, dim: int, max_positions: int, seq_len: int | None) -> torch.Tensor:
    factor = params["factor"]
    seq_len = max(seq_len or max_positions, max_positions)
    scaled_base = base * ((factor * seq_len / max_positions) - (factor - 1)) ** (dim / (dim - 2))
    return _base_inv_freq(scaled_base, dim)


def _llama3_inv_freq(params: dict, base: float, dim: int) -> torch.Tensor:
    inv_freq = _base_inv_freq(base, dim)
    factor = params["factor"]
    low_freq_factor = params["low_freq_factor"]
    high_freq_factor = params["high_freq_factor"]
    old_context = params["original_max_position_embeddings"]
    low_freq_wavelen = old_context / low_freq_factor
    high_freq_wavelen = old_context / high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_context / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return torch.where(is_medium, smoothed, scaled)


def _yarn_mscale(scale: float, mscale: float = 1.0) -> float:
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def _yarn_inv_freq(params: dict, base: float, dim: int, max_positions: int) -> tuple[torch.Tensor, float]:
    original = params["original_max_position_embeddings"]
    factor = params.get("factor") or max_positions / original
    attention_factor = params.get("attention_factor")
    mscale, mscale_all_dim = params.get("mscale"), params.get("mscale_all_dim")
    if attention_factor is None:
        if mscale and mscale_all_dim:
            attention_factor = float(_yarn_mscale(factor, mscale) / _yarn_mscale(factor, mscale_all_dim))
        else:
            attention_factor = _yarn_mscale(factor)
    beta_fast = params.get("beta_fast") or 32
    beta_slow = params.get("beta_slow") or 1

    def correction_dim(rotations: float) -> float:
        return (dim * math.log(original / (rotations * 2 * math.pi))) / (2 * math.log(base))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if params.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    ramp = torch.clamp((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low), 0, 1)
    position_freqs = base ** (torch.arange(0, dim, 2).to(torch.float) / dim)
    extrapolation = 1.0 / position_freqs
    interpolation = 1.0 / (factor * position_freqs)
    extrapolation_weight = 1 - ramp
    inv_freq = interpolation * (1 - extrapolation_weight) + extrapolation * extrapolation_weight
    return inv_freq, attention_factor


def _longrope_inv_freq(
    params: dict, base: float, dim: int, max_positions: int, seq_len: int | None
) -> tuple[torch.Tensor, float]:
    original = params.get("original_max_position_embeddings") or max_positions
    factor = params.get("factor") or max_positions / original
    attention_factor = params.get("attention_factor")
    if attention_factor is None:
        attention_factor = 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(original))
    use_long = seq_len is not None and seq_len > original
    ext = torch.tensor(params["long_factor"] if use_long else params["short_factor"], dtype=torch.float32)
    exponents = torch.arange(0, dim, 2, dtype=torch.int64).float() / dim
    return 1.0 / (ext * base**exponents), attention_factor


class RotaryEmbedding(nn.Module):
    """Compute (cos, sin) for position ids; dynamic and longrope types adapt to the sequence length."""

    def __init__(self, rope_parameters: dict[str, Any], head_dim: int, max_position_embeddings: int) -> None:
        super().__init__()
        self.rope_parameters = rope_parameters
        self.rope_type = rope_parameters["rope_type"]
        self.head_dim = head_dim
        self.max_position_embeddings = max_position_embeddings
        inv_freq, self.attention_scaling = compute_inv_freq(rope_parameters, head_dim, max_position_embeddings)
        self.register_buffer("inv_freq", inv_freq.to("cpu"), persistent=False)
        self.register_buffer("original_inv_freq", inv_freq.clone().to("cpu"), persistent=False)
        self.max_seq_len_cached = max_position_embeddings

    def _refresh_for_length(self, seq_len: int) -> None:
        if self.rope_type == "dynamic":
            if seq_len > self.max_seq_len_cached:
                inv_freq, _ = compute_inv_freq(self.rope_parameters, self.head_dim, self.max_position_embeddings, seq_len)
                self.inv_freq = inv_freq.to(self.inv_freq.device)
                self.max_seq_len_cached = seq_len
            elif seq_len < self.max_position_embeddings < self.max_seq_len_cached:
                self.inv_freq = self.original_inv_freq.clone()
                self.max_seq_len_cached = self.max_position_embeddings
        elif self.rope_type == "longrope":
            inv_freq, _ = compute_inv_freq(self.rope_parameters, self.head_dim, self.max_position_embeddings, seq_len)
            self.inv_freq = inv_freq.to(self.inv_freq.device)

    @torch.no_grad()
    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.rope_type in {"dynamic", "longrope"}:
            self._refresh_for_length(int(position_ids.max()) + 1)
        freqs = position_ids[..., None].float() * self.inv_freq.to(device=x.device, dtype=torch.float)
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos(), emb.sin()
        if self.attention_scaling != 1.0:  # (multiplying by 1 would change nothing but cost two ops a step)
            cos, sin = cos * self.attention_scaling, sin * self.attention_scaling
        return cos.to(dtype=x.dtype), sin.to(dtype=x.dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """Rotate the two halves of the last dimension: (a, b) -> (-b, a)."""
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rotary(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply rotary embeddings to queries and keys shaped [batch, heads, seq, dim].

    ``cos`` and ``sin`` are a :class:`RotaryEmbedding`'s output ([batch, seq,
    rotary_dim]). With a partial rotary factor, only the first
    ``rotary_dim`` dims rotate.
    """
    factors = rotary_factors(cos, sin)
    return rotate(q, factors), rotate(k, factors)


class RotaryFactors(NamedTuple):
    """A step's rotary (cos, sin), prepared once for all layers by :func:`rotary_factors`."""

    cos: torch.Tensor  # [batch, 1, seq, rotary_dim]
    signed_sin: torch.Tensor  # sin with its first half negated, same shape
    matrix: torch.Tensor | None  # [batch, rotary_dim, rotary_dim] when each row has one position: x @ matrix rotates x


def rotary_factors(cos: torch.Tensor, sin: torch.Tensor) -> RotaryFactors:
    """Prepare a :class:`RotaryEmbedding`'s (cos, sin) [batch, seq, rotary_dim] once for every layer of a step.

    ``rotate_half(x) * sin`` equals ``x.roll(half, -1) * signed_sin`` bit for
    bit (only signs move), so with the sign folded into ``sin`` a rotation
    costs four tensor operations instead of seven. When decoding (one
    float32 position per row, eager), the rotation is also written as a
    matrix, with ``cos`` on the diagonal and ``signed_sin`` where each output
    takes its rotated partner from: one small matrix product per tensor,
    equal up to float32 rounding.
    """
    half = sin.shape[-1] // 2
    signed_sin = torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)
    matrix = None
    if cos.shape[1] == 1 and cos.dtype is torch.float32 and not torch.compiler.is_compiling():
        identity, partner = _rotation_pattern(cos.shape[-1], cos.device)
        matrix = identity * cos + partner * signed_sin  # [batch, 1, dim] broadcast over the rows
    return RotaryFactors(cos.unsqueeze(1), signed_sin.unsqueeze(1), matrix)


@functools.lru_cache(maxsize=16)
def _rotation_pattern(dim: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """[dim, dim] 0/1 matrices: the identity, and the one that moves each element ``dim // 2`` places right."""
    with torch.inference_mode(False):  # also usable where autograd records
        identity = torch.eye(dim, device=device)
        return identity, identity.roll(dim // 2, 1)


def rotate_heads(x: torch.Tensor, head_dim: int, factors: RotaryFactors) -> torch.Tensor:
    """Split projections [batch, seq, heads * head_dim] into heads [batch, heads, seq, head_dim] and rotate them."""
    batch, length, _ = x.shape
    matrix = factors.matrix
    if matrix is not None and matrix.shape[-1] == head_dim:  # one position per row: one product for all heads
        return torch.bmm(x.reshape(batch, -1, head_dim), matrix).view(batch, -1, 1, head_dim)
    return rotate(x.view(batch, length, -1, head_dim).transpose(1, 2), factors)


def rotate(x: torch.Tensor, factors: RotaryFactors) -> torch.Tensor:
    """``x * cos + rotate_half(x) * sin`` for ``x`` [batch, heads, seq, dim] (the first ``rotary_dim`` dims rotate)."""
    cos, signed_sin, matrix = factors
    rotary_dim = cos.shape[-1]
    if matrix is not None and rotary_dim == x.shape[-1]:
        batch, heads, _, dim = x.shape
        return torch.bmm(x.reshape(batch, heads, dim), matrix).view(batch, heads, 1, dim)
    if rotary_dim == x.shape[-1]:
        return x * cos + x.roll(rotary_dim // 2, -1) * signed_sin
    turned, kept = x[..., :rotary_dim], x[..., rotary_dim:]
    turned = turned * cos + turned.roll(rotary_dim // 2, -1) * signed_sin
    return torch.cat((turned, kept), dim=-1)
