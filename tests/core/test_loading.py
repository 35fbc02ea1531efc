"""Weight loading and saving: formats, reports, errors, safety."""

from __future__ import annotations

import json
import os
import stat

import pytest
import torch
import transformers
from safetensors.torch import load_file

from bestiary.auto import AutoModelForCausalLM
from bestiary.errors import CheckpointError, WeightShapeError

TINY = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=64, max_position_embeddings=64)


@pytest.fixture
def reference_folder(tmp_path):
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**TINY)).eval()
    model.save_pretrained(tmp_path / "ref")
    return tmp_path / "ref", model


def logits(model, ids=torch.tensor([[1, 5, 9, 3]])):
    with torch.no_grad():
        return model(ids).logits


def test_no_checkpoint_weight_is_random_initialised(reference_folder, monkeypatch):
    folder, reference = reference_folder
    calls = []
    original = torch.Tensor.normal_
    monkeypatch.setattr(torch.Tensor, "normal_", lambda self, *a, **k: (calls.append(self.shape) if not self.is_meta else None) or original(self, *a, **k))
    model, report = AutoModelForCausalLM.from_pretrained(folder, output_loading_info=True)
    assert calls == [] and report.missing_keys == [] and report.unexpected_keys == []
    assert torch.equal(logits(model), logits(reference))


def test_missing_weights_are_initialised_and_reported(reference_folder, tmp_path):
    folder, _ = reference_folder
    tensors = load_file(folder / "model.safetensors")
    kept = tensors.pop("model.layers.1.mlp.up_proj.weight")
    from bestiary.safetensors_io import save_file

    save_file(tensors, folder / "model.safetensors")
    model, report = AutoModelForCausalLM.from_pretrained(folder, output_loading_info=True)
    assert report.missing_keys == ["model.layers.1.mlp.up_proj.weight"]
    weight = model.model.layers[1].mlp.up_proj.weight
    assert not weight.is_meta and weight.shape == kept.shape
    assert 0.005 < weight.std().item() < 0.05  # initialised with initializer_range, not left empty
    assert torch.equal(model.model.layers[1].mlp.gate_proj.weight, tensors["model.layers.1.mlp.gate_proj.weight"])


def test_unexpected_keys_are_reported(reference_folder):
    folder, _ = reference_folder
    tensors = load_file(folder / "model.safetensors")
    tensors["model.extra.weight"] = torch.zeros(2)
    from bestiary.safetensors_io import save_file

    save_file(tensors, folder / "model.safetensors")
    _, report = AutoModelForCausalLM.from_pretrained(folder, output_loading_info=True)
    assert report.unexpected_keys == ["model.extra.weight"]


def test_shape_mismatch_raises_or_reinitialises(reference_folder):
    folder, _ = reference_folder
    config = json.loads((folder / "config.json").read_text())
    config["intermediate_size"] = 48
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(WeightShapeError) as caught:
        AutoModelForCausalLM.from_pretrained(folder)
    assert "mlp.up_proj.weight" in str(caught.value) and "ignore_mismatched_sizes" in str(caught.value)
    model, report = AutoModelForCausalLM.from_pretrained(folder, ignore_mismatched_sizes=True, output_loading_info=True)
    assert len(report.mismatched_keys) == 6
    assert model.model.layers[0].mlp.up_proj.weight.shape == (48, 32)


@pytest.mark.parametrize("cut", [4, 50, -100])
def test_truncated_safetensors_names_the_file(reference_folder, cut):
    folder, _ = reference_folder
    path = folder / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[:cut] if cut > 0 else data[:cut])
    with pytest.raises(CheckpointError) as caught:
        AutoModelForCausalLM.from_pretrained(folder)
    assert str(path) in str(caught.value)


def test_corrupt_header_names_the_file(reference_folder):
    folder, _ = reference_folder
    path = folder / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[8:20] = b"\xff" * 12
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="model.safetensors"):
        AutoModelForCausalLM.from_pretrained(folder)


