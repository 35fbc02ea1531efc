"""``pipeline("keypoint-detection")``: keypoints, scores and descriptors per image.

Works with any model served by ``AutoModelForKeypointDetection`` whose output
has transformers' keypoint form (relative ``keypoints``, ``scores``,
``descriptors`` and a padding ``mask``) and whose image processor has
``post_process_keypoint_detection(outputs, target_sizes)``, SuperPoint's for
example. Each result is one dict with ``keypoints`` ((N, 2) x, y in pixels of
the original image), ``scores`` (N,) and ``descriptors`` (N, D).

Images of different sizes may share a batch: images whose processed sizes
are equal run through the model together, the others in their own call.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from bestiary.errors import ProcessingError
from bestiary.pipelines.base import Pipeline

logger = logging.getLogger(__name__)


class KeypointDetectionPipeline(Pipeline):
    """Detect and describe keypoints in images.

    Call with one image (PIL image, array, tensor, path or URL) or a list of
    them. Keyword arguments:

    - ``threshold``: drop keypoints scoring below it (the model's own
      ``keypoint_threshold`` applies first).
    - any keyword of the image processor's ``post_process_keypoint_detection``,
      for SuperPoint ``coordinates="truncate" | "round" | "float"``.
    """

    task = "keypoint-detection"
    needs = ("image_processor",)

    def split_params(self, params: dict[str, Any]) -> tuple[dict, dict, dict]:
        """``threshold`` goes to :meth:`postprocess`; everything else to the processor's post-processing."""
        params = dict(params)
        post = {"threshold": params.pop("threshold")} if "threshold" in params else {}
        return {}, params, post

    # -- steps --------------------------------------------------------------
    def preprocess(self, item: Any, **params: Any) -> dict[str, Any]:
        """Load one image and return its ``pixel_values`` (1, C, H, W) and original (height, width)."""
        images = self.image_processor.prepare_images(item)
        if len(images) != 1:
            raise ProcessingError(
                f"Each input of the {self.task!r} pipeline must be one image, got {len(images)} in one item; "
                "pass a flat list of images for a batch."
            )
        image = images[0]
        processed = self.image_processor(image, input_data_format="channels_first", return_tensors="pt")
        pixel_values = processed["pixel_values"]
        target_size = torch.tensor([[int(image.shape[-2]), int(image.shape[-1])]])
        return {"pixel_values": pixel_values, "target_sizes": target_size}

    def collate(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        """Keep per-image tensors in lists: :meth:`forward` groups them by size."""
        return {key: [item[key] for item in items] for key in ("pixel_values", "target_sizes")}

    def forward(self, batch: dict[str, Any], **post_kwargs: Any) -> dict[str, Any]:
        """Run the model once per group of same-sized images; return post-processed ``results`` in input order."""
        pixel_values, target_sizes = batch["pixel_values"], batch["target_sizes"]
        groups: dict[tuple[int, ...], list[int]] = {}
        for index, values in enumerate(pixel_values):
            groups.setdefault(tuple(values.shape[1:]), []).append(index)
        dtype = getattr(self.model, "dtype", torch.float32)
        results: list[dict[str, torch.Tensor] | None] = [None] * len(pixel_values)
        for indices in groups.values():
            inputs = torch.cat([pixel_values[i] for i in indices]).to(device=self.device, dtype=dtype)
            sizes = torch.cat([target_sizes[i] for i in indices]).to(self.device)
            outputs = self.model(pixel_values=inputs)
            post_process = self.image_processor.post_process_keypoint_detection
            detections = post_process(outputs, target_sizes=sizes, **post_kwargs)
            for index, detection in zip(indices, detections):
                results[index] = detection
        return {"results": results}

    def postprocess(self, output: dict[str, Any], threshold: float | None = None) -> dict[str, torch.Tensor]:
        """Return one image's ``keypoints``, ``scores`` and ``descriptors`` on the CPU, above ``threshold`` if given."""
        result = output["results"]
        if threshold is not None:
            keep = result["scores"] >= threshold
            result = {key: value[keep] for key, value in result.items()}
        return {key: value.detach().cpu() for key, value in result.items()}


__all__ = ["KeypointDetectionPipeline"]
