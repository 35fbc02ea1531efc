"""bestiary.nn.projection: several layers applied to one decoding row in one native call."""

from __future__ import annotations

import platform

import pytest
import torch
from torch import nn

from bestiary.integrations.gguf.quantized_linear import QuantizedLinear
from bestiary.nn import kernels, projection
from bestiary.nn.projection import native_matvec_available, native_project, project


def _cpu_has_avx2() -> bool:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            flags = next((line for line in handle if line.startswith("flags")), "")
    except OSError:
        return False
    return platform.machine() in ("x86_64", "AMD64") and all(f in flags.split() for f in ("avx2", "fma", "f16c"))


pytestmark = pytest.mark.skipif(not _cpu_has_avx2(), reason="the native matvec kernels need AVX2, FMA and F16C")


def _linears(in_features: int, outs: tuple[int, ...], bias: bool) -> list[nn.Linear]:
    torch.manual_seed(in_features + sum(outs))
    return [nn.Linear(in_features, n, bias=bias) for n in outs]


def test_kernels_build_here() -> None:
    assert native_matvec_available()


@pytest.mark.parametrize("in_features", [576, 100, 8, 1536, 4097])
@pytest.mark.parametrize("bias", [False, True])
def test_float_layers_match_linear(in_features: int, bias: bool) -> None:
    layers = _linears(in_features, (576, 192, 7, 1), bias)
    x = torch.randn(1, 1, in_features)
    with torch.no_grad():
        got = native_project(x, layers)
        expected = [layer(x) for layer in layers]
    assert got is not None
    for out, ref in zip(got, expected):
        assert out.shape == ref.shape
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def _quantize_dequantize_activation(x: torch.Tensor) -> torch.Tensor:
    """x after llama.cpp's Q8_0 activation quantization (32-blocks, scale max|x| / 127, round half away)."""
    blocks = x.reshape(-1, 32)
    scale = blocks.abs().amax(dim=-1, keepdim=True) / 127
    inverse = torch.where(scale != 0, 1 / scale, torch.zeros_like(scale))
    scaled = blocks * inverse
    return (torch.sign(scaled) * torch.floor(scaled.abs() + 0.5) * scale).reshape(x.shape)


def _int8_activation_reference(layer: QuantizedLinear, x: torch.Tensor) -> torch.Tensor:
    """The product the 8-bit-activation kernels compute, written with torch (float64 sums)."""
    x = x.double()
    weight = layer.dequantize_weight().double()
    blocks = x.shape[-1] // 32
    x_hat = _quantize_dequantize_activation(x.float()).double()
    if layer.ggml_type.name == "Q8_0":
        return x_hat @ weight.T
    scales = layer.scales[:, :blocks].double().repeat_interleave(32, dim=1)
    if layer.ggml_type.name == "Q4_1":  # w = d q + m: the minimum meets the exact x
        mins = layer.mins[:, :blocks].double().repeat_interleave(32, dim=1)
        return x_hat @ (weight - mins).T + x @ mins.T
    return x_hat @ (weight + 8 * scales).T - 8 * (x @ scales.T)  # Q4_0: w = d (q - 8)


@pytest.fixture(params=["int8", "float32"])
def activations(request: pytest.FixtureRequest):
    projection.set_quantized_activations(request.param == "int8")
    yield request.param
    projection.set_quantized_activations(False)


@pytest.mark.parametrize("ggml_type", ["Q8_0", "Q4_0", "Q4_1"])
@pytest.mark.parametrize("in_features", [576, 96, 32, 1536])
def test_quantized_layers_match_their_reference(ggml_type: str, in_features: int, activations: str) -> None:
    torch.manual_seed(0)
    layers = [QuantizedLinear.from_float(torch.randn(n, in_features), ggml_type) for n in (576, 193, 5)]
    layers[1].bias = nn.Parameter(torch.randn(193))
    x = torch.randn(1, in_features)
    x[0, :32] = 0  # an all-zero block (activation scale 0)
    with torch.no_grad():
        got = native_project(x, layers)
    assert got is not None
    for out, layer in zip(got, layers):
        if activations == "int8":
            ref = _int8_activation_reference(layer, x).float()
        else:
            ref = x @ layer.dequantize_weight().T
        ref = ref + (layer.bias if layer.bias is not None else 0)
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-4)  # outputs are ~25 in size here


def test_int8_activations_stay_close_to_float32() -> None:
    torch.manual_seed(3)
    layer = QuantizedLinear.from_float(torch.randn(256, 576), "Q4_1")
    x = torch.randn(1, 576)
    exact = x @ layer.dequantize_weight().T
    projection.set_quantized_activations(True)
    try:
        with torch.no_grad():
            got = native_project(x, (layer,))[0]
    finally:
        projection.set_quantized_activations(False)
    relative = (got - exact).norm() / exact.norm()
    # Not identical (the activations really were quantized), but close: about 0.6% for Gaussian inputs,
    # against about 10% of error in the 4-bit weights themselves.
    assert 1e-4 < relative < 1e-2