def test_pickle_checkpoint_loads_only_with_weights_only(reference_folder, tmp_path):
    folder, reference = reference_folder
    target = tmp_path / "bin"
    target.mkdir()
    (target / "config.json").write_text((folder / "config.json").read_text())
    torch.save(reference.state_dict(), target / "pytorch_model.bin")
    assert torch.equal(logits(AutoModelForCausalLM.from_pretrained(target)), logits(reference))


def test_pickle_with_code_is_refused(reference_folder, tmp_path):
    folder, _ = reference_folder
    target = tmp_path / "evil"
    target.mkdir()
    (target / "config.json").write_text((folder / "config.json").read_text())

    class Payload:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"x": Payload()}, target / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="weights_only=True"):
        AutoModelForCausalLM.from_pretrained(target)


def test_safetensors_win_over_pickle(reference_folder):
    folder, reference = reference_folder
    torch.save({"garbage": torch.zeros(1)}, folder / "pytorch_model.bin")
    assert torch.equal(logits(AutoModelForCausalLM.from_pretrained(folder)), logits(reference))


def test_no_weights_at_all(tmp_path):
    transformers.LlamaConfig(**TINY).save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="No weights found"):
        AutoModelForCausalLM.from_pretrained(tmp_path)


def test_shard_listed_in_index_but_missing(reference_folder, tmp_path):
    folder, reference = reference_folder
    reference.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    next((tmp_path / "sharded").glob("model-00002-*.safetensors")).unlink()
    with pytest.raises(CheckpointError, match="model-00002"):
        AutoModelForCausalLM.from_pretrained(tmp_path / "sharded")


def test_key_mapping_renames_checkpoint_keys(reference_folder):
    folder, reference = reference_folder
    tensors = {k.replace("model.", "decoder.", 1): v for k, v in load_file(folder / "model.safetensors").items()}
    from bestiary.safetensors_io import save_file

    save_file(tensors, folder / "model.safetensors")
    model = AutoModelForCausalLM.from_pretrained(folder, key_mapping={r"^decoder\.": "model."})
    assert torch.equal(logits(model), logits(reference))


def test_save_is_atomic_and_removes_stale_shards(reference_folder, tmp_path, monkeypatch):
    folder, _ = reference_folder
    model = AutoModelForCausalLM.from_pretrained(folder)
    target = tmp_path / "out"
    model.save_pretrained(target, max_shard_size="20KB")
    assert (target / "model.safetensors.index.json").exists()
    model.save_pretrained(target)
    names = sorted(p.name for p in target.iterdir())
    assert names == ["config.json", "model.safetensors"] or "generation_config.json" in names
    assert not [p for p in target.iterdir() if p.name.startswith(".")]

    import bestiary.safetensors_io as io

    def crash(*args, **kwargs):
        raise RuntimeError("disk full")

    before = (target / "model.safetensors").read_bytes()
    monkeypatch.setattr("safetensors.torch.save_file", crash)
    with pytest.raises(RuntimeError):
        io.save_file({"a": torch.zeros(2)}, target / "model.safetensors")
    assert (target / "model.safetensors").read_bytes() == before
    assert not [p for p in target.iterdir() if p.name.startswith(".")]


def test_saved_files_get_the_usual_permissions(reference_folder, tmp_path):
    """Atomic saves must not leave the temporary file's private 0600 mode on the result."""
    folder, _ = reference_folder
    model = AutoModelForCausalLM.from_pretrained(folder)
    previous = os.umask(0o022)
    try:
        model.save_pretrained(tmp_path / "out")
        model.save_pretrained(tmp_path / "gguf", gguf="model.gguf:F32")
    finally:
        os.umask(previous)
    written = [*sorted((tmp_path / "out").iterdir()), tmp_path / "gguf" / "model.gguf"]
    assert len(written) >= 3
    for path in written:
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path


def test_device_and_dtype_options(reference_folder):
    folder, reference = reference_folder
    model = AutoModelForCausalLM.from_pretrained(folder, device="cpu", dtype=torch.float16)
    assert model.dtype == torch.float16 and model.device.type == "cpu"
    assert model.model.rotary_emb.inv_freq.dtype == torch.float32  # computed buffers keep their precision
