"""generate() of bestiary against transformers 5.24.0, token for token, on tiny random Llama/Mistral/Qwen2.

transformers builds each checkpoint (from_config, seeded) and saves it;
bestiary loads it with AutoModelForCausalLM. Strategies transformers still
ships offline are compared directly: greedy, batched left padding (also with
pad == eos), beam search (length penalty, early stopping, several return
sequences), beam sampling (top_k 1, 5 and none) and sampling with top_k=1,
seeded sampling, assisted greedy (with a draft close enough that some drafts
are accepted), prompt lookup, the static cache, and the logits processors.
"""

from __future__ import annotations

import copy

import pytest
import torch
import transformers

import bestiary.auto as auto

TINY = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=97,
    max_position_embeddings=256,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
)
FAMILIES = {
    "llama": lambda: transformers.LlamaConfig(**TINY),
    "mistral": lambda: transformers.MistralConfig(**TINY, sliding_window=6),
    "qwen2": lambda: transformers.Qwen2Config(**TINY, use_sliding_window=True, sliding_window=6, max_window_layers=1),
}


@pytest.fixture(autouse=True)
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """(transformers model, bestiary model) per family, from one saved checkpoint each."""
    built = {}
    for family, make in FAMILIES.items():
        folder = tmp_path_factory.mktemp(family)
        torch.manual_seed(0)
        reference = transformers.AutoModelForCausalLM.from_config(make()).eval()
        reference.save_pretrained(folder)
        built[family] = (reference, auto.AutoModelForCausalLM.from_pretrained(folder))
    return built


def perturbed_draft(reference, folder):
    """(transformers draft, bestiary draft): ``reference`` with seeded noise, close enough that some drafts are accepted."""
    draft = copy.deepcopy(reference)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in draft.parameters():
            parameter.add_(0.003 * torch.randn(parameter.shape, generator=generator))
    draft.save_pretrained(folder)
    # transformers drafts with the settings of the draft's generation config; no confidence cut-off, as in bestiary
    draft.generation_config.num_assistant_tokens = 5
    draft.generation_config.assistant_confidence_threshold = 0.0
    return draft, auto.AutoModelForCausalLM.from_pretrained(folder)


class ForwardCount:
    def __init__(self, model) -> None:
        self.calls = 0
        self.handle = model.register_forward_pre_hook(self)

    def __call__(self, module, args) -> None:
        self.calls += 1


