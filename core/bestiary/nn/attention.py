"""Attention masks and the attention computation (SDPA, with an eager path).

Masks are built from absolute positions: each query has a cache position,
each key slot has the absolute position of the token it holds (given by the
cache, -1 for an empty slot). A key is visible to a query when it is filled,
not in the future, inside the sliding window (if any), and not padding
according to the 2D ``attention_mask`` (indexed by absolute position).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F


@dataclass
class AttentionMask:
    """What an attention layer needs: an additive mask, or the promise that plain causal is enough."""

    mask: torch.Tensor | None  # [batch, 1, q, kv] additive, or None
    is_causal: bool


def build_attention_mask(
    attention_mask: torch.Tensor | None,
    query_positions: torch.Tensor,
    key_positions: torch.Tensor,
    dtype: torch.dtype,
    *,
    sliding_window: int | None = None,
    causal: bool = True,
) -> AttentionMask:
    """Build the mask for queries at ``query_positions`` [q] over keys at ``key_positions`` [kv].

    ``attention_mask`` is the usual [batch, total_length] 1/0 padding mask
    over absolute positions (or None when nothing is padded).
    """
    q_len, kv_len = query_positions.shape[0], key_positions.shape[0]
    # The shortcut below reads tensor values on the host; under torch.compile that would break the
    # graph, so compiled code always builds the (equivalent) explicit mask.
    shortcut = not torch.compiler.is_compiling()
    no_padding = shortcut and (attention_mask is None or bool(attention_mask.all()))
    contiguous_keys = no_padding and kv_len > 0 and int(key_positions[0]) == 0 and int(key_positions[-1]) == kv_len - 1
    window_inactive = sliding_window is None or (shortcut and int(query_positions[-1]) < sliding_window)
    if no_padding and contiguous_keys and window_inactive:
        if not causal:
            return AttentionMask(None, False)
        if q_len == 1 or (q_len == kv_len and int(query_positions[0]) == 0):
            return AttentionMask(None, q_len > 1)
    allowed = key_positions[None, :] >= 0
    if causal:
        allowed = allowed & (key_positions[None, :] <= query_positions[:, None])
    if sliding_window is not None:
        allowed = allowed & (key_positions[None, :] > query_positions[:, None] - sliding_window)
    allowed = allowed[None, None]  # [1, 1, q, kv]
    if attention_mask is not None:
        padding = attention_mask.to(torch.bool)
        index = key_positions.clamp(min=0, max=padding.shape[1] - 1)
        allowed = allowed & padding[:, index][:, None, None, :]
    additive = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    additive.masked_fill_(~allowed, torch.finfo(dtype).min)
    return AttentionMask(additive, False)


def padding_mask_to_additive(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Turn a [batch, kv] 1/0 mask into an additive [batch, 1, 1, kv] mask (bidirectional encoders)."""
    additive = (1.0 - attention_mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min
    return additive


def split_heads(x: torch.Tensor, head_dim: int) -> torch.Tensor:
    """View [batch, seq, heads * head_dim] as [batch, heads, seq, head_dim]."""
    batch, length, _ = x.shape
    if length == 1:  # the same view, in one operation instead of two (this runs three times per layer and token)
        return x.view(batch, -1, 1, head_dim)
    return x.view(batch, length, -1, head_dim).transpose(1, 2)


def repeat_kv(states: torch.Tensor, groups: int) -> torch.Tensor:
    """Repeat key/value heads ``groups`` times: [b, kv_heads, s, d] -> [b, kv_heads*groups, s, d]."""
    if groups == 1:
        return states
    batch, heads, length, dim = states.shape
    return states[:, :, None].expand(batch, heads, groups, length, dim).reshape(batch, heads * groups, length, dim)


def _single_query_math(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None, scaling: float
) -> torch.Tensor:
    """Attention of one query per head written out, for compiled decode steps.

    Inductor fuses this into a few loops over the keys; the CPU SDPA kernel it would otherwise call
    costs about 120 us per layer over a 256-slot static cache (3.6 ms per token on a 30-layer model).
    """
    # Products as broadcast-and-sum (not matmul): inductor turns them into fused reductions instead of
    # calling a batched GEMM kernel for these tiny shapes.
    scores = (query.unsqueeze(-2) * key.unsqueeze(-3)).sum(-1) * scaling  # [batch, kv_heads, groups, keys]
    if mask is not None:
        scores = scores + mask
    weights = torch.softmax(scores, dim=-1)
    return (weights.unsqueeze(-1) * value.unsqueeze(-3)).sum(-2)


def attend(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: AttentionMask,
    *,
    scaling: float,
    dropout: float = 0.0,
    eager: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Attention over [batch, heads, seq, dim] tensors; keys/values may have fewer (grouped) heads.

    Returns (output [batch, q, heads, dim], contiguous; weights or None).
    The eager path computes and returns the attention weights.
    """
    groups = query.shape[1] // key.shape[1]
    if eager:
        key, value = repeat_kv(key, groups), repeat_kv(value, groups)
        scores = torch.matmul(query, key.transpose(2, 3)) * scaling
        if mask.mask is not None:
            scores = scores + mask.mask
        elif mask.is_causal:
            q_len, kv_len = scores.shape[-2:]
            future = torch.ones(q_len, kv_len, dtype=torch.bool, device=scores.device).triu(kv_len - q_len + 1)
            scores = scores.masked_fill(future, torch.finfo(scores.dtype).min)
        weights = F.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
        weights = F.dropout(weights, p=dropout)
        output = torch.matmul(weights, value)
        return output.transpose(1, 2).contiguous(), weights
    batch, heads, q_len, dim = query.shape
    shared_mask = mask.mask is None or mask.mask.shape[1] == 1
    if groups > 1 and q_len == 1 and shared_mask and not (mask.is_causal and mask.mask is None):
        # One query (decoding): the query heads sharing a key/value head become that head's query rows,
        # so keys and values are read as stored instead of copied `groups` times by repeat_kv. The mask,
        # [batch, 1, 1, kv], is the same for every row. Half the time of the repeat_kv path.
        grouped = query.reshape(batch, key.shape[1], groups, dim)
        if torch.compiler.is_compiling() and dropout == 0.0:
            output = _single_query_math(grouped, key, value, mask.mask, scaling)
        else:
            output = F.scaled_dot_product_attention(
                grouped, key, value, attn_mask=mask.mask, dropout_p=dropout, scale=scaling
            )
        return output.reshape(batch, 1, heads, dim), None
    if groups > 1:
        key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    output = F.scaled_dot_product_attention(
        query,
        key,
        value,
        attn_mask=mask.mask,
        dropout_p=dropout,
        is_causal=mask.is_causal and mask.mask is None,
        scale=scaling,
    )
    return output.transpose(1, 2).contiguous(), None
