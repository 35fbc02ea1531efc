"""GenerationConfig: validation naming fields, generation_config.json round trips, precedence, warnings."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from bestiary.errors import GenerationError
from bestiary.generation.config import GenerationConfig, GenerationMode, WatermarkingConfig
from tests.core.test_generation_models import one_thread, prompt, tiny_llama  # noqa: F401


@pytest.mark.parametrize(
    "settings, fields",
    [
        ({"num_beams": 4, "num_beam_groups": 3}, ["num_beam_groups", "num_beams"]),
        ({"top_p": 1.5}, ["top_p"]),
        ({"top_p": 0.0}, ["top_p"]),
        ({"num_return_sequences": 2}, ["num_return_sequences", "do_sample"]),
        ({"num_beams": 2, "num_return_sequences": 3}, ["num_return_sequences", "num_beams"]),
        ({"do_sample": True, "temperature": 0.0}, ["temperature", "do_sample"]),
        ({"min_new_tokens": 9, "max_new_tokens": 3}, ["min_new_tokens", "max_new_tokens"]),
        ({"cache_implementation": "paged-ish"}, ["cache_implementation"]),
        ({"early_stopping": "sometimes"}, ["early_stopping"]),
        ({"suppress_tokens": [2], "forced_eos_token_id": 2}, ["forced_eos_token_id", "suppress_tokens"]),
        ({"max_new_tokens": 0}, ["max_new_tokens"]),
        ({"streamer": object()}, ["streamer"]),
    ],
)
def test_invalid_settings_name_the_fields(settings, fields):
    with pytest.raises(GenerationError) as error:
        GenerationConfig(**settings)
    for name in fields:
        assert name in str(error.value)


def test_assignment_is_validated_too():
    config = GenerationConfig()
    with pytest.raises(GenerationError, match="top_k"):
        config.top_k = -1


def test_defaults_are_greedy_with_twenty_new_tokens():
    config = GenerationConfig()
    assert config.get_generation_mode() is GenerationMode.GREEDY_SEARCH
    model = tiny_llama()
    ids = prompt(5)
    out = model.generate(ids, eos_token_id=None)
    assert out.shape == (1, 5 + 20)
    manual = ids
    for _ in range(20):
        manual = torch.cat([manual, model(manual).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out, manual)


def test_modes():
    assert GenerationConfig(do_sample=True).get_generation_mode() is GenerationMode.SAMPLE
    assert GenerationConfig(num_beams=3).get_generation_mode() is GenerationMode.BEAM_SEARCH
    assert GenerationConfig(num_beams=3, do_sample=True).get_generation_mode() is GenerationMode.BEAM_SAMPLE
    assert GenerationConfig(num_beams=4, num_beam_groups=2).get_generation_mode() is GenerationMode.GROUP_BEAM_SEARCH
    assert GenerationConfig(penalty_alpha=0.6, top_k=4).get_generation_mode() is GenerationMode.CONTRASTIVE_SEARCH
    assert GenerationConfig(dola_layers="low").get_generation_mode() is GenerationMode.DOLA_GENERATION
    assert GenerationConfig(prompt_lookup_num_tokens=3).get_generation_mode() is GenerationMode.ASSISTED_GENERATION
    assert GenerationConfig().get_generation_mode(assistant_model=object()) is GenerationMode.ASSISTED_GENERATION


def test_json_round_trip_keeps_only_set_values_and_extras(tmp_path):
    config = GenerationConfig(
        max_new_tokens=7,
        eos_token_id=[2, 3],
        sequence_bias={(4, 5): -1.5},
        watermarking_config=WatermarkingConfig(bias=3.0),
    )
    config.custom_key = "kept"
    path = config.save_pretrained(tmp_path)
    data = json.loads(path.read_text())
    assert path.name == "generation_config.json"
    assert data["max_new_tokens"] == 7 and data["eos_token_id"] == [2, 3]
    assert "top_k" not in data  # defaults are not written
    assert data["custom_key"] == "kept" and data["transformers_version"]
    loaded = GenerationConfig.from_pretrained(tmp_path)
    assert loaded.sequence_bias == [([4, 5], -1.5)]
    assert loaded.watermarking_config.bias == 3.0
    assert loaded.explicit_settings() == config.explicit_settings()


def test_unknown_keys_close_to_a_setting_are_reported_and_still_round_trip(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="bestiary.generation.config"):
        config = GenerationConfig(max_new_token=5, custom_key="kept", top_h=0.3)  # top_h: transformers' own setting
        config.temprature = 0.5
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 2
    assert "'max_new_token'" in warnings[0] and "did you mean 'max_new_tokens'" in warnings[0]
    assert "'temprature'" in warnings[1] and "did you mean 'temperature'" in warnings[1]
    loaded = GenerationConfig.from_pretrained(config.save_pretrained(tmp_path).parent)
    assert loaded.explicit_settings() == {"max_new_token": 5, "custom_key": "kept", "top_h": 0.3, "temprature": 0.5}
    assert loaded.max_new_tokens is None and loaded.temperature == 1.0


def test_named_configs_live_side_by_side(tmp_path):
    GenerationConfig(do_sample=True, top_p=0.9).save_pretrained(tmp_path, config_file_name="creative.json")
    GenerationConfig(num_beams=4).save_pretrained(tmp_path, config_file_name="precise.json")
    GenerationConfig(max_new_tokens=3).save_pretrained(tmp_path)
    assert GenerationConfig.from_pretrained(tmp_path, "creative.json").top_p == 0.9
    assert GenerationConfig.from_pretrained(tmp_path, config_file_name="precise.json").num_beams == 4
    assert GenerationConfig.from_pretrained(tmp_path).max_new_tokens == 3
    assert GenerationConfig.from_pretrained(tmp_path, "creative.json", top_p=0.5).top_p == 0.5


def test_reading_transformers_files(tmp_path):
    (tmp_path / "generation_config.json").write_text(
        json.dumps({"_from_model_config": True, "bos_token_id": 1, "eos_token_id": 2, "transformers_version": "5.24.0"})
    )
    config = GenerationConfig.from_pretrained(tmp_path)
    assert config.eos_token_ids == [2] and config.bos_token_id == 1
    (tmp_path / "bad.json").write_text(json.dumps({"top_p": 3}))
    with pytest.raises(GenerationError, match=r"bad\.json.*top_p"):
        GenerationConfig.from_pretrained(tmp_path, "bad.json")


def test_model_loads_and_saves_its_generation_config(tmp_path):
    model = tiny_llama()
    assert model.generation_config.eos_token_ids == [2]  # from the model config when no file exists
    model.generation_config = GenerationConfig(max_new_tokens=4, eos_token_id=2, pad_token_id=0)
    model.save_pretrained(tmp_path)
    from bestiary.auto import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert reloaded.generation_config.max_new_tokens == 4
    assert reloaded.generate(prompt(3)).shape[1] == 3 + 4


def test_precedence_call_over_model_over_defaults():
    model = tiny_llama()
    ids = prompt(4)
    model.generation_config = GenerationConfig(max_new_tokens=6, eos_token_id=None)
    assert model.generate(ids).shape[1] == 4 + 6  # model's setting over the default 20
    assert model.generate(ids, max_new_tokens=2).shape[1] == 4 + 2  # call over model
    passed = GenerationConfig(max_new_tokens=3)
    assert model.generate(ids, generation_config=passed).shape[1] == 4 + 3
    assert model.generate(ids, generation_config=passed, max_new_tokens=5).shape[1] == 4 + 5
    assert model.generation_config.max_new_tokens == 6  # never mutated by a call


def test_a_call_max_length_beats_the_models_max_new_tokens(caplog):
    model = tiny_llama()
    ids = prompt(5)
    model.generation_config = GenerationConfig(max_new_tokens=6, eos_token_id=None)
    assert model.generate(ids, max_length=8).shape == (1, 8)
    assert model.generate(ids, generation_config=GenerationConfig(max_length=9)).shape == (1, 9)
    with caplog.at_level(logging.WARNING, logger="bestiary.generation"):
        assert model.generate(ids, max_length=8, max_new_tokens=2).shape == (1, 5 + 2)  # both from the call
    assert "max_new_tokens wins" in caplog.text
    model.generation_config = GenerationConfig(max_length=30, max_new_tokens=4, eos_token_id=None)
    assert model.generate(ids).shape == (1, 5 + 4)  # both from the model: max_new_tokens, as in transformers


def test_warnings_only_for_settings_the_user_chose(caplog):
    model = tiny_llama()
    ids = prompt(4)
    model.generation_config = GenerationConfig(temperature=0.7, top_p=0.9, eos_token_id=2)  # inherited: no warning
    with caplog.at_level(logging.WARNING, logger="bestiary.generation"):
        model.generate(ids, max_new_tokens=2)
    assert not [r for r in caplog.records if "ignores" in r.getMessage()]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="bestiary.generation"):
        model.generate(ids, max_new_tokens=2, length_penalty=0.5, top_k=5)
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "length_penalty" in messages and "top_k" in messages and "temperature" not in messages


def test_unknown_generate_arguments_suggest_the_setting():
    with pytest.raises(GenerationError, match="max_new_tokens"):
        tiny_llama().generate(prompt(3), max_new_token=3)


def test_length_settings():
    model = tiny_llama()
    ids = prompt(4)
    assert model.generate(ids, max_length=9, eos_token_id=None).shape[1] == 9
    with pytest.raises(GenerationError, match="max_new_tokens"):
        model.generate(ids, max_length=3)
    out = model.generate(ids, max_new_tokens=6, min_new_tokens=6, eos_token_id=int(model.generate(ids, max_new_tokens=1)[0, -1]))
    assert out.shape[1] == 10  # the eos id (the greedy first token) was forbidden until 6 tokens


def test_nulls_and_legacy_cache_names_from_other_writers():
    config = GenerationConfig.from_dict({"top_k": None, "temperature": None, "cache_implementation": "hybrid", "eos_token_id": [1, 2]})
    assert config.top_k == 50 and config.temperature == 1.0 and config.cache_implementation is None
    assert config.eos_token_ids == [1, 2]


def test_generation_config_imports_without_torch():
    import subprocess
    import sys

    code = "import sys, bestiary; bestiary.GenerationConfig(max_new_tokens=3); print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_tokenizer_outputs_can_be_passed_whole():
    model = tiny_llama()
    ids = prompt(4)
    encoded = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}
    assert torch.equal(model.generate(**encoded, max_new_tokens=3), model.generate(ids, max_new_tokens=3))
