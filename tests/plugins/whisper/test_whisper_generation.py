"""Whisper's generate() against transformers, token for token: prompts, timestamps, long-form windows."""

from __future__ import annotations

import numpy as np
import pytest

transformers = pytest.importorskip("transformers")

from bestiary.errors import GenerationError  # noqa: E402
from bestiary.generation.config import GenerationConfig  # noqa: E402
from bestiary_whisper.feature_extraction_whisper import WhisperFeatureExtractor  # noqa: E402
from bestiary_whisper.modeling_whisper import WhisperForConditionalGeneration  # noqa: E402


@pytest.fixture(scope="module")
def models(whisper_checkpoint):
    folder, reference = whisper_checkpoint
    return reference, WhisperForConditionalGeneration.from_pretrained(folder)


def noise(seconds: float, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(int(16000 * seconds)) * 0.1).astype(np.float32)


def features(*seconds: float, long_form: bool = False):
    extractor = WhisperFeatureExtractor()
    audio = [noise(s, seed=i) for i, s in enumerate(seconds)]
    if long_form:
        return extractor(audio, sampling_rate=16000, padding="longest", truncation=False,
                         return_attention_mask=True, return_tensors="pt")
    return extractor(audio, sampling_rate=16000, return_tensors="pt")


def both(models, inputs, **kwargs):
    reference, ours = models
    expected = reference.generate(inputs.input_features, attention_mask=inputs.get("attention_mask"), **kwargs)
    got = ours.generate(inputs.input_features, attention_mask=inputs.get("attention_mask"), **kwargs)
    return expected, got


CASES = {
    "forced-language-transcribe": dict(language="fr", task="transcribe"),
    "language-name-translate": dict(language="german", task="translate"),
    "detected-language": dict(),
    "timestamps": dict(language="en", return_timestamps=True),
    "suppressed-tokens-off": dict(language="en", suppress_tokens=None, begin_suppress_tokens=None),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_short_form_tokens_match_transformers(models, case):
    expected, got = both(models, features(3.0), max_new_tokens=12, **CASES[case])
    assert got.tolist() == expected.tolist()


def test_batch_with_one_language_per_recording_matches_transformers(models):
    expected, got = both(models, features(2.0, 5.0), language=["fr", "de"], max_new_tokens=10)
    assert got.tolist() == expected.tolist()


def test_default_length_comes_from_the_generation_config(models):
    expected, got = both(models, features(1.0), language="en")
    assert got.tolist() == expected.tolist()


def test_return_dict_gives_whole_sequences_with_the_prompt(models, whisper_ids):
    expected, got = both(models, features(2.0), language="fr", max_new_tokens=6, return_dict_in_generate=True)
    assert got.sequences.tolist() == expected.sequences.tolist()
    assert got.sequences[0, :4].tolist() == [
        whisper_ids["<|startoftranscript|>"], whisper_ids["<|fr|>"], whisper_ids["<|transcribe|>"],
        whisper_ids["<|notimestamps|>"],
    ]


def test_long_form_segments_continue_past_30_seconds(models, whisper_ids):
    inputs = features(48.0, long_form=True)
    reference, ours = models
    kwargs = dict(language="en", max_new_tokens=8, return_segments=True, return_timestamps=True)
    expected = reference.generate(inputs.input_features, attention_mask=inputs.attention_mask, **kwargs)
    got = ours.generate(inputs.input_features, attention_mask=inputs.attention_mask, **kwargs)
    assert got.sequences.tolist() == expected["sequences"].tolist()
    ours_segments = [(round(float(s["start"]), 4), round(float(s["end"]), 4), s["tokens"].tolist()) for s in got.segments[0]]
    theirs = [(round(float(s["start"]), 4), round(float(s["end"]), 4), s["tokens"].tolist()) for s in expected["segments"][0]]
    assert ours_segments == theirs
    assert max(end for _, end, _ in ours_segments) > 30.0
    starts = [start for start, _, _ in ours_segments]
    assert starts == sorted(starts)


def test_batched_long_form_with_attention_mask_matches_transformers(models):
    expected, got = both(
        models, features(35.0, 12.0, long_form=True), language="en", max_new_tokens=6, return_timestamps=True
    )
    assert got.tolist() == expected.tolist()


def test_previous_text_conditions_the_next_window_like_transformers(models):
    expected, got = both(
        models,
        features(40.0, long_form=True),
        language="en",
        max_new_tokens=6,
        condition_on_prev_tokens=True,
        return_timestamps=True,
    )
    assert got.tolist() == expected.tolist()


def test_prompt_ids_match_transformers(models, whisper_checkpoint):
    folder, _ = whisper_checkpoint
    prompt = transformers.WhisperTokenizer.from_pretrained(folder).get_prompt_ids("the quick fox", return_tensors="pt")
    expected, got = both(models, features(2.0), language="en", max_new_tokens=8, prompt_ids=prompt)
    assert got.tolist() == expected.tolist()


def test_detect_language_matches_transformers(models):
    reference, ours = models
    inputs = features(2.0, 4.0)
    assert ours.detect_language(inputs.input_features).tolist() == reference.detect_language(inputs.input_features).tolist()


def test_beam_search_runs_through_the_core_engine(models):
    _, ours = models
    out = ours.generate(features(2.0).input_features, language="en", max_new_tokens=5, num_beams=2)
    assert out.shape[0] == 1 and 1 <= out.shape[1] <= 5


def test_generation_config_round_trips_through_transformers(models, tmp_path):
    _, ours = models
    ours.save_pretrained(tmp_path)
    reloaded = transformers.GenerationConfig.from_pretrained(tmp_path)
    assert reloaded.lang_to_id == ours.generation_config.lang_to_id
    assert reloaded.no_timestamps_token_id == ours.generation_config.no_timestamps_token_id
    assert isinstance(ours.generation_config, GenerationConfig)


def test_clear_errors(models, whisper_checkpoint):
    _, ours = models
    short = features(2.0).input_features
    with pytest.raises(GenerationError, match="Unknown language"):
        ours.generate(short, language="klingon")
    with pytest.raises(GenerationError, match="task"):
        ours.generate(short, task="summarize")
    with pytest.raises(GenerationError, match="English-only"):
        ours.generate(short, language="fr", is_multilingual=False)
    long = features(35.0, 40.0, long_form=True)
    with pytest.raises(GenerationError, match="timestamps"):
        ours.generate(long.input_features[:1], return_timestamps=False)
    with pytest.raises(GenerationError, match="attention_mask"):
        ours.generate(long.input_features, return_timestamps=True)
    with pytest.raises(GenerationError, match="unknown arguments"):
        ours.generate(short, languag="en")
    with pytest.raises(GenerationError, match="word-level timestamps"):
        ours.generate(short, return_token_timestamps=True)
    with pytest.raises(GenerationError, match="temperature fallback"):
        ours.generate(short, temperature=(0.0, 0.2, 0.4))
    with pytest.raises(GenerationError, match="max_target_positions"):
        ours.generate(short, language="en", max_new_tokens=500)
