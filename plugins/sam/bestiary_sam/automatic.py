"""Segment everything: prompt SAM with a grid of points and keep the good, distinct masks.

The algorithm is the automatic mask generator of the Segment Anything paper:

1. Crops: the whole image, plus, with ``crops_n_layers`` > 0, layers of
   overlapping crops (2x2, 4x4, ...). Each crop is encoded once.
2. Each crop is prompted with a grid of ``points_per_side``^2 single points
   (fewer on deeper layers: ``crop_n_points_downscale_factor``), in batches
   of ``points_per_batch``; every point gives three masks.
3. Per batch, masks are kept when their predicted IoU is above
   ``pred_iou_thresh`` and their stability score (IoU of the mask binarized
   at ``mask_threshold`` +/- ``stability_score_offset``) reaches
   ``stability_score_thresh``; masks touching a crop edge that is not an
   image edge are dropped.
4. Non-maximum suppression on the mask boxes (torchvision's batched NMS):
   within each crop by predicted IoU (``box_nms_thresh``), then across crops
   preferring smaller crops (``crops_nms_thresh``).
5. With ``min_mask_region_area`` > 0, small holes are filled and small
   islands removed, and NMS runs again preferring unchanged masks.

Memory is bounded by ``points_per_batch``: a batch's masks are upscaled a
few at a time, and only kept masks are stored, cut to their bounding box.
The last, partial batch is processed like the others. :meth:`SamAutomaticMaskGenerator.stream`
yields each batch's kept masks as soon as they are computed.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torchvision.ops import batched_nms

from bestiary.errors import ProcessingError
from bestiary_sam import mask_utils
from bestiary_sam.image_processing_sam import SamImageProcessor, upscale_mask_logits

logger = logging.getLogger(__name__)

# Masks upscaled to full resolution at once while filtering a batch.
UPSCALE_CHUNK = 16


class MaskGenerationSettings(BaseModel):
    """Settings of segment-everything; names and defaults follow SAM's automatic mask generator."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    points_per_side: int = Field(32, ge=1)
    points_per_batch: int = Field(64, ge=1)
    pred_iou_thresh: float = 0.88
    stability_score_thresh: float = 0.95
    stability_score_offset: float = 1.0
    mask_threshold: float = 0.0
    box_nms_thresh: float = Field(0.7, ge=0.0, le=1.0)
    crops_n_layers: int = Field(0, ge=0)
    crops_nms_thresh: float = Field(0.7, ge=0.0, le=1.0)
    crop_overlap_ratio: float = Field(512 / 1500, ge=0.0, lt=1.0)
    crop_n_points_downscale_factor: int = Field(1, ge=1)
    crop_edge_tolerance: float = Field(20.0, ge=0.0)
    min_mask_region_area: int = Field(0, ge=0)
    output_mode: Literal["binary_mask", "rle"] = "binary_mask"

    @classmethod
    def build(cls, base: "MaskGenerationSettings | None" = None, **values: Any) -> "MaskGenerationSettings":
        """Return settings from keyword arguments (over ``base``), raising errors that name the argument."""
        data = {**(base.model_dump() if base is not None else {}), **values}
        try:
            settings = cls(**data)
        except ValidationError as exc:
            problems = []
            for error in exc.errors():
                name = ".".join(str(part) for part in error["loc"])
                if error["type"] == "extra_forbidden":
                    problems.append(f"unknown argument {name!r} (settings are: {', '.join(cls.model_fields)})")
                else:
                    problems.append(f"{name}={error.get('input')!r}: {error['msg']}")
            raise ProcessingError("Invalid mask generation settings: " + "; ".join(problems) + ".") from None
        for layer in range(settings.crops_n_layers + 1):
            if int(settings.points_per_side / settings.crop_n_points_downscale_factor**layer) < 1:
                raise ProcessingError(
                    f"crop layer {layer} would get no points: points_per_side={settings.points_per_side} divided by "
                    f"crop_n_points_downscale_factor**{layer}={settings.crop_n_points_downscale_factor**layer} "
                    "is below 1. Lower crops_n_layers or crop_n_points_downscale_factor."
                )
        return settings


