"""Strategies transformers no longer ships offline, checked against small written-out references of their rules.

Contrastive search (Su et al. 2022), DoLa (Chuang et al. 2023) and diverse
group beam search (Vijayakumar et al. 2016) are each compared with a
plain-Python reference that recomputes the model from scratch at every step.
Also: speculative sampling keeps the target distribution, universal assisted
decoding (different tokenizers) equals greedy decoding, seeded sampling is
reproducible, truncation warpers never emit excluded tokens, stopping
criteria, returned dictionaries, watermarking and the model hooks.
"""

from __future__ import annotations

import math

import pytest
import torch

from bestiary.errors import GenerationError
from bestiary.generation.assisted import DraftModelCandidates, UniversalDraftCandidates, speculative_sampling
from bestiary.generation.config import WatermarkingConfig
from bestiary.generation.watermark import WatermarkDetector
from tests.core.test_generation_models import (  # noqa: F401
    chat_tokenizer,
    left_padded,
    one_thread,
    perturbed_copy,
    prompt,
    reordered_tokenizer,
    tiny_llama,
)


# -- contrastive search ---------------------------------------------------------------
def contrastive_reference(model, ids: torch.Tensor, steps: int, alpha: float, k: int) -> torch.Tensor:
    """Su et al.: argmax over the top-k of (1 - alpha) p(v) - alpha max_j cos(h_v, h_j), no cache."""
    ids = ids.clone()
    for _ in range(steps):
        out = model(ids, output_hidden_states=True)
        context = out.hidden_states[-1][0]
        probs = out.logits[0, -1].softmax(-1)
        top_probs, top_ids = probs.topk(k)
        best_token, best_score = None, -math.inf
        for p, token in zip(top_probs.tolist(), top_ids.tolist()):
            extended = torch.cat([ids, torch.tensor([[token]])], dim=1)
            h = model(extended, output_hidden_states=True).hidden_states[-1][0, -1]
            similarity = max(torch.nn.functional.cosine_similarity(h, c, dim=0).item() for c in context)
            score = (1 - alpha) * p - alpha * similarity
            if score > best_score:
                best_token, best_score = token, score
        ids = torch.cat([ids, torch.tensor([[best_token]])], dim=1)
    return ids


@pytest.mark.parametrize("alpha, k", [(0.6, 4), (0.3, 3)])
def test_contrastive_search_matches_reference(alpha, k):
    model = tiny_llama()
    ids = prompt(6)
    expected = contrastive_reference(model, ids, 12, alpha, k)
    got = model.generate(ids, max_new_tokens=12, penalty_alpha=alpha, top_k=k, eos_token_id=None)
    assert torch.equal(got, expected)


def test_contrastive_search_batched_left_padding_matches_rows():
    model = tiny_llama()
    rows = [prompt(7, seed=2)[0], prompt(4, seed=3)[0]]
    ids, mask = left_padded(rows, pad=0)
    batched = model.generate(ids, attention_mask=mask, max_new_tokens=8, penalty_alpha=0.6, top_k=4, eos_token_id=None)
    for i, row in enumerate(rows):
        alone = model.generate(row[None], max_new_tokens=8, penalty_alpha=0.6, top_k=4, eos_token_id=None)
        assert torch.equal(alone[0, -8:], batched[i, -8:])


# -- DoLa --------------------------------------------------------------------------------
def dola_reference(model, ids: torch.Tensor, steps: int, layers: list[int]) -> torch.Tensor:
    """Chuang et al.: contrast with the candidate layer of largest JSD, under the 0.1 plausibility constraint."""
    ids = ids.clone()
    for _ in range(steps):
        out = model(ids, output_hidden_states=True)
        final = out.logits[0, -1].log_softmax(-1)
        best, best_divergence = None, -math.inf
        for layer in layers:
            early = model.lm_head(model.model.norm(out.hidden_states[layer][0, -1])).log_softmax(-1)
            middle = (0.5 * (final.exp() + early.exp())).log()
            divergence = 0.5 * ((final.exp() * (final - middle)).sum() + (early.exp() * (early - middle)).sum())
            if divergence > best_divergence:
                best, best_divergence = early, divergence
        plausible = final >= final.max() + math.log(0.1)
        scores = torch.where(plausible, final - best, torch.tensor(-math.inf))
        ids = torch.cat([ids, scores.argmax().view(1, 1)], dim=1)
    return ids


