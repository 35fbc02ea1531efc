"""Caches: each gives the dynamic cache's greedy tokens where attention is unchanged; reuse, compile, sink reference.

The sink cache changes attention once tokens are evicted, so it is checked
against a written-out StreamingLLM reference (sinks + recent window, keys
re-rotated to their slot in the cache); the quantized cache is exact while
nothing is quantized and close afterwards.
"""

from __future__ import annotations

import pytest
import torch

from bestiary.errors import GenerationError
from bestiary.generation import offloaded_cache, static_cache
from bestiary.generation.cache import Cache, DynamicCache, EncoderDecoderCache
from bestiary.generation.offloaded_cache import OffloadedCache
from bestiary.generation.quantized_cache import QuantizedCache, dequantize, quantize
from bestiary.generation.static_cache import OffloadedStaticCache, StaticCache
from tests.core.test_generation_models import left_padded, one_thread, prompt, tiny_llama, tiny_mistral  # noqa: F401

EQUIVALENT = {
    "static": None,
    "offloaded": None,
    "offloaded_static": None,
    "quantized": {"nbits": 4, "residual_length": 64},
    "sink": {"window_length": 64, "num_sink_tokens": 4},
    "sliding_window": {"sliding_window": 64},
}


def batch():
    return left_padded([prompt(9, seed=2)[0], prompt(5, seed=3)[0], prompt(7, seed=4)[0]], pad=0)


@pytest.mark.parametrize("implementation", sorted(EQUIVALENT))
def test_every_cache_gives_the_dynamic_tokens(implementation):
    model = tiny_llama()
    ids, mask = batch()
    expected = model.generate(ids, attention_mask=mask, max_new_tokens=14, eos_token_id=None)
    got = model.generate(
        ids, attention_mask=mask, max_new_tokens=14, eos_token_id=None,
        cache_implementation=implementation, cache_config=EQUIVALENT[implementation],
    )
    assert torch.equal(got, expected)


def test_sliding_window_cache_bounds_memory_for_a_windowed_model():
    model = tiny_mistral(sliding_window=6)
    ids = prompt(5)
    expected = model.generate(ids, max_new_tokens=24, eos_token_id=None)
    out = model.generate(
        ids, max_new_tokens=24, eos_token_id=None, cache_implementation="sliding_window", return_dict_in_generate=True
    )
    assert torch.equal(out.sequences, expected)
    cache = out.past_key_values
    assert cache.get_seq_length() == 5 + 23
    kept = cache._end[0] - cache._start[0]
    assert kept == 6  # only the window is kept, yet tokens equal the dynamic cache's


def test_sliding_window_needs_a_window():
    with pytest.raises(GenerationError, match="sliding_window"):
        tiny_llama().generate(prompt(4), max_new_tokens=2, cache_implementation="sliding_window")


def test_beam_search_and_sampling_with_a_static_cache():
    model = tiny_llama()
    ids, mask = batch()
    expected = model.generate(ids, attention_mask=mask, max_new_tokens=8, num_beams=3, num_return_sequences=2)
    got = model.generate(ids, attention_mask=mask, max_new_tokens=8, num_beams=3, num_return_sequences=2, cache_implementation="static")
    assert torch.equal(got, expected)
    torch.manual_seed(2)
    sampled = model.generate(ids, attention_mask=mask, max_new_tokens=8, do_sample=True, cache_implementation="static")
    torch.manual_seed(2)
    assert torch.equal(sampled, model.generate(ids, attention_mask=mask, max_new_tokens=8, do_sample=True))


