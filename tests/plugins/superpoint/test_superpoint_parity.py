"""SuperPoint against transformers on tiny random checkpoints: model, processor, post-processing, both directions."""

from __future__ import annotations

import json

import numpy as np
import PIL.Image
import pytest
import torch

from tests.plugins.superpoint.superpoint_builders import TINY, mixed_size_images, photo_region, redraw_weights

transformers = pytest.importorskip("transformers")

import bestiary.auto as auto  # noqa: E402
from bestiary.errors import ConfigError, ProcessingError  # noqa: E402
from bestiary_superpoint.configuration_superpoint import SuperPointConfig  # noqa: E402
from bestiary_superpoint.image_processing_superpoint import SuperPointImageProcessor  # noqa: E402
from bestiary_superpoint.modeling_superpoint import SuperPointForKeypointDetection  # noqa: E402

TOLERANCE = 1e-4
FIELDS = ("keypoints", "scores", "descriptors", "mask")


def assert_same_outputs(ours, theirs) -> None:
    assert torch.equal(ours.mask, theirs.mask), "masks differ"
    for name in ("keypoints", "scores", "descriptors"):
        assert ours[name].shape == theirs[name].shape, name
        assert torch.allclose(ours[name], theirs[name], rtol=0, atol=TOLERANCE), name


def run_both(folder, reference, pixel_values: torch.Tensor, **overrides):
    ours = auto.AutoModelForKeypointDetection.from_pretrained(folder, **overrides)
    theirs = reference
    if overrides:
        theirs = transformers.SuperPointForKeypointDetection.from_pretrained(folder, **overrides).eval()
    with torch.no_grad():
        return ours(pixel_values=pixel_values), theirs(pixel_values=pixel_values)


def test_batch_of_different_sizes_matches_transformers(reference_checkpoint):
    folder, reference = reference_checkpoint
    images = mixed_size_images()
    ours_processor = auto.AutoImageProcessor.from_pretrained(folder)
    theirs_processor = transformers.SuperPointImageProcessor.from_pretrained(folder)
    assert isinstance(ours_processor, SuperPointImageProcessor)
    pixel_values = ours_processor(images, return_tensors="pt")["pixel_values"]
    assert torch.equal(pixel_values, theirs_processor(images, return_tensors="pt")["pixel_values"])
    assert pixel_values.shape == (3, 3, 60, 84)

    ours, theirs = run_both(folder, reference, pixel_values)
    assert_same_outputs(ours, theirs)
    counts = ours.mask.sum(dim=1)
    assert len(set(counts.tolist())) > 1 and counts.min() > 0, "the batch should need padding"
    padded = ours.mask == 0
    assert ours.keypoints[padded].abs().sum() == 0 and ours.descriptors[padded].abs().sum() == 0
    norms = ours.descriptors[ours.mask.bool()].norm(dim=-1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)

    target_sizes = [image.shape[:2] for image in images]
    ours_results = ours_processor.post_process_keypoint_detection(ours, target_sizes)
    theirs_results = theirs_processor.post_process_keypoint_detection(theirs, target_sizes)
    for mine, reference_result, (height, width) in zip(ours_results, theirs_results, target_sizes):
        assert mine["keypoints"].dtype == torch.int32
        assert torch.equal(mine["keypoints"], reference_result["keypoints"])
        assert (mine["scores"] - reference_result["scores"]).abs().max() <= TOLERANCE
        assert (mine["descriptors"] - reference_result["descriptors"]).abs().max() <= TOLERANCE
        assert mine["keypoints"][:, 0].max() < width and mine["keypoints"][:, 1].max() < height