@pytest.mark.parametrize("dola_layers, layers", [("low", [0]), ("high", [2]), ([0, 1, 2], [0, 1, 2])])
def test_dola_matches_reference(dola_layers, layers):
    model = tiny_llama(num_hidden_layers=4)
    ids = prompt(6)
    expected = dola_reference(model, ids, 10, layers)
    got = model.generate(ids, max_new_tokens=10, dola_layers=dola_layers, eos_token_id=None)
    assert torch.equal(got, expected)


def test_dola_candidate_layers():
    from bestiary.generation.dola import candidate_layers

    assert candidate_layers("low", 8, tied_embeddings=False) == [0, 2]
    assert candidate_layers("high", 8, tied_embeddings=False) == [4, 6]
    assert candidate_layers("low", 8, tied_embeddings=True) == [2]
    with pytest.raises(GenerationError, match="dola_layers"):
        candidate_layers([9], 8, tied_embeddings=False)


# -- diverse (group) beam search ------------------------------------------------------------
def group_beam_reference(model, ids, *, beams, groups, penalty, new_tokens, eos, eos_bias, length_penalty=1.0):
    """Diverse beam search with plain lists: groups in turn, Hamming penalty, finished sets per group.

    Bookkeeping per group (as in bestiary's and transformers' beam search): keep
    the 2 * group_size best continuations; those ending in eos (or reaching the
    length limit) within the first group_size ranks may join the finished set,
    scored sum_logprobs / generated_length ** length_penalty; the group_size
    best others keep running. Stop when no running beam can beat the worst
    finished one, or when every continuation stopped.
    """
    size = beams // groups
    prompt_tokens = ids[0].tolist()
    start, limit = len(prompt_tokens), len(prompt_tokens) + new_tokens
    keep = 2 * size
    running = [[((0.0 if s == 0 else -1e9), prompt_tokens) for s in range(size)] for _ in range(groups)]
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(groups)]
    improvable = [True] * groups
    length = start
    while True:
        chosen_this_step: list[int] = []
        all_hit = True
        for g in range(groups):
            candidates = []
            for s, (score, tokens) in enumerate(running[g]):
                log_probs = model(torch.tensor([tokens])).logits[0, -1].log_softmax(-1)
                log_probs[eos] += eos_bias
                for token in chosen_this_step:
                    log_probs[token] -= penalty
                for token, value in enumerate(log_probs.tolist()):
                    candidates.append((score + value, tokens + [token]))
            candidates.sort(key=lambda c: -c[0])
            top = candidates[:keep]
            hits = [c[1][-1] == eos or length + 1 >= limit for c in top]
            all_hit &= all(hits)
            if improvable[g]:
                for rank, ((score, tokens), hit) in enumerate(zip(top, hits)):
                    if hit and rank < size:
                        finished[g].append((score / ((length + 1 - start) ** length_penalty), tokens))
                finished[g] = sorted(finished[g], key=lambda c: -c[0])[:size]
            running[g] = [c for c, hit in zip(top, hits) if not hit][:size]
            chosen_this_step += [tokens[-1] for _, tokens in running[g]]
        length += 1
        for g in range(groups):
            if running[g] and len(finished[g]) == size:
                best = running[g][0][0] / ((length - start) ** length_penalty)
                improvable[g] = improvable[g] and best > min(score for score, _ in finished[g])
        if not any(improvable) or all_hit:
            break
    everything = sorted((c for group in finished for c in group), key=lambda c: -c[0])
    return [tokens for _, tokens in everything]


@pytest.mark.parametrize("beams, groups, penalty, eos_bias", [(4, 2, 1.5, 0.0), (6, 3, 0.7, 1.0), (4, 4, 2.0, 2.0)])
def test_group_beam_search_matches_reference(beams, groups, penalty, eos_bias):
    model = tiny_llama()
    ids = prompt(5)
    expected = group_beam_reference(model, ids, beams=beams, groups=groups, penalty=penalty, new_tokens=6, eos=2, eos_bias=eos_bias)
    got = model.generate(
        ids,
        max_new_tokens=6,
        num_beams=beams,
        num_beam_groups=groups,
        diversity_penalty=penalty,
        num_return_sequences=beams,
        sequence_bias={(2,): eos_bias},
        return_dict_in_generate=True,
    )
    for row, tokens in enumerate(expected):
        assert got.sequences[row, : len(tokens)].tolist() == tokens


def test_group_beam_search_diversifies_the_first_tokens():
    model = tiny_llama()
    ids = prompt(5)
    plain = model.generate(ids, max_new_tokens=4, num_beams=4, num_return_sequences=4, eos_token_id=None)
    diverse = model.generate(
        ids, max_new_tokens=4, num_beams=4, num_beam_groups=4, diversity_penalty=100.0, num_return_sequences=4, eos_token_id=None
    )
    assert len(set(diverse[:, 5].tolist())) == 4  # each group was pushed to a different first token
    assert len(set(diverse[:, 5].tolist())) >= len(set(plain[:, 5].tolist()))


