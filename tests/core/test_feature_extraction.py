"""FeatureExtractor: padding, truncation and masks vs transformers 5.24.0, audio inputs and errors.

Padding, truncation, attention masks and zero-mean/unit-variance
normalization are compared with transformers' ``Wav2Vec2FeatureExtractor``
(its generic waveform extractor) with ``np.array_equal``: bestiary uses the
same float32 numpy arithmetic, so the tolerance is 0. Resampling is compared
with ``librosa.resample`` and decoding with ``soundfile.read``, the libraries
bestiary calls, again exactly.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")
librosa = pytest.importorskip("librosa")
soundfile = pytest.importorskip("soundfile")

from bestiary.errors import ProcessingError  # noqa: E402
from bestiary.processing.feature_extraction import FeatureExtractor  # noqa: E402


def waveforms(*lengths: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [(0.1 * rng.standard_normal(n) + 0.02).astype(np.float32) for n in lengths]


def sine(frequency: float, sampling_rate: int, seconds: float = 0.5) -> np.ndarray:
    t = np.arange(int(sampling_rate * seconds)) / sampling_rate
    return (0.4 * np.sin(2 * np.pi * frequency * t)).astype(np.float32)


def assert_same_batch(expected, actual, *, same_container: bool = True) -> None:
    assert sorted(expected.keys()) == sorted(actual.keys())
    for key in expected:
        e, a = expected[key], actual[key]
        if not same_container:
            # With return_tensors=None transformers sometimes stacks (no normalization) and sometimes
            # returns a list (normalization); bestiary always returns a list. Compare row by row.
            e, a = list(e), list(a)
        if isinstance(e, torch.Tensor):
            assert isinstance(a, torch.Tensor) and e.dtype == a.dtype and torch.equal(e, a), key
            continue
        if isinstance(e, np.ndarray):
            assert isinstance(a, np.ndarray) and e.dtype == a.dtype and np.array_equal(e, a), key
            continue
        assert len(e) == len(a), key
        for u, v in zip(e, a):
            assert u.dtype == v.dtype and u.shape == v.shape and np.array_equal(u, v), key


# -- parity with transformers -----------------------------------------------------------------

CALLS = {
    "no-padding": {},
    "longest": {"padding": True},
    "longest-multiple": {"padding": "longest", "pad_to_multiple_of": 256},
    "max-length": {"padding": "max_length", "max_length": 1500},
    "truncate": {"padding": "max_length", "max_length": 900, "truncation": True},
    "truncate-multiple": {"padding": "max_length", "max_length": 900, "truncation": True, "pad_to_multiple_of": 128},
    "truncate-only": {"max_length": 900, "truncation": True},
    "no-mask": {"padding": True, "return_attention_mask": False},
    "mask-asked": {"padding": True, "return_attention_mask": True},
}
SETTINGS = {
    "raw": {"do_normalize": False, "return_attention_mask": True},
    "wav2vec2-base": {"do_normalize": True, "return_attention_mask": False},
    "wav2vec2-lv60": {"do_normalize": True, "return_attention_mask": True},
    "padding-value": {"do_normalize": False, "padding_value": -1.5},
}


@pytest.mark.parametrize("settings", sorted(SETTINGS))
@pytest.mark.parametrize("call", sorted(CALLS))
def test_padding_truncation_masks_match_wav2vec2(tmp_path, settings, call):
    reference = transformers.Wav2Vec2FeatureExtractor(**SETTINGS[settings])
    reference.save_pretrained(tmp_path)
    ours = FeatureExtractor.from_pretrained(tmp_path)
    batch = waveforms(800, 1200, 1000)
    for return_tensors in (None, "np") if CALLS[call].get("padding") else (None,):
        kwargs = {**CALLS[call], "return_tensors": return_tensors}
        expected = reference(batch, sampling_rate=16000, **kwargs)
        actual = ours(batch, sampling_rate=16000, **kwargs)
        assert_same_batch(expected, actual, same_container=return_tensors is not None)


def test_torch_outputs_and_tensor_inputs_match_wav2vec2():
    reference = transformers.Wav2Vec2FeatureExtractor(return_attention_mask=True)
    ours = FeatureExtractor.from_dict(reference.to_dict())
    batch = waveforms(700, 1100)
    expected = reference(batch, sampling_rate=16000, padding=True, return_tensors="pt")
    actual = ours([torch.from_numpy(x) for x in batch], sampling_rate=16000, padding=True, return_tensors="pt")
    assert_same_batch(expected, actual)
    single = ours(torch.from_numpy(batch[0]), sampling_rate=16000, return_tensors="pt")
    assert single.input_values.shape == (1, 700)


def test_left_padding_matches_transformers():
    reference = transformers.Wav2Vec2FeatureExtractor(
        do_normalize=False, padding_side="left", return_attention_mask=True
    )
    ours = FeatureExtractor.from_dict(reference.to_dict())
    batch = waveforms(500, 900)
    assert_same_batch(
        reference(batch, sampling_rate=16000, padding=True, return_tensors="np"),
        ours(batch, sampling_rate=16000, padding=True, return_tensors="np"),
    )


def test_left_padding_normalizes_only_the_real_samples():
    # transformers takes the first `length` samples, which are padding on the left; bestiary uses the mask.
    ours = FeatureExtractor(do_normalize=True, padding_side="left", return_attention_mask=True)
    out = ours(waveforms(500, 900), sampling_rate=16000, padding=True, return_tensors="np")
    short, mask = out.input_values[0], out.attention_mask[0].astype(bool)
    assert np.all(short[~mask] == 0.0)
    assert abs(short[mask].mean()) < 1e-5 and abs(short[mask].std() - 1) < 1e-3


class _Features(transformers.SequenceFeatureExtractor):
    model_input_names = ["input_features", "attention_mask"]


def test_pad_two_dimensional_features_matches_sequence_feature_extractor():
    reference = _Features(feature_size=4, sampling_rate=16000, padding_value=-1.0)
    ours = FeatureExtractor(feature_size=4, padding_value=-1.0)
    rng = np.random.default_rng(1)
    frames = [rng.standard_normal((n, 4)).astype(np.float32) for n in (5, 9, 7)]
    expected = reference.pad(
        {"input_features": frames},
        padding="max_length",
        max_length=8,
        truncation=True,
        pad_to_multiple_of=3,
        return_tensors="np",
    )
    values, masks = ours.pad(frames, padding="max_length", max_length=8, truncation=True, pad_to_multiple_of=3)
    np.testing.assert_array_equal(np.stack(values), expected["input_features"])
    np.testing.assert_array_equal(np.stack(masks), expected["attention_mask"])


# -- sampling rates ---------------------------------------------------------------------------


def test_other_sampling_rate_is_resampled_with_librosa(caplog):
    tone = sine(440.0, 22050)
    with caplog.at_level(logging.INFO, logger="bestiary.processing.audio_utils"):
        out = FeatureExtractor(sampling_rate=16000)(tone, sampling_rate=22050)
    expected = librosa.resample(tone, orig_sr=22050, target_sr=16000)
    np.testing.assert_array_equal(out.input_values[0], expected.astype(np.float32))
    assert "22050 Hz to 16000 Hz" in caplog.text


def test_missing_sampling_rate_is_an_error():
    extractor = FeatureExtractor()
    with pytest.raises(ProcessingError, match=r"sampling rate.*unknown.*sampling_rate=.*16000 Hz"):
        extractor(np.zeros(100, dtype=np.float32))
    with pytest.raises(ProcessingError, match="'sampling_rate'"):
        extractor({"array": np.zeros(100, dtype=np.float32)})


def test_dataset_style_dicts_carry_their_rate():
    tone = sine(300.0, 8000)
    extractor = FeatureExtractor(sampling_rate=8000)
    for item in ({"array": tone, "sampling_rate": 8000}, {"raw": tone, "sampling_rate": 8000, "path": None}):
        np.testing.assert_array_equal(extractor(item).input_values[0], tone)
    resampled = extractor({"array": sine(300.0, 16000), "sampling_rate": 16000}).input_values[0]
    np.testing.assert_array_equal(resampled, librosa.resample(sine(300.0, 16000), orig_sr=16000, target_sr=8000))


def test_integer_pcm_is_scaled():
    pcm = (sine(200.0, 16000) * 32767).astype(np.int16)
    out = FeatureExtractor()(pcm, sampling_rate=16000).input_values[0]
    np.testing.assert_allclose(out, pcm / 32768.0, atol=1e-7)


# -- files and bytes --------------------------------------------------------------------------


@pytest.mark.parametrize("extension", ["wav", "flac", "ogg", "mp3"])
def test_audio_files_and_bytes_are_decoded(tmp_path, extension):
    path = tmp_path / f"tone.{extension}"
    soundfile.write(path, sine(440.0, 16000), 16000)
    expected, rate = soundfile.read(path, dtype="float32")
    assert rate == 16000
    extractor = FeatureExtractor()
    data = path.read_bytes()
    for source in (path, str(path), data, {"path": str(path), "bytes": None}, {"bytes": data}):
        np.testing.assert_array_equal(extractor(source).input_values[0], expected)


def test_file_at_another_rate_is_resampled(tmp_path):
    path = tmp_path / "tone.flac"
    soundfile.write(path, sine(440.0, 22050), 22050)
    decoded, _ = soundfile.read(path, dtype="float32")
    out = FeatureExtractor()(str(path)).input_values[0]
    np.testing.assert_array_equal(out, librosa.resample(decoded, orig_sr=22050, target_sr=16000))


def test_stereo_is_downmixed_and_logged(tmp_path, caplog):
    left, right = sine(440.0, 16000), sine(660.0, 16000)
    path = tmp_path / "stereo.wav"
    soundfile.write(path, np.stack([left, right], axis=1), 16000, subtype="FLOAT")
    extractor = FeatureExtractor()
    with caplog.at_level(logging.INFO, logger="bestiary.processing.audio_utils"):
        from_file = extractor(path).input_values[0]
    np.testing.assert_allclose(from_file, (left + right) / 2, atol=1e-7)
    assert "stereo.wav" in caplog.text and "2 channels to mono" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="bestiary.processing.audio_utils"):
        from_dict = extractor({"array": np.stack([left, right]), "sampling_rate": 16000}).input_values[0]
    np.testing.assert_allclose(from_dict, (left + right) / 2, atol=1e-7)
    assert "2 channels to mono" in caplog.text


def test_empty_audio_is_an_error(tmp_path):
    extractor = FeatureExtractor()
    with pytest.raises(ProcessingError, match="empty"):
        extractor(np.zeros(0, dtype=np.float32), sampling_rate=16000)
    with pytest.raises(ProcessingError, match="Audio input 1 is empty"):
        extractor([np.ones(10, dtype=np.float32), np.zeros(0, dtype=np.float32)], sampling_rate=16000)
    with pytest.raises(ProcessingError, match="empty list"):
        extractor([])


def test_unreadable_and_missing_files_are_named(tmp_path):
    garbage = tmp_path / "speech.wav"
    garbage.write_bytes(b"this is not a wave file at all")
    extractor = FeatureExtractor()
    with pytest.raises(ProcessingError, match=r"speech\.wav"):
        extractor(str(garbage))
    with pytest.raises(ProcessingError, match=r"missing\.flac.*does not exist"):
        extractor(tmp_path / "missing.flac")
    with pytest.raises(ProcessingError, match="audio bytes"):
        extractor(b"\x00\x01 not audio")


def test_batches_need_padding_to_stack():
    extractor = FeatureExtractor()
    with pytest.raises(ProcessingError, match="padding=True"):
        extractor(waveforms(100, 200), sampling_rate=16000, return_tensors="pt")
    with pytest.raises(ProcessingError, match="max_length"):
        extractor(waveforms(100), sampling_rate=16000, padding="max_length")
    with pytest.raises(ProcessingError, match="padding="):
        extractor(waveforms(100), sampling_rate=16000, padding="sideways")


# -- loading and saving -----------------------------------------------------------------------


def test_save_load_round_trip_and_transformers_reads_it(tmp_path):
    ours = FeatureExtractor(do_normalize=True, return_attention_mask=True, padding_value=0.0)
    ours.save_pretrained(tmp_path)
    written = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert written["feature_extractor_type"] == "Wav2Vec2FeatureExtractor"
    assert FeatureExtractor.from_pretrained(tmp_path).to_dict() == ours.to_dict()
    theirs = transformers.AutoFeatureExtractor.from_pretrained(tmp_path)
    assert type(theirs).__name__ == "Wav2Vec2FeatureExtractor"
    batch = waveforms(300, 500)
    assert_same_batch(
        theirs(batch, sampling_rate=16000, padding=True, return_tensors="pt"),
        ours(batch, sampling_rate=16000, padding=True, return_tensors="pt"),
    )


def test_unknown_keys_kept_and_kwargs_override(tmp_path):
    data = {**json.loads(transformers.WhisperFeatureExtractor().to_json_string()), "future_key": [1, 2]}
    data.pop("mel_filters", None)
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(data))
    loaded = FeatureExtractor.from_pretrained(tmp_path, sampling_rate=8000)
    assert loaded.sampling_rate == 8000 and loaded.feature_size == 80 and loaded.n_fft == 400
    out = json.loads(loaded.to_json_string())
    assert out["feature_extractor_type"] == "WhisperFeatureExtractor"
    for key in ("future_key", "chunk_length", "hop_length", "n_samples", "processor_class"):
        if key in data:
            assert out[key] == data[key]
    with pytest.raises(ProcessingError, match="samplig_rate.*sampling_rate"):
        FeatureExtractor.from_pretrained(tmp_path, samplig_rate=8000)


def test_validation_errors_name_field_and_file(tmp_path):
    path = tmp_path / "preprocessor_config.json"
    path.write_text(json.dumps({"sampling_rate": "fast"}))
    with pytest.raises(ProcessingError, match=r"preprocessor_config\.json.*'sampling_rate'"):
        FeatureExtractor.from_pretrained(tmp_path)
    path.write_text(json.dumps({"padding_side": "middle"}))
    with pytest.raises(ProcessingError, match=r"preprocessor_config\.json.*'padding_side'"):
        FeatureExtractor.from_pretrained(tmp_path)
