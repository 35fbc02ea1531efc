"""Config: loading, saving, unknown keys, nested sub-configs and validation errors."""

from __future__ import annotations

import json
from typing import ClassVar

import pytest
import transformers

from bestiary.auto import AutoConfig
from bestiary.config import Config
from bestiary.errors import ConfigError, NotRegisteredError


class VisionPart(Config):
    model_type: ClassVar[str] = "vision_part"
    patch_size: int = 16


class Composite(Config):
    model_type: ClassVar[str] = "composite"
    vision_config: VisionPart = VisionPart()
    hidden_size: int = 8


def test_unknown_keys_are_kept_and_written_back(tmp_path):
    data = {"model_type": "llama", "hidden_size": 32, "num_attention_heads": 4, "my_custom_key": {"a": [1, 2]}}
    (tmp_path / "config.json").write_text(json.dumps(data))
    config = AutoConfig.from_pretrained(tmp_path)
    assert config.my_custom_key == {"a": [1, 2]}
    config.save_pretrained(tmp_path / "out")
    written = json.loads((tmp_path / "out" / "config.json").read_text())
    assert written["my_custom_key"] == {"a": [1, 2]}
    assert written["model_type"] == "llama"


def test_transformers_config_round_trip_is_lossless(tmp_path):
    reference = transformers.Qwen2Config(hidden_size=32, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2, num_labels=3)
    reference.save_pretrained(tmp_path)
    ours = AutoConfig.from_pretrained(tmp_path)
    assert ours.num_labels == 3 and ours.id2label[2] == "LABEL_2"
    ours.save_pretrained(tmp_path / "again")
    back = transformers.AutoConfig.from_pretrained(tmp_path / "again")
    for key, value in reference.to_dict().items():
        if key in {"transformers_version", "dtype", "architectures", "_name_or_path"}:
            continue
        assert getattr(back, key) == value, key


def test_nested_sub_configs(tmp_path):
    config = Composite.from_dict({"hidden_size": 4, "vision_config": {"patch_size": 8, "extra": True}})
    assert isinstance(config.vision_config, VisionPart) and config.vision_config.patch_size == 8
    dumped = config.to_dict()
    assert dumped["vision_config"]["model_type"] == "vision_part"
    assert dumped["vision_config"]["extra"] is True
    assert Composite.from_dict(dumped).vision_config.patch_size == 8


def test_validation_error_names_field_and_file(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": "wide"}))
    with pytest.raises(ConfigError) as caught:
        AutoConfig.from_pretrained(tmp_path)
    message = str(caught.value)
    assert "hidden_size" in message and str(tmp_path / "config.json") in message


def test_invalid_values_raise(tmp_path):
    with pytest.raises(ConfigError, match="num_key_value_heads"):
        AutoConfig.for_model("llama", num_attention_heads=6, num_key_value_heads=4)
    with pytest.raises(ConfigError, match="rope_type"):
        AutoConfig.for_model("llama", rope_parameters={"rope_type": "spiral"})
    with pytest.raises(ConfigError, match="factor"):
        AutoConfig.for_model("llama", rope_parameters={"rope_type": "linear"})


def test_missing_and_malformed_config_files(tmp_path):
    with pytest.raises(OSError, match="config.json not found"):
        AutoConfig.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        AutoConfig.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 3}))
    with pytest.raises(ConfigError, match="model_type"):
        AutoConfig.from_pretrained(tmp_path)


def test_unknown_model_type_suggests_close_matches(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "lama"}))
    with pytest.raises(NotRegisteredError) as caught:
        AutoConfig.from_pretrained(tmp_path)
    assert "llama" in str(caught.value)


def test_unknown_first_party_type_names_the_pip_package(tmp_path, monkeypatch):
    from bestiary import catalog

    monkeypatch.setattr(
        catalog, "load_catalog",
        lambda: {"plugins": [{"distribution": "bestiary-made-up", "pip": "bestiary-made-up", "model_types": ["madeup"]}]},
    )
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "madeup"}))
    with pytest.raises(NotRegisteredError, match="pip install bestiary-made-up"):
        AutoConfig.from_pretrained(tmp_path)


def test_overrides_apply_on_load(tmp_path):
    transformers.LlamaConfig(hidden_size=32, num_attention_heads=4).save_pretrained(tmp_path)
    config = AutoConfig.from_pretrained(tmp_path, rms_norm_eps=1e-3)
    assert config.rms_norm_eps == 1e-3