# -- assisted decoding ----------------------------------------------------------------------
def test_speculative_sampling_keeps_the_target_distribution():
    torch.manual_seed(0)
    vocab = 6
    p_logits = torch.tensor([[[2.0, 1.0, 0.5, 0.0, -1.0, 0.3], [0.0] * 6]])
    q_logits = torch.tensor([[[0.0, 2.0, 1.0, 0.5, 0.0, -2.0]]])
    q = q_logits[0, 0].softmax(-1)
    counts = torch.zeros(vocab)
    trials = 3000
    drafts = torch.multinomial(q, trials, replacement=True)
    for draft in drafts.tolist():
        accepted, _ = speculative_sampling(torch.tensor([[draft]]), q_logits, p_logits)
        counts[accepted[0, 0]] += 1
    empirical = counts / trials
    assert (empirical - p_logits[0, 0].softmax(-1)).abs().max() < 0.035


def test_assisted_sampling_runs_and_is_reproducible():
    model, draft = tiny_llama(), tiny_llama(seed=7, num_hidden_layers=1)
    ids = prompt(6)
    torch.manual_seed(3)
    first = model.generate(ids, max_new_tokens=15, do_sample=True, assistant_model=draft, num_assistant_tokens=4)
    torch.manual_seed(3)
    second = model.generate(ids, max_new_tokens=15, do_sample=True, assistant_model=draft, num_assistant_tokens=4)
    assert torch.equal(first, second) and first.shape[1] <= 6 + 15


class DraftRounds:
    """Records (accepted, proposed) drafts of every round of a candidate generator class."""

    def __init__(self, monkeypatch, generator_class) -> None:
        self.rounds: list[tuple[int, int]] = []
        original = generator_class.update

        def update(proposer, accepted: int, proposed: int) -> None:
            self.rounds.append((accepted, proposed))
            original(proposer, accepted, proposed)

        monkeypatch.setattr(generator_class, "update", update)

    def assert_partly_accepted(self) -> None:
        accepted = sum(a for a, _ in self.rounds)
        proposed = sum(p for _, p in self.rounds)
        assert 0 < accepted < proposed, self.rounds


@pytest.mark.parametrize("schedule", ["constant", "heuristic"])
def test_assisted_greedy_equals_greedy_with_static_cache_and_schedules(monkeypatch, schedule):
    model = tiny_llama()
    draft = perturbed_copy(model)
    rounds = DraftRounds(monkeypatch, DraftModelCandidates)
    ids = prompt(6)
    expected = model.generate(ids, max_new_tokens=24)
    got = model.generate(
        ids, max_new_tokens=24, assistant_model=draft, num_assistant_tokens=4,
        num_assistant_tokens_schedule=schedule, cache_implementation="static",
    )
    assert torch.equal(got, expected)
    rounds.assert_partly_accepted()
    if schedule == "heuristic":
        assert len({p for _, p in rounds.rounds[:-1]}) > 1  # the draft length adapted


def test_universal_assisted_decoding_with_a_different_tokenizer(tmp_path, monkeypatch):
    from bestiary.processing import Tokenizer

    tokenizer = chat_tokenizer(tmp_path / "target")
    order = reordered_tokenizer(tmp_path / "target", tmp_path / "draft")
    draft_tokenizer = Tokenizer.from_pretrained(tmp_path / "draft")
    text = "The quick brown fox jumps over the lazy dog. The quick brown"
    assert tokenizer(text)["input_ids"] != draft_tokenizer(text)["input_ids"]
    model = tiny_llama(seed=3, vocab_size=640)
    draft = perturbed_copy(model, vocab_order=order)  # the same model, over the draft tokenizer's ids
    rounds = DraftRounds(monkeypatch, UniversalDraftCandidates)
    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    expected = model.generate(ids, max_new_tokens=16, eos_token_id=None)
    got = model.generate(
        ids, max_new_tokens=16, eos_token_id=None, assistant_model=draft, num_assistant_tokens=4,
        tokenizer=tokenizer, assistant_tokenizer=draft_tokenizer,
    )
    assert torch.equal(got, expected)
    rounds.assert_partly_accepted()


