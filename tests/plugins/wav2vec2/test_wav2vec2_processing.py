"""Wav2Vec2FeatureExtractor, Wav2Vec2CTCTokenizer and Wav2Vec2Processor against transformers, and files both ways."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.plugins.wav2vec2.wav2vec2_builders import VOCAB

transformers = pytest.importorskip("transformers")

import bestiary.auto as auto  # noqa: E402
from bestiary.errors import HubError, ProcessingError  # noqa: E402
from bestiary_wav2vec2.feature_extraction_wav2vec2 import Wav2Vec2FeatureExtractor  # noqa: E402
from bestiary_wav2vec2.processing_wav2vec2 import Wav2Vec2Processor  # noqa: E402
from bestiary_wav2vec2.tokenization_wav2vec2 import Wav2Vec2CTCTokenizer  # noqa: E402


def noise(samples: int, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(samples) * 0.3 + 0.1).astype(np.float32)


@pytest.mark.parametrize("mask", [False, True], ids=["no-mask", "mask"])
@pytest.mark.parametrize("padding", [False, True, "max_length"])
def test_features_equal_transformers(mask, padding):
    batch = [noise(3000, 1), noise(5000, 2)]
    extra = {"max_length": 6000} if padding == "max_length" else {}
    settings = dict(return_attention_mask=mask)
    expected = transformers.Wav2Vec2FeatureExtractor(**settings)(batch, sampling_rate=16000, padding=padding, **extra)
    got = Wav2Vec2FeatureExtractor(**settings)(batch, sampling_rate=16000, padding=padding, **extra)
    for a, b in zip(expected.input_values, got.input_values, strict=True):
        assert np.abs(np.asarray(a) - np.asarray(b)).max() <= 1e-5
    if mask:
        assert [list(m) for m in expected.attention_mask] == [list(m) for m in got.attention_mask]


def test_padded_values_are_normalized_over_real_samples_only():
    got = Wav2Vec2FeatureExtractor(return_attention_mask=True)([noise(3000, 1), noise(5000, 2)], sampling_rate=16000,
                                                               padding=True, return_tensors="np")
    short = got.input_values[0]
    assert abs(short[:3000].mean()) < 1e-4 and abs(short[:3000].std() - 1) < 1e-3
    assert np.all(short[3000:] == 0) and got.attention_mask[0].sum() == 3000


def test_feature_settings_round_trip_with_transformers(tmp_path):
    Wav2Vec2FeatureExtractor(return_attention_mask=True).save_pretrained(tmp_path)
    theirs = transformers.Wav2Vec2FeatureExtractor.from_pretrained(tmp_path)
    assert theirs.return_attention_mask and theirs.do_normalize


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ctc-tokenizer")
    (folder / "vocab.json").write_text(json.dumps(VOCAB))
    theirs = transformers.Wav2Vec2CTCTokenizer(str(folder / "vocab.json"))
    theirs.save_pretrained(folder)
    return theirs, Wav2Vec2CTCTokenizer.from_pretrained(folder)


def test_encoding_matches_transformers(tokenizers):
    theirs, ours = tokenizers
    for text in ["HELLO WORLD", "IT'S A TEST", "<s>HI</s>", "WHAT?"]:
        assert ours(text).input_ids == theirs(text).input_ids
    batch = ["HI THERE", "A"]
    assert ours(batch, padding=True).input_ids == theirs(batch, padding=True).input_ids


FRAMES = [
    [0, 0, 13, 13, 0, 10, 17, 17, 0, 17, 20, 4, 4, 0, 28, 20, 23, 17, 9, 0, 0],  # "HELLO WORLD" with blanks
    [1, 13, 13, 13, 14, 4, 0, 4, 3, 2],
    [0, 0, 0],
    [4, 4, 13, 4],
]


@pytest.mark.parametrize(
    "options",
    [dict(), dict(skip_special_tokens=True), dict(group_tokens=False),
     dict(output_char_offsets=True), dict(output_word_offsets=True),
     dict(output_char_offsets=True, output_word_offsets=True)],
    ids=["plain", "skip-special", "no-grouping", "char-offsets", "word-offsets", "both-offsets"],
)
def test_greedy_ctc_decoding_matches_transformers(tokenizers, options):
    theirs, ours = tokenizers
    for frames in FRAMES:
        expected, got = theirs.decode(frames, **options), ours.decode(frames, **options)
        if isinstance(expected, str):
            assert got == expected
            continue
        assert got.text == expected.text
        for name in ("char_offsets", "word_offsets"):
            want = expected[name] if name in expected else None
            have = getattr(got, name)
            if want is None:
                assert have is None
            else:
                assert [{k: (int(v) if k.endswith("offset") else v) for k, v in d.items()} for d in want] == have
    assert ours.batch_decode(FRAMES) == theirs.batch_decode(FRAMES)


def test_repeats_and_blanks_collapse_into_words_with_offsets(tokenizers):
    _, ours = tokenizers
    out = ours.decode(FRAMES[0], output_word_offsets=True)
    assert out.text == "HELLO WORLD"
    assert [(w["word"], w["start_offset"], w["end_offset"]) for w in out.word_offsets] == [("HELLO", 2, 11), ("WORLD", 14, 19)]


def test_tokenizer_files_round_trip_and_lower_case(tokenizers, tmp_path):
    _, ours = tokenizers
    ours.save_pretrained(tmp_path)
    theirs = transformers.Wav2Vec2CTCTokenizer.from_pretrained(tmp_path)
    assert theirs("HELLO").input_ids == ours("HELLO").input_ids
    lower = Wav2Vec2CTCTokenizer(VOCAB, do_lower_case=True)
    assert lower.decode(lower("hello there").input_ids, group_tokens=False) == "hello there"
    (tmp_path / "empty").mkdir()
    with pytest.raises(HubError, match="vocab.json"):
        Wav2Vec2CTCTokenizer.from_pretrained(tmp_path / "empty")


def test_processor_round_trips_with_transformers(ctc_checkpoint, tmp_path):
    folder, _ = ctc_checkpoint
    ours = auto.AutoProcessor.from_pretrained(folder)
    assert isinstance(ours, Wav2Vec2Processor)
    ours.save_pretrained(tmp_path)
    theirs = transformers.Wav2Vec2Processor.from_pretrained(tmp_path)
    audio = [noise(3000), noise(4000, 3)]
    expected = theirs(audio, sampling_rate=16000, padding=True, return_tensors="np")
    got = ours(audio, sampling_rate=16000, padding=True, return_tensors="np")
    assert np.abs(expected.input_values - got.input_values).max() <= 1e-5
    assert np.array_equal(expected.attention_mask, got.attention_mask)
    labels = ours(text=["HI", "THERE"]).input_ids
    assert labels == theirs(text=["HI", "THERE"], padding=True).input_ids
    with pytest.raises(ProcessingError, match="sampling"):
        ours(audio)