def test_compiled_decode_step_gives_the_same_tokens_in_one_graph():
    import torch._dynamo
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()  # reset() keeps them, and earlier tests in this process may have compiled graphs
    model = tiny_llama()
    ids, mask = batch()
    expected = model.generate(ids, attention_mask=mask, max_new_tokens=10, eos_token_id=None)
    options = {"backend": "eager", "fullgraph": True}  # fullgraph: a graph break would raise
    got = model.generate(
        ids, attention_mask=mask, max_new_tokens=10, eos_token_id=None, compile_decode=True, compile_config=options
    )
    assert torch.equal(got, expected)
    again = model.generate(
        ids, attention_mask=mask, max_new_tokens=10, eos_token_id=None, compile_decode=True, compile_config=options
    )
    assert torch.equal(again, expected)
    shorter = model.generate(
        ids, attention_mask=mask, max_new_tokens=6, eos_token_id=None, compile_decode=True, compile_config=options
    )
    assert torch.equal(shorter, expected[:, : ids.shape[1] + 6])
    # one graph for every step of all three calls: the cache length is bucketed, so no recompilation
    assert counters["stats"]["unique_graphs"] == 1
    with pytest.raises(GenerationError, match="static"):
        model.generate(ids, max_new_tokens=2, compile_decode=True, cache_implementation="dynamic")


# -- reuse across calls --------------------------------------------------------------------
class CountingHook:
    def __init__(self, model):
        self.lengths: list[int] = []
        self.handle = model.register_forward_pre_hook(self, with_kwargs=True)

    def __call__(self, module, args, kwargs):
        ids = kwargs.get("input_ids")
        self.lengths.append(ids.shape[1] if ids is not None else kwargs["inputs_embeds"].shape[1])


@pytest.mark.parametrize("make_cache", [DynamicCache, lambda: StaticCache(64)], ids=["dynamic", "static"])
def test_multi_turn_reuse_computes_only_new_tokens(make_cache):
    model = tiny_llama()
    cache = make_cache()
    first_turn = prompt(7)
    out = model.generate(first_turn, max_new_tokens=5, eos_token_id=None, past_key_values=cache, return_dict_in_generate=True)
    assert out.past_key_values is cache and cache.get_seq_length() == 7 + 5 - 1
    second_turn = torch.cat([out.sequences, prompt(4, seed=8)], dim=1)
    hook = CountingHook(model)
    resumed = model.generate(second_turn, max_new_tokens=6, eos_token_id=None, past_key_values=cache)
    hook.handle.remove()
    assert hook.lengths[0] == 1 + 4  # the last answer token (never fed) and the 4 new ones
    assert hook.lengths[1:] == [1] * 5
    assert torch.equal(resumed, model.generate(second_turn, max_new_tokens=6, eos_token_id=None))


def test_a_cache_filled_by_beam_search_is_refused_for_the_next_turn_until_reset():
    model = tiny_llama()
    cache = DynamicCache()
    out = model.generate(prompt(7), max_new_tokens=5, num_beams=2, past_key_values=cache, return_dict_in_generate=True)
    second_turn = torch.cat([out.sequences, prompt(4, seed=8)], dim=1)
    with pytest.raises(GenerationError, match=r"past_key_values \(DynamicCache\) holds the last running beams.*fresh cache"):
        model.generate(second_turn, max_new_tokens=6, num_beams=2, past_key_values=cache)
    cache.reset()
    resumed = model.generate(second_turn, max_new_tokens=6, num_beams=2, past_key_values=cache)
    assert torch.equal(resumed, model.generate(second_turn, max_new_tokens=6, num_beams=2))


@pytest.mark.parametrize("make_cache", [DynamicCache, lambda: OffloadedStaticCache(64)], ids=["dynamic", "offloaded_static"])
def test_compile_decode_names_the_empty_cache_it_cannot_compile(make_cache):
    cache = make_cache()
    with pytest.raises(GenerationError, match=f"got {type(cache).__name__}"):
        tiny_llama().generate(prompt(3), max_new_tokens=2, compile_decode=True, past_key_values=cache)


def test_passing_a_cache_and_a_cache_implementation_is_an_error():
    with pytest.raises(GenerationError, match="past_key_values"):
        tiny_llama().generate(prompt(3), max_new_tokens=2, past_key_values=DynamicCache(), cache_implementation="static")


