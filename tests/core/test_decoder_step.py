"""The native decoder step (bestiary.nn.decoder_step) decodes exactly as the model's own modules do.

Every comparison runs the same model twice: once with the native step
switched off (``native_decoder_step`` patched to decline, so the modules run)
and once with it on, counting the steps it really took; an equivalence test
that did not take the native path fails. Weights are redrawn at a scale where
attention is far from uniform and every norm, bias and rotary factor moves
the logits, so a kernel that skipped one of them would show.
"""

from __future__ import annotations

import copy
import platform
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
from torch import nn

from bestiary.generation.cache import _GROWTH, DynamicCache
from bestiary.generation.static_cache import StaticCache
from bestiary.integrations.gguf.quantized_linear import QuantizedLinear, quantize_linear_layers
from bestiary.nn import kernels, projection
from bestiary.nn.norms import RMSNorm
from bestiary_text import modeling_llama
from bestiary_text.configuration_llama import LlamaConfig
from bestiary_text.configuration_mistral import MistralConfig
from bestiary_text.configuration_qwen2 import Qwen2Config
from bestiary_text.modeling_llama import LlamaDecoderLayer, LlamaForCausalLM
from bestiary_text.modeling_mistral import MistralForCausalLM
from bestiary_text.modeling_qwen2 import Qwen2ForCausalLM


def _cpu_has_avx2() -> bool:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            flags = next((line for line in handle if line.startswith("flags")), "")
    except OSError:
        return False
    return platform.machine() in ("x86_64", "AMD64") and all(f in flags.split() for f in ("avx2", "fma", "f16c"))


pytestmark = pytest.mark.skipif(not _cpu_has_avx2(), reason="the native decoding kernels need AVX2, FMA and F16C")

ATOL = 1e-5
VOCAB = 89
FAMILIES = {
    "llama": (LlamaConfig, LlamaForCausalLM),
    "mistral": (MistralConfig, MistralForCausalLM),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM),
}
BASE = dict(
    hidden_size=64,
    intermediate_size=100,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=VOCAB,
    max_position_embeddings=512,
    bos_token_id=None,
    eos_token_id=None,  # no early stop: every run decodes exactly the steps asked for
    pad_token_id=None,
)
LLAMA3 = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 64,
}


# ---------------------------------------------------------------- switching and counting the native step


class NativeSteps:
    """Stands in for ``native_decoder_step`` in modeling_llama: counts the steps it took, or declines them all."""

    def __init__(self) -> None:
        self.enabled = True
        self.taken = 0
        self.declined = 0

    def __call__(self, *args, **kwargs):
        if not self.enabled:
            return None
        out = _real_native_decoder_step(*args, **kwargs)
        if out is None:
            self.declined += 1
        else:
            self.taken += 1
        return out

    def reset(self) -> None:
        self.taken = self.declined = 0

    @contextmanager
    def off(self) -> Iterator[None]:
        """Run the model's modules for every step (the reference path)."""
        self.enabled = False
        try:
            yield
        finally:
            self.enabled = True


_real_native_decoder_step = modeling_llama.native_decoder_step


@pytest.fixture
def native(monkeypatch: pytest.MonkeyPatch) -> NativeSteps:
    steps = NativeSteps()
    monkeypatch.setattr(modeling_llama, "native_decoder_step", steps)
    return steps


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def test_kernels_build_here() -> None:
    assert kernels.library() is not None


# ---------------------------------------------------------------- tiny models


def redraw(model: nn.Module, seed: int) -> nn.Module:
    """Draw every weight so that each matters: unit-scale projections, norms away from 1, real biases."""
    generator = torch.Generator().manual_seed(seed)

    def normal(tensor: torch.Tensor, std: float, mean: float = 0.0) -> None:
        tensor.copy_(mean + std * torch.randn(tensor.shape, generator=generator))

    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Linear):
                normal(module.weight, module.in_features**-0.5)
                if module.bias is not None:
                    normal(module.bias, 0.5)
            elif type(module).__name__.endswith("RMSNorm"):  # ours, or transformers' LlamaRMSNorm
                normal(module.weight, 0.3, mean=1.0)
            elif isinstance(module, nn.Embedding):
                normal(module.weight, 1.0)
    return model


