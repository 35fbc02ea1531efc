"""``SamImageProcessor``: resize the longest side, normalize, pad to a square; upscale masks back.

The pixel pipeline is the core :class:`~bestiary.processing.image_processing.ImageProcessor`
with SAM's settings (``size={"longest_edge": 1024}``, ImageNet mean and std,
``do_pad`` to 1024x1024). This class adds what SAM needs on top: the original
and resized sizes of every image (to map prompts in and masks out), optional
segmentation maps (``labels``), and :meth:`post_process_masks`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from bestiary.errors import ProcessingError
from bestiary.processing.batch_feature import BatchFeature
from bestiary.processing.image_processing import ImageProcessor, SizeDict, size_to_dict
from bestiary.processing.image_utils import (
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    Resampling,
    to_tensor_images,
)
from pydantic import ValidationInfo, field_validator
from torch.nn import functional as F

logger = logging.getLogger(__name__)


class SamImageProcessor(ImageProcessor):
    """Images to SAM's ``pixel_values`` (plus ``original_sizes`` and ``reshaped_input_sizes``).

    Settings have transformers' names and defaults (those of
    ``facebook/sam-vit-*``), so ``preprocessor_config.json`` /
    ``processor_config.json`` files move both ways.
    """

    transformers_class: ClassVar[str | None] = "SamImageProcessor"
    default_transformers_class: ClassVar[str] = "SamImageProcessor"

    do_convert_rgb: bool | None = True
    size: SizeDict | None = {"longest_edge": 1024}
    resample: int = int(Resampling.BILINEAR)
    image_mean: float | list[float] | None = list(IMAGENET_DEFAULT_MEAN)
    image_std: float | list[float] | None = list(IMAGENET_DEFAULT_STD)
    do_pad: bool = True
    pad_size: SizeDict | None = {"height": 1024, "width": 1024}
    mask_size: SizeDict | None = {"longest_edge": 256}
    mask_pad_size: SizeDict | None = {"height": 256, "width": 256}

    @field_validator("mask_size", "mask_pad_size", mode="before")
    @classmethod
    def _check_mask_sizes(cls, value: Any, info: ValidationInfo) -> SizeDict | None:
        size = size_to_dict(value, default_to_square=True, name=info.field_name)
        if size is None:
            return None
        wanted = {"longest_edge"} if info.field_name == "mask_size" else {"height", "width"}
        if set(size) != wanted:
            raise ValueError(f"{info.field_name} must have the keys {sorted(wanted)}")
        return size

    @property
    def target_size(self) -> int:
        """The longest side images are resized to (``size["longest_edge"]``)."""
        if not self.size or "longest_edge" not in self.size:
            raise ProcessingError(
                f"SamImageProcessor.size must be {{'longest_edge': N}} to map prompts into the resized image; "
                f"got {self.size}."
            )
        return self.size["longest_edge"]

    def resized_shape(self, original_size: Sequence[int]) -> tuple[int, int]:
        """Return the (height, width) an image of ``original_size`` has after resizing (before padding)."""
        if not self.do_resize:
            return int(original_size[0]), int(original_size[1])
        return self.get_output_size(original_size, self.size)

    # -- images -------------------------------------------------------------------
    def preprocess(
        self,
        images: Any,
        segmentation_maps: Any = None,
        *,
        return_tensors: str | None = None,
        input_data_format: str | None = None,
        device: torch.device | str | None = None,
        **overrides: Any,
    ) -> BatchFeature:
        """Return ``pixel_values``, ``original_sizes``, ``reshaped_input_sizes`` (and ``labels`` for maps).

        ``segmentation_maps`` (2-D integer maps, one per image) are resized to
        ``mask_size`` with nearest-neighbour sampling and padded to
        ``mask_pad_size``. Settings may be overridden for one call.
        """
        processor = self.with_overrides(**overrides) if overrides else self
        tensors = processor.prepare_images(images, input_data_format=input_data_format, device=device)
        batch = processor._preprocess(tensors, return_tensors=None)
        if segmentation_maps is not None:
            batch["labels"] = processor.preprocess_segmentation_maps(segmentation_maps, device=device)
        return batch.convert_to_tensors(return_tensors)

    def _preprocess(self, images: list[torch.Tensor], *, return_tensors: str | None = None) -> BatchFeature:
        original_sizes = [tuple(int(v) for v in image.shape[-2:]) for image in images]
        resized = [
            self.resize(image, self.size, resample=self.resample) if self.do_resize else image for image in images
        ]
        reshaped_sizes = [tuple(int(v) for v in image.shape[-2:]) for image in resized]
        processed = [
            self.rescale_and_normalize(
                image,
                do_rescale=self.do_rescale,
                rescale_factor=self.rescale_factor,
                do_normalize=self.do_normalize,
                image_mean=self.image_mean,
                image_std=self.image_std,
            )
            for image in resized
        ]
        if self.do_pad:
            processed = self.pad(processed, pad_size=self.pad_size, multiple_of=self.pad_to_multiple_of)
        data = {"pixel_values": processed, "original_sizes": original_sizes, "reshaped_input_sizes": reshaped_sizes}
        return BatchFeature(data, tensor_type=return_tensors)

    def preprocess_segmentation_maps(self, maps: Any, device: torch.device | str | None = None) -> list[torch.Tensor]:
        """Return each 2-D map resized (nearest) to ``mask_size``, padded to ``mask_pad_size``, as int64."""
        tensors = to_tensor_images(maps, input_data_format="channels_first", do_convert_rgb=False, device=device)
        out = []
        for tensor in tensors:
            if tensor.shape[0] != 1:
                raise ProcessingError(
                    f"segmentation_maps must be 2-D (height, width) label maps; got one of shape {tuple(tensor.shape)}."
                )
            if self.do_resize and self.mask_size:
                tensor = self.resize(tensor, self.mask_size, resample=Resampling.NEAREST)
            out.append(tensor)
        if self.do_pad and self.mask_pad_size:
            out = self.pad(out, pad_size=self.mask_pad_size)
        return [tensor.squeeze(0).to(torch.int64) for tensor in out]

    # -- masks ------------------------------------------------------------------
    def post_process_masks(
        self,
        masks: Sequence[torch.Tensor | np.ndarray] | torch.Tensor,
        original_sizes: Any,
        reshaped_input_sizes: Any,
        mask_threshold: float = 0.0,
        binarize: bool = True,
        pad_size: SizeDict | None = None,
    ) -> list[torch.Tensor]:
        """Upscale low-resolution mask logits to each image's original size.

        For image i, ``masks[i]`` (prompts, masks, h, w) is resized
        (bilinear) to the padded input size, the padding is cut off using
        ``reshaped_input_sizes[i]``, and the result is resized to
        ``original_sizes[i]``. With ``binarize``, logits above
        ``mask_threshold`` become True. Returns one tensor per image.
        """
        pad = pad_size if pad_size is not None else self.pad_size
        if not pad:
            raise ProcessingError("post_process_masks needs pad_size (the padded input size); pass pad_size=.")
        original_sizes = _size_list(original_sizes, "original_sizes")
        reshaped_input_sizes = _size_list(reshaped_input_sizes, "reshaped_input_sizes")
        if len(reshaped_input_sizes) < len(original_sizes) or len(masks) < len(original_sizes):
            raise ProcessingError(
                f"post_process_masks got {len(original_sizes)} original_sizes but {len(masks)} mask sets and "
                f"{len(reshaped_input_sizes)} reshaped_input_sizes; pass one of each per image."
            )
        outputs = []
        for index, original in enumerate(original_sizes):
            logits = masks[index]
            if isinstance(logits, np.ndarray):
                logits = torch.from_numpy(logits)
            elif not isinstance(logits, torch.Tensor):
                raise ProcessingError(
                    f"masks[{index}] is a {type(logits).__name__}; pass torch tensors or numpy arrays "
                    "(model output pred_masks)."
                )
            outputs.append(
                upscale_mask_logits(
                    logits,
                    (pad["height"], pad["width"]),
                    reshaped_input_sizes[index],
                    original,
                    threshold=mask_threshold if binarize else None,
                )
            )
        return outputs


def upscale_mask_logits(
    logits: torch.Tensor,
    padded_size: tuple[int, int],
    resized_size: Sequence[int],
    original_size: Sequence[int],
    threshold: float | None = None,
) -> torch.Tensor:
    """Resize (..., h, w) mask logits to ``padded_size``, crop to ``resized_size``, resize to ``original_size``.

    Returns logits, or booleans ``> threshold`` when a threshold is given.
    """
    shape = logits.shape
    flat = logits.reshape(-1, 1, *shape[-2:]) if logits.dim() != 4 else logits
    flat = F.interpolate(flat, padded_size, mode="bilinear", align_corners=False)
    flat = flat[..., : int(resized_size[0]), : int(resized_size[1])]
    flat = F.interpolate(flat, (int(original_size[0]), int(original_size[1])), mode="bilinear", align_corners=False)
    out = flat.reshape(*shape[:-2], *flat.shape[-2:]) if logits.dim() != 4 else flat
    return out > threshold if threshold is not None else out


def _size_list(sizes: Any, name: str) -> list[tuple[int, int]]:
    if isinstance(sizes, (torch.Tensor, np.ndarray)):
        sizes = sizes.tolist()
    try:
        return [(int(size[0]), int(size[1])) for size in sizes]
    except (TypeError, IndexError, ValueError):
        raise ProcessingError(f"{name} must be a list of (height, width) pairs, got {sizes!r}.") from None


__all__ = ["SamImageProcessor", "upscale_mask_logits"]
