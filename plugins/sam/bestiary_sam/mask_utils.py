"""Mask arithmetic for segment-everything: point grids, crops, scores, boxes, run-length codes, regions.

Pure functions on tensors and arrays, no model: what
:mod:`bestiary_sam.automatic` composes into the published automatic mask
generation algorithm (Kirillov et al., "Segment Anything", 2023).

Conventions: boxes are XYXY with inclusive pixel indices (a one-pixel mask
at (x, y) has the box [x, y, x, y]); crop boxes are XYXY with exclusive ends
([x0, y0, x1, y1] covers columns x0..x1-1); run-length codes are COCO's
uncompressed form, counted in column-major order starting with a run of
zeros: ``{"size": [height, width], "counts": [...]}``.
"""

from __future__ import annotations

import math
from itertools import pairwise, product

import numpy as np
import torch


# -- prompts and crops ------------------------------------------------------------
def build_point_grid(points_per_side: int) -> torch.Tensor:
    """Return (n * n, 2) float64 (x, y) points at the centres of an n x n grid over [0, 1]^2, x varying fastest."""
    n = int(points_per_side)
    centres = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    y, x = torch.meshgrid(centres, centres, indexing="ij")
    return torch.stack([x.reshape(-1), y.reshape(-1)], dim=-1)


def build_layer_point_grids(points_per_side: int, n_layers: int, downscale_factor: int) -> list[torch.Tensor]:
    """Return one grid per crop layer; layer i has ``int(points_per_side / downscale_factor**i)`` points per side."""
    return [build_point_grid(int(points_per_side / (downscale_factor**layer))) for layer in range(n_layers + 1)]


def generate_crop_boxes(
    image_size: tuple[int, int], n_layers: int, overlap_ratio: float
) -> tuple[list[list[int]], list[int]]:
    """Return the crop boxes (XYXY, exclusive ends) and the layer of each.

    Layer 0 is the whole image; layer i (1-based) tiles the image with
    ``2**i`` x ``2**i`` crops that overlap by ``overlap_ratio`` of the short
    side, scaled down by ``2 / 2**i``.
    """
    height, width = image_size
    boxes, layers = [[0, 0, width, height]], [0]
    short_side = min(height, width)
    for layer in range(1, n_layers + 1):
        per_side = 2**layer
        overlap = int(overlap_ratio * short_side * (2 / per_side))
        crop_w = math.ceil((overlap * (per_side - 1) + width) / per_side)
        crop_h = math.ceil((overlap * (per_side - 1) + height) / per_side)
        lefts = [int((crop_w - overlap) * i) for i in range(per_side)]
        tops = [int((crop_h - overlap) * i) for i in range(per_side)]
        for left, top in product(lefts, tops):
            boxes.append([left, top, min(left + crop_w, width), min(top + crop_h, height)])
            layers.append(layer)
    return boxes, layers


# -- scores and boxes ----------------------------------------------------------------
def stability_scores(logits: torch.Tensor, threshold: float, offset: float) -> torch.Tensor:
    """Return, per (..., H, W) mask, the IoU of the masks binarized at ``threshold + offset`` and ``- offset``.

    The first mask is always inside the second, so the IoU is the ratio of their areas.
    """
    return _area(logits > threshold + offset).float() / _area(logits > threshold - offset).float()


def _area(masks: torch.Tensor) -> torch.Tensor:
    # Row sums fit in int16 for any width below 32768 and are several times faster than one int64 sum.
    row_dtype = torch.int16 if masks.shape[-1] < 2**15 else torch.int32
    return masks.view(torch.uint8).sum(dim=-1, dtype=row_dtype).sum(dim=-1, dtype=torch.int64)


def masks_to_boxes(masks: torch.Tensor) -> torch.Tensor:
    """Return (..., 4) int64 XYXY boxes (inclusive) around (..., H, W) boolean masks; [0, 0, 0, 0] when empty."""
    height, width = masks.shape[-2:]
    as_bytes = masks.to(torch.bool).view(torch.uint8)  # amax over bytes is much faster than any() over bools
    rows = as_bytes.amax(dim=-1).bool()
    cols = as_bytes.amax(dim=-2).bool()
    row_index = torch.arange(height, device=masks.device)
    col_index = torch.arange(width, device=masks.device)
    top = torch.where(rows, row_index, height).amin(dim=-1)
    bottom = torch.where(rows, row_index, -1).amax(dim=-1)
    left = torch.where(cols, col_index, width).amin(dim=-1)
    right = torch.where(cols, col_index, -1).amax(dim=-1)
    boxes = torch.stack([left, top, right, bottom], dim=-1)
    empty = ~rows.any(dim=-1)
    return torch.where(empty[..., None], torch.zeros_like(boxes), boxes).to(torch.int64)


