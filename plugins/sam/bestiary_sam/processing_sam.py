"""``SamProcessor``: images and prompts in, model inputs out; masks back to image size.

Prompts are given in original-image pixel coordinates, as nested lists (or
arrays / tensors):

- ``input_points``: per image, a list of points ``[[x, y], ...]`` (one
  prompt made of several points), or a list of prompts each a list of points
  ``[[[x, y], ...], ...]``;
- ``input_labels``: the same nesting without the coordinates (1 foreground,
  0 background);
- ``input_boxes``: per image, a list of boxes ``[[x1, y1, x2, y2], ...]``.

Coordinates are scaled into the resized frame the model sees. Images may
carry different numbers of points: shorter ones are padded with points
labelled ``point_pad_value`` (-10), which the prompt encoder embeds as zero
tokens (as in transformers; unlike transformers, any number of missing
points and prompts is padded).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from bestiary.errors import ProcessingError
from bestiary.processing.base import PROCESSOR_CONFIG_NAME, atomic_write_text
from bestiary.processing.batch_feature import BatchFeature

from bestiary_sam.image_processing_sam import SamImageProcessor

logger = logging.getLogger(__name__)

POINT_PAD_VALUE = -10


class SamProcessor:
    """Wraps a :class:`SamImageProcessor` and maps point and box prompts into the model's frame."""

    transformers_class = "SamProcessor"
    model_input_names = ("pixel_values", "original_sizes", "reshaped_input_sizes")

    def __init__(
        self, image_processor: SamImageProcessor | None = None, point_pad_value: int = POINT_PAD_VALUE
    ) -> None:
        self.image_processor = image_processor if image_processor is not None else SamImageProcessor()
        self.point_pad_value = point_pad_value

    @property
    def target_size(self) -> int:
        """The longest side images are resized to."""
        return self.image_processor.target_size

    # -- loading and saving ----------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path_or_repo: str | os.PathLike, **kwargs: Any) -> SamProcessor:
        """Load the image processor settings from ``processor_config.json`` or ``preprocessor_config.json``."""
        point_pad_value = kwargs.pop("point_pad_value", POINT_PAD_VALUE)
        return cls(SamImageProcessor.from_pretrained(path_or_repo, **kwargs), point_pad_value=point_pad_value)

    def to_dict(self) -> dict[str, Any]:
        """Return the content of ``processor_config.json`` as transformers writes it."""
        return {"image_processor": self.image_processor.to_dict(), "processor_class": self.transformers_class}

    def save_pretrained(self, save_directory: str | os.PathLike) -> list[Path]:
        """Write ``processor_config.json`` (the image processor settings nested inside) atomically."""
        directory = Path(save_directory)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / PROCESSOR_CONFIG_NAME
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
        return [path]

    def __repr__(self) -> str:
        return f"SamProcessor(image_processor={self.image_processor!r})"

    # -- calling ----------------------------------------------------------------
    def __call__(
        self,
        images: Any = None,
        segmentation_maps: Any = None,
        input_points: Any = None,
        input_labels: Any = None,
        input_boxes: Any = None,
        *,
        return_tensors: str | None = None,
        point_pad_value: int | None = None,
        **image_kwargs: Any,
    ) -> BatchFeature:
        """Prepare images and prompts; see the module docstring for the prompt formats.

        Returns ``pixel_values``, ``original_sizes``, ``reshaped_input_sizes``
        and, when given, ``input_points`` (batch, prompts, points, 2),
        ``input_labels`` (batch, prompts, points) and ``input_boxes``
        (batch, boxes, 4). Other keyword arguments override image processor
        settings for this call.
        """
        if images is None:
            raise ProcessingError("SamProcessor needs images=; prompts are placed relative to each image's size.")
        pad_value = self.point_pad_value if point_pad_value is None else point_pad_value
        image_processor = self.image_processor.with_overrides(**image_kwargs) if image_kwargs else self.image_processor
        batch = image_processor(images, segmentation_maps=segmentation_maps, return_tensors=return_tensors)
        original_sizes = [tuple(int(v) for v in size) for size in _to_list(batch["original_sizes"])]

        points = _prompt_arrays(input_points, "input_points", min_depth=2)
        labels = _prompt_arrays(input_labels, "input_labels", min_depth=1)
        boxes = _prompt_arrays(input_boxes, "input_boxes", min_depth=2)
        if points is not None:
            points = [
                self._to_model_frame(image_processor, array, size)
                for array, size in zip(points, _sizes_for(original_sizes, len(points), "input_points"))
            ]
            if len({array.shape for array in points}) > 1:
                points, labels = _pad_points(points, labels, pad_value)
            batch["input_points"] = _stack(points, "input_points", prompt_ndim=4, return_tensors=return_tensors)
        if labels is not None:
            batch["input_labels"] = _stack(labels, "input_labels", prompt_ndim=3, return_tensors=return_tensors)
        if boxes is not None:
            boxes = [
                self._to_model_frame(image_processor, array.astype(np.float32), size, is_box=True)
                for array, size in zip(boxes, _sizes_for(original_sizes, len(boxes), "input_boxes"))
            ]
            if len({array.shape for array in boxes}) > 1:
                counts = [array.shape[0] for array in boxes]
                raise ProcessingError(
                    f"input_boxes has a different number of boxes per image ({counts}); the model takes the same "
                    "number for every image of a batch. Process those images in separate calls."
                )
            batch["input_boxes"] = _stack(boxes, "input_boxes", prompt_ndim=3, return_tensors=return_tensors)
        return batch

    @staticmethod
    def _to_model_frame(
        image_processor: SamImageProcessor, coords: np.ndarray, original_size: tuple[int, int], is_box: bool = False
    ) -> np.ndarray:
        """Scale (..., 2) x, y coordinates (or (..., 4) boxes) from the original image to the resized one."""
        new_height, new_width = image_processor.get_output_size(
            original_size, {"longest_edge": image_processor.target_size}
        )
        old_height, old_width = original_size
        coords = coords.astype(float)
        shape = coords.shape
        if is_box:
            if shape[-1] != 4:
                raise ProcessingError(f"Each box in input_boxes must be [x1, y1, x2, y2]; got shape {shape}.")
            coords = coords.reshape(-1, 2, 2)
        elif shape[-1] != 2:
            raise ProcessingError(f"Each point in input_points must be [x, y]; got arrays of shape {shape}.")
        coords[..., 0] = coords[..., 0] * (new_width / old_width)
        coords[..., 1] = coords[..., 1] * (new_height / old_height)
        return coords.reshape(-1, 4) if is_box else coords

    def post_process_masks(self, *args: Any, **kwargs: Any) -> list[torch.Tensor]:
        """Upscale ``pred_masks`` to the original image sizes; see :meth:`SamImageProcessor.post_process_masks`."""
        return self.image_processor.post_process_masks(*args, **kwargs)