# -- sink cache ------------------------------------------------------------------------------------
def rotate(keys: torch.Tensor, shift: int, inv_freq: torch.Tensor) -> torch.Tensor:
    """Rotary rotation by ``shift`` positions, written out per channel pair (halves convention)."""
    angle = shift * inv_freq
    first, second = keys[..., : inv_freq.shape[0]], keys[..., inv_freq.shape[0] :]
    return torch.cat([first * angle.cos() - second * angle.sin(), second * angle.cos() + first * angle.sin()], dim=-1)


class ReferenceSinkCache(Cache):
    """StreamingLLM, naively: per token keep (rotary position used, key, value, absolute position).

    Before n new tokens arrive, evict middle tokens so that sinks + recent + n
    fit in the window; returned keys are rotated from the position they were
    computed at to their slot in the cache.
    """

    def __init__(self, window: int, sinks: int, inv_freq: torch.Tensor) -> None:
        self.window, self.sinks, self.inv_freq = window, sinks, inv_freq
        self.layers: dict[int, list[tuple[int, torch.Tensor, torch.Tensor, int]]] = {}
        self.seen = 0

    def kept(self) -> int:
        return len(self.layers.get(0, []))

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.seen

    def key_positions(self, layer_idx, cache_position):
        tokens = self.layers.setdefault(layer_idx, [])
        new = cache_position.shape[0]
        if len(tokens) + new > self.window:
            keep_recent = self.window - new - self.sinks
            self.layers[layer_idx] = tokens[: self.sinks] + (tokens[-keep_recent:] if keep_recent > 0 else [])
        return torch.tensor([t[3] for t in self.layers[layer_idx]] + cache_position.tolist())

    def update(self, key, value, layer_idx):
        tokens = self.layers[layer_idx]
        start_slot = len(tokens)
        for i in range(key.shape[2]):
            tokens.append((start_slot + i, key[:, :, i : i + 1], value[:, :, i : i + 1], self.seen + i))
        if layer_idx == len(self.layers) - 1:
            self.seen += key.shape[2]
        keys = torch.cat([rotate(k, slot - used, self.inv_freq) for slot, (used, k, _, _) in enumerate(tokens)], dim=2)
        values = torch.cat([v for _, _, v, _ in tokens], dim=2)
        return keys, values


def streaming_llm_reference(model, ids: torch.Tensor, steps: int, window: int, sinks: int) -> torch.Tensor:
    """Greedy decoding of one unpadded row through :class:`ReferenceSinkCache`, rotary positions = cache slots."""
    reference = ReferenceSinkCache(window, sinks, model.model.rotary_emb.inv_freq)
    tokens = step_ids = ids
    for _ in range(steps):
        new = step_ids.shape[1]
        kept = reference.kept()
        slot = kept if kept + new <= window else window - new
        positions = torch.arange(slot, slot + new)[None]
        cache_position = torch.arange(reference.seen, reference.seen + new)
        logits = model(step_ids, past_key_values=reference, position_ids=positions, cache_position=cache_position).logits
        step_ids = logits[:, -1:].argmax(-1)
        tokens = torch.cat([tokens, step_ids], dim=1)
    return tokens


def test_sink_cache_matches_the_streaming_llm_reference():
    model = tiny_llama()
    window, sinks = 10, 2
    ids = prompt(6)
    expected = streaming_llm_reference(model, ids, 16, window, sinks)
    got = model.generate(
        ids, max_new_tokens=16, eos_token_id=None, cache_implementation="sink",
        cache_config={"window_length": window, "num_sink_tokens": sinks},
    )
    assert torch.equal(got, expected)
    assert not torch.equal(got, model.generate(ids, max_new_tokens=16, eos_token_id=None))  # attention did change