def is_box_near_crop_edge(
    boxes: torch.Tensor, crop_box: list[int], image_box: list[int], tolerance: float = 20.0
) -> torch.Tensor:
    """True for boxes (in crop coordinates) that touch a crop edge that is not also an image edge.

    Such masks are likely cut by the crop; the tolerance is in pixels.
    """
    crop = torch.as_tensor(crop_box, dtype=torch.float32, device=boxes.device)
    image = torch.as_tensor(image_box, dtype=torch.float32, device=boxes.device)
    shifted = boxes.to(torch.float32) + torch.as_tensor(
        [crop_box[0], crop_box[1], crop_box[0], crop_box[1]], dtype=torch.float32, device=boxes.device
    )
    near_crop = torch.isclose(shifted, crop[None, :], atol=tolerance, rtol=0)
    near_image = torch.isclose(shifted, image[None, :], atol=tolerance, rtol=0)
    return (near_crop & ~near_image).any(dim=1)


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    """Return (x1 - x0) * (y1 - y0) of (N, 4) XYXY boxes."""
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


# -- run-length codes -------------------------------------------------------------
def mask_to_rle(mask: torch.Tensor) -> dict[str, list[int]]:
    """Encode one (H, W) boolean mask as an uncompressed COCO run-length code."""
    height, width = mask.shape
    flat = mask.detach().t().reshape(-1).to(torch.bool).cpu()
    changes = (torch.nonzero(flat[1:] != flat[:-1]).reshape(-1) + 1).tolist()
    edges = [0, *changes, height * width]
    counts = [end - start for start, end in pairwise(edges)]
    if flat.numel() and bool(flat[0]):
        counts = [0, *counts]
    return {"size": [int(height), int(width)], "counts": counts}


def rle_to_mask(rle: dict[str, list[int]]) -> torch.Tensor:
    """Decode an uncompressed COCO run-length code into an (H, W) boolean mask."""
    height, width = rle["size"]
    counts = torch.as_tensor(rle["counts"], dtype=torch.int64)
    values = torch.arange(len(counts)) % 2 == 1
    flat = torch.repeat_interleave(values, counts)
    if flat.numel() != height * width:
        raise ValueError(f"The run-length counts add up to {flat.numel()}, not {height} * {width}.")
    return flat.reshape(width, height).t().contiguous()


def area_from_rle(rle: dict[str, list[int]]) -> int:
    """Return the number of True pixels of a run-length code."""
    return int(sum(rle["counts"][1::2]))


# -- regions ---------------------------------------------------------------------
_EIGHT_NEIGHBOURS = np.ones((3, 3), dtype=bool)


def remove_small_regions(mask: np.ndarray, area_threshold: int, mode: str) -> tuple[np.ndarray, bool]:
    """Fill small holes (``mode="holes"``) or drop small islands (``mode="islands"``) of a boolean mask.

    Regions are 8-connected; "small" means fewer than ``area_threshold``
    pixels. When every island is small, the largest one is kept. Returns the
    mask and whether it changed.
    """
    from scipy import ndimage

    if mode not in ("holes", "islands"):
        raise ValueError(f"mode must be 'holes' or 'islands', got {mode!r}")
    fill_holes = mode == "holes"
    working = ~mask if fill_holes else mask
    labels, count = ndimage.label(working, structure=_EIGHT_NEIGHBOURS)
    sizes = np.bincount(labels.reshape(-1), minlength=count + 1)[1:]
    small = [index + 1 for index, size in enumerate(sizes) if size < area_threshold]
    if not small:
        return mask, False
    if fill_holes:
        return mask | np.isin(labels, small), True
    keep = [index for index in range(1, count + 1) if index not in set(small)]
    if not keep:
        keep = [int(np.argmax(sizes)) + 1]
    return np.isin(labels, keep), True


__all__ = [
    "area_from_rle",
    "box_area",
    "build_layer_point_grids",
    "build_point_grid",
    "generate_crop_boxes",
    "is_box_near_crop_edge",
    "mask_to_rle",
    "masks_to_boxes",
    "remove_small_regions",
    "rle_to_mask",
    "stability_scores",
]