def _to_list(value: Any) -> list:
    if isinstance(value, (torch.Tensor, np.ndarray)):
        return value.tolist()
    return list(value)


def _prompt_arrays(value: Any, name: str, min_depth: int) -> list[np.ndarray] | None:
    """Return one numpy array per image from nested lists, an array or a tensor (None stays None)."""
    if value is None:
        return None
    if isinstance(value, (torch.Tensor, np.ndarray)):
        value = value.tolist()
    if not isinstance(value, (list, tuple)) or not value:
        raise ProcessingError(
            f"{name} must be a non-empty nested list with one entry per image, got {type(value).__name__}."
        )
    arrays = []
    for index, item in enumerate(value):
        try:
            array = np.array(item)
        except ValueError:
            raise ProcessingError(
                f"{name}[{index}] is ragged; inside one image every prompt needs the same number of points. "
                "Pad with points labelled -10."
            ) from None
        if array.ndim < min_depth or array.dtype == object:
            raise ProcessingError(
                f"{name}[{index}] must be a list of lists (one list per image, e.g. [[[x, y]]] for one point on one "
                f"image); got {item!r}."
            )
        arrays.append(array)
    return arrays


def _sizes_for(original_sizes: list[tuple[int, int]], count: int, name: str) -> list[tuple[int, int]]:
    if count == len(original_sizes):
        return original_sizes
    if len(original_sizes) == 1:  # one image, prompts given as a batch of the same image
        return original_sizes * count
    raise ProcessingError(f"{name} has entries for {count} images but {len(original_sizes)} images were given.")


def _pad_points(
    points: list[np.ndarray], labels: list[np.ndarray] | None, pad_value: int
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Pad every image's points (and labels) with ``pad_value`` to the largest prompt and point counts."""
    if labels is None:
        raise ProcessingError(
            "input_points has a different number of points per image, so the shorter ones are padded; pass "
            "input_labels too, so that padding points can be labelled -10 and ignored."
        )
    if len({array.ndim for array in points}) > 1:
        raise ProcessingError(
            "input_points mixes nesting depths between images; use the same structure for each image."
        )
    target = tuple(max(array.shape[axis] for array in points) for axis in range(points[0].ndim - 1))
    padded_points, padded_labels = [], []
    for index, (array, label) in enumerate(zip(points, labels)):
        label = np.asarray(label)
        if label.shape != array.shape[:-1]:
            raise ProcessingError(
                f"input_labels[{index}] has shape {label.shape} but input_points[{index}] has {array.shape[:-1]} "
                "points; give one label per point."
            )
        widths = [(0, want - have) for want, have in zip(target, array.shape[:-1])]
        padded_points.append(np.pad(array, widths + [(0, 0)], constant_values=pad_value))
        padded_labels.append(np.pad(label, widths, constant_values=pad_value))
    return padded_points, padded_labels


def _stack(arrays: list[np.ndarray], name: str, prompt_ndim: int, return_tensors: str | None) -> Any:
    try:
        stacked = np.array(arrays)
    except ValueError:
        shapes = [array.shape for array in arrays]
        raise ProcessingError(f"Cannot batch {name}: per-image shapes differ ({shapes}).") from None
    if return_tensors != "pt":
        return stacked
    tensor = torch.from_numpy(stacked)
    # One prompt per image by default: (batch, points, 2) -> (batch, 1, points, 2).
    return tensor.unsqueeze(1) if tensor.dim() != prompt_ndim else tensor


__all__ = ["SamProcessor"]