def test_mixed_float_and_quantized_layers() -> None:
    torch.manual_seed(1)
    layers = [nn.Linear(64, 32, bias=True), QuantizedLinear.from_float(torch.randn(48, 64), "Q4_1")]
    x = torch.randn(1, 1, 64)
    with torch.no_grad():
        got = native_project(x, layers)
        expected = [layer(x) for layer in layers]
    assert got is not None
    for out, ref in zip(got, expected):
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_quantized_layer_forward_uses_native_path_for_one_row(monkeypatch: pytest.MonkeyPatch) -> None:
    layer = QuantizedLinear.from_float(torch.randn(40, 64), "Q8_0")
    calls = []
    real = projection.native_project
    monkeypatch.setattr(
        "bestiary.integrations.gguf.quantized_linear.native_project",
        lambda x, layers: calls.append(1) or real(x, layers),
    )
    x = torch.randn(1, 64)
    with torch.no_grad():
        out = layer(x)
    assert calls and out.shape == (1, 40)
    torch.testing.assert_close(out, x @ layer.dequantize_weight().T, rtol=1e-5, atol=1e-4)


def test_plain_path_where_native_does_not_apply() -> None:
    layers = _linears(32, (16, 8), True)
    x = torch.randn(1, 32)
    with torch.no_grad():
        assert native_project(torch.randn(2, 32), layers) is None  # two rows: BLAS
        assert native_project(x.to(torch.bfloat16), layers) is None  # other dtype
        assert native_project(torch.randn(32, 1).T, layers) is not None  # one row, contiguous view
    # gradients wanted: autograd must see the product
    assert native_project(x, layers) is None
    out = project(x, layers)
    assert out[0].requires_grad


def test_hooks_still_run() -> None:
    layers = _linears(32, (16, 8), False)
    seen = []
    layers[1].register_forward_hook(lambda module, args, output: seen.append(output.shape))
    with torch.no_grad():
        assert native_project(torch.randn(1, 32), layers) is None
        project(torch.randn(1, 32), layers)
    assert seen == [torch.Size([1, 8])]


def test_subclass_of_linear_is_not_read_directly() -> None:
    class Scaled(nn.Linear):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return 2 * super().forward(x)

    layer = Scaled(16, 4)
    x = torch.randn(1, 16)
    with torch.no_grad():
        assert native_project(x, (layer,)) is None
        torch.testing.assert_close(project(x, (layer,))[0], 2 * nn.functional.linear(x, layer.weight, layer.bias))


def test_replaced_weight_is_picked_up() -> None:
    layers = _linears(64, (32,), False)
    x = torch.randn(1, 64)
    with torch.no_grad():
        native_project(x, layers)
        layers[0].weight = nn.Parameter(torch.randn(32, 64))
        got = native_project(x, layers)
        assert got is not None
        torch.testing.assert_close(got[0], x @ layers[0].weight.T, rtol=1e-5, atol=1e-5)


def test_environment_switch_turns_native_path_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(projection.ENV_VAR, "0")
    kernels.reset()
    try:
        layers = _linears(32, (16,), False)
        with torch.no_grad():
            assert native_project(torch.randn(1, 32), layers) is None
            assert project(torch.randn(1, 32), layers)[0].shape == (1, 16)
    finally:
        kernels.reset()  # later tests load the kernels again


def test_compiled_graph_calls_the_native_operator() -> None:
    torch.manual_seed(2)
    layers = [
        nn.Linear(64, 32, bias=True),
        QuantizedLinear.from_float(torch.randn(48, 64), "Q4_1"),
        QuantizedLinear.from_float(torch.randn(16, 64), "Q8_0"),
    ]
    graphs = []

    def capture(graph_module: torch.fx.GraphModule, example_inputs: list) -> object:
        graphs.append(str(graph_module.graph))
        return graph_module.forward

    def step(x: torch.Tensor) -> torch.Tensor:
        a, b, c = project(x, layers)
        return torch.cat([a.relu(), b, c], dim=-1)

    assert native_matvec_available()
    torch._dynamo.reset()
    x = torch.randn(1, 1, 64)
    with torch.no_grad():
        compiled = torch.compile(step, backend=capture, fullgraph=True)
        got = compiled(x)
        expected = torch.cat(
            [nn.functional.linear(x, layers[0].weight, layers[0].bias).relu()]
            + [x @ layer.dequantize_weight().T for layer in layers[1:]],
            dim=-1,
        )
    assert any("bestiary.matvec" in graph for graph in graphs)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-4)
