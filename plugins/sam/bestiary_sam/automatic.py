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

Memory is bounded by ``points_per_batch``, not by the grid: a batch's masks
are upscaled a few at a time; after each batch, NMS over the boxes of every
mask seen so far decides which masks to store (cut to their bounding box),
so stored masks stay about as many as the result has. The outcome is
exactly that of the published algorithm (one NMS over all of a crop's
masks): a mask dropped early that NMS brings back later is recomputed by
re-running its batch. The last, partial batch is processed like the others. :meth:`SamAutomaticMaskGenerator.stream`
yields each batch's kept masks as soon as they are computed.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from bestiary.errors import ProcessingError
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torchvision.ops import batched_nms

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
    def build(cls, base: MaskGenerationSettings | None = None, **values: Any) -> MaskGenerationSettings:
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
    """Kept masks, each stored cut to its bounding box on the CPU, with their per-mask values."""

    pieces: list[torch.Tensor]
    scores: torch.Tensor
    stability: torch.Tensor
    boxes: torch.Tensor
    points: torch.Tensor
    crop_boxes: torch.Tensor

    @classmethod
    def empty(cls) -> _Kept:
        return cls(
            [],
            torch.zeros(0),
            torch.zeros(0),
            torch.zeros((0, 4), dtype=torch.int64),
            torch.zeros((0, 2), dtype=torch.float64),
            torch.zeros((0, 4), dtype=torch.int64),
        )

    def __len__(self) -> int:
        return len(self.pieces)

    def select(self, keep: torch.Tensor) -> _Kept:
        return _Kept(
            [self.pieces[i] for i in keep.tolist()],
            self.scores[keep],
            self.stability[keep],
            self.boxes[keep],
            self.points[keep],
            self.crop_boxes[keep],
        )

    def extend(self, other: _Kept) -> _Kept:
        return _Kept(
            self.pieces + other.pieces,
            torch.cat([self.scores, other.scores]),
            torch.cat([self.stability, other.stability]),
            torch.cat([self.boxes, other.boxes]),
            torch.cat([self.points, other.points]),
            torch.cat([self.crop_boxes, other.crop_boxes]),
        )


def _piece(mask: torch.Tensor, box: list[int]) -> torch.Tensor:
    """Cut a full-image mask to its (inclusive) box, on the CPU."""
    x0, y0, x1, y1 = box
    return mask[y0 : y1 + 1, x0 : x1 + 1].cpu().clone()


def _full_mask(piece: torch.Tensor, box: list[int], image_size: tuple[int, int]) -> torch.Tensor:
    mask = torch.zeros(image_size, dtype=torch.bool)
    x0, y0 = box[0], box[1]
    mask[y0 : y0 + piece.shape[0], x0 : x0 + piece.shape[1]] = piece
    return mask


def _nms(boxes: torch.Tensor, scores: torch.Tensor, threshold: float) -> torch.Tensor:
    """Indices kept by torchvision's batched NMS (one class), best score first."""
    return batched_nms(boxes.float(), scores.float(), torch.zeros(len(scores), dtype=torch.int64), threshold)


