"""``pipeline("mask-generation")``: segment everything in an image.

A thin wrapper over the model's own segment-everything API: any model served
by ``AutoModelForMaskGeneration`` that has
``generate_masks(image, processor=..., **settings)`` (SAM's, from
bestiary-sam) works. The algorithm, its settings and its memory bound live
there (``bestiary_sam.automatic``); this module maps transformers' argument
names onto it and shapes the result like transformers' pipeline:
``{"masks": [bool (H, W) tensors], "scores": (N,) tensor}`` plus
``"rle_mask"`` and ``"bounding_boxes"`` when asked.

Unlike transformers' pipeline, masks are de-duplicated per crop and then
across crops (as in the Segment Anything paper), and small regions can be
removed (``min_mask_region_area``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
from typing import Any

import torch

from bestiary.errors import ProcessingError
from bestiary.pipelines.base import Pipeline

logger = logging.getLogger(__name__)

# transformers' argument name -> the model-level setting it sets.
_RENAMED = {"points_per_crop": "points_per_side"}
_SETTINGS = (
    "points_per_side",
    "points_per_batch",
    "pred_iou_thresh",
    "stability_score_thresh",
    "stability_score_offset",
    "mask_threshold",
    "box_nms_thresh",
    "crops_n_layers",
    "crops_nms_thresh",
    "crop_overlap_ratio",
    "crop_n_points_downscale_factor",
    "crop_edge_tolerance",
    "min_mask_region_area",
)
_OUTPUT_FLAGS = ("output_rle_mask", "output_bboxes_mask")


class MaskGenerationPipeline(Pipeline):
    """Segment everything in one image or a list of images.

    Keyword arguments (at construction or per call) are the model's
    segment-everything settings: ``points_per_side`` (transformers' name
    ``points_per_crop`` works too), ``points_per_batch``, ``pred_iou_thresh``,
    ``stability_score_thresh``, ``stability_score_offset``, ``mask_threshold``,
    ``crops_n_layers``, ``crop_overlap_ratio``,
    ``crop_n_points_downscale_factor``, ``crops_nms_thresh``,
    ``box_nms_thresh``, ``min_mask_region_area``; plus ``output_rle_mask``,
    ``output_bboxes_mask`` and ``timeout`` (for URLs). ``crops_nms_thresh``
    also sets ``box_nms_thresh`` unless that is given, since transformers
    uses one threshold for both.
    """

    task = "mask-generation"
    needs = ()
    optional = ("image_processor",)  # without one, the model builds a processor sized for itself

    def __init__(self, model: Any, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        if not callable(getattr(model, "generate_masks", None)):
            raise ProcessingError(
                f"{type(model).__name__} has no generate_masks() method, so it cannot segment everything. "
                "Use a model served by AutoModelForMaskGeneration (for example SAM from bestiary-sam)."
            )
        _split_arguments(self.defaults)  # reject unknown arguments early

    def iterate(self, items: Iterable[Any], *, batch_size: int | None = None, **params: Any) -> Iterator[Any]:
        """Yield one result per image; each image is segmented by the model's own batched point loop."""
        settings, flags, timeout = _split_arguments(params)
        for item in items:
            image = _load(item, timeout)
            with torch.inference_mode():
                result = self.model.generate_masks(
                    image,
                    processor=self.processor or self.image_processor,
                    output_mode="rle" if flags.get("output_rle_mask") else "binary_mask",
                    **settings,
                )
            yield _format(result, flags)


def _split_arguments(params: dict[str, Any]) -> tuple[dict[str, Any], dict[str, bool], float | None]:
    settings: dict[str, Any] = {}
    flags: dict[str, bool] = {}
    timeout = None
    for name, value in params.items():
        if name in _RENAMED:
            settings[_RENAMED[name]] = value
        elif name in _SETTINGS:
            settings[name] = value
        elif name in _OUTPUT_FLAGS:
            flags[name] = bool(value)
        elif name == "timeout":
            timeout = value
        elif name in ("num_workers", "batch_size"):
            continue
        else:
            known = ", ".join(sorted((*_SETTINGS, *_RENAMED, *_OUTPUT_FLAGS, "timeout")))
            raise ProcessingError(f"mask-generation pipeline got an unknown argument {name!r}; known: {known}.")
    if "crops_nms_thresh" in settings and "box_nms_thresh" not in settings:
        settings["box_nms_thresh"] = settings["crops_nms_thresh"]
    return settings, flags, timeout


def _load(item: Any, timeout: float | None) -> Any:
    if isinstance(item, (str, os.PathLike, bytes)):
        from bestiary.processing.image_utils import load_image

        return load_image(item, timeout=timeout)
    return item


def _format(result: Any, flags: dict[str, bool]) -> dict[str, Any]:
    """Shape a model-level result like transformers' pipeline output."""
    if result.masks is not None:
        masks = list(result.masks.unbind(0)) if len(result) else []
    else:
        masks = [result.mask(index) for index in range(len(result))]
    output: dict[str, Any] = {"masks": masks, "scores": result.scores}
    if flags.get("output_rle_mask"):
        output["rle_mask"] = result.rles
    if flags.get("output_bboxes_mask"):
        output["bounding_boxes"] = result.boxes
    return output


__all__ = ["MaskGenerationPipeline"]
