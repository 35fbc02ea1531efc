"""pipeline("keypoint-detection") and pipeline("keypoint-matching") with SuperPoint checkpoints."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch

from tests.plugins.superpoint.superpoint_builders import mixed_size_images, photo_region

import bestiary.auto as auto  # noqa: E402
from bestiary import pipeline  # noqa: E402
from bestiary.errors import ProcessingError  # noqa: E402
from bestiary.registry import get_registry  # noqa: E402

SHIFT = (16, 24)


def test_keypoint_matching_is_registered_by_the_plugin():
    registration = get_registry().pipeline_spec("keypoint-matching")
    assert registration.provider.distribution == "bestiary-superpoint"
    assert registration.spec.model_tasks == ("keypoint-detection",)


def test_detection_pipeline_equals_processor_post_processing(reference_checkpoint):
    folder, _ = reference_checkpoint
    detector = pipeline("keypoint-detection", model=str(folder))
    images = mixed_size_images()
    results = detector(images, batch_size=2)
    processor = auto.AutoImageProcessor.from_pretrained(folder)
    model = auto.AutoModelForKeypointDetection.from_pretrained(folder)
    with torch.no_grad():
        outputs = model(**processor(images, return_tensors="pt"))
    expected = processor.post_process_keypoint_detection(outputs, [image.shape[:2] for image in images])
    assert len(results) == 3
    for result, reference in zip(results, expected):
        assert set(result) == {"keypoints", "scores", "descriptors"}
        assert torch.equal(result["keypoints"], reference["keypoints"])
        assert torch.allclose(result["scores"], reference["scores"], atol=1e-6)
        assert torch.allclose(result["descriptors"], reference["descriptors"], atol=1e-6)

    single = detector(PIL.Image.fromarray(images[0]), threshold=0.1, coordinates="round")
    assert isinstance(single, dict) and (single["scores"] >= 0.1).all()
    assert single["keypoints"].dtype == torch.int32


def test_detection_pipeline_batches_images_of_different_sizes(matching_checkpoint):
    detector = pipeline("keypoint-detection", model=str(matching_checkpoint))
    photo = photo_region()
    images = [photo, photo[:100, :120], np.zeros((64, 72, 3), dtype=np.uint8)]
    together = detector(images, batch_size=3)
    one_by_one = [detector(image) for image in images]
    for batched, alone in zip(together, one_by_one):
        assert torch.equal(batched["keypoints"], alone["keypoints"])
    assert together[2]["keypoints"].shape == (0, 2)


def test_matching_pipeline_finds_the_shift(matching_checkpoint):
    matcher = pipeline("keypoint-matching", model=str(matching_checkpoint))
    photo = photo_region()
    dx, dy = SHIFT
    crop = photo[dy:, dx:]
    matches = matcher([photo, crop])
    assert len(matches) >= 150
    first = matches[0]
    assert set(first) == {"keypoint_image_0", "keypoint_image_1", "score"}
    assert set(first["keypoint_image_0"]) == set(first["keypoint_image_1"]) == {"x", "y"}
    assert [m["score"] for m in matches] == sorted((m["score"] for m in matches), reverse=True)
    agree = [
        abs(m["keypoint_image_0"]["x"] - m["keypoint_image_1"]["x"] - dx) < 1e-3
        and abs(m["keypoint_image_0"]["y"] - m["keypoint_image_1"]["y"] - dy) < 1e-3
        for m in matches
    ]
    assert np.mean(agree) >= 0.95

    blank = np.zeros((96, 120, 3), dtype=np.uint8)
    batch = matcher([[photo, crop], [photo, blank], [blank, crop]], batch_size=2, threshold=0.9)
    assert len(batch) == 3 and batch[1] == [] and batch[2] == []
    assert batch[0] and all(m["score"] >= 0.9 for m in batch[0])


def test_matching_pipeline_input_errors(matching_checkpoint):
    matcher = pipeline("keypoint-matching", model=str(matching_checkpoint))
    photo = photo_region(64, 64)
    with pytest.raises(ProcessingError, match="pair of images"):
        matcher([photo, photo, photo])
    with pytest.raises(ProcessingError, match="pair of images"):
        matcher(photo)
