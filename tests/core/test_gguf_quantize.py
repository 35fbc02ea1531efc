"""Quantization for export, byte for byte against gguf.quants.quantize."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q

from bestiary.errors import ConfigError
from bestiary.integrations.gguf import QUANTIZABLE_TYPES, dequantize, quantize


def tricky_values() -> np.ndarray:
    rng = np.random.default_rng(7)
    values = rng.standard_normal((24, 128)).astype(np.float32)
    values[0, :32] = 0.0
    values[1, :32] = -2.5
    values[2, :32] = np.arange(32, dtype=np.float32) * 0.5 - 8.0  # exact halves: rounding ties
    values[3, :32] = np.float32(127 / 2) * np.sign(rng.standard_normal(32)).astype(np.float32)
    values[4] *= 1e-30
    values[5] *= 6e4
    values[6, :32] = 1e-8
    values[7, 5] = -np.abs(values[7]).max() * 2  # the largest magnitude is negative
    return values


@pytest.mark.filterwarnings("ignore:overflow encountered in cast")
@pytest.mark.parametrize("ggml_type", QUANTIZABLE_TYPES, ids=lambda t: t.name)
def test_bytes_match_reference(ggml_type: Q) -> None:
    values = tricky_values()
    expected = gguf.quants.quantize(values, ggml_type)
    ours = quantize(torch.from_numpy(values), ggml_type).numpy()
    assert ours.shape == expected.shape
    assert ours.dtype == expected.dtype
    assert np.array_equal(ours.view(np.uint8), expected.view(np.uint8))


def test_bf16_special_values_match_reference() -> None:
    values = np.array([[np.nan, np.inf, -np.inf, 0.0, -0.0, 3.4e38, 1e-45, 1.00390625]], dtype=np.float32)
    expected = gguf.quants.quantize(values, Q.BF16)
    assert np.array_equal(quantize(torch.from_numpy(values), "BF16").numpy(), expected)


@pytest.mark.parametrize("ggml_type", [Q.Q8_0, Q.Q4_0, Q.Q4_1], ids=lambda t: t.name)
def test_round_trip_error_is_within_one_step(ggml_type: Q) -> None:
    values = torch.randn(8, 256, generator=torch.Generator().manual_seed(0))
    restored = dequantize(quantize(values, ggml_type), ggml_type, values.shape)
    blocks, error = values.view(-1, 32), (restored - values).view(-1, 32).abs().amax(dim=1)
    spread = blocks.amax(dim=1) - blocks.amin(dim=1)
    step = {Q.Q8_0: blocks.abs().amax(dim=1) / 127, Q.Q4_0: blocks.abs().amax(dim=1) / 8, Q.Q4_1: spread / 15}[ggml_type]
    assert bool((error <= step * 1.01 + 1e-6).all())


def test_higher_dimensional_and_bfloat16_inputs() -> None:
    values = torch.randn(2, 3, 64).to(torch.bfloat16)
    ours = quantize(values, "Q8_0")
    expected = gguf.quants.quantize(values.float().numpy(), Q.Q8_0)
    assert ours.shape == (2, 3, 68) and np.array_equal(ours.numpy(), expected)


def test_rows_not_divisible_by_block_size() -> None:
    with pytest.raises(ConfigError, match=r"'w'.*\(4, 30\).*multiple of 32.*F32 or F16"):
        quantize(torch.zeros(4, 30), "Q8_0", name="'w'")


def test_unsupported_export_type() -> None:
    with pytest.raises(ConfigError, match=r"Q6_K.*supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1"):
        quantize(torch.zeros(4, 256), "Q6_K")
    with pytest.raises(ConfigError, match="Unknown GGML tensor type 'Q9'"):
        quantize(torch.zeros(4, 256), "Q9")
