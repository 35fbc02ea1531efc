"""WhisperFeatureExtractor, WhisperTokenizer and WhisperProcessor against transformers, and their files both ways."""

from __future__ import annotations

import json

import librosa
import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")

import bestiary.auto as auto  # noqa: E402
from bestiary.errors import ProcessingError  # noqa: E402
from bestiary_whisper.feature_extraction_whisper import WhisperFeatureExtractor  # noqa: E402
from bestiary_whisper.processing_whisper import WhisperProcessor  # noqa: E402
from bestiary_whisper.tokenization_whisper import WhisperTokenizer  # noqa: E402


def noise(samples: int, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(samples) * 0.1).astype(np.float32)


def assert_features_close(expected, got) -> None:
    expected, got = np.asarray(expected), np.asarray(got)
    assert expected.shape == got.shape
    assert np.abs(expected - got).max() <= 1e-4


# -- features ------------------------------------------------------------------------------------
@pytest.mark.parametrize("samples", [1000, 48_007, 480_000, 481_234])
def test_features_equal_transformers_for_several_lengths(samples):
    audio = noise(samples)
    expected = transformers.WhisperFeatureExtractor()(audio, sampling_rate=16000, return_attention_mask=True, return_tensors="np")
    got = WhisperFeatureExtractor()(audio, sampling_rate=16000, return_attention_mask=True, return_tensors="np")
    assert got.input_features.shape == (1, 80, 3000)
    assert_features_close(expected.input_features, got.input_features)
    assert np.array_equal(expected.attention_mask, got.attention_mask)


@pytest.mark.parametrize("rate", [8000, 22050, 44100])
def test_other_sampling_rates_are_resampled_like_librosa(rate):
    audio = noise(int(rate * 1.5), seed=rate)
    resampled = librosa.resample(audio, orig_sr=rate, target_sr=16000)
    expected = transformers.WhisperFeatureExtractor()(resampled, sampling_rate=16000, return_tensors="np")
    got = WhisperFeatureExtractor()(audio, sampling_rate=rate, return_tensors="np")
    assert_features_close(expected.input_features, got.input_features)


def test_batches_128_mel_bins_normalization_and_long_audio_equal_transformers():
    batch = [noise(8000, 1), noise(40_000, 2)]
    for settings, call in [
        (dict(feature_size=128), dict()),
        (dict(), dict(do_normalize=True)),
        (dict(), dict(padding="longest", truncation=False, return_attention_mask=True)),
    ]:
        expected = transformers.WhisperFeatureExtractor(**settings)(batch, sampling_rate=16000, return_tensors="np", **call)
        got = WhisperFeatureExtractor(**settings)(batch, sampling_rate=16000, return_tensors="np", **call)
        assert_features_close(expected.input_features, got.input_features)
    long = noise(16000 * 45)
    expected = transformers.WhisperFeatureExtractor()(long, sampling_rate=16000, padding="longest", truncation=False,
                                                      return_attention_mask=True, return_tensors="np")
    got = WhisperFeatureExtractor()(long, sampling_rate=16000, padding="longest", truncation=False,
                                    return_attention_mask=True, return_tensors="np")
    assert got.input_features.shape == (1, 80, 4500)
    assert_features_close(expected.input_features, got.input_features)
    assert np.array_equal(expected.attention_mask, got.attention_mask)


def test_features_stay_on_the_requested_device_as_torch_tensors():
    got = WhisperFeatureExtractor()(noise(16000), sampling_rate=16000, return_tensors="pt", device="cpu")
    assert isinstance(got.input_features, torch.Tensor) and got.input_features.dtype == torch.float32


def test_feature_settings_round_trip_with_transformers(tmp_path):
    ours = WhisperFeatureExtractor(feature_size=128, chunk_length=20)
    ours.save_pretrained(tmp_path / "ours")
    theirs = transformers.WhisperFeatureExtractor.from_pretrained(tmp_path / "ours")
    assert (theirs.feature_size, theirs.n_samples, theirs.nb_max_frames) == (128, 320_000, 2000)
    transformers.WhisperFeatureExtractor(hop_length=200).save_pretrained(tmp_path / "theirs")
    loaded = auto.AutoFeatureExtractor.from_pretrained(tmp_path / "theirs")
    assert isinstance(loaded, WhisperFeatureExtractor) and loaded.hop_length == 200 and loaded.nb_max_frames == 2400


def test_a_raw_array_without_sampling_rate_is_an_error():
    with pytest.raises(ProcessingError, match="sampling_rate"):
        WhisperFeatureExtractor()(noise(16000))


