"""TimmBackbone: feature maps equal timm's own feature extractors, weight sources, checkpoints both ways, errors.

Three timm families are covered with small variants built from timm's own
configs (no hub): a CNN (resnet18), a plain ViT (vit_tiny_patch16_224,
4 blocks at 64x64) and a Swin (swin_tiny_patch4_window7_224 with tiny
widths). timm's Swin emits channels-last maps; TimmBackbone returns every
map as (batch, channels, height, width), so those are compared permuted.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

timm = pytest.importorskip("timm")
pytest.importorskip("bestiary_timm")

from bestiary.auto import AutoBackbone  # noqa: E402
from bestiary.errors import CheckpointError, ConfigError, HubError  # noqa: E402
from bestiary_timm.configuration_timm_backbone import TimmBackboneConfig  # noqa: E402
from bestiary_timm.modeling_timm_backbone import TimmBackbone  # noqa: E402

FAMILIES = {
    "resnet18": {},
    "vit_tiny_patch16_224": {"depth": 4, "img_size": 64},
    "swin_tiny_patch4_window7_224": {
        "depths": (1, 1, 1, 1),
        "embed_dim": 16,
        "num_heads": (1, 1, 2, 2),
        "img_size": 64,
        "window_size": 4,
    },
}
CHANNELS_LAST = {"swin_tiny_patch4_window7_224"}
SELECTIONS = [
    ("resnet18", {"out_indices": [1, 2, 3, 4]}),
    ("resnet18", {"out_indices": [-1, 1]}),
    ("vit_tiny_patch16_224", {"out_indices": [1, 3]}),
    ("vit_tiny_patch16_224", {"out_features": ["blocks.2"]}),
    ("swin_tiny_patch4_window7_224", {"out_indices": [0, 2]}),
    ("swin_tiny_patch4_window7_224", {"out_features": ["layers.3", "layers.1"]}),
]


def pixels(batch: int = 2, size: int = 64) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))


def as_nchw(name: str, feature_map: torch.Tensor) -> torch.Tensor:
    return feature_map.permute(0, 3, 1, 2) if name in CHANNELS_LAST else feature_map


@pytest.fixture(scope="module")
def weight_files(tmp_path_factory) -> dict[str, Path]:
    """A timm-format state dict (.safetensors) of each full model, with perturbed weights."""
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("timm-weights")
    files = {}
    for name, kwargs in FAMILIES.items():
        torch.manual_seed(0)
        model = timm.create_model(name, **kwargs)
        state = {}
        for key, tensor in model.state_dict().items():
            if tensor.is_floating_point() and not key.endswith(("running_var", "running_mean")):
                tensor = tensor + torch.randn_like(tensor) * 0.05
            state[key] = tensor.contiguous()
        files[name] = root / f"{name}.safetensors"
        save_file(state, files[name])
    return files


def reference_extractor(name: str, positions: list[int], weights: Path | None = None) -> torch.nn.Module:
    """timm's own ``features_only`` model for the stage positions (timm returns them in stage order)."""
    kwargs = dict(FAMILIES[name], features_only=True, out_indices=tuple(sorted(positions)))
    if weights is not None:
        kwargs.update(pretrained=True, pretrained_cfg_overlay={"file": str(weights)})
    return timm.create_model(name, **kwargs).eval()


# -- parity with timm ---------------------------------------------------------------------
@pytest.mark.parametrize(("name", "selection"), SELECTIONS, ids=lambda v: str(v))
def test_feature_maps_equal_timm_features_only(weight_files, name, selection):
    ours = TimmBackbone.from_timm(name, weights=weight_files[name], **selection, **FAMILIES[name]).eval()
    reference = reference_extractor(name, ours.out_indices, weight_files[name])
    x = pixels()
    with torch.no_grad():
        actual = ours(x).feature_maps
        by_position = dict(zip(sorted(ours.out_indices), reference(x)))
    expected = [as_nchw(name, by_position[position]) for position in ours.out_indices]
    assert len(actual) == len(expected)
    for want, got, channels, stride in zip(expected, actual, ours.channels, ours.strides):
        assert want.shape == got.shape
        assert got.shape[1] == channels and got.shape[-1] == 64 // stride
        assert (want - got).abs().max().item() <= 1e-4


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_random_weights_are_timms_own_initialisation(name):
    torch.manual_seed(3)
    ours = TimmBackbone.from_timm(name, out_indices=[-1], weights="random", **FAMILIES[name]).eval()
    torch.manual_seed(3)
    reference = reference_extractor(name, ours.out_indices)
    x = pixels(batch=1)
    with torch.no_grad():
        assert torch.equal(ours(x).feature_maps[0], as_nchw(name, reference(x)[0]))


