"""all-MiniLM-L6-v2 (real weights): loading, embeddings and similarities, tokenizer parity with transformers."""

from __future__ import annotations

import pytest
import torch

from bestiary.pipelines import pipeline
from bestiary.pipelines.feature_extraction import mean_pool

SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "A man is riding a horse through a field of tall grass while the sun sets behind the hills.",
    "Two men pushed carts through the woods.",
]
# From ../shared/FIXTURES.md (measured with transformers 5.24.0): a sanity check at 1e-3.
FIXTURE_SIMILARITIES = {(0, 1): 0.7553, (0, 2): -0.1050, (1, 2): -0.0610}


def embed(model, tokenizer, texts: list[str]) -> torch.Tensor:
    """Mean-pooled, L2-normalised sentence embeddings."""
    batch = tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
    with torch.inference_mode():
        states = model(**batch).last_hidden_state
    return torch.nn.functional.normalize(mean_pool(states, batch["attention_mask"]), dim=-1)


def test_auto_classes_load_the_real_folder(minilm_path):
    import bestiary.auto as auto

    model, report = auto.AutoModel.from_pretrained(minilm_path, output_loading_info=True)
    tokenizer = auto.AutoTokenizer.from_pretrained(minilm_path)
    assert type(model).__name__ == "BertModel" and model.pooler is not None
    assert not report.missing_keys and not report.unexpected_keys and not report.mismatched_keys
    assert tokenizer.model_input_names == ["input_ids", "token_type_ids", "attention_mask"]
    assert model.config.hidden_size == 384 and model.config.num_hidden_layers == 6


def test_embeddings_match_transformers(minilm_ours, minilm_reference):
    ours = embed(*minilm_ours, SENTENCES)
    reference = embed(*minilm_reference, SENTENCES)
    assert ours.shape == (len(SENTENCES), 384)
    assert (ours - reference).abs().max().item() <= 1e-5


def test_raw_outputs_match_transformers_with_padding(minilm_ours, minilm_reference):
    model, tokenizer = minilm_ours
    batch = tokenizer(SENTENCES, ["a second segment"] * len(SENTENCES), padding=True, return_tensors="pt")
    with torch.inference_mode():
        got = model(**batch)
        expected = minilm_reference[0](**batch)
    keep = batch["attention_mask"].bool()
    assert (got.last_hidden_state[keep] - expected.last_hidden_state[keep]).abs().max().item() <= 1e-5
    assert (got.pooler_output - expected.pooler_output).abs().max().item() <= 1e-5


def test_similarities_match_transformers_and_the_documented_values(minilm_ours, minilm_reference):
    ours = embed(*minilm_ours, SENTENCES[:3])
    reference = embed(*minilm_reference, SENTENCES[:3])
    ours_similarity, reference_similarity = ours @ ours.T, reference @ reference.T
    for (i, j), documented in FIXTURE_SIMILARITIES.items():
        assert abs(ours_similarity[i, j].item() - reference_similarity[i, j].item()) <= 1e-5
        assert abs(ours_similarity[i, j].item() - documented) <= 1e-3
    assert ours_similarity[0, 2] < 0 and ours_similarity[1, 2] < 0


def test_feature_extraction_pipeline_gives_the_same_embeddings(minilm_path, minilm_ours, minilm_reference):
    extractor = pipeline("feature-extraction", model=str(minilm_path))
    vectors = extractor(SENTENCES, pooling="mean", normalize=True, return_tensors=True, batch_size=2)
    expected = embed(*minilm_reference, SENTENCES)
    assert (torch.stack(vectors) - expected).abs().max().item() <= 1e-5


# -- tokenizer parity on the real vocabulary ---------------------------------------------------------
TEXTS = [
    "Hello, World! This is MiniLM.",
    "Crème brûlée, naïve café and Ångström: ACCENTS are stripped.",
    "中文字符和English混合 text 東京",
    "unaffable tokenization wordpiece ##hashes [MASK] [SEP] [UNK]",
    "   spaces\tand\nnewlines   ",
    "",
    "emoji 🙂 and symbols ½ ™ ©",
]
PAIRS = [
    ("What is love?", "Love is a song recorded by Haddaway in 1993."),
    ("Short", "A much longer second text " * 8),
    ("A fairly long first sentence that goes on and on " * 3, "tiny"),
]


def encode_both(minilm_ours, minilm_reference, *args, **kwargs):
    ours = minilm_ours[1](*args, **kwargs)
    reference = minilm_reference[1](*args, **kwargs)
    return dict(ours), {key: reference[key] for key in reference}


@pytest.mark.parametrize("text", TEXTS)
def test_tokenizer_single_texts_match(minilm_ours, minilm_reference, text):
    ours, reference = encode_both(minilm_ours, minilm_reference, text, return_offsets_mapping=True)
    assert ours == reference
    assert minilm_ours[1].tokenize(text) == minilm_reference[1].tokenize(text)
    assert minilm_ours[1].decode(ours["input_ids"]) == minilm_reference[1].decode(ours["input_ids"])
    assert minilm_ours[1].decode(ours["input_ids"], skip_special_tokens=True) == minilm_reference[1].decode(
        ours["input_ids"], skip_special_tokens=True
    )


@pytest.mark.parametrize("strategy", ["longest_first", "only_first", "only_second", True])
@pytest.mark.parametrize("max_length", [12, 20])
def test_tokenizer_pairs_and_truncation_strategies_match(minilm_ours, minilm_reference, strategy, max_length):
    first = [pair[0] for pair in PAIRS]
    second = [pair[1] for pair in PAIRS]
    try:
        reference = minilm_reference[1](first, second, truncation=strategy, max_length=max_length, padding=True)
    except Exception:  # transformers refuses when the chosen text is too short to cut; so must we
        with pytest.raises(Exception):
            minilm_ours[1](first, second, truncation=strategy, max_length=max_length, padding=True)
        return
    ours = minilm_ours[1](first, second, truncation=strategy, max_length=max_length, padding=True)
    assert dict(ours) == {key: reference[key] for key in reference}


def test_tokenizer_overflow_with_stride_matches(minilm_ours, minilm_reference):
    question, context = "Where is it?", " ".join(f"word{i}" for i in range(60))
    kwargs = dict(truncation="only_second", max_length=24, stride=6, return_overflowing_tokens=True,
                  return_offsets_mapping=True, padding="max_length")
    ours, reference = encode_both(minilm_ours, minilm_reference, question, context, **kwargs)
    assert len(ours["input_ids"]) > 3
    assert ours == reference


def test_tokenizer_tensors_and_padding_match(minilm_ours, minilm_reference):
    kwargs = dict(padding="max_length", max_length=32, truncation=True, return_tensors="pt")
    ours, reference = encode_both(minilm_ours, minilm_reference, TEXTS, **kwargs)
    assert ours.keys() == reference.keys()
    for key in ours:
        assert torch.equal(ours[key], reference[key])