@pytest.mark.parametrize("size", [(67, 93), (64, 80), (9, 130)])
def test_unresized_images_not_multiple_of_8(reference_checkpoint, size):
    folder, reference = reference_checkpoint
    height, width = size
    image = photo_region(height, width)
    processor = SuperPointImageProcessor(do_grayscale=True, do_resize=False)
    pixel_values = processor(image, return_tensors="pt")["pixel_values"]
    reference_processor = transformers.SuperPointImageProcessor(do_grayscale=True, do_resize=False)
    assert torch.equal(pixel_values, reference_processor(image, return_tensors="pt")["pixel_values"])
    ours, theirs = run_both(folder, reference, pixel_values)
    assert_same_outputs(ours, theirs)

    truncated = processor.post_process_keypoint_detection(ours, [size])[0]["keypoints"]
    reference_truncated = reference_processor.post_process_keypoint_detection(theirs, [size])[0]["keypoints"]
    assert torch.equal(truncated, reference_truncated)
    # Keypoints are pixels of the image itself: exact integers once rounded, inside the whole cells.
    rounded = processor.post_process_keypoint_detection(ours, [size], coordinates="round")[0]["keypoints"]
    floats = processor.post_process_keypoint_detection(ours, [size], coordinates="float")[0]["keypoints"]
    assert (floats - rounded).abs().max() < 1e-3
    assert rounded[:, 0].max() < width // 8 * 8 and rounded[:, 1].max() < height // 8 * 8
    assert ((rounded - truncated) >= 0).all() and ((rounded - truncated) <= 1).all()


@pytest.mark.parametrize(
    "overrides",
    [
        {"max_keypoints": 7},
        {"max_keypoints": 0},
        {"nms_radius": 1, "border_removal_distance": 0},
        {"nms_radius": 0, "keypoint_threshold": 0.05},
        {"keypoint_threshold": 0.9},  # no keypoint at all
    ],
    ids=["max7", "max0", "small-nms-no-border", "no-nms", "none-found"],
)
def test_selection_settings_match_transformers(reference_checkpoint, overrides):
    folder, reference = reference_checkpoint
    pixel_values = SuperPointImageProcessor(do_grayscale=True, size={"height": 60, "width": 84})(
        mixed_size_images()[:2], return_tensors="pt"
    )["pixel_values"]
    ours, theirs = run_both(folder, reference, pixel_values, **overrides)
    assert_same_outputs(ours, theirs)
    if overrides.get("max_keypoints") is not None:
        assert ours.keypoints.shape[1] == overrides["max_keypoints"]


def test_hidden_states_and_tuple_outputs(reference_checkpoint):
    folder, reference = reference_checkpoint
    pixel_values = torch.rand(2, 3, 40, 48, generator=torch.Generator().manual_seed(3))
    ours = auto.AutoModelForKeypointDetection.from_pretrained(folder)
    with torch.no_grad():
        mine = ours(pixel_values, output_hidden_states=True)
        theirs = reference(pixel_values, output_hidden_states=True)
        mine_tuple = ours(pixel_values, return_dict=False)
    assert len(mine.hidden_states) == len(theirs.hidden_states) == 4
    for a, b in zip(mine.hidden_states, theirs.hidden_states):
        assert (a - b).abs().max() <= TOLERANCE
    assert len(mine_tuple) == 4 and torch.equal(mine_tuple[3], mine.mask)