def test_universal_assisted_decoding_across_tokenizers_that_split_differently(tmp_path):
    from bestiary.processing import Tokenizer
    from tests.core import tokenizer_builders as builders

    tokenizer = chat_tokenizer(tmp_path / "target")
    builders.build_sentencepiece_like(tmp_path / "draft")
    draft_tokenizer = Tokenizer.from_pretrained(tmp_path / "draft")
    model = tiny_llama(vocab_size=640)
    draft = tiny_llama(seed=9, vocab_size=800, num_hidden_layers=1)
    ids = tokenizer("The quick brown fox jumps over the lazy dog. The quick brown", return_tensors="pt")["input_ids"]
    expected = model.generate(ids, max_new_tokens=12, eos_token_id=None)
    got = model.generate(
        ids, max_new_tokens=12, eos_token_id=None, assistant_model=draft, tokenizer=tokenizer, assistant_tokenizer=draft_tokenizer
    )
    assert torch.equal(got, expected)  # re-encoding between the two ways of splitting loses nothing


def test_assisted_decoding_refuses_batches():
    with pytest.raises(GenerationError, match="one sequence"):
        tiny_llama().generate(prompt(4, batch=2), max_new_tokens=3, prompt_lookup_num_tokens=2)


# -- sampling -------------------------------------------------------------------------------
def test_seeded_sampling_is_reproducible():
    model = tiny_llama()
    ids = prompt(5, batch=3)
    settings = dict(max_new_tokens=12, do_sample=True, temperature=1.3, top_p=0.95, eos_token_id=None)
    torch.manual_seed(4)
    first = model.generate(ids, **settings)
    torch.manual_seed(4)
    second = model.generate(ids, **settings)
    torch.manual_seed(5)
    third = model.generate(ids, **settings)
    assert torch.equal(first, second) and not torch.equal(first, third)


def allowed_top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    return logits >= logits.topk(k).values[..., -1:]


def allowed_top_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    probs = logits.softmax(-1)
    allowed = torch.zeros_like(probs, dtype=torch.bool)
    for row in range(probs.shape[0]):
        order = probs[row].argsort(descending=True)
        total = 0.0
        for token in order.tolist():
            allowed[row, token] = True
            total += probs[row, token].item()
            if total >= p:
                break
    return allowed


def allowed_min_p(logits: torch.Tensor, min_p: float) -> torch.Tensor:
    probs = logits.softmax(-1)
    return probs >= min_p * probs.max(-1, keepdim=True).values


@pytest.mark.parametrize(
    "settings, allowed",
    [
        (dict(top_k=3), lambda logits: allowed_top_k(logits, 3)),
        (dict(top_k=0, top_p=0.6), lambda logits: allowed_top_p(logits, 0.6)),
        (dict(top_k=0, min_p=0.3), lambda logits: allowed_min_p(logits, 0.3)),
    ],
    ids=["top_k", "top_p", "min_p"],
)
def test_truncation_never_emits_excluded_tokens(settings, allowed):
    model = tiny_llama()
    torch.manual_seed(0)
    out = model.generate(
        prompt(4, batch=64), max_new_tokens=8, do_sample=True, eos_token_id=None,
        return_dict_in_generate=True, output_logits=True, **settings,
    )
    emitted = set()
    for step, logits in enumerate(out.logits):
        tokens = out.sequences[:, 4 + step]
        ok = allowed(logits)
        assert ok[torch.arange(64), tokens].all()
        emitted.update(tokens.tolist())
    assert len(emitted) > 8  # sampling did explore


# -- stopping ---------------------------------------------------------------------------------
def test_several_eos_ids_and_max_time():
    model = tiny_llama()
    ids = prompt(5)
    free = model.generate(ids, max_new_tokens=10, eos_token_id=None)
    stop_a, stop_b = free[0, 5 + 3].item(), free[0, 5 + 6].item()
    first_a = (free[0, 5:] == stop_a).nonzero()[0].item()
    out = model.generate(ids, max_new_tokens=10, eos_token_id=[stop_b, stop_a])
    assert torch.equal(out[0], free[0, : 5 + first_a + 1])
    assert model.generate(ids, max_new_tokens=10, max_time=1e-9, eos_token_id=None).shape[1] == 6


def test_stop_strings_need_a_tokenizer_and_stop_right_after_the_string(tmp_path):
    tokenizer = chat_tokenizer(tmp_path)
    model = tiny_llama(vocab_size=640)
    ids = tokenizer("Hello world", return_tensors="pt")["input_ids"]
    start = ids.shape[1]
    free = model.generate(ids, max_new_tokens=16, eos_token_id=None)
    target = tokenizer.decode(free[0, start + 4 : start + 6].tolist())
    assert target
    with pytest.raises(GenerationError, match="tokenizer"):
        model.generate(ids, max_new_tokens=16, stop_strings=[target])
    out = model.generate(ids, max_new_tokens=16, stop_strings=["not-in-here", target], tokenizer=tokenizer, eos_token_id=None)
    assert torch.equal(out[0], free[0, : out.shape[1]])
    text = tokenizer.decode(out[0, start:].tolist())
    before = tokenizer.decode(out[0, start:-1].tolist())
    assert target in text and target not in before


