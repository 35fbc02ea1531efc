"""``ImageProcessor``: turn images into ``pixel_values`` the way transformers does.

The standard pipeline (ViT, CLIP, DeiT, Swin, ... in transformers) is: convert
to RGB, resize, center crop, rescale, normalize, pad. It runs on channels-first
torch tensors with torchvision's v2 functional ops, in the same order and with
the same arithmetic as transformers 5's default (torchvision) image
processors, so ``pixel_values`` match theirs.

Each step is a method taking explicit arguments, and the per-image chain
(:meth:`ImageProcessor.transform`) and the batch step
(:meth:`ImageProcessor._preprocess`) are separate, so a model plugin
overrides only what differs. For example SAM's processor is this class with
``size={"longest_edge": 1024}``, ``do_pad=True``, ``pad_size`` 1024x1024 and an
``_preprocess`` that also returns the original sizes; ConvNeXt's overrides
:meth:`ImageProcessor.resize` to add its ``crop_pct`` crop.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import PIL.Image
import torch
from pydantic import ValidationInfo, field_validator
from torchvision.transforms.v2 import functional as tvF

from bestiary.errors import ProcessingError
from bestiary.processing.base import Preprocessor
from bestiary.processing.batch_feature import BatchFeature
from bestiary.processing.image_utils import (
    IMAGENET_STANDARD_MEAN,
    IMAGENET_STANDARD_STD,
    PIL_ONLY_FILTERS,
    ChannelOrder,
    Resampling,
    to_resampling,
    to_tensor_images,
    torchvision_interpolation,
)

logger = logging.getLogger(__name__)

SizeDict = dict[str, int]

# The key sets a ``size`` dict may have, each with its own resize rule.
SIZE_KEY_SETS: tuple[frozenset[str], ...] = (
    frozenset({"height", "width"}),
    frozenset({"shortest_edge"}),
    frozenset({"shortest_edge", "longest_edge"}),
    frozenset({"longest_edge"}),
    frozenset({"max_height", "max_width"}),
)
_HEIGHT_WIDTH = frozenset({"height", "width"})


# -- sizes -----------------------------------------------------------------
def size_to_dict(value: Any, *, default_to_square: bool = True, name: str = "size") -> SizeDict | None:
    """Return a size dict from a dict, an int or a (height, width) pair, as transformers reads old configs.

    An int means a square when ``default_to_square`` else the shortest edge.
    """
    if value is None:
        return None
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        value = int(value)
        return {"height": value, "width": value} if default_to_square else {"shortest_edge": value}
    if isinstance(value, (list, tuple)):
        if len(value) == 2:
            return {"height": int(value[0]), "width": int(value[1])}
        if len(value) == 1:
            return size_to_dict(value[0], default_to_square=default_to_square, name=name)
        raise ValueError(f"a {name} sequence must be (height, width)")
    if isinstance(value, dict):
        result = {}
        for key, item in value.items():
            if isinstance(item, bool) or not isinstance(item, (int, np.integer, float)) or int(item) != item:
                raise ValueError(f"{name}[{key!r}] must be an integer")
            if item <= 0:
                raise ValueError(f"{name}[{key!r}] must be positive")
            result[str(key)] = int(item)
        return result
    raise ValueError(f"{name} must be a dict like {{'height': 224, 'width': 224}}, an int or a (height, width) pair")


def get_resize_output_size(image_size: Sequence[int], size: SizeDict) -> tuple[int, int]:
    """Return the (height, width) an image of ``image_size`` (height, width) is resized to for ``size``.

    - ``{"height", "width"}``: exactly that.
    - ``{"shortest_edge"}``: shortest edge to the value, aspect ratio kept (longer edge truncated).
    - ``{"shortest_edge", "longest_edge"}``: as above, unless the longer edge would exceed ``longest_edge``.
    - ``{"longest_edge"}``: longest edge to the value, other edge rounded (SAM's rule).
    - ``{"max_height", "max_width"}``: the largest size within both bounds, aspect ratio kept.
    """
    height, width = int(image_size[0]), int(image_size[1])
    keys = frozenset(size)
    if keys == _HEIGHT_WIDTH:
        return size["height"], size["width"]
    if keys == {"shortest_edge"}:
        short, long = (width, height) if width <= height else (height, width)
        new_short, new_long = size["shortest_edge"], int(size["shortest_edge"] * long / short)
        return (new_long, new_short) if width <= height else (new_short, new_long)
    if keys == {"shortest_edge", "longest_edge"}:
        return _shortest_edge_within(height, width, size["shortest_edge"], size["longest_edge"])
    if keys == {"longest_edge"}:
        scale = size["longest_edge"] * 1.0 / max(height, width)
        return int(height * scale + 0.5), int(width * scale + 0.5)
    if keys == {"max_height", "max_width"}:
        scale = min(size["max_height"] / height, size["max_width"] / width)
        return int(height * scale), int(width * scale)
    raise ProcessingError(
        f"Cannot resize with size={size}: its keys must be one of "
        + ", ".join(str(sorted(k)) for k in SIZE_KEY_SETS)
        + ". A model with another rule overrides get_output_size()."
    )


def _shortest_edge_within(height: int, width: int, shortest: int, longest: int) -> tuple[int, int]:
    # Shortest edge to `shortest`, unless that pushes the longest edge past `longest` (DETR's rule).
    raw = None
    low, high = float(min(height, width)), float(max(height, width))
    if high / low * shortest > longest:
        raw = longest * low / high
        shortest = int(round(raw))
    if (height <= width and height == shortest) or (width <= height and width == shortest):
        return height, width
    if width < height:
        return (int(raw * height / width) if raw is not None else int(shortest * height / width)), shortest
    return shortest, (int(raw * width / height) if raw is not None else int(shortest * width / height))


# -- tensor operations -------------------------------------------------------
def resize_image(
    image: torch.Tensor,
    size: tuple[int, int],
    resample: Resampling | int = Resampling.BILINEAR,
    antialias: bool = True,
) -> torch.Tensor:
    """Return ``image`` (..., C, H, W) resized to ``size`` (height, width), keeping its dtype.

    Uses torchvision's tensor resize (what transformers' default processors
    use). BOX and HAMMING, which torchvision has no tensor kernel for, go
    through PIL channel by channel; LANCZOS runs on the CPU.
    """
    resample = to_resampling(resample)
    height, width = int(size[0]), int(size[1])
    if height <= 0 or width <= 0:
        raise ProcessingError(f"Cannot resize an image of shape {tuple(image.shape)} to {height}x{width}.")
    if resample in PIL_ONLY_FILTERS:
        return _resize_with_pil(image, (height, width), resample)
    mode = torchvision_interpolation(resample)
    if resample == Resampling.LANCZOS and image.device.type != "cpu":
        return tvF.resize(image.cpu(), [height, width], interpolation=mode, antialias=antialias).to(image.device)
    return tvF.resize(image, [height, width], interpolation=mode, antialias=antialias)


def _resize_with_pil(image: torch.Tensor, size: tuple[int, int], resample: Resampling) -> torch.Tensor:
    height, width = size
    planes = image.detach().cpu().reshape(-1, *image.shape[-2:])
    resized = []
    for plane in planes:
        if plane.dtype == torch.uint8:
            pil = PIL.Image.fromarray(plane.numpy(), mode="L")
        else:
            pil = PIL.Image.fromarray(plane.to(torch.float32).numpy(), mode="F")
        out = np.asarray(pil.resize((width, height), resample=PIL.Image.Resampling(int(resample))))
        resized.append(torch.from_numpy(out.copy()).to(image.dtype))
    return torch.stack(resized).reshape(*image.shape[:-2], height, width).to(image.device)


def center_crop_image(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Return the central ``size`` (height, width) of ``image``, zero-padding first where it is smaller."""
    crop_height, crop_width = int(size[0]), int(size[1])
    height, width = image.shape[-2:]
    if crop_height > height or crop_width > width:
        extra_h, extra_w = max(crop_height - height, 0), max(crop_width - width, 0)
        # left, top, right, bottom: an odd extra pixel goes right / bottom.
        image = tvF.pad(image, [extra_w // 2, extra_h // 2, (extra_w + 1) // 2, (extra_h + 1) // 2], fill=0)
        height, width = image.shape[-2:]
        if (height, width) == (crop_height, crop_width):
            return image
    top = int((height - crop_height) / 2.0)
    left = int((width - crop_width) / 2.0)
    return tvF.crop(image, top, left, crop_height, crop_width)


def rescale_and_normalize_image(
    image: torch.Tensor,
    *,
    do_rescale: bool,
    rescale_factor: float,
    do_normalize: bool,
    image_mean: float | Sequence[float] | None,
    image_std: float | Sequence[float] | None,
) -> torch.Tensor:
    """Return ``(image * rescale_factor - mean) / std`` with the steps asked for.

    Both steps together are computed as ``(image - mean / factor) / (std / factor)``
    in float32, the fused form transformers' torchvision processors use, so
    results agree to the last bit.
    """
    if do_normalize:
        mean = torch.tensor(image_mean, dtype=torch.float32, device=image.device)
        std = torch.tensor(image_std, dtype=torch.float32, device=image.device)
        if do_rescale:
            mean = mean * (1.0 / rescale_factor)
            std = std * (1.0 / rescale_factor)
        return (image.to(torch.float32) - mean.reshape(-1, 1, 1)) / std.reshape(-1, 1, 1)
    if do_rescale:
        return image * rescale_factor
    return image


def pad_images(
    images: Sequence[torch.Tensor],
    *,
    size: tuple[int, int] | None = None,
    multiple_of: int | None = None,
    fill: float = 0.0,
    return_mask: bool = False,
) -> list[torch.Tensor] | tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Pad every image at the bottom and right to one (height, width).

    The target is ``size``, else the largest height and width in the batch,
    then rounded up to ``multiple_of``. With ``return_mask``, also return one
    int64 (H, W) mask per image: 1 on the image, 0 on the padding.
    """
    if size is not None:
        target_h, target_w = int(size[0]), int(size[1])
    else:
        target_h = max(int(image.shape[-2]) for image in images)
        target_w = max(int(image.shape[-1]) for image in images)
    if multiple_of:
        target_h = math.ceil(target_h / multiple_of) * multiple_of
        target_w = math.ceil(target_w / multiple_of) * multiple_of
    padded, masks = [], []
    for image in images:
        height, width = int(image.shape[-2]), int(image.shape[-1])
        if height > target_h or width > target_w:
            raise ProcessingError(
                f"Cannot pad an image of {height}x{width} to {target_h}x{target_w}: it is larger. "
                "Raise pad_size or resize the images first."
            )
        if (height, width) != (target_h, target_w):
            image = tvF.pad(image, [0, 0, target_w - width, target_h - height], fill=fill)
        padded.append(image)
        if return_mask:
            mask = torch.zeros((target_h, target_w), dtype=torch.int64, device=image.device)
            mask[:height, :width] = 1
            masks.append(mask)
    return (padded, masks) if return_mask else padded


# -- the processor -----------------------------------------------------------
class ImageProcessor(Preprocessor):
    """Image processor with transformers' standard pipeline; the base of model-specific ones.

    Settings (fields) have transformers' names and, by default, ViT's values.
    Calling the processor runs, per image: RGB conversion (when
    ``do_convert_rgb``), :meth:`resize`, :meth:`center_crop`, rescale and
    normalize (:meth:`rescale_and_normalize`), then :meth:`pad` on the batch.

    To write a model's processor, subclass and re-declare the fields whose
    defaults differ (pydantic needs the annotation), set
    ``transformers_class``, and override the narrowest hook that works:
    :meth:`get_output_size` for a new resize rule, :meth:`transform` for a
    different per-image chain, :meth:`_preprocess` for extra outputs.
    """

    type_key: ClassVar[str] = "image_processor_type"
    legacy_type_keys: ClassVar[tuple[str, ...]] = ("feature_extractor_type",)
    processor_key: ClassVar[str] = "image_processor"
    default_transformers_class: ClassVar[str] = "ViTImageProcessor"
    model_input_names: ClassVar[tuple[str, ...]] = ("pixel_values",)
    size_key_sets: ClassVar[tuple[frozenset[str], ...]] = SIZE_KEY_SETS

    do_convert_rgb: bool | None = None
    do_resize: bool = True
    default_to_square: bool = True
    size: SizeDict | None = {"height": 224, "width": 224}
    resample: int = int(Resampling.BILINEAR)
    do_center_crop: bool = False
    crop_size: SizeDict | None = None
    do_rescale: bool = True
    rescale_factor: float = 1 / 255
    do_normalize: bool = True
    image_mean: float | list[float] | None = list(IMAGENET_STANDARD_MEAN)
    image_std: float | list[float] | None = list(IMAGENET_STANDARD_STD)
    do_pad: bool = False
    pad_size: SizeDict | None = None
    pad_to_multiple_of: int | None = None

    @classmethod
    def _type_from_legacy(cls, legacy_type: str) -> str:
        # Old image configs name a "...FeatureExtractor"; transformers reads them as "...ImageProcessor".
        return legacy_type.replace("FeatureExtractor", "ImageProcessor")

    # -- validation ---------------------------------------------------------
    @field_validator("size", mode="before")
    @classmethod
    def _check_size(cls, value: Any, info: ValidationInfo) -> SizeDict | None:
        size = size_to_dict(value, default_to_square=info.data.get("default_to_square", True))
        if size is not None and frozenset(size) not in cls.size_key_sets:
            allowed = " or ".join(str(sorted(keys)) for keys in cls.size_key_sets)
            raise ValueError(f"size must have the keys {allowed}")
        return size

    @field_validator("crop_size", "pad_size", mode="before")
    @classmethod
    def _check_height_width(cls, value: Any, info: ValidationInfo) -> SizeDict | None:
        size = size_to_dict(value, default_to_square=True, name=info.field_name)
        if size is not None and frozenset(size) != _HEIGHT_WIDTH:
            raise ValueError(f"{info.field_name} must have the keys 'height' and 'width'")
        return size

    @field_validator("resample", mode="before")
    @classmethod
    def _check_resample(cls, value: Any) -> int:
        try:
            return int(to_resampling(value))
        except ProcessingError as exc:
            raise ValueError(str(exc)) from None

    @field_validator("rescale_factor")
    @classmethod
    def _check_rescale_factor(cls, value: float) -> float:
        if value == 0:
            raise ValueError("rescale_factor must not be 0")
        return value

    @field_validator("image_std")
    @classmethod
    def _check_std(cls, value: Any) -> Any:
        values = value if isinstance(value, list) else [value]
        if any(v == 0 for v in values if v is not None):
            raise ValueError("image_std must not contain 0")
        return value

    @field_validator("pad_to_multiple_of")
    @classmethod
    def _check_multiple(cls, value: int | None) -> int | None:
        if value is not None and value <= 0:
            raise ValueError("pad_to_multiple_of must be a positive integer")
        return value

    def check_settings(self) -> None:
        """Raise :class:`ProcessingError` when an enabled step lacks the setting it needs."""
        needs = [
            (self.do_resize, "size", self.size),
            (self.do_center_crop, "crop_size", self.crop_size),
            (self.do_rescale, "rescale_factor", self.rescale_factor),
            (self.do_normalize, "image_mean", self.image_mean),
            (self.do_normalize, "image_std", self.image_std),
        ]
        for enabled, name, value in needs:
            if enabled and value is None:
                flag = {"size": "do_resize", "crop_size": "do_center_crop", "rescale_factor": "do_rescale"}.get(
                    name, "do_normalize"
                )
                raise ProcessingError(f"{flag} is true but {name} is not set; set {name} or turn {flag} off.")

    # -- entry points ---------------------------------------------------------
    def __call__(self, images: Any, **kwargs: Any) -> BatchFeature:
        """Process one image or a batch; see :meth:`preprocess`."""
        return self.preprocess(images, **kwargs)

    def preprocess(
        self,
        images: Any,
        *,
        return_tensors: str | None = None,
        input_data_format: ChannelOrder | str | None = None,
        device: torch.device | str | None = None,
        **overrides: Any,
    ) -> BatchFeature:
        """Return a :class:`BatchFeature` with ``pixel_values`` for one image or a batch.

        ``images``: PIL images, numpy arrays or torch tensors (HWC or CHW, uint8
        or float, channel axis detected unless ``input_data_format`` says),
        file paths, http(s) URLs, or (nested) lists of them; a 4-D array is a
        batch. ``return_tensors="pt"`` stacks the batch into one tensor, "np"
        into one array; None returns a list of tensors. Any setting (``size=``,
        ``do_normalize=``, ...) may be overridden for this call only.
        """
        processor = self.with_overrides(**overrides) if overrides else self
        processor.check_settings()
        tensors = processor.prepare_images(images, input_data_format=input_data_format, device=device)
        return processor._preprocess(tensors, return_tensors=return_tensors)

    def prepare_images(
        self,
        images: Any,
        *,
        input_data_format: ChannelOrder | str | None = None,
        device: torch.device | str | None = None,
    ) -> list[torch.Tensor]:
        """Return the inputs as a list of (C, H, W) tensors (dtype kept), RGB-converted when ``do_convert_rgb``."""
        return to_tensor_images(
            images, input_data_format=input_data_format, do_convert_rgb=self.do_convert_rgb, device=device
        )

    def _preprocess(self, images: list[torch.Tensor], *, return_tensors: str | None = None) -> BatchFeature:
        """Run :meth:`transform` on every image, pad the batch when ``do_pad``, and pack ``pixel_values``."""
        processed = [self.transform(image) for image in images]
        if self.do_pad:
            processed = self.pad(processed, pad_size=self.pad_size, multiple_of=self.pad_to_multiple_of)
        return BatchFeature({"pixel_values": processed}, tensor_type=return_tensors)

    def transform(self, image: torch.Tensor) -> torch.Tensor:
        """Return one (C, H, W) image resized, center-cropped, rescaled and normalized per the settings."""
        if self.do_resize:
            image = self.resize(image, self.size, resample=self.resample)
        if self.do_center_crop:
            image = self.center_crop(image, self.crop_size)
        return self.rescale_and_normalize(
            image,
            do_rescale=self.do_rescale,
            rescale_factor=self.rescale_factor,
            do_normalize=self.do_normalize,
            image_mean=self.image_mean,
            image_std=self.image_std,
        )

    # -- steps (override one to change one step) --------------------------------
    def get_output_size(self, image_size: Sequence[int], size: SizeDict) -> tuple[int, int]:
        """Return the (height, width) an image of ``image_size`` is resized to; see :func:`get_resize_output_size`."""
        return get_resize_output_size(image_size, size)

    def resize(
        self,
        image: torch.Tensor,
        size: SizeDict,
        resample: Resampling | int | None = None,
        antialias: bool = True,
    ) -> torch.Tensor:
        """Return ``image`` (..., C, H, W) resized for the size dict ``size``."""
        output_size = self.get_output_size(image.shape[-2:], size)
        return resize_image(image, output_size, self.resample if resample is None else resample, antialias)

    def center_crop(self, image: torch.Tensor, crop_size: SizeDict) -> torch.Tensor:
        """Return the central ``crop_size`` ({"height", "width"}) of ``image``."""
        return center_crop_image(image, (crop_size["height"], crop_size["width"]))

    def rescale(self, image: torch.Tensor, rescale_factor: float) -> torch.Tensor:
        """Return ``image * rescale_factor``."""
        return image * rescale_factor

    def normalize(
        self, image: torch.Tensor, image_mean: float | Sequence[float], image_std: float | Sequence[float]
    ) -> torch.Tensor:
        """Return ``(image - mean) / std`` per channel, in float32."""
        return rescale_and_normalize_image(
            image, do_rescale=False, rescale_factor=1.0, do_normalize=True, image_mean=image_mean, image_std=image_std
        )

    def rescale_and_normalize(
        self,
        image: torch.Tensor,
        *,
        do_rescale: bool,
        rescale_factor: float,
        do_normalize: bool,
        image_mean: float | Sequence[float] | None,
        image_std: float | Sequence[float] | None,
    ) -> torch.Tensor:
        """Return the image rescaled and/or normalized (fused like transformers when both are on)."""
        return rescale_and_normalize_image(
            image,
            do_rescale=do_rescale,
            rescale_factor=rescale_factor,
            do_normalize=do_normalize,
            image_mean=image_mean,
            image_std=image_std,
        )

    def pad(
        self,
        images: Sequence[torch.Tensor],
        *,
        pad_size: SizeDict | None = None,
        multiple_of: int | None = None,
        fill: float = 0.0,
        return_mask: bool = False,
    ) -> list[torch.Tensor] | tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Pad images bottom/right to ``pad_size``, else the batch's largest size, rounded up to ``multiple_of``."""
        size = (pad_size["height"], pad_size["width"]) if pad_size else None
        return pad_images(images, size=size, multiple_of=multiple_of, fill=fill, return_mask=return_mask)