@pytest.mark.parametrize("window, sinks", [(8, 2), (6, 0), (10, 4)])
@pytest.mark.parametrize("settings", [{}, {"num_beams": 3}], ids=["greedy", "beams"])
def test_sink_cache_rows_of_a_left_padded_batch_decode_as_if_alone(window, sinks, settings):
    model = tiny_llama()
    rows = [prompt(9, seed=2)[0], prompt(5, seed=3)[0], prompt(12, seed=4)[0]]  # the longest prompt exceeds the window
    ids, mask = left_padded(rows, pad=0)
    cache_config = {"window_length": window, "num_sink_tokens": sinks}
    kwargs = dict(max_new_tokens=14, eos_token_id=None, cache_implementation="sink", cache_config=cache_config, **settings)
    batched = model.generate(ids, attention_mask=mask, **kwargs)
    for i, row in enumerate(rows):
        alone = model.generate(row[None], **kwargs)
        assert torch.equal(batched[i, -14:], alone[0, -14:])  # padding neither sinks nor fills the window
        if not settings:
            assert torch.equal(alone, streaming_llm_reference(model, row[None], 14, window, sinks))


def test_sink_cache_refuses_right_padding():
    model = tiny_llama()
    ids = prompt(6, batch=2)
    mask = torch.ones_like(ids)
    mask[1, -2:] = 0
    with pytest.raises(GenerationError, match="padding_side='left'"):
        model.generate(ids, attention_mask=mask, max_new_tokens=3, cache_implementation="sink", cache_config={"window_length": 6})


def test_sink_cache_needs_its_settings():
    with pytest.raises(GenerationError, match="window_length"):
        tiny_llama().generate(prompt(3), max_new_tokens=2, cache_implementation="sink")


# -- quantized cache -----------------------------------------------------------------------------------
@pytest.mark.parametrize("nbits, tolerance", [(8, 0.01), (4, 0.15)])
def test_quantize_round_trip(nbits, tolerance):
    x = torch.randn(2, 3, 5, 32)
    codes, scale, offset = quantize(x, nbits, 16)
    assert codes.dtype == torch.uint8 and codes.shape[-1] == (32 if nbits == 8 else 16)
    restored = dequantize(codes, scale, offset, nbits, x.dtype)
    span = (x.amax() - x.amin()).item()
    assert (restored - x).abs().max().item() <= tolerance * span


@pytest.mark.parametrize("nbits", [8, 4])
def test_quantized_cache_stays_close_to_the_dynamic_cache(nbits):
    model = tiny_llama()
    ids = prompt(12)
    cache = QuantizedCache(nbits=nbits, residual_length=4, q_group_size=8)
    dynamic = DynamicCache()
    quantized_logits = model(ids, past_key_values=cache, use_cache=True).logits
    dynamic_logits = model(ids, past_key_values=dynamic, use_cache=True).logits
    torch.testing.assert_close(quantized_logits, dynamic_logits)  # the prompt step attends to unquantized keys
    step = prompt(1, seed=5)
    later_quantized = model(step, past_key_values=cache, use_cache=True).logits
    later_dynamic = model(step, past_key_values=dynamic, use_cache=True).logits
    assert cache.quantized_length(0) == 12 and cache.get_seq_length() == 13
    difference = (later_quantized - later_dynamic).abs().max().item()
    assert 0 < difference < (0.05 if nbits == 8 else 0.3)
    out = model.generate(ids, max_new_tokens=10, cache_implementation="quantized", cache_config={"nbits": nbits, "residual_length": 4, "q_group_size": 8})
    assert out.shape == (1, 22)


# -- other caches ---------------------------------------------------------------------------------------
def test_offloaded_cache_keeps_layers_on_the_offload_device():
    model = tiny_llama()
    cache = OffloadedCache(offload_device="cpu")
    out = model.generate(prompt(5), max_new_tokens=6, eos_token_id=None, past_key_values=cache)
    assert torch.equal(out, model.generate(prompt(5), max_new_tokens=6, eos_token_id=None))
    assert all(keys.device.type == "cpu" for keys, _ in cache)


@pytest.fixture
def compute_copies(monkeypatch) -> list[int]:
    """Sizes of the copies the offloaded caches make on the compute device, in order."""
    made: list[int] = []
    copy = offloaded_cache.compute_copy

    def counting_copy(stored: torch.Tensor, device: torch.device) -> torch.Tensor:
        made.append(stored.numel())
        return copy(stored, device)

    monkeypatch.setattr(offloaded_cache, "compute_copy", counting_copy)
    monkeypatch.setattr(static_cache, "compute_copy", counting_copy)
    return made