# -- outputs ------------------------------------------------------------------------------------
def test_return_dict_fields():
    model = tiny_llama()
    ids = prompt(5, batch=2)
    out = model.generate(
        ids, max_new_tokens=6, eos_token_id=None, return_dict_in_generate=True,
        output_scores=True, output_logits=True, output_hidden_states=True, output_attentions=True,
    )
    assert out.sequences.shape == (2, 11)
    assert len(out.scores) == len(out.logits) == len(out.hidden_states) == len(out.attentions) == 6
    assert out.past_key_values.get_seq_length() == 10 and out.cache is out.past_key_values
    assert torch.equal(out.scores[0].argmax(-1), out.sequences[:, 5])
    transition = model.compute_transition_scores(out.sequences, out.scores, normalize_logits=True)
    assert transition.shape == (2, 6) and (transition <= 0).all()
    beams = model.generate(ids, max_new_tokens=6, num_beams=3, num_return_sequences=2, return_dict_in_generate=True, output_scores=True)
    assert beams.sequences.shape[0] == 4 and beams.beam_indices.shape == (4, beams.sequences.shape[1] - 5)
    assert beams.sequences_scores.shape == (4,)


def test_inputs_embeds_prompt_returns_only_new_tokens():
    model = tiny_llama()
    ids = prompt(5)
    embeds = model.get_input_embeddings()(ids)
    from_ids = model.generate(ids, max_new_tokens=6, eos_token_id=None)
    from_embeds = model.generate(inputs_embeds=embeds, max_new_tokens=6, eos_token_id=None)
    assert torch.equal(from_embeds, from_ids[:, 5:])


# -- watermarking -----------------------------------------------------------------------------------
def test_watermark_is_detected_with_a_high_z_score():
    model = tiny_llama()
    ids = prompt(4, batch=12)
    config = WatermarkingConfig(bias=4.0, greenlist_ratio=0.25)
    torch.manual_seed(0)
    marked = model.generate(ids, max_new_tokens=40, do_sample=True, top_k=0, watermarking_config=config, eos_token_id=None)
    torch.manual_seed(0)
    plain = model.generate(ids, max_new_tokens=40, do_sample=True, top_k=0, eos_token_id=None)
    detector = WatermarkDetector(model.config.vocab_size, config)
    marked_z = [r.z_score for r in detector(marked, prompt_length=4)]
    plain_z = [r.z_score for r in detector(plain, prompt_length=4)]
    assert min(marked_z) > 4.0 and all(r.prediction for r in detector(marked, prompt_length=4))
    assert abs(sum(plain_z) / len(plain_z)) < 2.0


# -- hooks for VLM-style models ------------------------------------------------------------------------
def test_prefill_only_inputs_and_state_hooks():
    from bestiary_text.modeling_llama import LlamaForCausalLM

    seen = []

    class ImageLM(LlamaForCausalLM):
        def forward(self, input_ids=None, pixel_values=None, **kwargs):
            seen.append(pixel_values is not None)
            return super().forward(input_ids=input_ids, **kwargs)

        def _update_model_kwargs_for_generation(self, outputs, model_kwargs, *, num_new_tokens=1):
            model_kwargs = dict(model_kwargs)
            model_kwargs["steps_seen"] = model_kwargs.get("steps_seen", 0) + 1
            return model_kwargs

        def prepare_inputs_for_generation(self, input_ids, *, steps_seen=0, **kwargs):
            inputs = super().prepare_inputs_for_generation(input_ids, **kwargs)
            assert steps_seen == len(seen)
            return inputs

    _extra = ImageLM._extra_generation_inputs = ("steps_seen",)
    torch.manual_seed(0)
    model = ImageLM(tiny_llama().config).eval()
    out = model.generate(prompt(4), max_new_tokens=5, pixel_values=torch.zeros(1, 3, 2, 2), eos_token_id=None)
    assert out.shape[1] == 9 and seen == [True, False, False, False, False] and _extra


def test_assistant_confidence_threshold_keeps_greedy_output():
    model, draft = tiny_llama(), tiny_llama(seed=7, num_hidden_layers=1)
    ids = prompt(6)
    got = model.generate(ids, max_new_tokens=12, assistant_model=draft, assistant_confidence_threshold=0.5)
    assert torch.equal(got, model.generate(ids, max_new_tokens=12))
