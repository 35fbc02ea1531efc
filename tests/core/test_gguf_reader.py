"""GGUFFile: our fast header parser against the gguf package's GGUFReader, and its errors."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest
import torch

from bestiary.errors import CheckpointError
from bestiary.integrations.gguf import GGUFFile, write_gguf
from bestiary.integrations.gguf.writer import TypedValue

V = gguf.GGUFValueType


def reference_metadata(reader: gguf.GGUFReader) -> dict:
    return {key: field.contents() for key, field in reader.fields.items() if not key.startswith("GGUF.")}


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    metadata = {
        "llama.block_count": 2,
        "x.float": 0.25,
        "x.text": "héllo ✓",
        "x.flag": False,
        "x.ints": [1, 2, 3],
        "x.negative": -7,
        "x.big": 2**40,
        "x.strings": ["a", "ü", ""],
        "x.floats": [0.5, 1.5],
        "x.int32": TypedValue(5, V.INT32),
        "x.u8s": TypedValue([1, 255], V.ARRAY, V.UINT8),
        "general.alignment": TypedValue(64, V.UINT32),
    }
    tensors = [
        ("a.weight", torch.randn(64, 96)),
        ("b.bias", torch.randn(7)),
        ("c.weight", torch.randn(3, 4, 32)),
    ]
    path = tmp_path_factory.mktemp("gguf") / "small.gguf"
    write_gguf(path, "llama", metadata, tensors, tensor_type="Q8_0")
    return path


def test_metadata_and_tensors_match_gguf_reader(written: Path) -> None:
    ours = GGUFFile(written)
    reader = gguf.GGUFReader(written)
    assert ours.metadata == reference_metadata(reader)
    assert ours.architecture == "llama"
    assert ours.version == 3
    assert ours.tensor_names == [t.name for t in reader.tensors]
    for ref in reader.tensors:
        info = ours.tensor(ref.name)
        assert info.shape == tuple(reversed(ref.shape.tolist()))
        assert info.ggml_type == ref.tensor_type
        assert info.n_elements == ref.n_elements and info.n_bytes == ref.n_bytes
        assert np.array_equal(info.data, ref.data.reshape(-1).view(np.uint8))
    assert ours.tensor("c.weight").shape == (3, 4, 32)
    assert ours.tensor("b.bias").type_name == "F32"


def test_value_types_are_kept(written: Path) -> None:
    types = GGUFFile(written).value_types
    assert types["x.int32"] == V.INT32
    assert types["x.negative"] == V.INT32
    assert types["x.big"] == V.UINT64
    assert types["x.float"] == V.FLOAT32
    assert types["x.u8s"] == V.ARRAY


def test_unknown_tensor_names_the_file_and_close_matches(written: Path) -> None:
    with pytest.raises(CheckpointError, match=r"small\.gguf.*'a\.weigth'.*a\.weight"):
        GGUFFile(written).tensor("a.weigth")


def test_not_a_gguf_file(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    with pytest.raises(CheckpointError, match=r"model\.safetensors is not a GGUF file"):
        GGUFFile(path)


def test_empty_and_missing_files(tmp_path: Path) -> None:
    (tmp_path / "empty.gguf").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty.gguf"):
        GGUFFile(tmp_path / "empty.gguf")
    with pytest.raises(CheckpointError, match="missing.gguf"):
        GGUFFile(tmp_path / "missing.gguf")


@pytest.mark.parametrize("keep", [6, 30, 200, -100])
def test_truncated_file_names_the_file(written: Path, tmp_path: Path, keep: int) -> None:
    data = written.read_bytes()
    path = tmp_path / "cut.gguf"
    path.write_bytes(data[:keep])
    with pytest.raises(CheckpointError, match=r"cut\.gguf.*truncated"):
        GGUFFile(path)


def test_truncated_tensor_data_names_the_tensor(written: Path, tmp_path: Path) -> None:
    path = tmp_path / "cut.gguf"
    path.write_bytes(written.read_bytes()[:-100])  # past the end padding
    with pytest.raises(CheckpointError, match=r"cut\.gguf is truncated: tensor 'c\.weight'"):
        GGUFFile(path)


def test_missing_architecture(tmp_path: Path) -> None:
    writer = gguf.GGUFWriter(tmp_path / "noarch.gguf", "llama")
    del writer.kv_data[0]["general.architecture"]
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(CheckpointError, match="noarch.gguf has no 'general.architecture'"):
        GGUFFile(tmp_path / "noarch.gguf").architecture

