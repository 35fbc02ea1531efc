"""SamProcessor / SamImageProcessor against transformers 5.24.0: pixels, prompts, sizes, masks, files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("bestiary_sam")

from bestiary.errors import ProcessingError
from bestiary_sam.image_processing_sam import SamImageProcessor
from bestiary_sam.processing_sam import SamProcessor


@pytest.fixture(scope="module")
def processors(parity_checkpoint):
    return transformers.SamProcessor.from_pretrained(parity_checkpoint), SamProcessor.from_pretrained(parity_checkpoint)


def assert_same_batch(expected, got) -> None:
    assert set(expected) == set(got)
    for key in expected:
        reference, ours = expected[key], got[key]
        if isinstance(reference, torch.Tensor):
            assert reference.dtype == ours.dtype and reference.shape == ours.shape, key
            assert torch.equal(reference, ours), key
        elif isinstance(reference, np.ndarray):
            assert reference.dtype == ours.dtype and np.array_equal(reference, ours), key
        else:
            assert len(reference) == len(ours), key
            for a, b in zip(reference, ours):
                assert torch.equal(torch.as_tensor(a), torch.as_tensor(b)), key


PROMPTS = {
    "one point per image": dict(input_points=[[[60, 20]], [[30, 40]]]),
    "points with labels": dict(input_points=[[[60, 20], [10, 12]], [[30, 40], [1, 2]]], input_labels=[[1, 0], [1, 1]]),
    "different point counts": dict(input_points=[[[60, 20], [10, 12]], [[30, 40]]], input_labels=[[1, 0], [1]]),
    "boxes": dict(input_boxes=[[[5, 6, 80, 50]], [[0, 0, 100, 70]]]),
    "several prompts, points and boxes": dict(
        input_points=[[[[60, 20]], [[5, 6]]], [[[30, 40]], [[7, 8]]]],
        input_labels=[[[1], [1]], [[0], [1]]],
        input_boxes=[[[5, 6, 80, 50], [1, 2, 30, 40]], [[0, 0, 100, 70], [5, 6, 70, 80]]],
    ),
    "tensor prompts": dict(input_points=torch.tensor([[[60.5, 20.25]], [[30.0, 40.0]]])),
}


@pytest.mark.parametrize("case", sorted(PROMPTS))
@pytest.mark.parametrize("return_tensors", ["pt", None])
def test_processor_outputs_match_transformers(processors, photos, case, return_tensors):
    reference, ours = processors
    images = [photos["chelsea"], photos["coffee"]]
    expected = reference(images=images, return_tensors=return_tensors, **PROMPTS[case])
    got = ours(images=images, return_tensors=return_tensors, **PROMPTS[case])
    assert_same_batch(expected, got)


def test_prompts_for_one_image_and_segmentation_maps_match(processors, photos):
    reference, ours = processors
    image = photos["astronaut"]
    maps = [np.random.default_rng(0).integers(0, 5, image.shape[:2]).astype(np.uint8)]
    kwargs = dict(
        input_points=[[[10, 20], [30, 5]]], input_labels=[[1, 0]], segmentation_maps=maps, return_tensors="pt"
    )
    expected, got = reference(images=image, **kwargs), ours(images=image, **kwargs)
    assert_same_batch(expected, got)
    assert got["labels"].shape == (1, 32, 32) and got["labels"].dtype == torch.int64


def test_padded_points_are_labelled_and_embedded_as_zeros(processors, photos, parity_checkpoint):
    from bestiary_sam.modeling_sam import SamModel

    reference, ours = processors
    model = SamModel.from_pretrained(parity_checkpoint)
    images = [photos["chelsea"], photos["coffee"]]
    prompts = dict(input_points=[[[60, 20]], [[30, 40], [5, 5], [70, 60]]], input_labels=[[1], [1, 0, 1]])
    batch = ours(images=images, return_tensors="pt", **prompts)
    assert batch["input_points"].shape == (2, 1, 3, 2)
    assert batch["input_labels"][0].tolist() == [[1, -10, -10]]
    assert batch["input_points"][0, 0, 1:].eq(-10).all()
    sparse, _ = model.get_prompt_embeddings(batch["input_points"], batch["input_labels"])
    assert sparse[0, 0, 1:3].eq(0).all() and sparse[0, 0, 0].ne(0).any()
    # transformers pads one missing point per image; with one missing point the layouts agree.
    two = dict(input_points=[[[60, 20]], [[30, 40], [5, 5]]], input_labels=[[1], [1, 0]])
    assert_same_batch(
        reference(images=images, return_tensors="pt", **two), ours(images=images, return_tensors="pt", **two)
    )


@pytest.mark.parametrize("binarize", [True, False])
def test_post_process_masks_matches_transformers(processors, photos, binarize):
    reference, ours = processors
    images = [photos["chelsea"], photos["coffee"]]
    batch = reference(images=images, return_tensors="pt")
    masks = torch.randn(2, 2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    kwargs = dict(binarize=binarize, mask_threshold=0.3)
    expected = reference.post_process_masks(masks, batch["original_sizes"], batch["reshaped_input_sizes"], **kwargs)
    got = ours.post_process_masks(masks, batch["original_sizes"], batch["reshaped_input_sizes"], **kwargs)
    for a, b in zip(expected, got):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert torch.equal(a, b)
    assert got[1].shape == (2, 3, 80, 120)
    as_lists = ours.post_process_masks(
        [m.numpy() for m in masks], batch["original_sizes"].tolist(), batch["reshaped_input_sizes"].tolist(), **kwargs
    )
    assert all(torch.equal(a, b) for a, b in zip(got, as_lists))


def test_pixel_values_and_sizes_of_a_single_image_match(processors, photos):
    reference, ours = processors
    for name in ("astronaut", "coffee"):
        assert_same_batch(
            reference(images=photos[name], return_tensors="pt"), ours(images=photos[name], return_tensors="pt")
        )


def test_processor_files_move_both_ways(processors, tmp_path):
    _, ours = processors
    ours.save_pretrained(tmp_path / "ours")
    saved = json.loads((tmp_path / "ours" / "processor_config.json").read_text())
    assert saved["processor_class"] == "SamProcessor"
    assert saved["image_processor"]["image_processor_type"] == "SamImageProcessor"
    loaded = transformers.SamProcessor.from_pretrained(tmp_path / "ours")
    assert loaded.image_processor.size["longest_edge"] == 64 and loaded.image_processor.mask_pad_size["height"] == 32
    again = SamProcessor.from_pretrained(tmp_path / "ours")
    assert again.image_processor.to_dict() == ours.image_processor.to_dict()
    legacy = SamImageProcessor(size={"longest_edge": 48}, pad_size={"height": 48, "width": 48})
    legacy.save_pretrained(tmp_path / "legacy")  # preprocessor_config.json only, as older checkpoints have
    assert SamProcessor.from_pretrained(tmp_path / "legacy").target_size == 48
    assert transformers.SamImageProcessor.from_pretrained(tmp_path / "legacy").size["longest_edge"] == 48


def test_prompt_errors_name_the_argument(processors, photos):
    _, ours = processors
    images = [photos["chelsea"], photos["coffee"]]
    with pytest.raises(ProcessingError, match="pass input_labels"):
        ours(images=images, input_points=[[[1, 2]], [[1, 2], [3, 4]]])
    with pytest.raises(ProcessingError, match="different number of boxes"):
        ours(images=images, input_boxes=[[[1, 2, 3, 4]], [[1, 2, 3, 4], [5, 6, 7, 8]]])
    with pytest.raises(ProcessingError, match="input_points"):
        ours(images=images, input_points=[1, 2])
    with pytest.raises(ProcessingError, match=r"\[x1, y1, x2, y2\]"):
        ours(images=images, input_boxes=[[[1, 2, 3]], [[1, 2, 3]]])
    with pytest.raises(ProcessingError, match="images"):
        ours(input_points=[[[1, 2]]])
    with pytest.raises(ProcessingError, match="3 images"):
        ours(images=images, input_points=[[[1, 2]], [[1, 2]], [[1, 2]]])
    with pytest.raises(ProcessingError, match="mask_pad_size"):
        SamImageProcessor(mask_pad_size={"longest_edge": 3})
