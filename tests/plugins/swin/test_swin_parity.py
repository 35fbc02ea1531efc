"""Swin: bestiary against transformers 5.24.0 on tiny random checkpoints, both directions.

Reference checkpoints come from transformers' ``from_config`` with every
weight perturbed (transformers initialises the relative-position tables to
zero and norms to one, which would hide mistakes), saved with
``save_pretrained``. Outputs are compared in fp32 within 1e-4.

transformers' SwinLayer shrinks its window the first time it sees a small
stage and keeps it shrunk for later calls, so every reference model here is
freshly loaded for one input size.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("bestiary_swin")

import bestiary.auto as auto  # noqa: E402
from bestiary.errors import ConfigError, ProcessingError  # noqa: E402
from bestiary_swin.configuration_swin import SwinConfig  # noqa: E402
from bestiary_swin.modeling_swin import (  # noqa: E402
    SwinBackbone,
    SwinForImageClassification,
    SwinForMaskedImageModeling,
    SwinModel,
)

TOL = 1e-4
TINY = dict(
    image_size=64,
    patch_size=4,
    embed_dim=16,
    depths=[2, 2, 2],
    num_heads=[2, 2, 4],
    window_size=4,
    encoder_stride=16,
    num_labels=5,
)
# (height, width): square multiple; non-square, grid not a multiple of the window; not a multiple of the patch.
SIZES = [(64, 64), (56, 88), (54, 90)]
HEADS = {
    "model": (transformers.SwinModel, SwinModel, "AutoModel"),
    "image-classification": (
        transformers.SwinForImageClassification,
        SwinForImageClassification,
        "AutoModelForImageClassification",
    ),
    "masked-image-modeling": (
        transformers.SwinForMaskedImageModeling,
        SwinForMaskedImageModeling,
        "AutoModelForMaskedImageModeling",
    ),
}


def reference_config(**overrides) -> "transformers.SwinConfig":
    return transformers.SwinConfig(**{**TINY, **overrides})


def save_reference(model_class, folder: Path, seed: int = 0, **overrides) -> Path:
    """Save a perturbed random transformers checkpoint of ``model_class`` into ``folder``."""
    torch.manual_seed(seed)
    model = model_class(reference_config(**overrides))
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.1)
    model.save_pretrained(folder)
    return folder


def pixels(size: tuple[int, int], batch: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(seed))


def assert_close(reference: torch.Tensor, ours: torch.Tensor) -> None:
    assert reference.shape == ours.shape, (reference.shape, ours.shape)
    assert (reference - ours).abs().max().item() <= TOL


def assert_all_close(reference, ours) -> None:
    assert len(reference) == len(ours)
    for expected, actual in zip(reference, ours):
        assert_close(expected, actual)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("swin")
    folders = {head: save_reference(classes[0], root / head) for head, classes in HEADS.items()}
    every_stage = dict(out_features=["stem", "stage1", "stage2", "stage3"])
    folders["backbone"] = save_reference(transformers.SwinBackbone, root / "backbone", **every_stage)
    return folders


# -- heads ---------------------------------------------------------------------------------
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("head", ["model", "image-classification"])
def test_heads_match_transformers(checkpoints, head, size):
    reference_class, _, auto_name = HEADS[head]
    reference = reference_class.from_pretrained(checkpoints[head]).eval()
    ours = getattr(auto, auto_name).from_pretrained(checkpoints[head])
    assert type(ours).__name__ == reference_class.__name__
    x = pixels(size, batch=1 if size == (56, 88) else 2)  # one image and one row of windows: strided views
    with torch.no_grad():
        expected = reference(x, output_hidden_states=True)
        actual = ours(x, output_hidden_states=True)
    if head == "model":
        assert_close(expected.last_hidden_state, actual.last_hidden_state)
        assert_close(expected.pooler_output, actual.pooler_output)
    else:
        assert_close(expected.logits, actual.logits)
    assert_all_close(expected.hidden_states, actual.hidden_states)
    assert_all_close(expected.reshaped_hidden_states, actual.reshaped_hidden_states)


def test_attention_weights_match_the_eager_reference(checkpoints):
    reference = transformers.SwinModel.from_pretrained(checkpoints["model"], attn_implementation="eager").eval()
    ours = SwinModel.from_pretrained(checkpoints["model"])
    x = pixels((56, 88))
    with torch.no_grad():
        expected = reference(x, output_attentions=True)
        actual = ours(x, output_attentions=True)
    assert len(actual.attentions) == len(TINY["depths"])
    assert_all_close(expected.attentions, actual.attentions)
    assert_close(expected.last_hidden_state, actual.last_hidden_state)


def test_masked_image_modeling_matches_transformers(checkpoints):
    reference = transformers.SwinForMaskedImageModeling.from_pretrained(checkpoints["masked-image-modeling"]).eval()
    ours = auto.AutoModelForMaskedImageModeling.from_pretrained(checkpoints["masked-image-modeling"])
    x = pixels((64, 64))
    patches = (64 // 4) ** 2
    mask = torch.rand(2, patches, generator=torch.Generator().manual_seed(3)) < 0.5
    with torch.no_grad():
        expected = reference(x, bool_masked_pos=mask)
        actual = ours(x, bool_masked_pos=mask)
        unmasked = ours(x)
    assert_close(expected.reconstruction, actual.reconstruction)
    assert abs(expected.loss.item() - actual.loss.item()) <= TOL
    assert actual.reconstruction.shape == x.shape
    assert unmasked.loss is None and (unmasked.reconstruction - actual.reconstruction).abs().max() > 0


def test_classification_loss_matches_transformers(checkpoints):
    reference = transformers.SwinForImageClassification.from_pretrained(checkpoints["image-classification"]).eval()
    ours = SwinForImageClassification.from_pretrained(checkpoints["image-classification"])
    x, labels = pixels((64, 64)), torch.tensor([1, 4])
    with torch.no_grad():
        expected, actual = reference(x, labels=labels), ours(x, labels=labels)
    assert abs(expected.loss.item() - actual.loss.item()) <= TOL
    assert ours.config.problem_type == "single_label_classification"


# -- absolute position embeddings ----------------------------------------------------------
@pytest.mark.parametrize("size", [(64, 64), (96, 96), (64, 96)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_absolute_position_embeddings_and_interpolation(tmp_path, size):
    folder = save_reference(transformers.SwinForImageClassification, tmp_path, use_absolute_embeddings=True)
    reference = transformers.SwinForImageClassification.from_pretrained(folder).eval()
    ours = SwinForImageClassification.from_pretrained(folder)
    x = pixels(size)
    with torch.no_grad():
        expected = reference(x, interpolate_pos_encoding=True)
        actual = ours(x, interpolate_pos_encoding=True)
    assert_close(expected.logits, actual.logits)
    if size != (64, 64):
        with pytest.raises(ProcessingError, match="interpolate_pos_encoding=True"):
            ours(x)
    # The backbone interpolates too (transformers' SwinBackbone has no such switch): its stem is the embedding.
    backbone = SwinBackbone.from_pretrained(folder)
    with torch.no_grad():
        stem = backbone(x, output_hidden_states=True, interpolate_pos_encoding=True).hidden_states[0]
        embedded = reference.swin(x, interpolate_pos_encoding=True, output_hidden_states=True)
    assert_close(embedded.reshaped_hidden_states[0], stem)


# -- backbone ----------------------------------------------------------------------------
# Each selection on some input size; every size (square, non-square, not a multiple of the patch) is covered.
SELECTIONS = [
    ({"out_indices": [1, 2, 3]}, (64, 64)),
    ({"out_indices": [1, 2, 3]}, (54, 90)),
    ({"out_indices": [-1]}, (56, 88)),
    ({"out_indices": [0, 2]}, (54, 90)),
    ({"out_features": ["stem", "stage3"]}, (56, 88)),
    ({"out_features": ["stage1"]}, (64, 64)),
]


@pytest.mark.parametrize(
    ("selection", "size"),
    SELECTIONS,
    ids=lambda value: "x".join(map(str, value)) if isinstance(value, tuple) else str(value),
)
def test_backbone_feature_maps_match_transformers(checkpoints, selection, size):
    reference = transformers.SwinBackbone.from_pretrained(checkpoints["backbone"], **selection).eval()
    ours = auto.AutoBackbone.from_pretrained(checkpoints["backbone"], **selection)  # a local folder works here
    assert isinstance(ours, SwinBackbone)
    assert ours.out_features == list(reference.out_features)
    assert ours.out_indices == [i % 4 for i in reference.out_indices]
    assert ours.channels == list(reference.channels)
    x = pixels(size)
    with torch.no_grad():
        expected = reference(x, output_hidden_states=True)
        actual = ours(x, output_hidden_states=True)
    assert_all_close(expected.feature_maps, actual.feature_maps)
    assert_all_close(expected.hidden_states, actual.hidden_states)
    for feature_map, stride, channels in zip(actual.feature_maps, ours.strides, ours.channels):
        assert feature_map.shape[1] == channels
        assert feature_map.shape[2] == -(-size[0] // stride)


def test_backbone_returns_maps_in_the_requested_order(checkpoints):
    reference = transformers.SwinBackbone.from_pretrained(checkpoints["backbone"], out_indices=[1, 3]).eval()
    ours = auto.AutoBackbone.from_pretrained(checkpoints["backbone"], out_indices=[-1, 1])
    assert ours.out_features == ["stage3", "stage1"]
    assert ours.strides == [16, 4] and ours.channels == [64, 16]
    x = pixels((56, 88))
    with torch.no_grad():
        expected, actual = reference(x).feature_maps, ours(x).feature_maps
    assert_all_close(expected[::-1], actual)


def test_backbone_from_a_classification_checkpoint_reuses_its_encoder(checkpoints):
    ours = SwinBackbone.from_pretrained(checkpoints["image-classification"], out_indices=[0, 1, 2, 3])
    classifier = SwinModel.from_pretrained(checkpoints["image-classification"])
    x = pixels((64, 64))
    with torch.no_grad():
        maps = ours(x, output_hidden_states=True).hidden_states
        states = classifier(x, output_hidden_states=True, output_hidden_states_before_downsampling=True,
                            always_partition=True).reshaped_hidden_states
    assert_all_close(states, maps)


def test_backbone_selection_errors(checkpoints):
    with pytest.raises(ConfigError, match="out of range"):
        auto.AutoBackbone.from_pretrained(checkpoints["backbone"], out_indices=[4])
    with pytest.raises(ConfigError, match="unknown stage 'stage5'"):
        auto.AutoBackbone.from_config(SwinConfig(**TINY), out_features=["stage5"])
    with pytest.raises(ConfigError, match="twice"):
        SwinConfig(**TINY, out_indices=[3, -1])


# -- bestiary saves, transformers loads ------------------------------------------------------
@pytest.mark.parametrize("head", ["model", "image-classification", "masked-image-modeling", "backbone"])
def test_bestiary_checkpoints_load_in_transformers(checkpoints, tmp_path, head):
    if head == "backbone":
        ours = SwinBackbone.from_pretrained(checkpoints["backbone"], out_indices=[0, 2, 3])
        reference_class = transformers.SwinBackbone
    else:
        reference_class, our_class, _ = HEADS[head]
        ours = our_class.from_pretrained(checkpoints[head])
    ours.save_pretrained(tmp_path)
    reference, info = reference_class.from_pretrained(tmp_path, output_loading_info=True)
    reference.eval()
    assert not info["unexpected_keys"] and not info["mismatched_keys"]
    missing = [key for key in info["missing_keys"] if not key.startswith("swin.layernorm")]
    assert not missing
    x = pixels((64, 64))
    with torch.no_grad():
        expected, actual = reference(x), ours(x)
    key = {"model": "last_hidden_state", "image-classification": "logits"}.get(head, "reconstruction")
    if head == "backbone":
        assert list(reference.out_features) == ["stem", "stage2", "stage3"]
        assert_all_close(expected.feature_maps, actual.feature_maps)
    else:
        assert_close(expected[key], actual[key])


def test_config_round_trip_with_transformers(checkpoints, tmp_path):
    config = auto.AutoConfig.from_pretrained(checkpoints["backbone"])
    assert isinstance(config, SwinConfig)
    assert config.stage_names == ["stem", "stage1", "stage2", "stage3"]
    assert config.out_indices == [0, 1, 2, 3] and config.hidden_size == 64
    config.save_pretrained(tmp_path)
    written = json.loads((tmp_path / "config.json").read_text())
    reference = json.loads((checkpoints["backbone"] / "config.json").read_text())
    for key in ("depths", "num_heads", "embed_dim", "window_size", "out_features", "out_indices", "stage_names",
                "num_layers", "hidden_size", "encoder_stride", "model_type"):
        assert written[key] == reference[key], key
    loaded = transformers.SwinConfig.from_pretrained(tmp_path)
    assert loaded.out_features == config.out_features and loaded.depths == config.depths


# -- beyond the reference ---------------------------------------------------------------------
def test_stages_smaller_than_a_window_work(checkpoints):
    """transformers fails on these sizes (its window bias keeps the full window); the window shrinks here."""
    ours = SwinModel.from_pretrained(checkpoints["model"])
    for size in [(16, 16), (12, 40)]:
        with torch.no_grad():
            output = ours(pixels(size), output_hidden_states=True)
        assert torch.isfinite(output.last_hidden_state).all()
        assert output.reshaped_hidden_states[-1].shape[-2:] == (-(-size[0] // 16), -(-size[1] // 16))


def test_the_same_model_serves_several_sizes(checkpoints):
    """The window is chosen per call, so a small input does not change later results."""
    ours = SwinModel.from_pretrained(checkpoints["model"])
    x = pixels((64, 64))
    with torch.no_grad():
        before = ours(x).last_hidden_state
        ours(pixels((16, 16)))
        after = ours(x).last_hidden_state
    assert torch.equal(before, after)


def test_input_errors_name_the_fix(checkpoints):
    ours = SwinModel.from_pretrained(checkpoints["model"])
    with pytest.raises(ProcessingError, match=r"pixel_values must be \(batch, 3, height, width\)"):
        ours(torch.zeros(1, 4, 32, 32))
    with pytest.raises(ConfigError, match="SwinForMaskedImageModeling"):
        ours(pixels((64, 64)), bool_masked_pos=torch.zeros(2, 256, dtype=torch.bool))
    with pytest.raises(ConfigError, match="num_heads"):
        SwinConfig(depths=[2, 2], num_heads=[2])


def test_backbone_builds_on_the_meta_device_and_loads_all_weights(checkpoints):
    model, report = SwinBackbone.from_pretrained(checkpoints["backbone"], output_loading_info=True)
    assert not report.missing_keys and not report.unexpected_keys
    assert all(not p.is_meta for p in model.parameters())