# -- tokenizer ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tokenizers(whisper_base):
    root, _ = whisper_base
    return (
        transformers.WhisperTokenizer.from_pretrained(root / "tokenizer"),
        WhisperTokenizer.from_pretrained(root / "tokenizer"),
    )


@pytest.mark.parametrize(
    "language,task,timestamps", [(None, None, False), ("fr", "transcribe", False), ("german", "translate", True)]
)
def test_prompt_and_encoding_match_transformers(tokenizers, language, task, timestamps):
    theirs, ours = tokenizers
    theirs.set_prefix_tokens(language=language, task=task, predict_timestamps=timestamps)
    ours.set_prefix_tokens(language=language, task=task, predict_timestamps=timestamps)
    assert ours.prefix_tokens == theirs.prefix_tokens
    text = ["hello world", "the lazy dog jumps"]
    assert ours(text).input_ids == theirs(text).input_ids
    assert ours.get_decoder_prompt_ids(task=task, language=language) == theirs.get_decoder_prompt_ids(
        task=task, language=language
    )


def sequences(ids):
    begin = ids["timestamp_begin"]
    sot, eot, prev = ids["<|startoftranscript|>"], ids["<|endoftext|>"], ids["<|startofprev|>"]
    return [
        [sot, ids["<|fr|>"], ids["<|transcribe|>"], begin + 30, 50, 60, begin + 100, begin + 100, 70, 80, begin + 200, eot],
        [begin, 50, 60, begin + 1400, begin + 10, 70, begin + 50, begin + 50, 80, begin + 60, eot],  # a second window
        [begin, 50, begin + 40, begin + 5, 60, begin + 9],
        [prev, 50, 51, sot, ids["<|en|>"], ids["<|notimestamps|>"], 70, 71, eot],
        [50, 51],
    ]


@pytest.mark.parametrize(
    "options",
    [dict(), dict(skip_special_tokens=True), dict(decode_with_timestamps=True),
     dict(decode_with_timestamps=True, skip_special_tokens=True), dict(output_offsets=True)],
    ids=["plain", "skip-special", "with-timestamps", "with-timestamps-skip", "offsets"],
)
def test_decoding_matches_transformers(tokenizers, whisper_ids, options):
    theirs, ours = tokenizers
    for ids in sequences(whisper_ids):
        assert ours.decode(ids, **options) == theirs.decode(ids, **options)
    if "output_offsets" not in options:  # transformers' batch_decode fails on ragged batches with offsets
        batch = sequences(whisper_ids)[:2]
        assert ours.batch_decode(batch, **options) == theirs.batch_decode(batch, **options)


def test_prompt_ids_match_transformers(tokenizers):
    theirs, ours = tokenizers
    assert ours.get_prompt_ids("the quick fox").tolist() == theirs.get_prompt_ids("the quick fox").tolist()
    with pytest.raises(ProcessingError, match="special token"):
        ours.get_prompt_ids("hello <|endoftext|>")


def test_tokenizer_files_round_trip_with_transformers(tokenizers, tmp_path):
    _, ours = tokenizers
    ours.set_prefix_tokens(language="es", task="transcribe", predict_timestamps=False)
    ours.save_pretrained(tmp_path / "ours")
    theirs = transformers.WhisperTokenizer.from_pretrained(tmp_path / "ours")
    assert theirs.prefix_tokens == ours.prefix_tokens
    assert theirs("hello").input_ids == ours("hello").input_ids
    theirs.save_pretrained(tmp_path / "theirs")
    loaded = auto.AutoTokenizer.from_pretrained(tmp_path / "theirs")
    assert isinstance(loaded, WhisperTokenizer) and loaded.prefix_tokens == ours.prefix_tokens


# -- processor -----------------------------------------------------------------------------------------
def test_processor_round_trips_with_transformers(whisper_checkpoint, tmp_path):
    folder, _ = whisper_checkpoint
    ours = auto.AutoProcessor.from_pretrained(folder)
    assert isinstance(ours, WhisperProcessor)
    ours.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "processor_config.json").read_text())["processor_class"] == "WhisperProcessor"
    theirs = transformers.WhisperProcessor.from_pretrained(tmp_path)
    audio = noise(20_000)
    expected = theirs(audio, sampling_rate=16000, text="hello world", return_tensors="np")
    got = ours(audio, sampling_rate=16000, text="hello world", return_tensors="np")
    assert_features_close(expected.input_features, got.input_features)
    assert np.array_equal(expected.labels, got.labels)
    assert ours.batch_decode(got.labels, skip_special_tokens=True) == theirs.batch_decode(expected.labels, skip_special_tokens=True)
    with pytest.raises(ProcessingError, match="audio=, text="):
        ours()
