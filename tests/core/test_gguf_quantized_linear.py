"""Kept-quantized layers: numerics of every backend against dequantize-then-matmul, memory, swapping."""

from __future__ import annotations


import gguf
import numpy as np
import pytest
import torch
from torch import nn

from bestiary.errors import CheckpointError, ConfigError, WeightShapeError
from bestiary.integrations.gguf import QuantizedEmbedding, QuantizedLinear, replace_linear_with_quantized
from bestiary.integrations.gguf import kernels, native
from bestiary.integrations.gguf.quantized_linear import quantize_linear_layers

TYPES = ["Q8_0", "Q4_0", "Q4_1"]
# Input rows: decoding (1), small batches through the fused kernel (5), many rows through chunked GEMM (20).
ROWS = [1, 5, 20]


@pytest.fixture
def backend(request):
    """Run a test under one kernel backend, then restore automatic selection."""
    kernels.set_kernel_backend(request.param)
    if request.param == "native" and kernels.kernel_backend() != "native":
        pytest.skip("no C compiler here: the native kernels cannot be built")
    yield request.param
    kernels.set_kernel_backend("auto")


def gguf_blocks(weight: torch.Tensor, ggml_type: str) -> np.ndarray:
    return gguf.quants.quantize(weight.numpy(), gguf.GGMLQuantizationType[ggml_type])


def assert_close_to_float64(result: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, bias=None) -> None:
    """Within float32 accumulation error of the exact product of the dequantized weight."""
    exact = x.double() @ weight.double().T + (0 if bias is None else bias.double())
    scale = (x.double().abs() @ weight.double().abs().T).max().item() + 1e-30
    assert result.dtype == x.dtype
    assert (result.double() - exact).abs().max().item() / scale < 2e-6


@pytest.mark.parametrize("backend", ["native", "eager"], indirect=True)
@pytest.mark.parametrize("ggml_type", TYPES)
@pytest.mark.parametrize("rows", ROWS)
def test_matmul_matches_dequantize_then_matmul(backend: str, ggml_type: str, rows: int) -> None:
    generator = torch.Generator().manual_seed(rows)
    weight, bias = torch.randn(71, 160, generator=generator), torch.randn(71, generator=generator)  # odd: unpaired last row
    layer = QuantizedLinear.from_gguf(gguf_blocks(weight, ggml_type), ggml_type, weight.shape, bias)
    dequantized = torch.from_numpy(gguf.quants.dequantize(gguf_blocks(weight, ggml_type), gguf.GGMLQuantizationType[ggml_type]))
    assert torch.equal(layer.dequantize_weight(), dequantized)
    x = torch.randn(rows, 160, generator=generator)
    assert_close_to_float64(layer(x), x, dequantized, bias)


@pytest.mark.parametrize("backend", ["native", "eager"], indirect=True)
def test_chunked_path_over_many_chunks(backend: str, monkeypatch) -> None:
    monkeypatch.setattr(kernels, "CHUNK_ELEMENTS", 64 * 3)
    weight = torch.randn(50, 64)
    layer = QuantizedLinear.from_float(weight, "Q4_1")
    x = torch.randn(kernels.NATIVE_MAX_ROWS + 3, 64)
    assert_close_to_float64(layer(x), x, layer.dequantize_weight())


@pytest.mark.parametrize("backend", ["native"], indirect=True)
def test_batched_shapes_and_dtypes(backend: str) -> None:
    layer = QuantizedLinear.from_float(torch.randn(48, 96), "Q8_0", torch.randn(48))
    x = torch.randn(2, 3, 96)
    out = layer(x)
    assert out.shape == (2, 3, 48)
    assert_close_to_float64(out.reshape(6, 48), x.reshape(6, 96), layer.dequantize_weight(), layer.bias.detach())
    half = layer(x.to(torch.bfloat16))
    assert half.dtype == torch.bfloat16
    assert torch.allclose(half.float(), layer(x.to(torch.bfloat16).float()), rtol=1e-2, atol=1e-2)
    with pytest.raises(WeightShapeError, match="expects inputs with 96 features"):
        layer(torch.randn(2, 95))


def test_portable_c_path_matches(tmp_path, monkeypatch) -> None:
    """The kernels without AVX2 intrinsics (what other CPUs compile) agree too."""
    monkeypatch.setenv("BESTIARY_CACHE_DIR", str(tmp_path))
    portable = native.load_native_kernels(native.PORTABLE_FLAGS)
    if portable is None:
        pytest.skip("no C compiler here")
    assert not portable.has_avx2
    for ggml_type, kind in [("Q8_0", native.KIND_Q8_0), ("Q4_0", native.KIND_Q4_0), ("Q4_1", native.KIND_Q4_1)]:
        layer = QuantizedLinear.from_float(torch.randn(24, 96), ggml_type)
        x = torch.randn(3, 96)
        out = torch.empty(3, 24)
        qweight, scales, mins = layer.packed()
        portable.matmul(kind, x.data_ptr(), 3, 96, qweight.data_ptr(), scales.data_ptr(),
                        None if mins is None else mins.data_ptr(), 24, out.data_ptr(), 1)
        assert_close_to_float64(out, x, layer.dequantize_weight())
        rows = torch.empty(24, 96)
        portable.dequantize(kind, qweight.data_ptr(), scales.data_ptr(), None if mins is None else mins.data_ptr(),
                            0, 24, 96, rows.data_ptr(), 1)
        assert torch.equal(rows, layer.dequantize_weight())