def test_stage_tables_come_from_timm_feature_info():
    backbone = TimmBackbone.from_timm("resnet18", out_indices=[0, 2], weights="random")
    assert backbone.stage_names == ["act1", "layer1", "layer2", "layer3", "layer4"]
    assert backbone.out_features == ["act1", "layer2"]
    assert backbone.channels == [64, 128] and backbone.strides == [2, 8]
    assert backbone.out_feature_channels["layer4"] == 512
    assert backbone.config.stage_names == backbone.stage_names


def test_hidden_states_hold_every_computed_stage():
    backbone = TimmBackbone.from_timm("resnet18", out_indices=[3], weights="random").eval()
    with torch.no_grad():
        output = backbone(pixels(batch=1), output_hidden_states=True)
    assert [h.shape[1] for h in output.hidden_states] == [64, 64, 128, 256]
    assert torch.equal(output.hidden_states[3], output.feature_maps[0])


# -- weight sources ------------------------------------------------------------------------------
def test_weight_sources_are_always_logged(weight_files, caplog):
    logger = "bestiary_timm.modeling_timm_backbone"
    with caplog.at_level(logging.INFO, logger=logger):
        TimmBackbone.from_timm("resnet18")
        TimmBackbone.from_timm("resnet18", weights="random")
        TimmBackbone.from_timm("resnet18", weights=weight_files["resnet18"])
    messages = [(record.levelname, record.getMessage()) for record in caplog.records if record.name == logger]
    assert messages[0][0] == "WARNING" and "random weights: no weight source was given" in messages[0][1]
    assert messages[1] == ("INFO", "TimmBackbone 'resnet18': random weights (weights='random').")
    assert messages[2][0] == "INFO" and "weights from the file" in messages[2][1]


@pytest.fixture
def offline_timm(monkeypatch):
    """timm.create_model as it behaves with no hub: pretrained weights cannot be fetched."""
    original = timm.create_model

    def create_model(*args, **kwargs):
        if kwargs.get("pretrained") and not (kwargs.get("pretrained_cfg_overlay") or {}).get("file"):
            raise OSError("We couldn't connect to the hub to download the weights.")
        return original(*args, **kwargs)

    monkeypatch.setattr(timm, "create_model", create_model)


def test_pretrained_without_a_hub_says_what_to_do(offline_timm, caplog):
    with caplog.at_level(logging.INFO):
        with pytest.raises(HubError, match=r"pass weights='<path to a timm state dict>'"):
            TimmBackbone.from_timm("resnet18", weights="pretrained")
    assert "pretrained weights from timm's hub source" in caplog.text
    with pytest.raises(HubError, match="Could not fetch pretrained timm weights for 'resnet18'"):
        TimmBackbone.from_pretrained("resnet18", out_indices=[2])  # a timm name, as in transformers


def test_bad_weight_files_are_reported(tmp_path, weight_files):
    with pytest.raises(CheckpointError, match="neither 'random', 'pretrained' nor an existing file"):
        TimmBackbone.from_timm("resnet18", weights=tmp_path / "missing.pth")
    with pytest.raises(CheckpointError, match="must hold a state dict of the full timm model 'resnet18'"):
        TimmBackbone.from_timm("resnet18", weights=weight_files["vit_tiny_patch16_224"])
    with pytest.raises(ConfigError, match="weights must be"):
        TimmBackbone.from_timm("resnet18", weights=3)


