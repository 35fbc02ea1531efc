"""Dequantization of every supported GGML type, block by block, against gguf.quants.dequantize."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch
from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as Q

from bestiary.errors import CheckpointError
from bestiary.integrations.gguf import SUPPORTED_TYPES, dequantize

QUANTIZABLE_BY_REFERENCE = [Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1]
# K-quant block layouts: byte offsets of their float16 super-block scales.
K_QUANT_HALF_OFFSETS = {Q.Q2_K: (80, 82), Q.Q3_K: (108,), Q.Q4_K: (0, 2), Q.Q5_K: (0, 2), Q.Q6_K: (208,)}


def generated_values(rows: int = 16, cols: int = 256) -> np.ndarray:
    rng = np.random.default_rng(1234)
    values = rng.standard_normal((rows, cols)).astype(np.float32)
    if rows < 4:
        return values
    values[0, :32] = 0.0  # an all-zero block
    values[1, :32] = 3.0  # a constant block
    values[2] *= 1e-4
    values[3] *= 1e3
    return values


def random_k_blocks(ggml_type: Q, n_blocks: int = 96) -> np.ndarray:
    """Random bytes for every field, with finite float16 scales where the format keeps them."""
    _, type_size = GGML_QUANT_SIZES[ggml_type]
    rng = np.random.default_rng(int(ggml_type))
    blocks = rng.integers(0, 256, (n_blocks, type_size), dtype=np.uint8)
    for offset in K_QUANT_HALF_OFFSETS[ggml_type]:
        scales = (rng.standard_normal((n_blocks, 1)) * 0.05).astype(np.float16)
        blocks[:, offset : offset + 2] = scales.view(np.uint8)
    return blocks


def test_supported_types_are_the_promised_ones() -> None:
    assert set(SUPPORTED_TYPES) == {*QUANTIZABLE_BY_REFERENCE, *K_QUANT_HALF_OFFSETS}


@pytest.mark.parametrize("ggml_type", QUANTIZABLE_BY_REFERENCE, ids=lambda t: t.name)
def test_matches_reference_on_quantized_values(ggml_type: Q) -> None:
    values = generated_values()
    stored = gguf.quants.quantize(values, ggml_type)
    expected = gguf.quants.dequantize(stored, ggml_type)
    ours = dequantize(stored, ggml_type, values.shape)
    assert ours.dtype == torch.float32 and ours.shape == values.shape
    assert np.array_equal(ours.numpy(), expected)


@pytest.mark.parametrize("ggml_type", list(K_QUANT_HALF_OFFSETS), ids=lambda t: t.name)
def test_matches_reference_on_random_k_quant_blocks(ggml_type: Q) -> None:
    blocks = random_k_blocks(ggml_type)
    block_size, _ = GGML_QUANT_SIZES[ggml_type]
    shape = (blocks.shape[0] // 4, 4 * block_size)
    expected = gguf.quants.dequantize(blocks.reshape(shape[0], -1), ggml_type)
    ours = dequantize(torch.from_numpy(blocks), ggml_type, shape)
    assert np.array_equal(ours.numpy(), expected)


@pytest.mark.parametrize("ggml_type", [Q.Q4_1, Q.Q6_K], ids=lambda t: t.name)
def test_chunked_decoding_is_identical(ggml_type: Q) -> None:
    if ggml_type == Q.Q6_K:
        raw = torch.from_numpy(random_k_blocks(ggml_type, 40))
        shape = (10, 1024)
    else:
        values = generated_values()
        raw, shape = torch.from_numpy(gguf.quants.quantize(values, ggml_type)), values.shape
    whole = dequantize(raw, ggml_type, shape)
    assert torch.equal(dequantize(raw, ggml_type, shape, chunk_elements=300), whole)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_requested_dtype_is_the_float32_result_cast(dtype: torch.dtype) -> None:
    values = generated_values()
    stored = gguf.quants.quantize(values, Q.Q8_0)
    ours = dequantize(stored, "Q8_0", values.shape, dtype=dtype, chunk_elements=512)
    assert ours.dtype == dtype
    assert torch.equal(ours, torch.from_numpy(gguf.quants.dequantize(stored, Q.Q8_0)).to(dtype))


def test_type_given_by_name_or_number() -> None:
    values = generated_values(2, 64)
    stored = gguf.quants.quantize(values, Q.Q4_0)
    assert torch.equal(dequantize(stored, "q4_0", (2, 64)), dequantize(stored, int(Q.Q4_0), (2, 64)))


def test_unsupported_type_names_tensor_type_and_supported_list() -> None:
    raw = torch.zeros(GGML_QUANT_SIZES[Q.IQ2_XS][1], dtype=torch.uint8)
    with pytest.raises(CheckpointError, match=r"'blk\.0\.ffn_up\.weight'.*IQ2_XS.*Supported types: F32, F16, BF16, Q8_0"):
        dequantize(raw, Q.IQ2_XS, (256,), name="'blk.0.ffn_up.weight'")


def test_wrong_byte_count_is_reported() -> None:
    with pytest.raises(CheckpointError, match=r"'w'.*33 bytes of Q8_0 do not hold shape \(32,\)"):
        dequantize(torch.zeros(33, dtype=torch.uint8), Q.Q8_0, (32,), name="'w'")