@pytest.mark.parametrize("implementation", ["offloaded", "offloaded_static"])
def test_offloaded_caches_copying_from_a_distinct_device_give_the_same_tokens(implementation, compute_copies, monkeypatch):
    # "cpu:0" is another torch.device than the model's "cpu", so layers are copied and prefetched as from a GPU's host.
    # As on a GPU, every step runs the model's modules: the native CPU decoder step would write the cache directly.
    from bestiary_text import modeling_llama

    monkeypatch.setattr(modeling_llama, "native_decoder_step", lambda *args, **kwargs: None)
    model = tiny_llama()
    ids, mask = batch()
    offloaded = dict(cache_implementation=implementation, cache_config={"offload_device": "cpu:0"})
    greedy = dict(attention_mask=mask, max_new_tokens=14, eos_token_id=None)
    assert torch.equal(model.generate(ids, **greedy, **offloaded), model.generate(ids, **greedy))
    assert len(compute_copies) >= 2 * 14  # keys and values of the second layer prefetched at every step at least
    beams = dict(attention_mask=mask, max_new_tokens=6, num_beams=3, num_return_sequences=2)
    assert torch.equal(model.generate(ids, **beams, **offloaded), model.generate(ids, **beams))
    lookup_prompt = torch.cat([prompt(6), prompt(3, seed=9), prompt(6)], dim=1)
    lookup = dict(max_new_tokens=12, prompt_lookup_num_tokens=3, eos_token_id=None)
    copies_before = len(compute_copies)
    assert torch.equal(model.generate(lookup_prompt, **lookup, **offloaded), model.generate(lookup_prompt, **lookup))
    assert len(compute_copies) > copies_before
    compute_copies.clear()
    model.generate(ids, **greedy, cache_implementation=implementation, cache_config={"offload_device": "cpu"})
    assert compute_copies == []  # the offload device is the compute device: nothing to copy


def test_encoder_decoder_cache_computes_cross_attention_once():
    cache = EncoderDecoderCache()
    calls = []

    def compute():
        calls.append(1)
        return torch.ones(2, 1, 3, 4), torch.zeros(2, 1, 3, 4)

    for _ in range(3):
        key, _ = cache.cross_attention(0, compute)
    assert len(calls) == 1 and key.shape == (2, 1, 3, 4)
    cache.update(torch.randn(2, 1, 5, 4), torch.randn(2, 1, 5, 4), 0)
    assert cache.get_seq_length() == 5
    cache.reorder_cache(torch.tensor([1, 1]))
    cache.crop(3)
    assert cache.get_seq_length() == 3 and cache.cross_attention_cache.get_seq_length() == 3


def test_chunked_prefill_gives_the_same_tokens():
    model = tiny_llama()
    ids, mask = batch()
    hook = CountingHook(model)
    got = model.generate(ids, attention_mask=mask, max_new_tokens=6, eos_token_id=None, prefill_chunk_size=4)
    hook.handle.remove()
    assert hook.lengths[:3] == [4, 4, 1] and hook.lengths[3:] == [1] * 5  # 9 prompt tokens in pieces of 4
    assert torch.equal(got, model.generate(ids, attention_mask=mask, max_new_tokens=6, eos_token_id=None))


def test_dynamic_cache_key_positions_follow_the_stored_length():
    cache = DynamicCache()
    step = torch.tensor([0, 1, 2])
    assert torch.equal(cache.key_positions(0, step), torch.arange(3))
    for layer in range(2):
        cache.update(torch.zeros(1, 2, 3, 4), torch.zeros(1, 2, 3, 4), layer)
    one = torch.tensor([3])
    first, second = cache.key_positions(0, one), cache.key_positions(1, one)
    assert first is second and torch.equal(first, torch.arange(4))  # one answer shared by the layers of a step
    cache.crop(2)
    assert torch.equal(cache.key_positions(0, torch.tensor([2])), torch.arange(3))
