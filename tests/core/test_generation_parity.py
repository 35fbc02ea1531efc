"""Pieces of the generation engine compared directly with transformers 5.24.0.

Stop strings over non-ASCII text (accented letters, CJK, emoji spelled with
several byte tokens) against transformers' StopStringCriteria and
generate(stop_strings=...); universal assisted decoding with a draft that
agrees with the model often enough for some drafts to be accepted; and
speculative-sampling acceptance against transformers' ``_speculative_sampling``.
transformers builds each tiny checkpoint (seeded, fp32) and bestiary loads it.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
import transformers
from transformers.generation.stopping_criteria import StopStringCriteria as ReferenceStopStrings
from transformers.generation.utils import _speculative_sampling as reference_speculative_sampling

import bestiary.auto as auto
from bestiary.generation.assisted import UniversalDraftCandidates, speculative_sampling
from bestiary.generation.stopping import StopStringCriteria
from bestiary.processing import Tokenizer
from tests.core import tokenizer_builders as builders
from tests.core.test_generation_models import TINY, one_thread, perturbed_copy, reordered_tokenizer  # noqa: F401

TOKENIZER_BUILDERS = {
    "byte_level_bpe": builders.build_byte_level_bpe,
    "byte_fallback": builders.build_sentencepiece_like,
}


@pytest.fixture(scope="module")
def tokenizer_folders(tmp_path_factory) -> dict[str, Path]:
    return {kind: build(tmp_path_factory.mktemp(kind)) for kind, build in TOKENIZER_BUILDERS.items()}


@pytest.fixture(scope="module")
def tokenizers(tokenizer_folders) -> dict[str, tuple[Tokenizer, object]]:
    """(bestiary tokenizer, transformers tokenizer) per kind, both loaded from one folder."""
    return {
        kind: (Tokenizer.from_pretrained(folder), transformers.AutoTokenizer.from_pretrained(folder))
        for kind, folder in tokenizer_folders.items()
    }


@pytest.fixture(scope="module")
def llama_pair(tmp_path_factory) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(transformers model, bestiary model): one random Llama with a vocabulary covering the tokenizers."""
    folder = tmp_path_factory.mktemp("llama")
    torch.manual_seed(0)
    reference = transformers.AutoModelForCausalLM.from_config(transformers.LlamaConfig(**{**TINY, "vocab_size": 640})).eval()
    reference.save_pretrained(folder)
    return reference, auto.AutoModelForCausalLM.from_pretrained(Path(folder))


def token_ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def stops_at_each_step(criterion, prompt: list[int], continuation: list[int], reference: bool = False) -> list[bool]:
    """The criterion's verdict after each continuation token is appended to the prompt."""
    sequence = prompt + continuation
    verdicts = []
    for end in range(len(prompt) + 1, len(sequence) + 1):
        row = torch.tensor([sequence[:end]])
        verdicts.append(bool((criterion(row, None) if reference else criterion(row))[0]))
    return verdicts


# -- stop strings ----------------------------------------------------------------------------------
NON_ASCII_CASES = [
    ("User: hi", "é", ["User:"]),  # completing "é" must not re-find the prompt's stop string
    ("Bonjour", " café crème brûlée", ["é c", "crè", "fé", "ûl"]),
    ("日本", "語の本です。日本語", ["日本", "本で", "語"]),
    ("ok 🙂", " yes 🙂 done 🎉", ["🙂", "s 🙂", "🎉"]),
    ("語語語語", "語語語語語語語語語の", ["語の"]),  # a long run of byte tokens, longer than the window
]


@pytest.mark.parametrize("kind", sorted(TOKENIZER_BUILDERS))
@pytest.mark.parametrize("prompt_text, continuation_text, stop_strings", NON_ASCII_CASES)
def test_stop_strings_over_multibyte_characters_match_transformers(tokenizers, kind, prompt_text, continuation_text, stop_strings):
    ours, theirs = tokenizers[kind]
    prompt, continuation = token_ids(ours, prompt_text), token_ids(ours, continuation_text)
    assert prompt + continuation == token_ids(theirs, prompt_text) + token_ids(theirs, continuation_text)
    assert len(continuation) > len(continuation_text.strip())  # some characters take several tokens
    expected = stops_at_each_step(ReferenceStopStrings(theirs, stop_strings), prompt, continuation, reference=True)
    got = stops_at_each_step(StopStringCriteria(ours, stop_strings), prompt, continuation)
    assert got == expected


@pytest.mark.parametrize("kind", sorted(TOKENIZER_BUILDERS))
def test_stop_strings_on_random_mixed_script_text_match_transformers(tokenizers, kind):
    ours, theirs = tokenizers[kind]
    rng = random.Random(0)
    alphabet = ["a", "b", " ", "é", "ü", "ß", "€", "語", "の", "本", "🙂"]
    fired = 0
    for _ in range(12):
        text = "".join(rng.choice(alphabet) for _ in range(24))
        prompt_text, continuation_text = text[:6], text[6:]
        starts = [rng.randrange(len(text) - 3) for _ in range(3)]
        stop_strings = [text[s : s + rng.randint(1, 3)] for s in starts]
        prompt, continuation = token_ids(ours, prompt_text), token_ids(ours, continuation_text)
        expected = stops_at_each_step(ReferenceStopStrings(theirs, stop_strings), prompt, continuation, reference=True)
        assert stops_at_each_step(StopStringCriteria(ours, stop_strings), prompt, continuation) == expected
        fired += sum(expected)
    assert fired > 10  # the stop strings did occur in the generated part


