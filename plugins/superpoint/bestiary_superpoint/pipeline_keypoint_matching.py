"""``pipeline("keypoint-matching")``: matched point pairs between two images.

A keypoint detector (any model served by ``AutoModelForKeypointDetection``,
SuperPoint for example) finds keypoints and descriptors in both images; the
mutual-nearest-neighbour matcher with a ratio test
(:mod:`bestiary_superpoint.matching`) pairs them. The result has the form of
transformers' keypoint-matching pipeline: a list of
``{"keypoint_image_0": {"x", "y"}, "keypoint_image_1": {"x", "y"}, "score"}``
sorted by decreasing score, coordinates in pixels of the original images
(sub-pixel floats), the score being the descriptors' cosine similarity.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

from bestiary.errors import ProcessingError
from bestiary.pipelines.keypoint_detection import KeypointDetectionPipeline
from bestiary_superpoint.matching import MutualNearestNeighborMatcher

logger = logging.getLogger(__name__)

_MATCHER_SETTINGS = ("ratio_threshold", "mutual")


class KeypointMatchingPipeline(KeypointDetectionPipeline):
    """Match keypoints between the two images of a pair.

    Call with one pair ``[image0, image1]`` (a list of matches comes back) or
    a list of pairs (a list of lists). Keyword arguments:

    - ``ratio_threshold`` (default 0.8; None turns the ratio test off) and
      ``mutual`` (default True): matcher settings;
    - ``threshold``: drop matches whose score (cosine similarity) is below it.
    """

    task = "keypoint-matching"

    def is_batch(self, inputs: Any) -> bool:
        """A list of pairs is a batch; one pair is a single input."""
        if not isinstance(inputs, (list, tuple)):
            raise ProcessingError(
                f"The {self.task!r} pipeline takes a pair of images [image0, image1] or a list of pairs; "
                f"got {type(inputs).__name__}."
            )
        return bool(inputs) and all(isinstance(item, (list, tuple)) for item in inputs)

    def split_params(self, params: dict[str, Any]) -> tuple[dict, dict, dict]:
        """Matcher settings and ``threshold`` go to :meth:`postprocess`; the rest to the detector's post-processing."""
        forward = dict(params)
        post = {key: forward.pop(key) for key in (*_MATCHER_SETTINGS, "threshold") if key in forward}
        accepts = inspect.signature(self.image_processor.post_process_keypoint_detection).parameters
        if "coordinates" in accepts:
            forward.setdefault("coordinates", "float")
        return {}, forward, post

    def preprocess(self, item: Any, **params: Any) -> dict[str, Any]:
        """Load the two images of a pair."""
        if not isinstance(item, (list, tuple)) or len(item) != 2:
            count = len(item) if isinstance(item, (list, tuple)) else 1
            raise ProcessingError(
                f"Each input of the {self.task!r} pipeline must be a pair of images [image0, image1]; got {count} "
                "image(s). Pass [image0, image1] for one pair or [[a0, a1], [b0, b1]] for several."
            )
        first, second = (super(KeypointMatchingPipeline, self).preprocess(image) for image in item)
        return {key: [first[key], second[key]] for key in ("pixel_values", "target_sizes")}

    def collate(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        """Flatten the pairs into one list of images (image 0 and image 1 of each pair in turn)."""
        return {key: [tensor for item in items for tensor in item[key]] for key in ("pixel_values", "target_sizes")}

    def forward(self, batch: dict[str, Any], **post_kwargs: Any) -> dict[str, Any]:
        """Detect in every image, then regroup the detections by pair."""
        results = super().forward(batch, **post_kwargs)["results"]
        return {"pairs": [(results[index], results[index + 1]) for index in range(0, len(results), 2)]}

    def postprocess(
        self,
        output: dict[str, Any],
        threshold: float | None = None,
        ratio_threshold: float | None = 0.8,
        mutual: bool = True,
    ) -> list[dict[str, Any]]:
        """Match one pair's detections; return the matches, best first."""
        detections0, detections1 = output["pairs"]
        matcher = MutualNearestNeighborMatcher(ratio_threshold=ratio_threshold, mutual=mutual, min_score=threshold)
        matched = matcher.match_keypoints(detections0, detections1)
        keypoints0, keypoints1 = matched["keypoints0"].cpu().tolist(), matched["keypoints1"].cpu().tolist()
        return [
            {
                "keypoint_image_0": {"x": float(x0), "y": float(y0)},
                "keypoint_image_1": {"x": float(x1), "y": float(y1)},
                "score": float(score),
            }
            for (x0, y0), (x1, y1), score in zip(keypoints0, keypoints1, matched["matching_scores"].cpu().tolist())
        ]


__all__ = ["KeypointMatchingPipeline"]
