"""The cheaper decode-time formulations of RMSNorm, rotary embeddings and grouped attention equal the plain ones."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from bestiary.nn.attention import AttentionMask, attend, repeat_kv
from bestiary.nn.norms import RMSNorm
from bestiary.nn.rope import apply_rotary, rotary_factors, rotate, rotate_half, rotate_heads


def plain_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """transformers' LlamaRMSNorm, written out."""
    hidden = x.to(torch.float32)
    hidden = hidden * torch.rsqrt(hidden.pow(2).mean(-1, keepdim=True) + eps)
    return weight * hidden.to(x.dtype)


@pytest.mark.parametrize("shape", [(1, 1, 576), (2, 7, 64), (3, 4096)])
def test_rms_norm_in_float32_is_the_plain_formula_bit_for_bit(shape):
    torch.manual_seed(0)
    norm = RMSNorm(shape[-1], eps=1e-5)
    norm.weight.data.normal_()
    for scale in (1e-3, 1.0, 1e3):
        x = torch.randn(shape) * scale
        assert torch.equal(norm(x), plain_rms_norm(x, norm.weight, 1e-5))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_rms_norm_in_half_precision_keeps_the_plain_formula(dtype):
    torch.manual_seed(0)
    norm = RMSNorm(64).to(dtype)
    norm.weight.data.normal_()
    x = torch.randn(2, 3, 64).to(dtype)
    assert torch.equal(norm(x), plain_rms_norm(x, norm.weight, 1e-6))


def plain_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    dim = cos.shape[-1]
    turned = x[..., :dim] * cos + rotate_half(x[..., :dim]) * sin
    return torch.cat((turned, x[..., dim:]), dim=-1)


@pytest.mark.parametrize("rotary_dim", [64, 32])
@pytest.mark.parametrize("length", [1, 5])
def test_rotation_matches_rotate_half(length, rotary_dim):
    torch.manual_seed(0)
    cos, sin = torch.randn(2, length, rotary_dim), torch.randn(2, length, rotary_dim)
    x = torch.randn(2, 1, 9, 64).expand(2, length, 9, 64).transpose(1, 2)  # a transposed view, as in attention
    factors = rotary_factors(cos, sin)
    expected = plain_rotary(x, cos, sin)
    if factors.matrix is not None and rotary_dim == 64:  # one position, full rotary: a matrix product
        torch.testing.assert_close(rotate(x, factors), expected, rtol=1e-6, atol=1e-6)
    else:  # element-wise: only signs move, so equal bit for bit
        assert torch.equal(rotate(x, factors), expected)
    q, k = apply_rotary(x, x[:, :3], cos, sin)
    torch.testing.assert_close(q, expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(k, expected[:, :3], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("length", [1, 5])
def test_rotate_heads_splits_and_rotates_projections(length):
    torch.manual_seed(0)
    cos, sin = torch.randn(2, length, 16), torch.randn(2, length, 16)
    projections = torch.randn(2, length, 7 * 16 + 5)[..., : 7 * 16]  # a slice of a wider output, as project() gives
    heads = projections.reshape(2, length, 7, 16).transpose(1, 2)
    rotated = rotate_heads(projections, 16, rotary_factors(cos, sin))
    assert rotated.shape == (2, 7, length, 16)
    torch.testing.assert_close(rotated, plain_rotary(heads, cos, sin), rtol=1e-6, atol=1e-6)


def test_decoding_factors_carry_a_rotation_matrix_only_for_one_float32_position():
    cos = torch.randn(1, 1, 8)
    assert rotary_factors(cos, cos).matrix is not None
    assert rotary_factors(cos.expand(1, 3, 8), cos.expand(1, 3, 8)).matrix is None
    assert rotary_factors(cos.bfloat16(), cos.bfloat16()).matrix is None


@pytest.mark.parametrize("masked", [False, True])
def test_one_query_attends_grouped_heads_without_repeating_keys(masked):
    torch.manual_seed(0)
    query, key, value = torch.randn(2, 9, 1, 16), torch.randn(2, 3, 7, 16), torch.randn(2, 3, 7, 16)
    additive = None
    if masked:
        additive = torch.zeros(2, 1, 1, 7)
        additive[0, ..., :2] = torch.finfo(torch.float32).min
    output, _ = attend(query, key, value, AttentionMask(additive, False), scaling=0.25)
    expected = F.scaled_dot_product_attention(
        query, repeat_kv(key, 3), repeat_kv(value, 3), attn_mask=additive, scale=0.25
    ).transpose(1, 2)
    assert output.shape == (2, 1, 9, 16)
    torch.testing.assert_close(output, expected, rtol=1e-6, atol=1e-6)
    eager, _ = attend(query, key, value, AttentionMask(additive, False), scaling=0.25, eager=True)
    torch.testing.assert_close(output, eager, rtol=1e-5, atol=1e-6)