def tiny(family: str = "llama", seed: int = 0, **overrides) -> nn.Module:
    """A random ``family`` causal LM (eval mode, float32) built from BASE with ``overrides``."""
    config_class, model_class = FAMILIES[family]
    torch.manual_seed(seed)
    model = model_class(config_class(**{**BASE, **overrides})).eval()
    return redraw(model, seed)


def prompt(length: int = 7, batch: int = 1, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (batch, length), generator=generator)


def greedy(model: nn.Module, ids: torch.Tensor, new_tokens: int, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """(sequences, logits [batch, new_tokens, vocab]) of greedy decoding."""
    out = model.generate(
        ids, max_new_tokens=new_tokens, do_sample=False, output_logits=True, return_dict_in_generate=True, **kwargs
    )
    return out.sequences, torch.stack(out.logits, dim=1)


def assert_same_decoding(expected: tuple[torch.Tensor, torch.Tensor], got: tuple[torch.Tensor, torch.Tensor]) -> None:
    assert torch.equal(got[0], expected[0]), f"greedy tokens differ:\n{expected[0]}\n{got[0]}"
    torch.testing.assert_close(got[1], expected[1], rtol=0, atol=ATOL)


def assert_native_matches_modules(
    native: NativeSteps, model: nn.Module, ids: torch.Tensor, new_tokens: int, **kwargs
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode with the modules, then natively; every step after the prompt must be native and agree."""
    with native.off():
        expected = greedy(model, ids, new_tokens, **kwargs)
    native.reset()
    got = greedy(model, ids, new_tokens, **kwargs)
    assert (native.taken, native.declined) == (new_tokens - 1, 1)  # declined: the prompt's forward
    assert_same_decoding(expected, got)
    return got


# ---------------------------------------------------------------- 1. configurations

CONFIGURATIONS = {
    "mha-head16": dict(
        hidden_size=64, num_attention_heads=4, num_key_value_heads=4, head_dim=16, intermediate_size=100
    ),
    "gqa2-head32-wide-q": dict(
        hidden_size=96, num_attention_heads=4, num_key_value_heads=2, head_dim=32, intermediate_size=90
    ),
    "mqa-head64": dict(
        hidden_size=128, num_attention_heads=2, num_key_value_heads=1, head_dim=64, intermediate_size=130
    ),
    "head24-hidden72-tied": dict(
        hidden_size=72, num_attention_heads=3, num_key_value_heads=1, intermediate_size=58, tie_word_embeddings=True
    ),
    "hidden100-head20-eps": dict(
        hidden_size=100, num_attention_heads=5, num_key_value_heads=5, intermediate_size=77, rms_norm_eps=1e-2
    ),
    "three-layers-gqa3": dict(
        hidden_size=48, num_attention_heads=6, num_key_value_heads=2, num_hidden_layers=3, intermediate_size=36
    ),
    "attention-and-mlp-bias": dict(attention_bias=True, mlp_bias=True, intermediate_size=44),
    "rope-theta-small": dict(rope_parameters={"rope_type": "default", "rope_theta": 100.0}),
    "rope-linear": dict(rope_scaling={"rope_type": "linear", "factor": 2.0}),
    "rope-dynamic-past-max-positions": dict(
        rope_scaling={"rope_type": "dynamic", "factor": 2.0}, max_position_embeddings=16
    ),
    "rope-llama3-gqa": dict(rope_scaling=LLAMA3, num_key_value_heads=1, head_dim=32),
    "rope-yarn": dict(rope_scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16}),
    "rope-longrope": dict(
        rope_scaling={
            "rope_type": "longrope",
            "short_factor": [1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 9.0],
            "long_factor": [2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 12.0],
            "original_max_position_embeddings": 16,
        },
        max_position_embeddings=64,
    ),
}


@pytest.mark.parametrize("name", sorted(CONFIGURATIONS))
def test_llama_configurations_decode_natively_as_their_modules(native, name):
    model = tiny("llama", **CONFIGURATIONS[name])
    if model.config.tie_word_embeddings:
        assert model.lm_head.weight is model.model.embed_tokens.weight
    assert_native_matches_modules(native, model, prompt(7), new_tokens=30)


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_qwen2_qkv_biases_decode_natively(native, tied):
    model = tiny(
        "qwen2",
        hidden_size=72,
        num_attention_heads=6,
        num_key_value_heads=2,
        intermediate_size=70,
        tie_word_embeddings=tied,
    )
    attention = model.model.layers[0].self_attn
    assert attention.q_proj.bias is not None and attention.o_proj.bias is None
    assert_native_matches_modules(native, model, prompt(7), new_tokens=25)


def without_window(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose every layer attends to all tokens."""
    full = copy.deepcopy(model)
    full.config.__dict__["sliding_window"] = None
    assert all(full.model.layer_sliding_window(i) is None for i in range(len(full.model.layers)))
    return full


def test_mistral_sliding_window_shorter_than_the_text_is_honoured(native):
    model = tiny("mistral", sliding_window=5, num_key_value_heads=1)
    ids = prompt(7)
    windowed = assert_native_matches_modules(native, model, ids, new_tokens=30)
    with native.off():
        full = greedy(without_window(model), ids, 30)
    # The window changes the answer, so a kernel attending to every token would have failed above.
    assert (windowed[1] - full[1]).abs().max() > 1e-2


def test_qwen2_windows_on_some_layers_only(native):
    model = tiny(
        "qwen2",
        num_hidden_layers=3,
        use_sliding_window=True,
        sliding_window=4,
        max_window_layers=1,
        hidden_size=48,
        num_attention_heads=3,
        num_key_value_heads=1,
        intermediate_size=40,
    )
    windows = [model.model.layer_sliding_window(i) for i in range(3)]
    assert windows == [None, 4, 4]
    ids = prompt(6)
    windowed = assert_native_matches_modules(native, model, ids, new_tokens=30)
    with native.off():
        full = greedy(without_window(model), ids, 30)
    assert (windowed[1] - full[1]).abs().max() > 1e-2


# ---------------------------------------------------------------- 2. GGUF-quantized layers


def quantized(ggml_type: str, head_type: str | None = None, **overrides) -> nn.Module:
    """A tiny Llama whose decoder layers hold ``ggml_type`` blocks (and lm_head ``head_type``, or float32)."""
    model = tiny("llama", **overrides)
    replaced = quantize_linear_layers(model.model, ggml_type)
    assert len(replaced) == 7 * len(model.model.layers)
    if head_type is not None:
        model.lm_head = QuantizedLinear.from_float(model.lm_head.weight.detach(), head_type)
    return model


GGUF_SHAPES = {
    "hidden96": dict(hidden_size=96, num_attention_heads=3, num_key_value_heads=1, head_dim=32, intermediate_size=160),
    "hidden160": dict(hidden_size=160, num_attention_heads=2, num_key_value_heads=2, head_dim=64, intermediate_size=96),
}


@pytest.mark.parametrize("shape", sorted(GGUF_SHAPES))
@pytest.mark.parametrize("ggml_type", ["Q8_0", "Q4_0", "Q4_1"])
def test_quantized_layers_decode_natively_as_their_modules(native, ggml_type, shape):
    model = quantized(ggml_type, **GGUF_SHAPES[shape])
    assert_native_matches_modules(native, model, prompt(7), new_tokens=24)


def test_q4_1_layers_with_a_q8_0_head_and_mlp_bias(native):
    model = quantized("Q4_1", head_type="Q8_0", mlp_bias=True, attention_bias=True, **GGUF_SHAPES["hidden96"])
    assert model.model.layers[0].mlp.down_proj.bias is not None
    assert_native_matches_modules(native, model, prompt(7), new_tokens=24)


def test_quantized_and_float_layers_mixed_in_one_layer(native):
    model = tiny("llama", **GGUF_SHAPES["hidden96"])
    for index, layer in enumerate(model.model.layers):
        for name, kind in (("q_proj", "Q4_0"), ("v_proj", "Q8_0"), ("o_proj", "Q4_1")):
            old = getattr(layer.self_attn, name)
            setattr(layer.self_attn, name, QuantizedLinear.from_float(old.weight.detach(), kind))
        old = layer.mlp.up_proj
        layer.mlp.up_proj = QuantizedLinear.from_float(old.weight.detach(), ("Q4_1", "Q8_0")[index % 2])
    assert_native_matches_modules(native, model, prompt(7), new_tokens=24)


def test_8_bit_activations_decode_natively_as_their_modules(native):
    """The native step honours set_quantized_activations, as project() does.

    Rounding activations to 8 bits makes a step discontinuous: float32 noise of 1e-7 can move one activation
    to the next level, and Q4 weights (whose products nearly cancel against their offsets) amplify that noise
    enough to do so within a few steps. Q8_0 weights over a few steps keep the comparison exact.
    """
    model = quantized("Q8_0", head_type="Q8_0", **GGUF_SHAPES["hidden96"])
    ids = prompt(7)
    with native.off():
        float_activations = greedy(model, ids, 8)
    projection.set_quantized_activations(True)
    try:
        int8 = assert_native_matches_modules(native, model, ids, new_tokens=8)
    finally:
        projection.set_quantized_activations(False)
    assert (int8[1] - float_activations[1]).abs().max() > 1e-3  # 8-bit activations really were used


# ---------------------------------------------------------------- 3. static cache


def test_static_cache_decodes_natively_as_the_dynamic_cache(native):
    model = tiny("llama", rope_scaling=LLAMA3)
    ids = prompt(7)
    dynamic = assert_native_matches_modules(native, model, ids, new_tokens=30)
    static = assert_native_matches_modules(native, model, ids, new_tokens=30, cache_implementation="static")
    assert torch.equal(static[0], dynamic[0])
    torch.testing.assert_close(static[1], dynamic[1], rtol=0, atol=ATOL)


def test_static_cache_with_a_sliding_window(native):
    model = tiny("mistral", sliding_window=6)
    assert_native_matches_modules(native, model, prompt(9), new_tokens=25, cache_implementation="static")


class CountingKernels:
    """Stands in for the loaded kernel library, counting whole-stack decoding calls (made outside any graph)."""

    def __init__(self, library) -> None:
        self.library = library
        self.steps = 0

    def __getattr__(self, name: str):
        if name == "bd_decode":
            self.steps += 1
        return getattr(self.library, name)


@pytest.mark.parametrize("fullgraph", [False, True], ids=["graph-breaks-allowed", "fullgraph"])
def test_compiled_decode_steps_call_the_native_step_unless_fullgraph(monkeypatch, fullgraph):
    import torch._dynamo

    torch._dynamo.reset()  # compiled code is cached per function, across models and options
    counting = CountingKernels(kernels.library())
    monkeypatch.setattr(kernels, "library", lambda: counting)
    model, ids = tiny("llama", rope_scaling=LLAMA3), prompt(7)
    expected = greedy(model, ids, 12, cache_implementation="static")
    counting.steps = 0
    options = {"backend": "eager", "fullgraph": fullgraph}  # a fullgraph step must not break its graph
    got = greedy(model, ids, 12, cache_implementation="static", compile_decode=True, compile_config=options)
    assert counting.steps == (0 if fullgraph else 11)
    assert_same_decoding(expected, got)


def test_a_static_cache_passed_in_with_a_one_token_prompt(native):
    model = tiny("llama")
    cache = StaticCache(max_cache_len=64)
    ids = prompt(1)
    with native.off():
        expected = greedy(model, ids, 20, past_key_values=StaticCache(max_cache_len=64))
    native.reset()
    got = greedy(model, ids, 20, past_key_values=cache)
    assert (native.taken, native.declined) == (19, 1)  # the first token finds no storage yet
    assert_same_decoding(expected, got)


def test_a_prompt_prefilled_one_token_at_a_time_decodes_natively(native):
    model = tiny("mistral", sliding_window=4)
    ids = prompt(9)
    with native.off():
        expected = greedy(model, ids, 12, prefill_chunk_size=1)
    native.reset()
    got = greedy(model, ids, 12, prefill_chunk_size=1)
    assert native.taken == (9 - 1) + (12 - 1)  # every token but the first of the prompt
    assert_same_decoding(expected, got)
    with native.off():
        assert_same_decoding(greedy(model, ids, 12), got)


def test_prompt_lookup_decoding_rolls_the_cache_back_under_the_native_step(native, monkeypatch):
    model = tiny("llama")
    ids = torch.cat([prompt(6), prompt(6), prompt(6)], dim=1)  # repeats give the lookup candidates
    with native.off():
        expected = greedy(model, ids, 20)
    native.reset()
    rollbacks = []  # native steps taken before each crop
    crop = DynamicCache.crop
    monkeypatch.setattr(
        DynamicCache, "crop", lambda cache, length: (rollbacks.append(native.taken), crop(cache, length))[1]
    )
    got = model.generate(ids, max_new_tokens=20, do_sample=False, prompt_lookup_num_tokens=3)
    assert rollbacks and native.taken > rollbacks[0]  # native steps wrote into a cache that was cropped
    assert torch.equal(got, expected[0])


# ---------------------------------------------------------------- 4. dynamic cache growth


def test_decoding_past_the_dynamic_cache_growth_boundary(native):
    model = tiny("llama", hidden_size=32, num_attention_heads=2, num_key_value_heads=1, intermediate_size=40)
    ids = prompt(5)
    new_tokens = _GROWTH + 20  # the cache first holds prompt + _GROWTH slots, then grows
    with native.off():
        expected = greedy(model, ids, new_tokens)
    native.reset()
    out = model.generate(
        ids, max_new_tokens=new_tokens, do_sample=False, output_logits=True, return_dict_in_generate=True
    )
    assert native.taken == new_tokens - 1
    cache = out.past_key_values
    assert isinstance(cache, DynamicCache) and cache._keys[0].shape[2] > ids.shape[1] + _GROWTH  # storage was regrown
    assert_same_decoding(expected, (out.sequences, torch.stack(out.logits, dim=1)))


# ---------------------------------------------------------------- 5. where the native step steps aside


def assert_modules_decode(native: NativeSteps, model: nn.Module, ids: torch.Tensor, new_tokens: int, **kwargs):
    """Decoding takes no native step (it is declined) and equals the module path."""
    with native.off():
        expected = greedy(model, ids, new_tokens, **kwargs)
    native.reset()
    got = greedy(model, ids, new_tokens, **kwargs)
    assert native.taken == 0
    assert native.declined > 0  # the step was asked and said no
    assert_same_decoding(expected, got)


HOOKED = {
    "decoder-layer": lambda model: model.model.layers[1],
    "attention": lambda model: model.model.layers[0].self_attn,
    "mlp": lambda model: model.model.layers[1].mlp,
    "input-norm": lambda model: model.model.layers[0].input_layernorm,
    "final-norm": lambda model: model.model.norm,
    "q-projection": lambda model: model.model.layers[0].self_attn.q_proj,
    "down-projection": lambda model: model.model.layers[1].mlp.down_proj,
}


@pytest.mark.parametrize(
    "where",
    sorted(HOOKED),
)
@pytest.mark.parametrize("kind", ["forward", "pre-forward"])
def test_a_hook_turns_the_native_step_off(native, where, kind):
    model = tiny("llama")
    calls = []
    module = HOOKED[where](model)
    if kind == "forward":
        handle = module.register_forward_hook(lambda *args: calls.append(1))
    else:
        handle = module.register_forward_pre_hook(lambda *args: calls.append(1))
    ids = prompt(7)
    assert_modules_decode(native, model, ids, new_tokens=6)
    assert len(calls) == 2 * 6  # every forward of both runs reached the hooked module
    handle.remove()
    assert_native_matches_modules(native, model, ids, new_tokens=6)  # and the native step comes back




@pytest.mark.parametrize(
    "where",
    ["decoder-layer", "q-projection", "down-projection"],
)
def test_a_hook_added_after_native_steps_turns_it_off(native, where):
    model = tiny("llama")
    ids = prompt(7)
    assert_native_matches_modules(native, model, ids, new_tokens=4)  # the stack is described and cached
    calls = []
    HOOKED[where](model).register_forward_hook(lambda *args: calls.append(1))
    assert_modules_decode(native, model, ids, new_tokens=4)
    assert len(calls) == 2 * 4


@pytest.mark.parametrize("kind", ["forward", "pre-forward"])
def test_a_global_hook_turns_the_native_step_off(native, kind):
    model = tiny("llama")
    calls = []
    register = {
        "forward": nn.modules.module.register_module_forward_hook,
        "pre-forward": nn.modules.module.register_module_forward_pre_hook,
    }[kind]
    handle = register(
        lambda module, *args: calls.append(type(module)) if isinstance(module, LlamaDecoderLayer) else None
    )
    try:
        assert_modules_decode(native, model, prompt(7), new_tokens=5)
    finally:
        handle.remove()
    assert len(calls) == 2 * 5 * len(model.model.layers)


@pytest.mark.parametrize("request_", ["output_attentions", "output_hidden_states"])
def test_asking_for_attentions_or_hidden_states_uses_the_modules(native, request_):
    model = tiny("llama")
    ids = prompt(7)
    kwargs = {request_: True}
    with native.off():
        expected = model.generate(
            ids, max_new_tokens=5, do_sample=False, output_logits=True, return_dict_in_generate=True, **kwargs
        )
    native.reset()
    got = model.generate(
        ids, max_new_tokens=5, do_sample=False, output_logits=True, return_dict_in_generate=True, **kwargs
    )
    assert native.taken == 0  # the model does not even ask
    assert torch.equal(got.sequences, expected.sequences)
    torch.testing.assert_close(torch.stack(got.logits), torch.stack(expected.logits), rtol=0, atol=ATOL)
    produced = got.attentions if request_ == "output_attentions" else got.hidden_states
    assert len(produced) == 5 and len(produced[-1]) >= len(model.model.layers)


def test_padding_in_the_attention_mask_of_one_sequence(native):
    model = tiny("llama")
    ids = prompt(8)
    mask = torch.ones_like(ids)
    mask[0, :3] = 0
    assert_modules_decode(native, model, ids, new_tokens=6, attention_mask=mask)
    with native.off():  # padding matters: the same tokens unmasked decode differently
        unmasked = greedy(model, ids, 6)
        masked = greedy(model, ids, 6, attention_mask=mask)
    assert (unmasked[1] - masked[1]).abs().max() > 1e-3


def test_an_all_ones_attention_mask_keeps_the_native_step(native):
    model = tiny("llama")
    ids = prompt(8)
    assert_native_matches_modules(native, model, ids, new_tokens=10, attention_mask=torch.ones_like(ids))


def test_two_sequences_use_the_modules(native):
    model = tiny("llama")
    assert_modules_decode(native, model, prompt(7, batch=2), new_tokens=6)




def test_training_mode_uses_the_modules(native):
    model = tiny("llama", attention_dropout=0.0)
    model.train()
    with torch.no_grad():
        assert_modules_decode(native, model, prompt(7), new_tokens=5)


def test_training_mode_after_native_steps_uses_the_modules(native):
    model = tiny("llama", attention_dropout=0.0)
    ids = prompt(7)
    assert_native_matches_modules(native, model, ids, new_tokens=4)
    model.train()
    with torch.no_grad():
        assert_modules_decode(native, model, ids, new_tokens=4)


def decode_by_hand(model: nn.Module, ids: torch.Tensor, steps: int, cache: DynamicCache) -> torch.Tensor:
    """Greedy decoding with direct forward calls; returns the logits of each step."""
    logits = model(ids, past_key_values=cache, use_cache=True).logits[:, -1]
    collected = [logits]
    for _ in range(steps):
        logits = model(logits.argmax(-1, keepdim=True), past_key_values=cache, use_cache=True).logits[:, -1]
        collected.append(logits)
    return torch.stack(collected, dim=1)


def test_gradients_use_the_modules_and_reach_the_weights(native):
    model = tiny("llama")
    cache = DynamicCache()
    with torch.no_grad():
        logits = decode_by_hand(model, prompt(7), 3, cache)[:, -1]
    assert native.taken == 3
    token = logits.argmax(-1, keepdim=True)
    with native.off(), torch.no_grad():
        expected = model(token, past_key_values=copy.deepcopy(cache)).logits
    native.reset()
    got = model(token, past_key_values=cache).logits  # autograd records this step
    assert (native.taken, native.declined) == (0, 1)
    torch.testing.assert_close(got.detach(), expected, rtol=0, atol=ATOL)
    got.sum().backward()
    assert model.model.layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0


def test_no_grad_by_hand_takes_the_native_step(native):
    model = tiny("llama")
    ids = prompt(7)
    with torch.no_grad():
        with native.off():
            expected = decode_by_hand(model, ids, 5, DynamicCache())
        native.reset()
        got = decode_by_hand(model, ids, 5, DynamicCache())
    assert native.taken == 5
    torch.testing.assert_close(got, expected, rtol=0, atol=ATOL)


def test_a_cache_position_behind_the_dynamic_cache_uses_the_modules(native):
    model, ids = tiny("llama"), prompt(7)
    token = torch.tensor([[5]])
    with torch.no_grad():
        cache = DynamicCache()
        model(ids, past_key_values=cache, use_cache=True)
        twin = copy.deepcopy(cache)
        with native.off():
            expected = model(token, past_key_values=twin, cache_position=torch.tensor([3])).logits
        native.reset()
        got = model(token, past_key_values=cache, cache_position=torch.tensor([3])).logits
    assert (native.taken, native.declined) == (0, 1)  # stored at slot 7, masked as position 3
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_threads_decoding_with_one_model_keep_their_own_caches(native):
    model = tiny("llama")
    prompts = [prompt(7, seed=seed) for seed in range(4)]
    with native.off():
        expected = [model.generate(ids, max_new_tokens=30, do_sample=False) for ids in prompts]
    agree: list[bool] = []

    def decode(index: int) -> None:
        for _ in range(3):
            agree.append(torch.equal(model.generate(prompts[index], max_new_tokens=30, do_sample=False), expected[index]))

    threads = [threading.Thread(target=decode, args=(index,)) for index in range(len(prompts))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert native.taken > 0
    assert agree == [True] * 12


def test_bfloat16_models_use_the_modules(native):
    model = tiny("llama").to(torch.bfloat16)
    assert_modules_decode(native, model, prompt(7), new_tokens=5)


def test_the_environment_switch_turns_the_native_step_off(native, monkeypatch):
    model = tiny("llama")
    monkeypatch.setenv(kernels.ENV_VAR, "0")
    kernels.reset()
    try:
        assert kernels.library() is None
        assert_modules_decode(native, model, prompt(7), new_tokens=5)
    finally:
        monkeypatch.delenv(kernels.ENV_VAR)
        kernels.reset()
    assert_native_matches_modules(native, model, prompt(7), new_tokens=5)


@pytest.mark.parametrize(
    ("implementation", "options"),
    [
        ("sliding_window", {"sliding_window": 64}),
        ("quantized", {"nbits": 8, "residual_length": 64}),
        ("offloaded_static", {}),
    ],
)
def test_caches_that_cannot_hand_out_storage_use_the_modules(native, implementation, options):
    model = tiny("llama")
    assert_modules_decode(
        native, model, prompt(7), new_tokens=6, cache_implementation=implementation, cache_config=options
    )


def test_an_offloaded_cache_on_the_cpu_is_a_dynamic_cache_and_decodes_natively(native):
    model = tiny("llama")
    assert_native_matches_modules(native, model, prompt(7), new_tokens=10, cache_implementation="offloaded")


def test_partial_rotary_uses_the_modules(native):
    model = tiny("llama", rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5})
    assert model.model.rotary_emb.inv_freq.shape[0] * 2 < model.config.head_dim
    assert_modules_decode(native, model, prompt(7), new_tokens=5)


def test_norms_with_different_epsilons_use_the_modules(native):
    model = tiny("llama")
    model.model.layers[1].post_attention_layernorm.variance_epsilon = 0.5
    assert_modules_decode(native, model, prompt(7), new_tokens=5)


def test_a_layer_with_its_own_forward_uses_the_modules(native):
    model = tiny("llama")

    class ScaledMLP(type(model.model.layers[0].mlp)):
        def forward(self, x):
            return 0.5 * super().forward(x)

    layer = model.model.layers[1]
    scaled = ScaledMLP(model.config)
    scaled.load_state_dict(layer.mlp.state_dict())
    layer.mlp = scaled
    assert_modules_decode(native, model, prompt(7), new_tokens=5)


# ---------------------------------------------------------------- 6. changed weights and modules


def continue_both_ways(native: NativeSteps, model: nn.Module, change, new_tokens: int = 6) -> None:
    """Decode a few native steps, apply ``change(model)``, then check the next native steps read the changed model.

    The reference is a fresh copy of the changed model and of the cache, decoded by its modules.
    """
    ids = prompt(7)
    first = model.generate(ids, max_new_tokens=5, do_sample=False, return_dict_in_generate=True)
    assert native.taken == 4
    before = copy.deepcopy(model)
    change(model)
    reference_model, reference_cache = copy.deepcopy(model), copy.deepcopy(first.past_key_values)
    with native.off():
        expected = greedy(reference_model, first.sequences, new_tokens, past_key_values=reference_cache)
        unchanged = greedy(before, first.sequences, new_tokens, past_key_values=copy.deepcopy(first.past_key_values))
    native.reset()
    got = greedy(model, first.sequences, new_tokens, past_key_values=first.past_key_values)
    assert native.taken == new_tokens  # the first step of this call decodes the last token of the first
    assert_same_decoding(expected, got)
    assert (expected[1] - unchanged[1]).abs().max() > 1e-3  # the change mattered


def _new_linear_like(old: nn.Linear, seed: int) -> nn.Linear:
    torch.manual_seed(seed)
    new = nn.Linear(old.in_features, old.out_features, bias=old.bias is not None)
    nn.init.normal_(new.weight, std=old.in_features**-0.5)
    return new


CHANGES = {
    "new-q-module": lambda model: setattr(
        model.model.layers[0].self_attn, "q_proj", _new_linear_like(model.model.layers[0].self_attn.q_proj, 5)
    ),
    "quantized-o-module": lambda model: setattr(
        model.model.layers[1].self_attn,
        "o_proj",
        QuantizedLinear.from_float(model.model.layers[1].self_attn.o_proj.weight.detach() * 2, "Q4_1"),
    ),
    "new-weight-parameter": lambda model: setattr(
        model.model.layers[1].mlp.down_proj, "weight", nn.Parameter(torch.randn(64, 100) * 0.3)
    ),
    "new-weight-storage": lambda model: setattr(
        model.model.layers[0].mlp.gate_proj.weight, "data", torch.randn(100, 64) * 0.3
    ),
    "new-norm-storage": lambda model: setattr(
        model.model.layers[0].input_layernorm.weight, "data", torch.rand(64) + 0.5
    ),
    "in-place-edit": lambda model: model.model.layers[0].self_attn.v_proj.weight.data.mul_(-2.0),
    "new-final-norm": lambda model: setattr(model.model, "norm", RMSNorm(64, eps=model.config.rms_norm_eps)),
    "new-decoder-layer": lambda model: setattr(model.model.layers, "1", redraw(LlamaDecoderLayer(model.config, 1), 9).eval()),
    "new-layer-list": lambda model: setattr(
        model.model, "layers", nn.ModuleList([model.model.layers[0], redraw(LlamaDecoderLayer(model.config, 1), 9).eval()])
    ),
}


@pytest.mark.parametrize("name", sorted(CHANGES))
def test_the_next_native_step_reads_changed_weights(native, name):
    continue_both_ways(native, tiny("llama", mlp_bias=True), CHANGES[name])


_kept_alive: list[torch.Tensor] = []


def _new_bias_storage(model: nn.Module) -> None:
    bias = model.model.layers[0].self_attn.k_proj.bias
    _kept_alive.append(bias.data)  # keep the old storage readable (and unchanged) instead of freed
    bias.data = torch.randn(bias.shape) * 2


def test_the_next_native_step_reads_a_bias_given_new_storage(native):
    try:
        continue_both_ways(native, tiny("qwen2"), _new_bias_storage)
    finally:
        _kept_alive.clear()


# ---------------------------------------------------------------- 7. several turns on one cache


def test_a_second_turn_on_the_same_cache_continues_correctly(native):
    model = tiny("llama", rope_scaling=LLAMA3, num_key_value_heads=1)
    first_prompt, reply = prompt(7), prompt(4, seed=3)

    def two_turns() -> tuple[torch.Tensor, torch.Tensor, DynamicCache]:
        cache = DynamicCache()
        first = greedy(model, first_prompt, 12, past_key_values=cache)
        second = greedy(model, torch.cat([first[0], reply], dim=1), 15, past_key_values=cache)
        return second[0], torch.cat([first[1], second[1]], dim=1), cache

    with native.off():
        expected = two_turns()
    native.reset()
    got = two_turns()
    assert native.taken == 11 + 14
    assert_same_decoding(expected[:2], got[:2])
    assert got[2].get_seq_length() == got[0].shape[1] - 1
    # and the same as decoding the whole conversation from scratch
    with native.off():
        fresh = greedy(model, got[0][:, : 7 + 12 + 4], 15)
    assert torch.equal(fresh[0], got[0])


# ---------------------------------------------------------------- against transformers


def test_greedy_tokens_match_transformers_with_llama3_rope_and_gqa(native, tmp_path):
    transformers = pytest.importorskip("transformers")
    import bestiary.auto as auto

    config = transformers.LlamaConfig(
        hidden_size=64,
        intermediate_size=88,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=VOCAB,
        max_position_embeddings=256,
        rope_parameters={"rope_theta": 10000.0, **LLAMA3},
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )
    torch.manual_seed(0)
    reference = redraw(transformers.LlamaForCausalLM(config).eval(), seed=0)
    reference.save_pretrained(tmp_path)
    ours = auto.AutoModelForCausalLM.from_pretrained(tmp_path)
    ids = prompt(7)
    expected = reference.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=30, do_sample=False)
    native.reset()
    got = ours.generate(ids, max_new_tokens=30, do_sample=False)
    assert native.taken == 29
    assert torch.equal(got, expected)
