"""``Qwen2VLImageProcessor``: images at (nearly) their own resolution, cut into flat patches.

Each image is resized to the nearest size whose sides are multiples of
``patch_size * merge_size`` and whose area lies within ``min_pixels`` /
``max_pixels`` (:func:`smart_resize`), rescaled and normalized, then cut into
``temporal_patch_size x patch_size x patch_size`` patches (a still image is
repeated over the temporal axis). Patches are ordered so that every
``merge_size x merge_size`` block of neighbours is contiguous, which is what
the model's patch merger expects. The output is one ``pixel_values`` tensor
[all patches, channels * temporal_patch_size * patch_size**2] for the whole
batch, with ``image_grid_thw`` [images, 3] giving each image's (frames,
rows, columns) of patches. The arithmetic follows transformers' torchvision
processor, so the outputs match it.
"""

from __future__ import annotations

import logging
import math
from typing import Any, ClassVar

import torch
from pydantic import model_validator

from bestiary.errors import ProcessingError
from bestiary.processing.batch_feature import BatchFeature
from bestiary.processing.image_processing import ImageProcessor, resize_image
from bestiary.processing.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, Resampling

logger = logging.getLogger(__name__)

_MIN_MAX = frozenset({"shortest_edge", "longest_edge"})
MAX_ASPECT_RATIO = 200
# Settings of the base ImageProcessor that Qwen2-VL does not use; written only when changed.
_UNUSED_BASE_SETTINGS = ("default_to_square", "do_center_crop", "crop_size", "do_pad", "pad_size", "pad_to_multiple_of")


def smart_resize(
    height: int, width: int, factor: int = 28, min_pixels: int = 56 * 56, max_pixels: int = 14 * 14 * 4 * 1280
) -> tuple[int, int]:
    """Return the (height, width) closest to the given one with sides divisible by ``factor`` and area in range.

    The aspect ratio is kept as closely as rounding allows; an image more than
    200 times longer than wide (or the reverse) is refused.
    """
    if min(height, width) <= 0:
        raise ProcessingError(f"Cannot resize an image of {height}x{width} pixels.")
    if max(height, width) / min(height, width) > MAX_ASPECT_RATIO:
        raise ProcessingError(
            f"An image of {height}x{width} pixels has an aspect ratio above {MAX_ASPECT_RATIO}; crop or pad it first."
        )
    new_height = round(height / factor) * factor
    new_width = round(width / factor) * factor
    if new_height * new_width > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        new_height = max(factor, math.floor(height / beta / factor) * factor)
        new_width = max(factor, math.floor(width / beta / factor) * factor)
    elif new_height * new_width < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        new_height = math.ceil(height * beta / factor) * factor
        new_width = math.ceil(width * beta / factor) * factor
    return new_height, new_width


def patchify(
    frames: torch.Tensor, patch_size: int, merge_size: int, temporal_patch_size: int
) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """Cut (frames, C, H, W) into flat patches [grid_t * grid_h * grid_w, C * temporal * patch**2] and the grid.

    A frame count that is not a multiple of ``temporal_patch_size`` is padded
    by repeating the last frame.
    """
    count, channels, height, width = frames.shape
    missing = -count % temporal_patch_size
    if missing:
        frames = torch.cat([frames, frames[-1:].expand(missing, -1, -1, -1)], dim=0)
        count += missing
    grid_t, grid_h, grid_w = count // temporal_patch_size, height // patch_size, width // patch_size
    patches = frames.reshape(
        grid_t, temporal_patch_size, channels,
        grid_h // merge_size, merge_size, patch_size,
        grid_w // merge_size, merge_size, patch_size,
    )
    # -> [t, block row, block col, row in block, col in block, channel, time in patch, patch row, patch col]
    patches = patches.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
    flat = patches.reshape(grid_t * grid_h * grid_w, channels * temporal_patch_size * patch_size * patch_size)
    return flat, (grid_t, grid_h, grid_w)


