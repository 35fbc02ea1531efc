"""write_gguf: files that gguf.GGUFReader and GGUFFile read back, written atomically."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest
import torch

from bestiary.errors import ConfigError
from bestiary.integrations.gguf import GGUFFile, dequantize, quantize, write_gguf
from bestiary.integrations.gguf.writer import TypedValue

V = gguf.GGUFValueType
METADATA = {
    "llama.block_count": 2,
    "llama.rope.freq_base": 10000.0,
    "general.name": "tiny ✓",
    "tokenizer.ggml.add_bos_token": True,
    "tokenizer.ggml.tokens": ["<s>", "a", "b"],
    "tokenizer.ggml.token_type": TypedValue([3, 1, 1], V.ARRAY, V.INT32),
    "tokenizer.ggml.scores": [0.0, -1.0, -2.5],
}


def state() -> list[tuple[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    return [
        ("token_embd.weight", torch.randn(40, 64, generator=generator)),
        ("blk.0.attn_norm.weight", torch.randn(64, generator=generator)),
        ("blk.0.ffn_up.weight", torch.randn(96, 64, generator=generator)),
        ("odd.weight", torch.randn(5, 20, generator=generator)),
    ]


def read_with_reference(path: Path) -> dict[str, np.ndarray]:
    reader = gguf.GGUFReader(path)
    return {
        t.name: gguf.quants.dequantize(t.data, t.tensor_type).reshape(tuple(reversed(t.shape.tolist())))
        for t in reader.tensors
    }


def test_f32_round_trip_is_exact(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "m.gguf", "llama", METADATA, state(), tensor_type="F32")
    reference = read_with_reference(path)
    ours = GGUFFile(path)
    for name, tensor in state():
        assert ours.tensor(name).type_name == "F32"
        assert torch.equal(ours.load_tensor(name), tensor)
        assert np.array_equal(reference[name], tensor.numpy())


def test_metadata_round_trip(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "m.gguf", "llama", METADATA, state())
    reader = gguf.GGUFReader(path)
    for key, value in METADATA.items():
        expected = value.value if isinstance(value, TypedValue) else value
        assert reader.fields[key].contents() == expected
        assert GGUFFile(path).metadata[key] == expected
    assert reader.fields["general.architecture"].contents() == "llama"
    assert reader.fields["llama.block_count"].types == [V.UINT32]
    assert reader.fields["tokenizer.ggml.token_type"].types == [V.ARRAY, V.INT32]
    assert reader.fields["tokenizer.ggml.scores"].types == [V.ARRAY, V.FLOAT32]


@pytest.mark.parametrize("tensor_type", ["F16", "BF16", "Q8_0", "Q4_0", "Q4_1"])
def test_quantized_round_trip(tmp_path: Path, tensor_type: str) -> None:
    path = write_gguf(tmp_path / "m.gguf", "llama", METADATA, state(), tensor_type=tensor_type)
    reference = read_with_reference(path)
    ours = GGUFFile(path)
    types = {info.name: info.type_name for info in ours.tensors}
    assert types["blk.0.attn_norm.weight"] == "F32"  # vectors stay F32, as llama.cpp keeps them
    assert types["blk.0.ffn_up.weight"] == tensor_type
    assert types["odd.weight"] == ("BF16" if tensor_type == "BF16" else "F16")  # 20 columns: no 32-blocks
    for name, tensor in state():
        loaded = ours.load_tensor(name)
        assert np.array_equal(loaded.numpy(), reference[name])
        stored = ours.tensor(name)
        assert torch.equal(loaded, dequantize(quantize(tensor, stored.ggml_type), stored.ggml_type, tensor.shape))
    error = (ours.load_tensor("blk.0.ffn_up.weight") - state()[2][1]).abs().max().item()
    assert error < {"F16": 2e-3, "BF16": 2e-2, "Q8_0": 0.03, "Q4_0": 0.5, "Q4_1": 0.5}[tensor_type]


def test_per_tensor_override(tmp_path: Path) -> None:
    path = write_gguf(
        tmp_path / "m.gguf", "llama", {}, state(), tensor_type="Q8_0", tensor_types={"token_embd.weight": "F16"}
    )
    assert GGUFFile(path).tensor("token_embd.weight").type_name == "F16"


def test_write_is_atomic(tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    path.write_bytes(b"previous")

    def failing():
        yield "a.weight", torch.zeros(4, 32)
        raise RuntimeError("export interrupted")

    with pytest.raises(RuntimeError, match="export interrupted"):
        write_gguf(path, "llama", {}, failing())
    assert path.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf"]


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="Q6_K is not writable"):
        write_gguf(tmp_path / "m.gguf", "llama", {}, state(), tensor_type="Q6_K")
    with pytest.raises(ConfigError, match=r"'x\.bad': cannot store a dict"):
        write_gguf(tmp_path / "m.gguf", "llama", {"x.bad": {}}, state())
    assert not list(tmp_path.iterdir())