# -- checkpoints -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["resnet18", "swin_tiny_patch4_window7_224"])
def test_saved_backbones_reload_here_and_in_transformers(tmp_path, weight_files, name, caplog):
    transformers = pytest.importorskip("transformers")
    from safetensors.torch import load_file

    ours = TimmBackbone.from_timm(name, out_indices=[1, 3], weights=weight_files[name], **FAMILIES[name]).eval()
    ours.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "timm_backbone" and saved["backbone"] == name
    assert saved["out_indices"] == [1, 3] and saved["stage_names"] == ours.stage_names
    x = pixels()
    with torch.no_grad():
        expected = ours(x).feature_maps
    with caplog.at_level(logging.INFO):
        reloaded = AutoBackbone.from_pretrained(tmp_path)  # a local folder, through the Auto class
    assert isinstance(reloaded, TimmBackbone) and reloaded.weight_source == f"checkpoint:{tmp_path}"
    assert "random weights" not in caplog.text
    with torch.no_grad():
        for want, got in zip(expected, reloaded(x).feature_maps):
            assert torch.equal(want, got)
    # transformers builds the same timm model from our config.json and takes our tensors unchanged.
    reference_config = transformers.AutoConfig.from_pretrained(tmp_path)
    reference = transformers.TimmBackbone(reference_config, **FAMILIES[name]).eval()
    reference.load_state_dict(load_file(tmp_path / "model.safetensors"), strict=True)
    with torch.no_grad():
        for want, got in zip(reference(x).feature_maps, expected):
            assert (as_nchw(name, want) - got).abs().max().item() <= 1e-4


def test_reloading_with_another_selection(tmp_path, weight_files):
    ours = TimmBackbone.from_timm("resnet18", out_indices=[1, 2, 3, 4], weights=weight_files["resnet18"]).eval()
    ours.save_pretrained(tmp_path)
    fewer = AutoBackbone.from_pretrained(tmp_path, out_features=["layer3", "layer1"])
    assert fewer.out_indices == [3, 1]
    x = pixels(batch=1)
    with torch.no_grad():
        full, part = ours(x).feature_maps, fewer(x).feature_maps
    assert torch.equal(part[0], full[2]) and torch.equal(part[1], full[0])


# -- errors ------------------------------------------------------------------------------------------
def test_configuration_errors_name_the_fix():
    with pytest.raises(ConfigError, match=r"out of range for a backbone with 5 stages \['act1'"):
        TimmBackbone.from_timm("resnet18", out_indices=[5], weights="random")
    with pytest.raises(ConfigError, match="unknown stage 'layer9'"):
        TimmBackbone.from_timm("resnet18", out_features=["layer9"], weights="random")
    with pytest.raises(ConfigError, match="is not a timm model name"):
        TimmBackbone.from_timm("resnet_eighteen", weights="random")
    with pytest.raises(ConfigError, match="backbone is not set"):
        TimmBackbone(TimmBackboneConfig())
    with pytest.raises(ConfigError, match="features_only=True"):
        TimmBackbone(TimmBackboneConfig(backbone="resnet18", features_only=False))
    with pytest.raises(ConfigError, match="use its own fields"):
        TimmBackbone.from_timm("resnet18", weights="random", in_chans=1)
    with pytest.raises(ConfigError, match="do not match timm's feature_info"):
        TimmBackbone(TimmBackboneConfig(backbone="resnet18", stage_names=["a", "b"]), weights="random")
    backbone = TimmBackbone.from_timm("resnet18", weights="random")
    with pytest.raises(ConfigError, match="cannot return attentions"):
        backbone(pixels(batch=1), output_attentions=True)


def test_frozen_batch_norm():
    backbone = TimmBackbone.from_timm("resnet18", weights="random", freeze_batch_norm_2d=True)
    kinds = {type(module).__name__ for module in backbone.modules()}
    assert "FrozenBatchNorm2d" in kinds and "BatchNorm2d" not in kinds