@dataclass
class MaskBatch:
    """The masks one batch of points kept after filtering (before NMS), in the full image's frame."""

    masks: torch.Tensor  # (N, H, W) bool
    scores: torch.Tensor  # (N,) predicted IoU
    stability_scores: torch.Tensor  # (N,)
    boxes: torch.Tensor  # (N, 4) XYXY, inclusive
    point_coords: torch.Tensor  # (N, 2) the prompting point (x, y)
    crop_box: tuple[int, int, int, int]  # XYXY, exclusive ends
    crop_index: int
    points_in_batch: int  # points prompted in this batch (3 masks each before filtering)

    def __len__(self) -> int:
        return int(self.scores.shape[0])


@dataclass
class GeneratedMasks:
    """Every mask segment-everything kept, best first within each NMS stage.

    ``masks`` (N, H, W) bool is set for ``output_mode="binary_mask"``;
    ``rles`` (COCO uncompressed run-length codes) for ``output_mode="rle"``.
    Boxes are XYXY with inclusive pixel indices; crop boxes XYXY with
    exclusive ends.
    """

    scores: torch.Tensor
    stability_scores: torch.Tensor
    boxes: torch.Tensor
    areas: torch.Tensor
    point_coords: torch.Tensor
    crop_boxes: torch.Tensor
    image_size: tuple[int, int]
    masks: torch.Tensor | None = None
    rles: list[dict[str, Any]] | None = None

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    def mask(self, index: int) -> torch.Tensor:
        """Return mask ``index`` as an (H, W) bool tensor, whatever the output mode."""
        if self.masks is not None:
            return self.masks[index]
        return mask_utils.rle_to_mask(self.rles[index])

    def records(self) -> list[dict[str, Any]]:
        """Return one dict per mask, as the original SAM generator does (boxes as XYWH lists)."""
        out = []
        for index in range(len(self)):
            x0, y0, x1, y1 = self.boxes[index].tolist()
            cx0, cy0, cx1, cy1 = self.crop_boxes[index].tolist()
            out.append(
                {
                    "segmentation": self.rles[index] if self.rles is not None else self.masks[index].numpy(),
                    "area": int(self.areas[index]),
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "predicted_iou": float(self.scores[index]),
                    "point_coords": [self.point_coords[index].tolist()],
                    "stability_score": float(self.stability_scores[index]),
                    "crop_box": [cx0, cy0, cx1 - cx0, cy1 - cy0],
                }
            )
        return out


