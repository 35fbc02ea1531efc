"""The automatic-speech-recognition and audio-classification pipelines, on speech synthesized by espeak-ng.

The checkpoints are tiny random models (Whisper and Wav2Vec2, built by
transformers), so the text is meaningless: the tests check shapes,
timestamps, that nothing is dropped, agreement with transformers' pipelines
on the same audio, and the errors for bad input. Debian's ``espeak-ng``
speaks the test sentence (tests that need it skip when it is missing) and
``sox`` converts a file's sampling rate (likewise).
"""

from __future__ import annotations

import logging
import shutil
import subprocess

import numpy as np
import pytest
import soundfile
import torch

from tests.plugins.wav2vec2.wav2vec2_builders import classifier_checkpoint, ctc_checkpoint  # noqa: F401
from tests.plugins.whisper.whisper_builders import whisper_base, whisper_checkpoint  # noqa: F401

transformers = pytest.importorskip("transformers")

from bestiary.errors import ProcessingError  # noqa: E402
from bestiary.pipelines import pipeline  # noqa: E402

SENTENCE = "The quick brown fox jumps over the lazy dog. Speech recognition turns sound into text."


@pytest.fixture(autouse=True)
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    """A WAV file of espeak-ng reading SENTENCE (22050 Hz mono)."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (Debian package espeak-ng); it synthesizes the test speech")
    path = tmp_path_factory.mktemp("speech") / "speech.wav"
    subprocess.run(["espeak-ng", "-w", str(path), SENTENCE], check=True, capture_output=True)
    return path


@pytest.fixture(scope="module")
def asr_whisper(whisper_checkpoint):
    folder, _ = whisper_checkpoint
    return pipeline("automatic-speech-recognition", model=str(folder), max_new_tokens=10)


@pytest.fixture(scope="module")
def asr_ctc(ctc_checkpoint):
    folder, _ = ctc_checkpoint
    return pipeline("automatic-speech-recognition", model=str(folder))


def duration(path) -> float:
    info = soundfile.info(str(path))
    return info.frames / info.samplerate


def at_16k(path) -> np.ndarray:
    import librosa

    samples, rate = soundfile.read(str(path), dtype="float32")
    return librosa.resample(samples, orig_sr=rate, target_sr=16000)


def check_chunks(result: dict, seconds: float, joiner: str = "") -> None:
    chunks = result["chunks"]
    assert chunks, "no timed chunks"
    starts = [chunk["timestamp"][0] for chunk in chunks]
    assert starts == sorted(starts)
    for chunk in chunks:
        start, end = chunk["timestamp"]
        assert 0.0 <= start <= end <= seconds + 0.05
    assert joiner.join(chunk["text"] for chunk in chunks).strip() == result["text"].strip()


# -- Whisper --------------------------------------------------------------------------------------------
def test_whisper_transcribes_a_speech_file_with_timestamps(asr_whisper, speech):
    plain = asr_whisper(str(speech))
    assert isinstance(plain["text"], str) and "chunks" not in plain
    timed = asr_whisper(str(speech), return_timestamps=True)
    check_chunks(timed, duration(speech))


def test_whisper_pipeline_agrees_with_transformers(asr_whisper, whisper_checkpoint, speech):
    folder, _ = whisper_checkpoint
    theirs = transformers.pipeline("automatic-speech-recognition", model=str(folder))
    audio = at_16k(speech)
    expected = theirs({"raw": audio, "sampling_rate": 16000}, generate_kwargs={"language": "en", "max_new_tokens": 10})
    got = asr_whisper({"raw": audio, "sampling_rate": 16000}, language="en")
    assert got["text"] == expected["text"]


def test_whisper_long_audio_goes_window_by_window_past_30_seconds(asr_whisper, speech):
    audio = at_16k(speech)
    long = np.concatenate([audio] * int(np.ceil(40 * 16000 / len(audio))))[: 40 * 16000]
    result = asr_whisper(long, sampling_rate=16000, return_timestamps=True)
    check_chunks(result, 40.0)
    assert max(chunk["timestamp"][1] for chunk in result["chunks"]) > 30.0


def test_whisper_chunked_batching(asr_whisper, speech):
    result = asr_whisper(str(speech), chunk_length_s=3.0, batch_size=4, return_timestamps=True)
    check_chunks(result, duration(speech))
    assert isinstance(asr_whisper(str(speech), chunk_length_s=3.0, batch_size=4)["text"], str)


def test_a_batch_of_inputs_gives_one_result_each(asr_whisper, speech):
    audio = at_16k(speech)
    results = asr_whisper([str(speech), {"array": audio[:16000], "sampling_rate": 16000}], batch_size=2)
    assert len(results) == 2 and all(isinstance(r["text"], str) for r in results)


# -- CTC ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("unit", ["char", "word"])
def test_ctc_transcribes_with_char_and_word_timestamps(asr_ctc, speech, unit):
    result = asr_ctc(str(speech), return_timestamps=unit)
    assert isinstance(result["text"], str)
    if not result["text"].strip():
        pytest.skip("the random model emitted only blanks")
    chunks = result["chunks"]
    seconds = duration(speech)
    assert all(0 <= c["timestamp"][0] <= c["timestamp"][1] <= seconds + 0.05 for c in chunks)
    if unit == "word":
        assert " ".join(c["text"] for c in chunks) == " ".join(result["text"].split())
    else:
        assert "".join(c["text"] for c in chunks).strip() == result["text"]


def test_ctc_pipeline_agrees_with_transformers(asr_ctc, ctc_checkpoint, speech):
    folder, _ = ctc_checkpoint
    theirs = transformers.pipeline("automatic-speech-recognition", model=str(folder))
    audio = at_16k(speech)
    expected = theirs({"raw": audio, "sampling_rate": 16000}, return_timestamps="word")
    got = asr_ctc({"raw": audio, "sampling_rate": 16000}, return_timestamps="word")
    assert got["text"] == expected["text"]
    assert [c["text"] for c in got["chunks"]] == [c["text"] for c in expected["chunks"]]
    for a, b in zip(got["chunks"], expected["chunks"]):
        assert np.allclose(a["timestamp"], b["timestamp"])


def test_ctc_chunked_batching_covers_the_whole_recording(asr_ctc, speech):
    result = asr_ctc(str(speech), chunk_length_s=1.5, stride_length_s=0.25, batch_size=4, return_timestamps="char")
    if result["text"]:
        check_chunks(result, duration(speech))


# -- audio classification ---------------------------------------------------------------------------------
def test_audio_classification_top_k_agrees_with_transformers(classifier_checkpoint, speech):
    folder, _ = classifier_checkpoint
    ours = pipeline("audio-classification", model=str(folder))
    theirs = transformers.pipeline("audio-classification", model=str(folder))
    audio = at_16k(speech)
    got = ours({"array": audio, "sampling_rate": 16000}, top_k=2)
    expected = theirs({"array": audio, "sampling_rate": 16000}, top_k=2)
    assert [g["label"] for g in got] == [e["label"] for e in expected]
    assert np.allclose([g["score"] for g in got], [e["score"] for e in expected], atol=1e-4)
    everything = ours(str(speech), top_k=None)
    assert sorted(g["label"] for g in everything) == ["music", "noise", "speech"]
    assert len(ours([str(speech), str(speech)], batch_size=2)) == 2


def test_whisper_encoder_classifies_audio(whisper_base, speech, tmp_path):
    from tests.plugins.whisper.whisper_builders import save_reference

    root, ids = whisper_base
    (tmp_path / "tokenizer").symlink_to(root / "tokenizer")
    save_reference(tmp_path / "classifier", ids, head="WhisperForAudioClassification", num_labels=4)
    result = pipeline("audio-classification", model=str(tmp_path / "classifier"))(str(speech))
    assert len(result) == 4 and abs(sum(r["score"] for r in result) - 1) < 1e-4


# -- bad input ------------------------------------------------------------------------------------------
def test_bad_input_gives_clear_errors(asr_ctc, tmp_path):
    with pytest.raises(ProcessingError, match="empty"):
        asr_ctc(np.zeros(0, dtype=np.float32), sampling_rate=16000)
    with pytest.raises(ProcessingError, match="sampling_rate"):
        asr_ctc(np.zeros(16000, dtype=np.float32))
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(b"this is not a wav file at all")
    with pytest.raises(ProcessingError, match="Cannot decode.*garbage.wav"):
        asr_ctc(str(garbage))
    with pytest.raises(ProcessingError, match="does not exist"):
        asr_ctc(str(tmp_path / "missing.wav"))
    with pytest.raises(ProcessingError, match="return_timestamps"):
        asr_ctc(np.zeros(16000, dtype=np.float32), sampling_rate=16000, return_timestamps=True)


def test_stereo_file_is_downmixed_and_logged(asr_ctc, speech, tmp_path, caplog):
    samples, rate = soundfile.read(str(speech), dtype="float32")
    stereo = tmp_path / "stereo.wav"
    soundfile.write(str(stereo), np.stack([samples, samples * 0.5], axis=1), rate, subtype="FLOAT")
    mono = tmp_path / "mono.wav"
    soundfile.write(str(mono), samples * 0.75, rate, subtype="FLOAT")
    with caplog.at_level(logging.INFO):
        from_stereo = asr_ctc(str(stereo))
    assert "Downmixing" in caplog.text and "2 channels" in caplog.text
    assert from_stereo["text"] == asr_ctc(str(mono))["text"]


def test_a_file_at_another_sampling_rate_is_resampled(asr_ctc, speech, tmp_path, caplog):
    if shutil.which("sox") is None:
        pytest.skip("sox is not installed (Debian package sox); it converts the test file's sampling rate")
    converted = tmp_path / "speech-8k.wav"
    subprocess.run(["sox", str(speech), "-r", "8000", str(converted)], check=True, capture_output=True)
    with caplog.at_level(logging.INFO):
        result = asr_ctc(str(converted), return_timestamps="char")
    assert "from 8000 Hz to 16000 Hz" in caplog.text
    if result["text"]:
        check_chunks(result, duration(converted))