@dataclass
class _Crop:
    """One crop, encoded once: what every point batch of it needs."""

    box: list[int]
    index: int
    size: tuple[int, int]  # (height, width) of the crop
    resized: tuple[int, int]  # (height, width) the model sees, before padding
    padded: tuple[int, int]
    embeddings: torch.Tensor
    points: torch.Tensor  # (n, 2) float64 grid points in the crop's pixel frame
    model_points: torch.Tensor  # the same points in the resized frame
    image_box: list[int]


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
        kept = _Kept.empty()
        crops = list(self._crops(pixels, settings))
        for crop_box, crop_index, grid in crops:
            crop = self._encode_crop(pixels, crop_box, crop_index, grid)
            kept = kept.extend(self._crop_survivors(crop, settings))
            del crop
        if len(crops) > 1 and len(kept):
            kept = kept.select(
                _nms(kept.boxes, 1.0 / mask_utils.box_area(kept.crop_boxes).float(), settings.crops_nms_thresh)
            )
        if settings.min_mask_region_area > 0 and len(kept):
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

    def _crops(
        self, pixels: torch.Tensor, settings: MaskGenerationSettings
    ) -> Iterator[tuple[list[int], int, torch.Tensor]]:
        image_size = (int(pixels.shape[-2]), int(pixels.shape[-1]))
        crop_boxes, layers = mask_utils.generate_crop_boxes(
            image_size, settings.crops_n_layers, settings.crop_overlap_ratio
        )
        grids = mask_utils.build_layer_point_grids(
            settings.points_per_side, settings.crops_n_layers, settings.crop_n_points_downscale_factor
        )
        for crop_index, (crop_box, layer) in enumerate(zip(crop_boxes, layers)):
            yield crop_box, crop_index, grids[layer]

    def _batches(self, pixels: torch.Tensor, settings: MaskGenerationSettings) -> Iterator[MaskBatch]:
        for crop_box, crop_index, grid in self._crops(pixels, settings):
            crop = self._encode_crop(pixels, crop_box, crop_index, grid)
            for start in range(0, crop.points.shape[0], settings.points_per_batch):  # the last batch may be partial
                yield self._run_batch(crop, start, settings)

    def _encode_crop(self, pixels: torch.Tensor, crop_box: list[int], crop_index: int, grid: torch.Tensor) -> _Crop:
        """Encode one crop and place its grid points in the crop's and the model's frames."""
        x0, y0, x1, y1 = crop_box
        size = (y1 - y0, x1 - x0)
        inputs = self.image_processor(pixels[:, y0:y1, x0:x1], input_data_format="channels_first", return_tensors="pt")
        device, dtype = _device_and_dtype(self.model)
        embeddings = self.model.get_image_embeddings(inputs["pixel_values"].to(device=device, dtype=dtype))
        resized = tuple(int(v) for v in inputs["reshaped_input_sizes"][0])
        points = grid * torch.tensor([size[1], size[0]], dtype=torch.float64)
        scale = torch.tensor([resized[1] / size[1], resized[0] / size[0]], dtype=torch.float64)
        return _Crop(
            box=list(crop_box),
            index=crop_index,
            size=size,
            resized=resized,
            padded=tuple(int(v) for v in inputs["pixel_values"].shape[-2:]),
            embeddings=embeddings,
            points=points,
            model_points=points * scale,
            image_box=[0, 0, int(pixels.shape[-1]), int(pixels.shape[-2])],
        )

    def _run_batch(self, crop: _Crop, start: int, settings: MaskGenerationSettings) -> MaskBatch:
        """Prompt the crop with the points ``start : start + points_per_batch``; return the masks that pass the filters."""
        device = crop.embeddings.device
        batch_points = crop.model_points[start : start + settings.points_per_batch].to(device)
        count = batch_points.shape[0]
        output = self.model(
            image_embeddings=crop.embeddings,
            input_points=batch_points[None, :, None, :],
            input_labels=torch.ones((1, count, 1), dtype=torch.int64, device=device),
            multimask_output=True,
        )
        logits = output.pred_masks[0].flatten(0, 1)  # (count * masks per point, h, w)
        scores = output.iou_scores[0].flatten(0, 1).float()
        prompt_points = crop.points[start : start + count].repeat_interleave(output.iou_scores.shape[-1], dim=0)
        return self._filter(logits, scores, prompt_points, crop, count, settings)

    def _crop_survivors(self, crop: _Crop, settings: MaskGenerationSettings) -> _Kept:
        """Run every point batch of a crop and return the masks that survive NMS within the crop.

        Memory stays bounded: after each batch, NMS runs over the boxes of
        every mask seen so far and only the masks it currently keeps are
        stored. A mask dropped early can come back when the mask that
        suppressed it is suppressed in turn; its batch is then run again
        (same points, so the same result), which keeps the outcome exactly
        that of one NMS over all masks.
        """
        boxes, scores, stability, points, origins = [], [], [], [], []
        pieces: dict[int, torch.Tensor] = {}
        starts = range(0, crop.points.shape[0], settings.points_per_batch)
        for start in starts:
            batch = self._run_batch(crop, start, settings)
            first = len(origins)
            origins.extend((start, offset) for offset in range(len(batch)))
            boxes.append(batch.boxes.cpu())
            scores.append(batch.scores.cpu())
            stability.append(batch.stability_scores.cpu())
            points.append(batch.point_coords)
            alive = set(_nms(torch.cat(boxes), torch.cat(scores), settings.box_nms_thresh).tolist())
            for index in [index for index in pieces if index not in alive]:
                del pieces[index]
            for index in range(first, len(origins)):  # store only the new masks NMS keeps for now
                if index in alive:
                    pieces[index] = _piece(batch.masks[index - first], boxes[-1][index - first].tolist())
            del batch
        if not origins:
            return _Kept.empty()
        all_boxes, all_scores = torch.cat(boxes), torch.cat(scores)
        keep = _nms(all_boxes, all_scores, settings.box_nms_thresh)
        missing = [index for index in keep.tolist() if index not in pieces]
        for start in sorted({origins[index][0] for index in missing}):
            logger.debug("Re-running the point batch at %d of crop %d for masks NMS brought back.", start, crop.index)
            batch = self._run_batch(crop, start, settings)
            for index in missing:
                if origins[index][0] == start:
                    pieces[index] = _piece(batch.masks[origins[index][1]], all_boxes[index].tolist())
        count = len(all_scores)
        crop_boxes = torch.tensor([crop.box] * count, dtype=torch.int64).reshape(count, 4)
        ordered = [pieces[index] for index in keep.tolist()]
        return _Kept(
            ordered,
            all_scores[keep],
            torch.cat(stability)[keep],
            all_boxes[keep],
            torch.cat(points)[keep],
            crop_boxes[keep],
        )

    def _filter(
        self,
        logits: torch.Tensor,
        scores: torch.Tensor,
        points: torch.Tensor,
        crop: _Crop,
        count: int,
        settings: MaskGenerationSettings,
    ) -> MaskBatch:
        """Keep a batch's masks that pass the IoU, stability and crop-edge tests; return them in the image frame.

        Only masks whose predicted IoU passes are upscaled, ``UPSCALE_CHUNK``
        at a time, so the full-resolution float logits of a whole batch never
        exist at once.
        """
        candidates = torch.arange(scores.shape[0], device=scores.device)
        if settings.pred_iou_thresh > 0.0:
            candidates = candidates[scores > settings.pred_iou_thresh]
        kept_index, kept_masks, kept_boxes, kept_stability = [], [], [], []
        for start in range(0, candidates.numel(), UPSCALE_CHUNK):
            chunk = candidates[start : start + UPSCALE_CHUNK]
            full = upscale_mask_logits(logits[chunk].float(), crop.padded, crop.resized, crop.size)
            stability = mask_utils.stability_scores(full, settings.mask_threshold, settings.stability_score_offset)
            if settings.stability_score_thresh > 0.0:
                stable = stability >= settings.stability_score_thresh
                chunk, full, stability = chunk[stable], full[stable], stability[stable]
            masks = full > settings.mask_threshold
            del full
            boxes = mask_utils.masks_to_boxes(masks)
            inside = ~mask_utils.is_box_near_crop_edge(boxes, crop.box, crop.image_box, settings.crop_edge_tolerance)
            kept_index.append(chunk[inside])
            kept_masks.append(masks[inside])
            kept_boxes.append(boxes[inside])
            kept_stability.append(stability[inside])
        if kept_index:
            index, masks = torch.cat(kept_index), torch.cat(kept_masks)
            boxes, stability_scores = torch.cat(kept_boxes), torch.cat(kept_stability)
        else:
            index = candidates[:0]
            masks = torch.zeros((0, *crop.size), dtype=torch.bool, device=logits.device)
            boxes = torch.zeros((0, 4), dtype=torch.int64, device=logits.device)
            stability_scores = torch.zeros(0, device=logits.device)
        scores, points = scores[index], points[index.cpu()]

        x0, y0, x1, y1 = crop.box
        image_width, image_height = crop.image_box[2], crop.image_box[3]
        if (x0, y0, x1, y1) != (0, 0, image_width, image_height):
            masks = torch.nn.functional.pad(masks, (x0, image_width - x1, y0, image_height - y1), value=False)
        return MaskBatch(
            masks=masks,
            scores=scores,
            stability_scores=stability_scores,
            boxes=boxes + torch.tensor([x0, y0, x0, y0], dtype=torch.int64, device=boxes.device),
            point_coords=points + torch.tensor([x0, y0], dtype=points.dtype),
            crop_box=(x0, y0, x1, y1),
            crop_index=crop.index,
            points_in_batch=count,
        )

    @staticmethod
    def _remove_small_regions(kept: _Kept, image_size: tuple[int, int], settings: MaskGenerationSettings) -> _Kept:
        """Fill small holes and drop small islands, then NMS again preferring untouched masks."""
        pieces, boxes, unchanged = [], [], []
        for piece, box in zip(kept.pieces, kept.boxes.tolist()):
            mask = _full_mask(piece, box, image_size).numpy()
            mask, filled = mask_utils.remove_small_regions(mask, settings.min_mask_region_area, "holes")
            mask, dropped = mask_utils.remove_small_regions(mask, settings.min_mask_region_area, "islands")
            if filled or dropped:
                mask_tensor = torch.from_numpy(np.ascontiguousarray(mask))
                box = mask_utils.masks_to_boxes(mask_tensor).tolist()
                piece = _piece(mask_tensor, box)
            pieces.append(piece)
            boxes.append(box)
            unchanged.append(0.0 if (filled or dropped) else 1.0)
        new_boxes = torch.tensor(boxes, dtype=torch.int64).reshape(-1, 4)
        cleaned = _Kept(pieces, kept.scores, kept.stability, new_boxes, kept.points, kept.crop_boxes)
        return cleaned.select(_nms(new_boxes, torch.tensor(unchanged), settings.box_nms_thresh))

    @staticmethod
    def _finish(kept: _Kept, image_size: tuple[int, int], settings: MaskGenerationSettings) -> GeneratedMasks:
        boxes = kept.boxes.tolist()
        result = GeneratedMasks(
            scores=kept.scores,
            stability_scores=kept.stability,
            boxes=kept.boxes,
            areas=torch.tensor([int(piece.sum()) for piece in kept.pieces], dtype=torch.int64),
            point_coords=kept.points,
            crop_boxes=kept.crop_boxes,
            image_size=image_size,
        )
        if settings.output_mode == "rle":
            result.rles = [
                mask_utils.mask_to_rle(_full_mask(piece, box, image_size)) for piece, box in zip(kept.pieces, boxes)
            ]
        else:
            masks = torch.zeros((len(kept), *image_size), dtype=torch.bool)
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