@pytest.mark.parametrize(
    "character, stop_strings",
    [("é", ["User:", "hi"]), ("é", ["éé"]), ("語", ["User:", "語語"]), ("🙂", ["🙂🙂", "User"])],
)
def test_generate_with_stop_strings_after_multibyte_characters_matches_transformers(tokenizers, llama_pair, character, stop_strings):
    ours_tokenizer, their_tokenizer = tokenizers["byte_level_bpe"]
    reference, ours = llama_pair
    prompt = torch.tensor([token_ids(ours_tokenizer, "User: hi")])
    pieces = token_ids(ours_tokenizer, character)
    assert len(pieces) > 1  # the character is spelled with byte tokens
    # Push the model to spell `character` again and again, one byte token after the other.
    bias = {(pieces[0],): 10.0, **{(a, b): 20.0 for a, b in zip(pieces, pieces[1:])}}
    settings = dict(max_new_tokens=12, eos_token_id=None, sequence_bias=bias, stop_strings=stop_strings)
    expected = reference.generate(prompt, do_sample=False, tokenizer=their_tokenizer, **settings)
    got = ours.generate(prompt, tokenizer=ours_tokenizer, **settings)
    assert torch.equal(got, expected)
    assert got.shape[1] - prompt.shape[1] >= 2 * len(pieces)  # no early stop on the prompt's text


# -- assisted decoding -------------------------------------------------------------------------------
@pytest.mark.parametrize("schedule", ["constant", "heuristic"])
def test_universal_assisted_decoding_matches_transformers_with_partly_accepted_drafts(
    tokenizer_folders, tokenizers, llama_pair, tmp_path, monkeypatch, schedule
):
    reference, ours = llama_pair
    tokenizer, their_tokenizer = tokenizers["byte_level_bpe"]
    order = reordered_tokenizer(tokenizer_folders["byte_level_bpe"], tmp_path / "draft")
    draft_tokenizer = Tokenizer.from_pretrained(tmp_path / "draft")
    their_draft_tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "draft")
    draft = perturbed_copy(ours, vocab_order=order)  # the model itself, slightly off, over the draft tokenizer's ids
    reference_draft = transformers.LlamaForCausalLM(transformers.LlamaConfig(**{**TINY, "vocab_size": order.shape[0]})).eval()
    reference_draft.load_state_dict(draft.state_dict())
    rounds: list[tuple[int, int]] = []
    original = UniversalDraftCandidates.update
    monkeypatch.setattr(UniversalDraftCandidates, "update", lambda self, a, p: (rounds.append((a, p)), original(self, a, p))[1])
    text = "The quick brown fox jumps over the lazy dog. The quick brown"
    ids = torch.tensor([token_ids(tokenizer, text)])
    settings = dict(max_new_tokens=30, eos_token_id=None, num_assistant_tokens=4, num_assistant_tokens_schedule=schedule)
    expected = reference.generate(
        ids, do_sample=False, assistant_model=reference_draft, tokenizer=their_tokenizer,
        assistant_tokenizer=their_draft_tokenizer, **settings,
    )
    got = ours.generate(ids, assistant_model=draft, tokenizer=tokenizer, assistant_tokenizer=draft_tokenizer, **settings)
    assert torch.equal(got, expected)
    assert 0 < sum(a for a, _ in rounds) < sum(p for _, p in rounds), rounds


# -- speculative sampling -----------------------------------------------------------------------------
def test_speculative_sampling_accepts_and_resamples_like_transformers():
    generator = torch.Generator().manual_seed(0)
    vocab, kept_counts = 11, set()
    for trial in range(200):
        drafts = 1 + trial % 5
        draft_logits = 2 * torch.randn(1, drafts, vocab, generator=generator)
        # the target mostly agrees with the draft, so anywhere from none to all drafts are accepted
        closeness = [0.2, 1.0, 3.0][trial % 3]
        target_logits = torch.cat([draft_logits, 2 * torch.randn(1, 1, vocab, generator=generator)], dim=1)
        target_logits = target_logits + closeness * torch.randn(1, drafts + 1, vocab, generator=generator)
        drafted = torch.multinomial(draft_logits[0].softmax(-1), 1, generator=generator).view(1, drafts)
        prompt_and_drafts = torch.cat([torch.full((1, 3), 5), drafted], dim=1)
        torch.manual_seed(trial)
        expected_tokens, expected_kept = reference_speculative_sampling(prompt_and_drafts, draft_logits, drafts, target_logits)
        torch.manual_seed(trial)
        tokens, kept = speculative_sampling(drafted, draft_logits, target_logits)
        assert torch.equal(tokens, expected_tokens) and kept == int(expected_kept), trial
        kept_counts.add((drafts, kept))
    assert {(5, 0), (5, 5), (3, 1)} <= kept_counts  # rejections at the start, in the middle, and none (bonus token)