@dataclass
class _Kept:
    """Kept masks stored compactly: each cut to its bounding box, on the CPU."""

    pieces: list[torch.Tensor] = field(default_factory=list)
    scores: list[torch.Tensor] = field(default_factory=list)
    stability: list[torch.Tensor] = field(default_factory=list)
    boxes: list[torch.Tensor] = field(default_factory=list)
    points: list[torch.Tensor] = field(default_factory=list)
    crop_boxes: list[torch.Tensor] = field(default_factory=list)

    def add(self, batch: MaskBatch) -> None:
        for mask, box in zip(batch.masks, batch.boxes.tolist()):
            x0, y0, x1, y1 = box
            self.pieces.append(mask[y0 : y1 + 1, x0 : x1 + 1].cpu().clone())
        count = len(batch)
        self.scores.append(batch.scores.cpu())
        self.stability.append(batch.stability_scores.cpu())
        self.boxes.append(batch.boxes.cpu())
        self.points.append(batch.point_coords.cpu())
        self.crop_boxes.append(torch.tensor([batch.crop_box] * count, dtype=torch.int64).reshape(count, 4))

    def tensors(self) -> dict[str, torch.Tensor]:
        def cat(parts: list[torch.Tensor], empty: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
            return torch.cat(parts) if parts else torch.zeros(empty, dtype=dtype)

        return {
            "scores": cat(self.scores, (0,), torch.float32),
            "stability": cat(self.stability, (0,), torch.float32),
            "boxes": cat(self.boxes, (0, 4), torch.int64),
            "points": cat(self.points, (0, 2), torch.float64),
            "crop_boxes": cat(self.crop_boxes, (0, 4), torch.int64),
        }

    def select(self, keep: torch.Tensor) -> "_Kept":
        data = self.tensors()
        index = keep.tolist()
        return _Kept(
            pieces=[self.pieces[i] for i in index],
            scores=[data["scores"][keep]],
            stability=[data["stability"][keep]],
            boxes=[data["boxes"][keep]],
            points=[data["points"][keep]],
            crop_boxes=[data["crop_boxes"][keep]],
        )

    def extend(self, other: "_Kept") -> None:
        self.pieces.extend(other.pieces)
        for name in ("scores", "stability", "boxes", "points", "crop_boxes"):
            getattr(self, name).extend(getattr(other, name))


def _full_mask(piece: torch.Tensor, box: list[int], image_size: tuple[int, int]) -> torch.Tensor:
    mask = torch.zeros(image_size, dtype=torch.bool)
    x0, y0 = box[0], box[1]
    mask[y0 : y0 + piece.shape[0], x0 : x0 + piece.shape[1]] = piece
    return mask


class SamAutomaticMaskGenerator:
    """Segment everything in an image with a SAM model (see the module docstring for the algorithm).

    ``processor`` is a :class:`SamProcessor` or :class:`SamImageProcessor`;
    by default one sized for the model is built. Keyword arguments are
    :class:`MaskGenerationSettings` fields and become this generator's
    defaults; :meth:`generate` and :meth:`stream` accept them too, per call.
    """

    def __init__(self, model: torch.nn.Module, processor: Any = None, **settings: Any) -> None:
        self.model = model
        self.image_processor = _image_processor_for(model, processor)
        self.settings = MaskGenerationSettings.build(**settings)

    # -- public API -----------------------------------------------------------------
    @torch.inference_mode()
    def generate(self, image: Any, **overrides: Any) -> GeneratedMasks:
        """Return every kept mask of ``image`` after filtering, NMS and small-region removal."""
        settings = MaskGenerationSettings.build(self.settings, **overrides)
        pixels = self._load(image)
        image_size = (int(pixels.shape[-2]), int(pixels.shape[-1]))
        crop_boxes, _ = mask_utils.generate_crop_boxes(image_size, settings.crops_n_layers, settings.crop_overlap_ratio)

        kept = _Kept()
        current: _Kept | None = None
        current_crop = -1
        for batch in self._batches(pixels, settings):
            if batch.crop_index != current_crop:
                if current is not None:
                    kept.extend(self._nms_within_crop(current, settings))
                current, current_crop = _Kept(), batch.crop_index
            current.add(batch)
        if current is not None:
            kept.extend(self._nms_within_crop(current, settings))

        if len(crop_boxes) > 1 and kept.pieces:
            data = kept.tensors()
            crop_scores = 1.0 / mask_utils.box_area(data["crop_boxes"]).to(torch.float32)
            keep = batched_nms(
                data["boxes"].float(), crop_scores, torch.zeros(len(crop_scores)), settings.crops_nms_thresh
            )
            kept = kept.select(keep)
        if settings.min_mask_region_area > 0 and kept.pieces:
            kept = self._remove_small_regions(kept, image_size, settings)
        return self._finish(kept, image_size, settings)

    @torch.inference_mode()
    def stream(self, image: Any, **overrides: Any) -> Iterator[MaskBatch]:
        """Yield each batch's kept masks (after IoU, stability and crop-edge filtering; before NMS).

        Nothing is accumulated: memory stays bounded by ``points_per_batch``
        however large the grid is.
        """
        settings = MaskGenerationSettings.build(self.settings, **overrides)
        yield from self._batches(self._load(image), settings)

    # -- steps ------------------------------------------------------------------------
    def _load(self, image: Any) -> torch.Tensor:
        images = self.image_processor.prepare_images(image)
        if len(images) != 1:
            raise ProcessingError(
                f"Segment-everything takes one image per call, got {len(images)}; call it once per image "
                "(or use pipeline('mask-generation') with a list)."
            )
        return images[0]

    def _batches(self, pixels: torch.Tensor, settings: MaskGenerationSettings) -> Iterator[MaskBatch]:
        image_size = (int(pixels.shape[-2]), int(pixels.shape[-1]))
        crop_boxes, layers = mask_utils.generate_crop_boxes(image_size, settings.crops_n_layers, settings.crop_overlap_ratio)
        grids = mask_utils.build_layer_point_grids(
            settings.points_per_side, settings.crops_n_layers, settings.crop_n_points_downscale_factor
        )
        for crop_index, (crop_box, layer) in enumerate(zip(crop_boxes, layers)):
            yield from self._crop_batches(pixels, crop_box, crop_index, grids[layer], settings)

    def _crop_batches(
        self,
        pixels: torch.Tensor,
        crop_box: list[int],
        crop_index: int,
        grid: torch.Tensor,
        settings: MaskGenerationSettings,
    ) -> Iterator[MaskBatch]:
        x0, y0, x1, y1 = crop_box
        crop = pixels[:, y0:y1, x0:x1]
        crop_size = (y1 - y0, x1 - x0)
        inputs = self.image_processor(crop, input_data_format="channels_first", return_tensors="pt")
        device, dtype = _device_and_dtype(self.model)
        embeddings = self.model.get_image_embeddings(inputs["pixel_values"].to(device=device, dtype=dtype))
        resized = tuple(int(v) for v in inputs["reshaped_input_sizes"][0])
        padded = (int(inputs["pixel_values"].shape[-2]), int(inputs["pixel_values"].shape[-1]))

        # Points in the crop's pixel frame, then scaled into the resized frame the model sees.
        points = grid * torch.tensor([crop_size[1], crop_size[0]], dtype=torch.float64)
        scale = torch.tensor([resized[1] / crop_size[1], resized[0] / crop_size[0]], dtype=torch.float64)
        model_points = points * scale
        image_box = [0, 0, int(pixels.shape[-1]), int(pixels.shape[-2])]
        for start in range(0, points.shape[0], settings.points_per_batch):  # the last batch may be partial
            batch_points = model_points[start : start + settings.points_per_batch].to(device)
            count = batch_points.shape[0]
            output = self.model(
                image_embeddings=embeddings,
                input_points=batch_points[None, :, None, :],
                input_labels=torch.ones((1, count, 1), dtype=torch.int64, device=device),
                multimask_output=True,
            )
            logits = output.pred_masks[0].flatten(0, 1)  # (count * masks, h, w)
            scores = output.iou_scores[0].flatten(0, 1).float()
            masks_per_point = output.iou_scores.shape[-1]
            prompt_points = points[start : start + count].repeat_interleave(masks_per_point, dim=0)
            yield self._filter(
                logits, scores, prompt_points, crop_box, crop_index, crop_size, resized, padded, image_box, count, settings
            )

    def _filter(
        self,
        logits: torch.Tensor,
        scores: torch.Tensor,
        points: torch.Tensor,
        crop_box: list[int],
        crop_index: int,
        crop_size: tuple[int, int],
        resized: tuple[int, int],
        padded: tuple[int, int],
        image_box: list[int],
        count: int,
        settings: MaskGenerationSettings,
    ) -> MaskBatch:
        """Keep a batch's masks that pass the IoU, stability and crop-edge tests; return them in the image frame."""
        keep = torch.ones_like(scores, dtype=torch.bool)
        if settings.pred_iou_thresh > 0.0:
            keep &= scores > settings.pred_iou_thresh
        index = torch.nonzero(keep).reshape(-1)
        binary, stability = [], []
        for start in range(0, index.numel(), UPSCALE_CHUNK):
            chunk = index[start : start + UPSCALE_CHUNK]
            full = upscale_mask_logits(logits[chunk].float(), padded, resized, crop_size)
            stability.append(mask_utils.stability_scores(full, settings.mask_threshold, settings.stability_score_offset))
            binary.append(full > settings.mask_threshold)
            del full
        height, width = crop_size
        masks = torch.cat(binary) if binary else torch.zeros((0, height, width), dtype=torch.bool, device=logits.device)
        stability_scores = torch.cat(stability) if stability else torch.zeros(0, device=logits.device)
        scores, points = scores[index], points[index.cpu()]
        if settings.stability_score_thresh > 0.0:
            stable = stability_scores >= settings.stability_score_thresh
            masks, scores, stability_scores, points = masks[stable], scores[stable], stability_scores[stable], points[stable.cpu()]
        boxes = mask_utils.masks_to_boxes(masks)
        inside = ~mask_utils.is_box_near_crop_edge(boxes, crop_box, image_box, settings.crop_edge_tolerance)
        masks, scores, stability_scores, points = masks[inside], scores[inside], stability_scores[inside], points[inside.cpu()]
        boxes = boxes[inside]

        x0, y0 = crop_box[0], crop_box[1]
        image_height, image_width = image_box[3], image_box[2]
        if (x0, y0, crop_box[2], crop_box[3]) != (0, 0, image_width, image_height):
            masks = torch.nn.functional.pad(
                masks, (x0, image_width - crop_box[2], y0, image_height - crop_box[3]), value=False
            )
        offset = torch.tensor([x0, y0, x0, y0], dtype=torch.int64, device=boxes.device)
        return MaskBatch(
            masks=masks,
            scores=scores,
            stability_scores=stability_scores,
            boxes=boxes + offset,
            point_coords=points + torch.tensor([x0, y0], dtype=points.dtype),
            crop_box=(x0, y0, crop_box[2], crop_box[3]),
            crop_index=crop_index,
            points_in_batch=count,
        )

    @staticmethod
    def _nms_within_crop(kept: _Kept, settings: MaskGenerationSettings) -> _Kept:
        data = kept.tensors()
        if not kept.pieces:
            return kept
        keep = batched_nms(
            data["boxes"].float(), data["scores"], torch.zeros(len(data["scores"])), settings.box_nms_thresh
        )
        return kept.select(keep)

    @staticmethod
    def _remove_small_regions(kept: _Kept, image_size: tuple[int, int], settings: MaskGenerationSettings) -> _Kept:
        """Fill small holes and drop small islands, then NMS again preferring untouched masks."""
        data = kept.tensors()
        pieces, boxes, unchanged = [], [], []
        for piece, box in zip(kept.pieces, data["boxes"].tolist()):
            mask = _full_mask(piece, box, image_size).numpy()
            mask, filled = mask_utils.remove_small_regions(mask, settings.min_mask_region_area, "holes")
            mask, dropped = mask_utils.remove_small_regions(mask, settings.min_mask_region_area, "islands")
            mask_tensor = torch.from_numpy(np.ascontiguousarray(mask))
            new_box = mask_utils.masks_to_boxes(mask_tensor)
            x0, y0, x1, y1 = new_box.tolist()
            pieces.append(mask_tensor[y0 : y1 + 1, x0 : x1 + 1].clone())
            boxes.append(new_box)
            unchanged.append(0.0 if (filled or dropped) else 1.0)
        new_boxes = torch.stack(boxes)
        keep = batched_nms(
            new_boxes.float(), torch.tensor(unchanged), torch.zeros(len(unchanged)), settings.box_nms_thresh
        )
        result = _Kept(pieces=pieces, scores=[data["scores"]], stability=[data["stability"]], boxes=[new_boxes])
        result.points, result.crop_boxes = [data["points"]], [data["crop_boxes"]]
        return result.select(keep)

    @staticmethod
    def _finish(kept: _Kept, image_size: tuple[int, int], settings: MaskGenerationSettings) -> GeneratedMasks:
        data = kept.tensors()
        boxes = data["boxes"].tolist()
        areas = torch.tensor([int(piece.sum()) for piece in kept.pieces], dtype=torch.int64)
        result = GeneratedMasks(
            scores=data["scores"],
            stability_scores=data["stability"],
            boxes=data["boxes"],
            areas=areas,
            point_coords=data["points"],
            crop_boxes=data["crop_boxes"],
            image_size=image_size,
        )
        if settings.output_mode == "rle":
            result.rles = [
                mask_utils.mask_to_rle(_full_mask(piece, box, image_size)) for piece, box in zip(kept.pieces, boxes)
            ]
        else:
            masks = torch.zeros((len(kept.pieces), *image_size), dtype=torch.bool)
            for index, (piece, box) in enumerate(zip(kept.pieces, boxes)):
                masks[index, box[1] : box[1] + piece.shape[0], box[0] : box[0] + piece.shape[1]] = piece
            result.masks = masks
        return result


def _device_and_dtype(model: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    parameter = next(model.parameters())
    return parameter.device, parameter.dtype


def _image_processor_for(model: torch.nn.Module, processor: Any) -> SamImageProcessor:
    """Return the image processor to use: the given one (or the one inside a SamProcessor), else one sized for the model."""
    if processor is None:
        size = model.config.vision_config.image_size
        mask_size = 4 * model.config.prompt_encoder_config.image_embedding_size
        return SamImageProcessor(
            size={"longest_edge": size},
            pad_size={"height": size, "width": size},
            mask_size={"longest_edge": mask_size},
            mask_pad_size={"height": mask_size, "width": mask_size},
        )
    image_processor = getattr(processor, "image_processor", processor)
    if not hasattr(image_processor, "prepare_images") or not hasattr(image_processor, "target_size"):
        raise ProcessingError(
            f"processor must be a SamProcessor or SamImageProcessor, got {type(processor).__name__}. "
            "Load one with AutoProcessor.from_pretrained(<checkpoint>) or leave processor=None."
        )
    return image_processor


__all__ = ["GeneratedMasks", "MaskBatch", "MaskGenerationSettings", "SamAutomaticMaskGenerator"]
