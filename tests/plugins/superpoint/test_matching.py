"""The mutual-nearest-neighbour matcher: a photo against a copy shifted by whole cells, symmetry, edge cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.plugins.superpoint.superpoint_builders import build_matching_model, photo_region

from bestiary.errors import ProcessingError  # noqa: E402
from bestiary_superpoint.image_processing_superpoint import SuperPointImageProcessor  # noqa: E402
from bestiary_superpoint.matching import MutualNearestNeighborMatcher, match_descriptors, match_keypoints  # noqa: E402

SHIFT = (16, 24)  # (dx, dy): two and three 8-pixel cells


def detect(model, processor, images):
    results = []
    for image in images:
        with torch.no_grad():
            outputs = model(**processor(image, return_tensors="pt"))
        results.append(processor.post_process_keypoint_detection(outputs, [image.shape[:2]], coordinates="round")[0])
    return results


@pytest.fixture(scope="module")
def shifted_pair():
    """Detections in a photo region and in the same region cut 16 px from the left and 24 px from the top."""
    model = build_matching_model(seed=0)
    processor = SuperPointImageProcessor(do_grayscale=True, do_resize=False)
    photo = photo_region()
    dx, dy = SHIFT
    return detect(model, processor, [photo, photo[dy:, dx:]])


def agreeing(matches) -> torch.Tensor:
    return ((matches["keypoints0"] - matches["keypoints1"]) == torch.tensor(SHIFT, dtype=torch.int32)).all(dim=1)


def test_matches_agree_with_the_known_shift(shifted_pair):
    photo, crop = shifted_pair
    matches = match_keypoints(photo, crop)
    # Measured with seeds 0-2 and shifts (16, 24), (8, 8), (40, 0), (0, 32): 198-249 matches of 300
    # keypoints, 97.5%-100% agreeing with the shift; here (seed 0, (16, 24)) 213 matches, 98.6%.
    assert len(matches["matching_scores"]) >= 150
    assert agreeing(matches).float().mean().item() >= 0.95
    scores = matches["matching_scores"]
    assert torch.all(scores[:-1] >= scores[1:]), "matches come best first"
    assert scores.max() <= 1.0 + 1e-6


def test_checks_raise_precision(shifted_pair):
    photo, crop = shifted_pair
    strict = agreeing(match_keypoints(photo, crop)).float().mean()
    loose = agreeing(match_keypoints(photo, crop, ratio_threshold=None, mutual=False)).float().mean()
    assert strict > loose


def test_matching_is_symmetric(shifted_pair):
    photo, crop = shifted_pair
    forward = match_descriptors(photo["descriptors"], crop["descriptors"])
    backward = match_descriptors(crop["descriptors"], photo["descriptors"])
    assert set(zip(forward.indices0.tolist(), forward.indices1.tolist())) == set(
        zip(backward.indices1.tolist(), backward.indices0.tolist())
    )


def test_image_without_keypoints_gives_empty_results(shifted_pair):
    model = build_matching_model(seed=0)
    processor = SuperPointImageProcessor(do_grayscale=True, do_resize=False)
    (blank,) = detect(model, processor, [np.zeros((96, 120, 3), dtype=np.uint8)])
    assert blank["keypoints"].shape == (0, 2) and blank["descriptors"].shape == (0, 32)
    for pair in ((shifted_pair[0], blank), (blank, shifted_pair[0]), (blank, blank)):
        matches = match_keypoints(*pair)
        assert matches["keypoints0"].shape == (0, 2) and matches["keypoints1"].shape == (0, 2)
        assert matches["matching_scores"].shape == (0,)


def test_ratio_test_rejects_ambiguous_descriptors():
    descriptors0 = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    # The first descriptor has two identical candidates: ambiguous. The second has one clear match.
    descriptors1 = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.1, 1.0, 0.0]])
    matches = match_descriptors(descriptors0, descriptors1)
    assert matches.indices0.tolist() == [1] and matches.indices1.tolist() == [2]
    no_ratio = match_descriptors(descriptors0, descriptors1, ratio_threshold=None)
    assert sorted(no_ratio.indices0.tolist()) == [0, 1]
    # A single candidate has no second neighbour: the ratio test passes.
    single = match_descriptors(descriptors0[:1], descriptors1[:1])
    assert len(single) == 1 and single.scores.item() == pytest.approx(1.0)
    # Both pairs of these match; min_score keeps the exact one (similarity 1) and drops the other (0.995).
    kept = MutualNearestNeighborMatcher(min_score=0.999)(descriptors0, descriptors1[1:])
    assert kept.indices0.tolist() == [0] and kept.indices1.tolist() == [0]


def test_matcher_errors_name_the_argument():
    with pytest.raises(ProcessingError, match="descriptors0 has 3 values per descriptor and descriptors1 has 4"):
        match_descriptors(torch.rand(2, 3), torch.rand(2, 4))
    with pytest.raises(ProcessingError, match="descriptors1 must be a \\(keypoints, descriptor_dim\\) tensor"):
        match_descriptors(torch.rand(2, 3), torch.rand(1, 2, 3))
    with pytest.raises(ProcessingError, match="ratio_threshold must be in"):
        MutualNearestNeighborMatcher(ratio_threshold=1.5)
    with pytest.raises(ProcessingError, match="detections1 lacks descriptors"):
        complete = {"keypoints": torch.zeros(0, 2), "descriptors": torch.zeros(0, 3)}
        match_keypoints(complete, {"keypoints": torch.zeros(0, 2)})