def fold_pixel_limits(data: Any) -> Any:
    """Move legacy ``min_pixels`` / ``max_pixels`` settings into ``size`` (as transformers reads them)."""
    if not isinstance(data, dict):
        return data
    data = dict(data)
    min_pixels, max_pixels = data.pop("min_pixels", None), data.pop("max_pixels", None)
    if min_pixels is not None or max_pixels is not None:
        size = dict(data.get("size") or {})
        size.pop("min_pixels", None)
        size.pop("max_pixels", None)
        if min_pixels is not None:
            size["shortest_edge"] = min_pixels
        if max_pixels is not None:
            size["longest_edge"] = max_pixels
        data["size"] = size
    return data


class Qwen2VLImageProcessor(ImageProcessor):
    """Image processor of Qwen2-VL (see the module docstring).

    ``size`` is ``{"shortest_edge": min_pixels, "longest_edge": max_pixels}``
    (areas in pixels, not edges: transformers' naming); ``min_pixels`` and
    ``max_pixels`` are accepted as settings too. An image smaller than one
    patch on either side is refused rather than blown up from nothing.
    """

    transformers_class: ClassVar[str | None] = "Qwen2VLImageProcessor"
    model_input_names: ClassVar[tuple[str, ...]] = ("pixel_values", "image_grid_thw")
    size_key_sets: ClassVar[tuple[frozenset[str], ...]] = (_MIN_MAX,)
    # output keys (pixels, grid) and what the items are called in messages
    output_keys: ClassVar[tuple[str, str]] = ("pixel_values", "image_grid_thw")
    item_name: ClassVar[str] = "image"

    do_convert_rgb: bool | None = True
    default_to_square: bool = False
    size: dict[str, int] | None = {"shortest_edge": 56 * 56, "longest_edge": 28 * 28 * 1280}
    resample: int = int(Resampling.BICUBIC)
    image_mean: float | list[float] | None = list(OPENAI_CLIP_MEAN)
    image_std: float | list[float] | None = list(OPENAI_CLIP_STD)
    patch_size: int = 14
    temporal_patch_size: int = 2
    merge_size: int = 2

    @model_validator(mode="before")
    @classmethod
    def _fold_pixel_limits(cls, data: Any) -> Any:
        return fold_pixel_limits(data)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: Any = None, **overrides: Any) -> "Qwen2VLImageProcessor":
        """Build from a settings dict; ``min_pixels`` / ``max_pixels`` overrides update ``size``."""
        if "min_pixels" in overrides or "max_pixels" in overrides:
            data = fold_pixel_limits(dict(data))
            size = dict(overrides.pop("size", None) or data.get("size") or cls.model_fields["size"].default)
            for key, edge in (("min_pixels", "shortest_edge"), ("max_pixels", "longest_edge")):
                value = overrides.pop(key, None)
                if value is not None:
                    size[edge] = int(value)
            overrides["size"] = size
        return super().from_dict(data, source=source, **overrides)

    def check_settings(self) -> None:
        """Raise :class:`ProcessingError` when patch settings or pixel limits are unusable."""
        super().check_settings()
        for name in ("patch_size", "temporal_patch_size", "merge_size"):
            if getattr(self, name) <= 0:
                raise ProcessingError(f"{type(self).__name__}.{name} must be positive, got {getattr(self, name)}.")
        if self.do_resize and self.min_pixels > self.max_pixels:
            raise ProcessingError(
                f"min_pixels ({self.min_pixels}) is larger than max_pixels ({self.max_pixels}); "
                "size={'shortest_edge': min_pixels, 'longest_edge': max_pixels}."
            )

    @property
    def min_pixels(self) -> int:
        """Smallest image area after resizing (``size["shortest_edge"]``)."""
        return int((self.size or {}).get("shortest_edge", 0))

    @property
    def max_pixels(self) -> int:
        """Largest image area after resizing (``size["longest_edge"]``)."""
        return int((self.size or {}).get("longest_edge", 0))

    @property
    def factor(self) -> int:
        """Resized sides are multiples of this (``patch_size * merge_size``)."""
        return self.patch_size * self.merge_size

    def to_dict(self) -> dict[str, Any]:
        """Return the settings as transformers writes them."""
        data = super().to_dict()
        for name in _UNUSED_BASE_SETTINGS:
            if name in data and getattr(self, name) == type(self).model_fields[name].default:
                data.pop(name)
        return data

    # -- calling -------------------------------------------------------------------
    def preprocess(self, images: Any, **kwargs: Any) -> BatchFeature:
        """Return ``pixel_values`` and ``image_grid_thw`` for one image or a batch (any image input the core takes).

        Settings may be overridden for one call (``size=``, ``min_pixels=``,
        ``max_pixels=``, ``do_normalize=``, ...).
        """
        kwargs = _fold_call_limits(self, kwargs)
        return super().preprocess(images, **kwargs)

    def output_size(self, height: int, width: int, index: int = 0) -> tuple[int, int]:
        """The (height, width) an item of ``height`` x ``width`` pixels is resized to (checked first)."""
        if height < self.patch_size or width < self.patch_size:
            raise ProcessingError(
                f"{self.item_name.capitalize()} {index} is {height}x{width} pixels, smaller than one "
                f"{self.patch_size}x{self.patch_size} patch. Give a larger {self.item_name} (upscale it yourself if "
                "you really mean it)."
            )
        if not self.do_resize:
            if height % self.factor or width % self.factor:
                raise ProcessingError(
                    f"With do_resize=False, {self.item_name} {index} ({height}x{width}) must have sides that are "
                    f"multiples of patch_size * merge_size = {self.factor}; resize it or set do_resize=True."
                )
            return height, width
        return smart_resize(height, width, self.factor, self.min_pixels, self.max_pixels)

    def number_of_tokens(self, height: int, width: int, frames: int = 1) -> int:
        """How many vision tokens (placeholders) an item of this size and frame count becomes."""
        new_height, new_width = self.output_size(height, width)
        grid_t = -(-frames // self.temporal_patch_size)
        return grid_t * (new_height // self.patch_size) * (new_width // self.patch_size) // self.merge_size**2

    def get_number_of_image_patches(self, height: int, width: int, images_kwargs: dict | None = None) -> int:
        """Patches (before merging) of an image of this size (transformers' name)."""
        processor = self.with_overrides(**_fold_call_limits(self, dict(images_kwargs or {}))) if images_kwargs else self
        new_height, new_width = processor.output_size(height, width)
        return (new_height // processor.patch_size) * (new_width // processor.patch_size)

    def process_frames(self, frames: torch.Tensor, index: int) -> tuple[torch.Tensor, tuple[int, int, int]]:
        """Resize, rescale, normalize and patchify one item given as (frames, C, H, W)."""
        height, width = int(frames.shape[-2]), int(frames.shape[-1])
        new_height, new_width = self.output_size(height, width, index)
        if (new_height, new_width) != (height, width):
            frames = resize_image(frames, (new_height, new_width), self.resample)
        frames = self.rescale_and_normalize(
            frames,
            do_rescale=self.do_rescale,
            rescale_factor=self.rescale_factor,
            do_normalize=self.do_normalize,
            image_mean=self.image_mean,
            image_std=self.image_std,
        )
        return patchify(frames, self.patch_size, self.merge_size, self.temporal_patch_size)

    def _preprocess(self, images: list[torch.Tensor], *, return_tensors: str | None = None) -> BatchFeature:
        patches, grids = [], []
        for index, image in enumerate(images):
            # One frame: patchify repeats it over every temporal slot of its patches.
            flat, grid = self.process_frames(image.unsqueeze(0), index)
            patches.append(flat)
            grids.append(list(grid))
        pixel_key, grid_key = self.output_keys
        data = {pixel_key: torch.cat(patches, dim=0), grid_key: torch.tensor(grids, dtype=torch.long)}
        return BatchFeature(data, tensor_type=return_tensors)


def _fold_call_limits(processor: ImageProcessor, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Turn per-call ``min_pixels`` / ``max_pixels`` into a ``size`` override."""
    if "min_pixels" not in kwargs and "max_pixels" not in kwargs:
        return kwargs
    kwargs = dict(kwargs)
    size = dict(kwargs.pop("size", None) or processor.size or {})
    if kwargs.get("min_pixels") is not None:
        size["shortest_edge"] = int(kwargs["min_pixels"])
    if kwargs.get("max_pixels") is not None:
        size["longest_edge"] = int(kwargs["max_pixels"])
    kwargs.pop("min_pixels", None)
    kwargs.pop("max_pixels", None)
    kwargs["size"] = size
    return kwargs