def test_half_precision_model_returns_float32_pixel_exact_keypoints(reference_checkpoint):
    folder, _ = reference_checkpoint
    model = auto.AutoModelForKeypointDetection.from_pretrained(folder, dtype=torch.bfloat16)
    pixel_values = torch.rand(1, 1, 64, 328, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        outputs = model(pixel_values.to(torch.bfloat16))
    assert {outputs[name].dtype for name in ("keypoints", "scores", "descriptors")} == {torch.float32}
    pixels = outputs.keypoints[0] * torch.tensor([328, 64])
    assert (pixels - pixels.round()).abs().max() < 1e-3  # bfloat16 would round columns past 256


def test_bestiary_checkpoint_loads_in_transformers(tmp_path):
    config = SuperPointConfig(**TINY, max_keypoints=50)
    torch.manual_seed(1)
    model = SuperPointForKeypointDetection(config).eval()
    redraw_weights(model, seed=5)
    model.save_pretrained(tmp_path)
    SuperPointImageProcessor(do_grayscale=True, size={"height": 52, "width": 76}).save_pretrained(tmp_path)

    reference = transformers.SuperPointForKeypointDetection.from_pretrained(tmp_path).eval()
    assert reference.config.max_keypoints == 50
    reference_processor = transformers.AutoImageProcessor.from_pretrained(tmp_path)
    images = mixed_size_images()
    pixel_values = reference_processor(images, return_tensors="pt")["pixel_values"]
    ours_processor = SuperPointImageProcessor.from_pretrained(tmp_path)
    assert torch.equal(pixel_values, ours_processor(images, return_tensors="pt")["pixel_values"])
    with torch.no_grad():
        assert_same_outputs(model(pixel_values), reference(pixel_values))
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "superpoint" and saved["architectures"] == ["SuperPointForKeypointDetection"]


def test_config_round_trip_and_validation(reference_checkpoint):
    folder, _ = reference_checkpoint
    config = SuperPointConfig.from_pretrained(folder)
    assert config.encoder_hidden_sizes == TINY["encoder_hidden_sizes"] and config.cell_size == 8
    reference = transformers.SuperPointConfig().to_dict()
    ours = SuperPointConfig().to_dict()
    for key in ("encoder_hidden_sizes", "decoder_hidden_size", "keypoint_decoder_dim", "descriptor_decoder_dim",
                "keypoint_threshold", "max_keypoints", "nms_radius", "border_removal_distance", "initializer_range"):
        assert list(ours[key]) == list(reference[key]) if key == "encoder_hidden_sizes" else ours[key] == reference[key]
    with pytest.raises(ConfigError, match="keypoint_decoder_dim must be 65"):
        SuperPointConfig.from_dict({"keypoint_decoder_dim": 64})
    with pytest.raises(ConfigError, match="max_keypoints"):
        SuperPointConfig.from_dict({"max_keypoints": -2})


@pytest.mark.parametrize(
    "settings",
    [{}, {"do_grayscale": True}, {"do_grayscale": True, "size": {"height": 45, "width": 70}, "resample": 3}],
    ids=["defaults", "grey", "grey-bicubic-odd-size"],
)
def test_image_processor_matches_transformers(settings, tmp_path):
    colour = photo_region(90, 110)
    inputs = [
        colour,
        PIL.Image.fromarray(colour),
        torch.from_numpy(colour).permute(2, 0, 1),
        colour.astype(np.float32) / 255,
        PIL.Image.fromarray(colour[..., 0]),  # a one-channel grey image
        np.stack([colour[..., 1]] * 3, axis=-1),  # grey in three channels
    ]
    ours = SuperPointImageProcessor(**settings)
    theirs = transformers.SuperPointImageProcessor(**settings)
    for image in inputs:
        expected = theirs(image, return_tensors="pt")["pixel_values"]
        got = ours(image, return_tensors="pt")["pixel_values"]
        assert got.shape == expected.shape and got.dtype == expected.dtype
        assert torch.equal(got, expected)
    ours.save_pretrained(tmp_path)
    reloaded = transformers.SuperPointImageProcessor.from_pretrained(tmp_path)
    expected = ours(colour, return_tensors="pt")["pixel_values"]
    assert torch.equal(reloaded(colour, return_tensors="pt")["pixel_values"], expected)


def test_ignored_settings_are_reported(caplog):
    with caplog.at_level("WARNING", logger="bestiary_superpoint.image_processing_superpoint"):
        processor = SuperPointImageProcessor(do_normalize=True, image_mean=0.5, image_std=0.5)
        pixel_values = processor(photo_region(16, 24), return_tensors="pt")["pixel_values"]
    assert "ignores do_normalize" in caplog.text
    assert 0.0 <= pixel_values.min() and pixel_values.max() <= 1.0


def test_errors_name_the_argument(reference_checkpoint):
    folder, _ = reference_checkpoint
    model = auto.AutoModelForKeypointDetection.from_pretrained(folder)
    processor = SuperPointImageProcessor()
    with torch.no_grad():
        outputs = model(torch.rand(2, 1, 32, 32))
        with pytest.raises(ProcessingError, match="smaller than one 8x8 cell"):
            model(torch.rand(1, 1, 7, 32))
        with pytest.raises(ProcessingError, match="pixel_values must be"):
            model(torch.rand(1, 32, 32))
    with pytest.raises(ProcessingError, match="target_sizes has 1 sizes but the outputs hold 2"):
        processor.post_process_keypoint_detection(outputs, [(32, 32)])
    with pytest.raises(ProcessingError, match="shape \\(batch, 2\\)"):
        processor.post_process_keypoint_detection(outputs, torch.tensor([32, 32, 32, 32]))
    with pytest.raises(ProcessingError, match="coordinates="):
        processor.post_process_keypoint_detection(outputs, [(32, 32)] * 2, coordinates="nearest")