def ids(batch: int = 1, length: int = 9, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(3, TINY["vocab_size"], (batch, length), generator=generator)


def padded_batch(pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    rows = [ids(1, 9, seed=2)[0], ids(1, 5, seed=3)[0], ids(1, 7, seed=4)[0]]
    tokens = torch.full((3, 9), pad, dtype=torch.long)
    mask = torch.zeros(3, 9, dtype=torch.long)
    for i, row in enumerate(rows):
        tokens[i, 9 - len(row) :] = row
        mask[i, 9 - len(row) :] = 1
    return tokens, mask


def both(pair, *args, **kwargs):
    reference, ours = pair
    expected = reference.generate(*args, **kwargs)
    got = ours.generate(*args, **kwargs)
    return expected, got


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_greedy(pairs, family):
    expected, got = both(pairs[family], ids(), max_new_tokens=24, do_sample=False)
    assert torch.equal(expected, got)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_batched_left_padding_matches_transformers_and_unbatched_rows(pairs, family):
    tokens, mask = padded_batch(pad=0)
    expected, got = both(pairs[family], tokens, attention_mask=mask, max_new_tokens=12, do_sample=False)
    assert torch.equal(expected, got)
    ours = pairs[family][1]
    for row in range(tokens.shape[0]):
        alone = ours.generate(tokens[row : row + 1, mask[row].bool()], max_new_tokens=12)
        assert torch.equal(alone[0, -12:], got[row, -12:])


def test_left_padding_with_pad_equal_to_eos(pairs):
    tokens, mask = padded_batch(pad=2)
    kwargs = dict(attention_mask=mask, max_new_tokens=12, do_sample=False, pad_token_id=2, eos_token_id=2)
    expected, got = both(pairs["llama"], tokens, sequence_bias={(2,): 1.5}, **kwargs)
    assert torch.equal(expected, got)
    assert (got[:, 9:] == 2).any()  # some row ended with eos and was padded with it
    ours = pairs["llama"][1]
    for row in range(3):
        alone = ours.generate(tokens[row : row + 1, mask[row].bool()], max_new_tokens=12, pad_token_id=2, eos_token_id=2, sequence_bias={(2,): 1.5})
        width = alone.shape[1] - int(mask[row].sum())
        assert torch.equal(alone[0, -width:], got[row, 9 : 9 + width])


BEAM_SETTINGS = [
    dict(num_beams=3),
    dict(num_beams=4, num_return_sequences=3, length_penalty=0.5),
    dict(num_beams=2, early_stopping=True),
    dict(num_beams=3, early_stopping="never", length_penalty=2.0),
]


def beam_tokens(output, prompt_length: int) -> torch.Tensor:
    """Sequences with the padding after each finished hypothesis blanked out.

    transformers fills that padding with eos when pad_token_id is 0 (a falsy
    tensor); bestiary always pads with pad_token_id, as greedy decoding does.
    """
    sequences = output.sequences.clone()
    generated = sequences[:, prompt_length:]
    generated[output.beam_indices[:, : generated.shape[1]] < 0] = -1
    return sequences


@pytest.mark.parametrize("settings", BEAM_SETTINGS, ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items()))
@pytest.mark.parametrize("eos_bias", [0.0, 1.0])
def test_beam_search(pairs, settings, eos_bias):
    tokens, mask = padded_batch(pad=0)
    kwargs = dict(attention_mask=mask, max_new_tokens=10, do_sample=False, return_dict_in_generate=True, output_scores=True)
    if eos_bias:
        kwargs["sequence_bias"] = {(2,): eos_bias}
    expected, got = both(pairs["llama"], tokens, **kwargs, **settings)
    assert torch.equal(expected.beam_indices, got.beam_indices)
    assert torch.equal(beam_tokens(expected, 9), beam_tokens(got, 9))
    torch.testing.assert_close(expected.sequences_scores, got.sequences_scores, atol=1e-5, rtol=0)
    for a, b in zip(expected.scores, got.scores):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    reference, ours = pairs["llama"]
    torch.testing.assert_close(
        ours.compute_transition_scores(got.sequences, got.scores, got.beam_indices),
        reference.compute_transition_scores(expected.sequences, expected.scores, expected.beam_indices),
        atol=1e-5,
        rtol=0,
    )


def test_beam_sampling_and_sampling_with_top_k_one(pairs):
    tokens = ids(2)
    expected, got = both(pairs["qwen2"], tokens, max_new_tokens=10, do_sample=True, top_k=1)
    assert torch.equal(expected, got)
    greedy = pairs["qwen2"][1].generate(tokens, max_new_tokens=10)
    assert torch.equal(got, greedy)
    expected, got = both(pairs["qwen2"], tokens, max_new_tokens=8, do_sample=True, top_k=1, num_beams=3, return_dict_in_generate=True)
    assert torch.equal(beam_tokens(expected, 9), beam_tokens(got, 9))


@pytest.mark.parametrize("settings", [dict(top_k=5), dict(top_k=0, temperature=1.5)], ids=["top_k=5", "no top_k"])
def test_seeded_beam_sampling_matches_transformers(pairs, settings):
    reference, ours = pairs["llama"]
    tokens, mask = padded_batch(pad=0)
    kwargs = dict(attention_mask=mask, max_new_tokens=8, do_sample=True, num_beams=3, return_dict_in_generate=True, output_scores=True)
    torch.manual_seed(8)
    expected = reference.generate(tokens, **kwargs, **settings)
    torch.manual_seed(8)
    got = ours.generate(tokens, **kwargs, **settings)
    assert torch.equal(expected.beam_indices, got.beam_indices)
    assert torch.equal(beam_tokens(expected, 9), beam_tokens(got, 9))
    torch.testing.assert_close(expected.sequences_scores, got.sequences_scores, atol=1e-5, rtol=0)
    beam_search = ours.generate(tokens, attention_mask=mask, max_new_tokens=8, num_beams=3)
    assert not torch.equal(got.sequences, beam_search)  # the draws did leave beam search's path


def test_seeded_sampling_matches_transformers(pairs):
    reference, ours = pairs["llama"]
    kwargs = dict(max_new_tokens=16, do_sample=True, temperature=0.8, top_k=20, top_p=0.9)
    torch.manual_seed(11)
    expected = reference.generate(ids(2), **kwargs)
    torch.manual_seed(11)
    got = ours.generate(ids(2), **kwargs)
    assert torch.equal(expected, got)


@pytest.mark.parametrize("family", ["llama", "mistral"])
def test_assisted_greedy(pairs, family, tmp_path, monkeypatch):
    from bestiary.generation.assisted import DraftModelCandidates

    reference, ours = pairs[family]
    reference_draft, draft = perturbed_draft(reference, tmp_path)
    rounds = []
    original = DraftModelCandidates.update
    monkeypatch.setattr(DraftModelCandidates, "update", lambda self, a, p: (rounds.append((a, p)), original(self, a, p))[1])
    prompt_ids = ids(1, 11)
    settings = dict(max_new_tokens=40, num_assistant_tokens=5)
    their_forwards, our_forwards = ForwardCount(reference), ForwardCount(ours)
    expected = reference.generate(prompt_ids, do_sample=False, assistant_model=reference_draft, **settings)
    got = ours.generate(prompt_ids, assistant_model=draft, **settings)
    their_forwards.handle.remove(), our_forwards.handle.remove()
    assert torch.equal(expected, got)
    assert torch.equal(got, ours.generate(prompt_ids, max_new_tokens=40))
    assert 0 < sum(a for a, _ in rounds) < sum(p for _, p in rounds), rounds  # some drafts accepted, not all
    assert our_forwards.calls == their_forwards.calls == len(rounds) < 40  # the same verification rounds


def test_prompt_lookup(pairs):
    repeated = ids(1, 6)
    prompt_ids = torch.cat([repeated, ids(1, 3, seed=9), repeated], dim=1)
    expected, got = both(pairs["llama"], prompt_ids, max_new_tokens=20, do_sample=False, prompt_lookup_num_tokens=4)
    assert torch.equal(expected, got)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_static_cache(pairs, family):
    tokens, mask = padded_batch(pad=0)
    expected, got = both(pairs[family], tokens, attention_mask=mask, max_new_tokens=10, do_sample=False, cache_implementation="static")
    assert torch.equal(expected, got)
    assert torch.equal(got, pairs[family][1].generate(tokens, attention_mask=mask, max_new_tokens=10))


PROCESSOR_SETTINGS = [
    dict(repetition_penalty=1.8),
    dict(no_repeat_ngram_size=2),
    dict(bad_words_ids=[[40], [7, 8]]),
    dict(min_new_tokens=5, sequence_bias={(2,): 3.0}),
    dict(suppress_tokens=[10, 11, 12], begin_suppress_tokens=[13]),
    dict(sequence_bias={(5,): 2.0, (6, 7): -3.0}),
    dict(forced_eos_token_id=2),
    dict(eos_token_id=[2, 3], sequence_bias={(3,): 2.0}),
]


@pytest.mark.parametrize("settings", PROCESSOR_SETTINGS, ids=lambda s: ",".join(s))
def test_logits_processors_in_greedy_decoding(pairs, settings):
    tokens, mask = padded_batch(pad=0)
    kwargs = dict(attention_mask=mask, max_new_tokens=10, do_sample=False, return_dict_in_generate=True, output_scores=True, output_logits=True)
    expected, got = both(pairs["llama"], tokens, **kwargs, **settings)
    assert torch.equal(expected.sequences, got.sequences)
    assert len(expected.scores) == len(got.scores)
    for a, b in zip(expected.scores, got.scores):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    for a, b in zip(expected.logits, got.logits):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_sampling_warpers_match_transformers():
    from bestiary.generation import logits_process as ours
    from transformers.generation import logits_process as theirs

    generator = torch.Generator().manual_seed(0)
    scores = torch.randn(4, 97, generator=generator) * 3
    input_ids = torch.randint(0, 97, (4, 6), generator=generator)
    cases = [
        (ours.TemperatureLogitsWarper(0.7), theirs.TemperatureLogitsWarper(0.7)),
        (ours.TopKLogitsWarper(7), theirs.TopKLogitsWarper(7)),
        (ours.TopPLogitsWarper(0.8, 2), theirs.TopPLogitsWarper(0.8, min_tokens_to_keep=2)),
        (ours.MinPLogitsWarper(0.1), theirs.MinPLogitsWarper(0.1)),
        (ours.TypicalLogitsWarper(0.9), theirs.TypicalLogitsWarper(0.9)),
        (ours.EpsilonLogitsWarper(0.01), theirs.EpsilonLogitsWarper(0.01)),
        (ours.EtaLogitsWarper(0.01), theirs.EtaLogitsWarper(0.01)),
        (ours.RepetitionPenaltyLogitsProcessor(1.3), theirs.RepetitionPenaltyLogitsProcessor(1.3)),
        (ours.NoRepeatNGramLogitsProcessor(2), theirs.NoRepeatNGramLogitsProcessor(2)),
    ]
    for mine, reference in cases:
        torch.testing.assert_close(mine(input_ids, scores.clone()), reference(input_ids, scores.clone()), atol=1e-6, rtol=0)


@pytest.mark.parametrize("settings", [dict(encoder_repetition_penalty=1.6), dict(encoder_no_repeat_ngram_size=2)], ids=lambda s: ",".join(s))
def test_prompt_based_processors(pairs, settings):
    prompt_ids = torch.cat([ids(1, 5), ids(1, 5)], dim=1)
    expected, got = both(pairs["llama"], prompt_ids, max_new_tokens=12, do_sample=False, **settings)
    assert torch.equal(expected, got)
