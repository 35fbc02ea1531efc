"""ThreadChoice follows whichever thread count is faster, probing the other with growing intervals."""

from __future__ import annotations

import pytest
import torch

from bestiary.nn import thread_choice
from bestiary.nn.thread_choice import FIRST_INTERVAL, MAX_INTERVAL, ThreadChoice


def run(choice: ThreadChoice, steps: int, seconds: dict[int, float], most: int = 2) -> list[int]:
    """Drive ``steps`` steps whose duration depends only on the thread count; return the counts used."""
    used = []
    for _ in range(steps):
        threads = choice.threads(most)
        choice.record(threads, seconds[threads])
        used.append(threads)
    return used


def test_an_idle_machine_keeps_all_threads_and_probes_ever_less_often() -> None:
    used = run(ThreadChoice(), 1000, {2: 0.006, 1: 0.009})
    assert used[0] == 2
    probes = [step for step, threads in enumerate(used) if threads == 1]
    gaps = [b - a for a, b in zip(probes, probes[1:])]
    assert gaps == sorted(gaps) and gaps[0] >= FIRST_INTERVAL and max(gaps) <= MAX_INTERVAL + 1
    assert len(probes) <= 16  # of 1000 steps


def test_a_busy_machine_moves_to_one_thread_after_one_probe() -> None:
    used = run(ThreadChoice(), 200, {2: 0.050, 1: 0.010})
    assert used[:3] == [2, 1, 1]
    assert used.count(2) <= 8


def test_it_follows_the_machine_getting_busy_and_quiet_again() -> None:
    choice = ThreadChoice()
    run(choice, 50, {2: 0.006, 1: 0.009})
    busy = run(choice, 300, {2: 0.060, 1: 0.010})  # another process took a core
    assert busy[:3].count(1) >= 1 and busy[-100:].count(1) >= 95
    quiet = run(choice, 300, {2: 0.006, 1: 0.009})  # and left
    assert quiet[:MAX_INTERVAL + 2].count(2) >= 1 and quiet[-100:].count(2) >= 95


def test_one_thread_allowed_or_adaptivity_off_means_no_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    assert set(run(ThreadChoice(), 20, {1: 0.01}, most=1)) == {1}
    monkeypatch.setenv(thread_choice.ENV_VAR, "0")
    assert set(run(ThreadChoice(), 20, {2: 0.05, 1: 0.01})) == {2}


def test_a_new_thread_setting_starts_over() -> None:
    choice = ThreadChoice()
    run(choice, 20, {2: 0.05, 1: 0.01})
    assert choice.threads(4) == 4  # torch.set_num_threads(4): measure again from all threads
    assert choice.average == {}


@pytest.mark.parametrize("quantized", [False, True], ids=["float32", "Q4_1"])
def test_native_steps_give_identical_results_with_one_or_two_threads(monkeypatch: pytest.MonkeyPatch, quantized: bool) -> None:
    """Each output of the kernels is computed by one thread, so the count cannot change a bit."""
    from bestiary.generation.cache import DynamicCache
    from bestiary.integrations.gguf.quantized_linear import quantize_linear_layers
    from tests.core.test_decoder_step import prompt, tiny

    model = tiny("llama", hidden_size=256, intermediate_size=512, num_attention_heads=8, num_key_value_heads=4)
    if quantized:
        quantize_linear_layers(model, "Q4_1")
    with torch.no_grad():
        cache = DynamicCache()
        token = model(prompt(7), past_key_values=cache).logits[:, -1:].argmax(-1)
        previous = torch.get_num_threads()
        torch.set_num_threads(2)
        try:
            steps = {}
            chosen: list[int] = []
            for threads in (1, 2):

                def fixed(self: ThreadChoice, most: int, threads: int = threads) -> int:
                    chosen.append(threads)
                    return threads

                monkeypatch.setattr(ThreadChoice, "threads", fixed)
                copy = DynamicCache.from_legacy_cache(cache.to_legacy_cache())
                steps[threads] = [model(token, past_key_values=copy).logits for _ in range(3)]
        finally:
            torch.set_num_threads(previous)
    assert chosen.count(1) >= 3 and chosen.count(2) >= 3  # the native kernels really ran both ways
    assert all(torch.equal(one, two) for one, two in zip(steps[1], steps[2]))