def test_falls_back_to_eager_without_a_compiler(monkeypatch) -> None:
    monkeypatch.setattr(kernels, "load_native_kernels", lambda: None)
    kernels.set_kernel_backend("auto")
    try:
        assert kernels.kernel_backend() == "eager"
        layer = QuantizedLinear.from_float(torch.randn(16, 64), "Q4_0")
        x = torch.randn(1, 64)
        assert_close_to_float64(layer(x), x, layer.dequantize_weight())
    finally:
        kernels.set_kernel_backend("auto")


def test_unknown_backend_is_refused() -> None:
    with pytest.raises(ConfigError, match="Unknown GGUF kernel backend 'gpu'"):
        kernels.set_kernel_backend("gpu")


@pytest.mark.parametrize("ggml_type, limit", [("Q8_0", 0.27), ("Q4_1", 0.16), ("Q4_0", 0.141)])
def test_memory_is_a_fraction_of_float32(ggml_type: str, limit: float) -> None:
    layer = QuantizedLinear.from_float(torch.randn(256, 512), ggml_type)
    float32_bytes = 256 * 512 * 4
    assert layer.packed_bytes() / float32_bytes <= limit
    assert sum(b.numel() * b.element_size() for b in layer.buffers()) == layer.packed_bytes()


def test_replace_linear_with_quantized() -> None:
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Sequential(nn.Linear(32, 16, bias=False)))
    bias = model[0].bias
    weight = torch.randn(32, 64)
    layer = replace_linear_with_quantized(model, "0", gguf_blocks(weight, "Q8_0"), "Q8_0")
    assert model[0] is layer and layer.bias is bias
    inner = replace_linear_with_quantized(model, "2.0", gguf_blocks(torch.randn(16, 32), "Q4_1"), "Q4_1", (16, 32))
    assert inner.bias is None and isinstance(model[2][0], QuantizedLinear)
    assert model(torch.randn(3, 64)).shape == (3, 16)


def test_replace_keeps_a_meta_bias_for_the_loader() -> None:
    with torch.device("meta"):
        model = nn.ModuleDict({"proj": nn.Linear(64, 8)})
    layer = replace_linear_with_quantized(model, "proj", gguf_blocks(torch.randn(8, 64), "Q4_0"), "Q4_0")
    assert layer.bias.is_meta and layer.qweight.device.type == "cpu"
    assert "proj.bias" in dict(model.named_parameters())


def test_replace_errors_name_the_layer() -> None:
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU())
    with pytest.raises(WeightShapeError, match=r"'0' has shape \(16, 64\) but the layer is \(32, 64\)"):
        replace_linear_with_quantized(model, "0", gguf_blocks(torch.randn(16, 64), "Q8_0"), "Q8_0", (16, 64))
    with pytest.raises(CheckpointError, match="'1' is a ReLU, not an nn.Linear"):
        replace_linear_with_quantized(model, "1", gguf_blocks(torch.randn(32, 64), "Q8_0"), "Q8_0")
    with pytest.raises(CheckpointError, match="no attribute 'missing'"):
        replace_linear_with_quantized(model, "missing", gguf_blocks(torch.randn(32, 64), "Q8_0"), "Q8_0")
    with pytest.raises(ConfigError, match="Q6_K cannot be kept quantized"):
        replace_linear_with_quantized(model, "0", np.zeros(10, dtype=np.uint8), "Q6_K")


def test_quantized_embedding_and_tying() -> None:
    table = torch.randn(100, 64)
    embedding = QuantizedEmbedding.from_gguf(gguf_blocks(table, "Q8_0"), "Q8_0", table.shape)
    ids = torch.tensor([[3, 99, 3], [0, 1, 2]])
    dequantized = embedding.dequantize_weight()
    assert torch.equal(embedding(ids), dequantized[ids])
    head = QuantizedLinear.from_gguf(gguf_blocks(table, "Q8_0"), "Q8_0", table.shape)
    tied = QuantizedEmbedding.tied_to(head, dtype=torch.bfloat16)
    assert tied.qweight is head.qweight and tied(ids).dtype == torch.bfloat16


def test_quantize_linear_layers_of_a_float_model() -> None:
    model = nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 10), nn.Linear(10, 3))
    x = torch.randn(2, 64)
    expected = model(x)
    replaced = quantize_linear_layers(model, "Q8_0", skip=["1"])
    assert replaced == ["0"]
    assert isinstance(model[0], QuantizedLinear) and isinstance(model[1], nn.Linear)
    assert torch.allclose(model(x), expected, atol=0.05)


@pytest.mark.slow
def test_compiled_backend_matches() -> None:
    """torch.compile (inductor) of the fused formula (about 15 s the first time it compiles)."""
    kernels.set_kernel_backend("compile")
    try:
        layer = QuantizedLinear.from_float(torch.randn(40, 64), "Q4_1")
        x = torch.randn(1, 64)
        assert_close_to_float64(layer(x), x, layer.dequantize_weight())
    finally:
        kernels.set_kernel_backend("auto")
