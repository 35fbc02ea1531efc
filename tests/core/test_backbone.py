"""The backbone contract: the stage selector, configs carrying a selection, the model mixin, load_backbone's errors."""

from __future__ import annotations

from typing import ClassVar

import pytest

from bestiary.backbone import (
    BackboneConfigMixin,
    BackboneHolderConfig,
    BackboneMixin,
    backbone_config_from,
    load_backbone,
    select_stages,
)
from bestiary.config import Config
from bestiary.errors import ConfigError

STAGES = ["stem", "stage1", "stage2", "stage3", "stage4"]


# -- select_stages --------------------------------------------------------------------------
def test_default_is_the_last_stage():
    selection = select_stages(STAGES)
    assert selection.out_features == ("stage4",)
    assert selection.out_indices == (4,)


@pytest.mark.parametrize(
    ("kwargs", "features", "indices"),
    [
        ({"out_indices": [1, 2, 3]}, ("stage1", "stage2", "stage3"), (1, 2, 3)),
        ({"out_indices": [-1]}, ("stage4",), (4,)),
        ({"out_indices": [0, -2]}, ("stem", "stage3"), (0, 3)),
        ({"out_features": ["stage2", "stem"]}, ("stage2", "stem"), (2, 0)),  # requested order is kept
        ({"out_indices": [3, 1]}, ("stage3", "stage1"), (3, 1)),
        ({"out_features": ["stage1"], "out_indices": [-4]}, ("stage1",), (1,)),  # both, agreeing
        ({"out_indices": 2}, ("stage2",), (2,)),
        ({"out_features": "stage3"}, ("stage3",), (3,)),
        ({"out_indices": (1, 4)}, ("stage1", "stage4"), (1, 4)),
    ],
)
def test_selections_are_aligned_and_keep_order(kwargs, features, indices):
    selection = select_stages(STAGES, **kwargs)
    assert selection.out_features == features
    assert selection.out_indices == indices
    assert selection.stage_names == tuple(STAGES)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"out_indices": [5]}, "out_indices value 5 is out of range for a backbone with 5 stages"),
        ({"out_indices": [-6]}, "use a position from -5 to 4"),
        ({"out_indices": [1, 1]}, "selects stage 'stage1' twice"),
        ({"out_indices": [4, -1]}, "(4 and -1 are the same stage)"),
        ({"out_features": ["stage1", "stage1"]}, "lists ['stage1'] more than once"),
        ({"out_features": ["stage9"]}, "unknown stage 'stage9'"),
        ({"out_features": ["stge2"]}, "Did you mean 'stage2'"),
        ({"out_features": ["stage1"], "out_indices": [2]}, "select different stages"),
        ({"out_indices": []}, "out_indices is empty"),
        ({"out_features": []}, "out_features is empty"),
        ({"out_indices": ["stage1"]}, "pass stage names as out_features="),
        ({"out_features": [1]}, "pass positions as out_indices="),
        ({"out_indices": [True]}, "out_indices holds stage positions"),
        ({"out_indices": {1: 2}}, "out_indices must be a list"),
    ],
)
def test_selector_errors_name_the_argument_and_the_fix(kwargs, message):
    with pytest.raises(ConfigError) as excinfo:
        select_stages(STAGES, **kwargs)
    assert message in str(excinfo.value)


def test_a_backbone_without_stages_is_refused():
    with pytest.raises(ConfigError, match="no stages"):
        select_stages([])


# -- configs carrying a selection -------------------------------------------------------------
class StagedConfig(BackboneConfigMixin):
    model_type: ClassVar[str] = "staged_for_tests"
    num_stages: int = 4

    def known_stage_names(self) -> list[str]:
        return ["stem"] + [f"stage{i}" for i in range(1, self.num_stages + 1)]


class LateStagesConfig(BackboneConfigMixin):
    """Stages known only to the built model (like a timm backbone)."""

    model_type: ClassVar[str] = "late_stages_for_tests"


def test_config_aligns_its_selection_on_construction():
    config = StagedConfig(out_indices=[-1, 1])
    assert config.out_features == ["stage4", "stage1"]
    assert config.out_indices == [4, 1]
    assert StagedConfig().out_features == ["stage4"]


