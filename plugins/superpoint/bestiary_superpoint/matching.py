"""Matching keypoint descriptors between two images: mutual nearest neighbours with a ratio test.

Descriptors are compared by cosine similarity (for unit descriptors, the
Euclidean distance is ``sqrt(2 - 2 * similarity)``). A pair (i, j) is a
match when

- j is i's nearest neighbour in image 1 and i is j's nearest neighbour in
  image 0 (mutual check, ``mutual=True``);
- in both directions, the nearest neighbour is clearly closer than the
  second nearest: ``distance(best) < ratio_threshold * distance(second)``
  (Lowe's ratio test; a side with a single descriptor has no second
  neighbour and passes);
- the similarity is at least ``min_score``, when given.

The checks are symmetric, so swapping the two images swaps the pairs and
nothing else. Empty inputs give empty results, never errors.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch.nn import functional as F

from bestiary.errors import ProcessingError

logger = logging.getLogger(__name__)


@dataclass
class DescriptorMatches:
    """Matched index pairs with their cosine similarity, best first.

    ``indices0[k]`` in image 0 matches ``indices1[k]`` in image 1 with
    similarity ``scores[k]`` (in [-1, 1]; 1 for identical descriptors).
    """

    indices0: torch.Tensor
    indices1: torch.Tensor
    scores: torch.Tensor

    def __len__(self) -> int:
        return int(self.indices0.shape[0])


def _check_descriptors(descriptors: Any, name: str) -> torch.Tensor:
    if not isinstance(descriptors, torch.Tensor) or descriptors.ndim != 2:
        shape = tuple(descriptors.shape) if isinstance(descriptors, torch.Tensor) else type(descriptors).__name__
        raise ProcessingError(
            f"{name} must be a (keypoints, descriptor_dim) tensor, got {shape}; take one image's descriptors, "
            "e.g. post_process_keypoint_detection(...)[i]['descriptors']."
        )
    return descriptors


def _ratio_pass(top: torch.Tensor, ratio_threshold: float | None) -> torch.Tensor:
    """Ratio test on the two best similarities per row ``top`` (rows, 1 or 2)."""
    if ratio_threshold is None or top.shape[1] < 2:
        return torch.ones(top.shape[0], dtype=torch.bool, device=top.device)
    distances = (2.0 - 2.0 * top).clamp(min=0.0).sqrt()
    return distances[:, 0] < ratio_threshold * distances[:, 1]


def match_descriptors(
    descriptors0: torch.Tensor,
    descriptors1: torch.Tensor,
    *,
    ratio_threshold: float | None = 0.8,
    mutual: bool = True,
    min_score: float | None = None,
) -> DescriptorMatches:
    """Return the matches between ``descriptors0`` (N0, D) and ``descriptors1`` (N1, D), best first.

    ``ratio_threshold`` in (0, 1] (None turns the ratio test off), ``mutual``
    keeps only mutual nearest neighbours, ``min_score`` drops pairs less
    similar than it. Descriptors are L2-normalised before comparing.
    """
    descriptors0 = _check_descriptors(descriptors0, "descriptors0")
    descriptors1 = _check_descriptors(descriptors1, "descriptors1")
    if descriptors0.shape[1] != descriptors1.shape[1]:
        raise ProcessingError(
            f"descriptors0 has {descriptors0.shape[1]} values per descriptor and descriptors1 has "
            f"{descriptors1.shape[1]}; match descriptors from the same model."
        )
    if ratio_threshold is not None and not 0.0 < ratio_threshold <= 1.0:
        raise ProcessingError(f"ratio_threshold must be in (0, 1] or None (no ratio test), got {ratio_threshold}.")
    device = descriptors0.device
    if descriptors0.shape[0] == 0 or descriptors1.shape[0] == 0:
        empty = torch.zeros(0, dtype=torch.long, device=device)
        return DescriptorMatches(empty, empty.clone(), torch.zeros(0, dtype=descriptors0.dtype, device=device))

    similarity = F.normalize(descriptors0, dim=1) @ F.normalize(descriptors1.to(descriptors0.dtype), dim=1).T
    top01, nearest01 = similarity.topk(min(2, similarity.shape[1]), dim=1)
    top10, nearest10 = similarity.T.topk(min(2, similarity.shape[0]), dim=1)
    best1 = nearest01[:, 0]
    keep = _ratio_pass(top01, ratio_threshold)
    if mutual:
        rows = torch.arange(similarity.shape[0], device=device)
        keep &= nearest10[best1, 0] == rows
        keep &= _ratio_pass(top10, ratio_threshold)[best1]
    scores = top01[:, 0]
    if min_score is not None:
        keep &= scores >= min_score
    indices0 = torch.nonzero(keep).squeeze(1)
    order = scores[indices0].argsort(descending=True, stable=True)
    indices0 = indices0[order]
    return DescriptorMatches(indices0, best1[indices0], scores[indices0])


class MutualNearestNeighborMatcher:
    """A descriptor matcher with fixed settings; see :func:`match_descriptors`.

    ``matcher(descriptors0, descriptors1)`` returns :class:`DescriptorMatches`;
    :meth:`match_keypoints` works on two images' detections (the dicts of
    ``post_process_keypoint_detection``) and returns matched coordinates.
    """

    def __init__(
        self, ratio_threshold: float | None = 0.8, mutual: bool = True, min_score: float | None = None
    ) -> None:
        if ratio_threshold is not None and not 0.0 < ratio_threshold <= 1.0:
            raise ProcessingError(f"ratio_threshold must be in (0, 1] or None (no ratio test), got {ratio_threshold}.")
        self.ratio_threshold = ratio_threshold
        self.mutual = mutual
        self.min_score = min_score

    def __call__(self, descriptors0: torch.Tensor, descriptors1: torch.Tensor) -> DescriptorMatches:
        """Match two images' descriptors."""
        settings = dict(ratio_threshold=self.ratio_threshold, mutual=self.mutual, min_score=self.min_score)
        return match_descriptors(descriptors0, descriptors1, **settings)

    def match_keypoints(
        self, detections0: Mapping[str, torch.Tensor], detections1: Mapping[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """Return ``keypoints0`` (M, 2), ``keypoints1`` (M, 2) and ``matching_scores`` (M,), best first.

        ``detections0`` / ``detections1`` hold ``keypoints`` and
        ``descriptors`` of one image each (the output keys are those of
        transformers' ``post_process_keypoint_matching``).
        """
        for name, detections in (("detections0", detections0), ("detections1", detections1)):
            missing = [key for key in ("keypoints", "descriptors") if key not in detections]
            if missing:
                raise ProcessingError(
                    f"{name} lacks {', '.join(missing)}; pass one image's dict from post_process_keypoint_detection()."
                )
        matches = self(detections0["descriptors"], detections1["descriptors"])
        return {
            "keypoints0": detections0["keypoints"][matches.indices0],
            "keypoints1": detections1["keypoints"][matches.indices1],
            "matching_scores": matches.scores,
        }


def match_keypoints(
    detections0: Mapping[str, torch.Tensor],
    detections1: Mapping[str, torch.Tensor],
    *,
    ratio_threshold: float | None = 0.8,
    mutual: bool = True,
    min_score: float | None = None,
) -> dict[str, torch.Tensor]:
    """Match two images' detections; see :meth:`MutualNearestNeighborMatcher.match_keypoints`."""
    matcher = MutualNearestNeighborMatcher(ratio_threshold=ratio_threshold, mutual=mutual, min_score=min_score)
    return matcher.match_keypoints(detections0, detections1)


__all__ = ["DescriptorMatches", "MutualNearestNeighborMatcher", "match_descriptors", "match_keypoints"]