def test_assigning_one_selector_replaces_the_other():
    config = StagedConfig(out_features=["stage2"])
    config.out_indices = [0, 3]
    assert config.out_features == ["stem", "stage3"]
    config.out_features = "stage1"
    assert config.out_indices == [1]
    with pytest.raises(ConfigError, match="out of range"):
        config.out_indices = [7]


def test_overrides_replace_a_stored_selection():
    stored = StagedConfig(out_indices=[4]).to_dict()
    assert stored["out_features"] == ["stage4"]
    config = StagedConfig.from_dict(stored, out_indices=[1, 2])
    assert config.out_features == ["stage1", "stage2"]
    copy = config.model_copy(update={"out_features": ["stem"]})
    assert copy.out_indices == [0]
    assert config.out_indices == [1, 2]


def test_invalid_stored_selection_names_the_source():
    with pytest.raises(ConfigError, match=r"config.json.*out_indices value 9 is out of range"):
        StagedConfig.from_dict({"out_indices": [9]}, source="config.json")
    with pytest.raises(ConfigError, match="select different stages"):
        StagedConfig(out_features=["stage1"], out_indices=[2])


def test_selection_waits_for_stage_names_when_the_config_cannot_know_them():
    config = LateStagesConfig(out_indices=[-1, 0])
    assert config.out_indices == [-1, 0] and config.out_features is None
    assert config.stage_selection() is None


# -- the model mixin --------------------------------------------------------------------------
class FakeBackbone(BackboneMixin):
    def __init__(self, config: Config) -> None:
        self.config = config
        self._init_backbone(["stem", "stage1", "stage2", "stage3", "stage4"], [8, 16, 32, 64, 128], [4, 4, 8, 16, 32])


def test_mixin_exposes_channels_strides_and_selects_in_order():
    backbone = FakeBackbone(StagedConfig(out_features=["stage3", "stem"]))
    assert backbone.stage_names == STAGES
    assert backbone.out_features == ["stage3", "stem"]
    assert backbone.out_indices == [3, 0]
    assert backbone.channels == [64, 8]
    assert backbone.strides == [16, 4]
    assert backbone.out_feature_channels["stage1"] == 16
    assert backbone.out_feature_strides["stage4"] == 32
    assert backbone._select_feature_maps(["m0", "m1", "m2", "m3", "m4"]) == ("m3", "m0")


def test_mixin_validates_late_selections_and_writes_them_back():
    config = LateStagesConfig(out_indices=[-1])
    backbone = FakeBackbone(config)
    assert backbone.out_features == ["stage4"]
    assert config.out_indices == [4] and config.out_features == ["stage4"]
    with pytest.raises(ConfigError, match="out of range"):
        FakeBackbone(LateStagesConfig(out_indices=[5]))


def test_mixin_rejects_inconsistent_stage_tables():
    class Broken(BackboneMixin):
        def __init__(self) -> None:
            self.config = StagedConfig()
            self._init_backbone(["a", "b"], [1], [1, 2])

    with pytest.raises(ConfigError, match="one entry per stage"):
        Broken()


# -- heads holding a backbone --------------------------------------------------------------
def test_backbone_config_dicts_need_a_model_type():
    with pytest.raises(ConfigError, match="has no 'model_type'"):
        backbone_config_from({"out_indices": [1]})
    with pytest.raises(ConfigError, match="must be a config or a dict"):
        backbone_config_from(["swin"])
    assert backbone_config_from(None) is None


def test_load_backbone_explains_a_config_without_a_backbone():
    class Head(Config):
        model_type: ClassVar[str] = "head_for_tests"

    with pytest.raises(ConfigError, match="names no backbone: set backbone_config"):
        load_backbone(Head())


def test_load_backbone_refuses_two_backbone_sources():
    pytest.importorskip("bestiary_swin")
    config = BackboneHolderConfig(backbone_config={"model_type": "swin"}, backbone="resnet18")
    with pytest.raises(ConfigError, match="keep only one of them"):
        load_backbone(config)
