"""``SuperPointImageProcessor``: grayscale, resize, rescale; keypoints back to image pixels.

The pixel pipeline is the core :class:`~bestiary.processing.image_processing.ImageProcessor`
with SuperPoint's settings and a different per-image chain: optional
grayscale conversion (before resizing, with torchvision's ITU-R 601 weights,
the grey value repeated in three channels), resize to 480x640, rescale to
[0, 1]. No normalisation and no padding, as in transformers. Settings have
transformers' names and defaults, so ``preprocessor_config.json`` files move
both ways.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import torch
from torchvision.transforms.v2 import functional as tvF

from bestiary.errors import ProcessingError
from bestiary.processing.batch_feature import BatchFeature
from bestiary.processing.image_processing import ImageProcessor, SizeDict
from bestiary.processing.image_utils import Resampling, convert_to_rgb

logger = logging.getLogger(__name__)

Coordinates = Literal["truncate", "round", "float"]
_COORDINATES = ("truncate", "round", "float")


def is_grayscale(image: torch.Tensor) -> bool:
    """True when a (C, H, W) image has one channel or three identical ones."""
    if image.shape[-3] == 1:
        return True
    red, green, blue = image[..., 0, :, :], image[..., 1, :, :], image[..., 2, :, :]
    return bool(torch.equal(red, green) and torch.equal(green, blue))


def convert_to_grayscale(image: torch.Tensor) -> torch.Tensor:
    """Return a grey image with the value repeated in 3 channels (1-channel and grey images are returned as they are).

    RGBA images are first composited onto white.
    """
    if image.shape[-3] == 4:
        image = convert_to_rgb(image)
    if is_grayscale(image):
        return image
    return tvF.rgb_to_grayscale(image, num_output_channels=3)


class SuperPointImageProcessor(ImageProcessor):
    """Images to SuperPoint's ``pixel_values``, and :meth:`post_process_keypoint_detection`.

    Defaults are transformers': ``do_grayscale`` is False unless the
    checkpoint's settings turn it on (``magic-leap-community/superpoint``
    does); the model reads only the first channel, so leaving it off means
    SuperPoint sees the red channel of a colour image.
    """

    transformers_class: ClassVar[str | None] = "SuperPointImageProcessor"
    default_transformers_class: ClassVar[str] = "SuperPointImageProcessor"

    do_grayscale: bool = False
    do_resize: bool = True
    default_to_square: bool = False
    size: SizeDict | None = {"height": 480, "width": 640}
    resample: int = int(Resampling.BILINEAR)
    do_rescale: bool = True
    rescale_factor: float = 1 / 255
    do_normalize: bool = False
    image_mean: float | list[float] | None = None
    image_std: float | list[float] | None = None

    def check_settings(self) -> None:
        """Check settings; warn about the ones SuperPoint ignores (as transformers ignores them)."""
        for enabled, flag, name, value in (
            (self.do_resize, "do_resize", "size", self.size),
            (self.do_rescale, "do_rescale", "rescale_factor", self.rescale_factor),
        ):
            if enabled and value is None:
                raise ProcessingError(f"{flag} is true but {name} is not set; set {name} or turn {flag} off.")
        ignored = [flag for flag in ("do_normalize", "do_center_crop", "do_pad") if getattr(self, flag)]
        if ignored:
            logger.warning(
                "SuperPointImageProcessor ignores %s: SuperPoint takes unnormalised [0, 1] values, and cropping or "
                "padding would move keypoints relative to the image. Set %s to False to silence this.",
                ", ".join(ignored),
                " and ".join(ignored),
            )

    # -- images -------------------------------------------------------------------
    def transform(self, image: torch.Tensor) -> torch.Tensor:
        """Return one (C, H, W) image made grey (when ``do_grayscale``), resized and rescaled."""
        if self.do_grayscale:
            image = convert_to_grayscale(image)
        if self.do_resize:
            image = self.resize(image, self.size, resample=self.resample)
        if self.do_rescale:
            image = self.rescale(image, self.rescale_factor)
        return image

    def _preprocess(self, images: list[torch.Tensor], *, return_tensors: str | None = None) -> BatchFeature:
        """Run :meth:`transform` on every image and pack ``pixel_values`` (never padded)."""
        return BatchFeature({"pixel_values": [self.transform(image) for image in images]}, tensor_type=return_tensors)

    # -- outputs ------------------------------------------------------------------
    def post_process_keypoint_detection(
        self,
        outputs: Any,
        target_sizes: torch.Tensor | Sequence[Sequence[int]],
        *,
        coordinates: Coordinates = "truncate",
    ) -> list[dict[str, torch.Tensor]]:
        """Return one dict per image with ``keypoints`` in pixels of ``target_sizes``, ``scores`` and ``descriptors``.

        ``outputs`` is the model's output (relative keypoints, scores,
        descriptors and mask); ``target_sizes`` holds one (height, width) per
        image, normally the original image sizes. Padding is removed.

        ``coordinates`` says how pixel coordinates are formed from
        ``relative * size``:

        - ``"truncate"`` (default, transformers' behaviour): int32, truncated.
          Because the relative value is a float, about 4% of keypoints land
          one pixel left of or above where they were found, even when the
          image was not resized (12.999999 becomes 12).
        - ``"round"``: int32, rounded to the nearest pixel; exact for images
          that were not resized.
        - ``"float"``: float32 sub-pixel coordinates, not rounded.
        """
        if coordinates not in _COORDINATES:
            raise ProcessingError(f"coordinates={coordinates!r} is not valid; use one of {', '.join(_COORDINATES)}.")
        mask = outputs["mask"]
        sizes = self._target_sizes(target_sizes, batch=mask.shape[0], device=mask.device)
        pixels = outputs["keypoints"] * sizes.flip(1)[:, None, :]  # (width, height) per image
        if coordinates == "truncate":
            pixels = pixels.to(torch.int32)
        elif coordinates == "round":
            pixels = pixels.round().to(torch.int32)
        results = []
        for image_mask, keypoints, scores, descriptors in zip(mask, pixels, outputs["scores"], outputs["descriptors"]):
            keep = image_mask.bool()
            results.append({"keypoints": keypoints[keep], "scores": scores[keep], "descriptors": descriptors[keep]})
        return results

    @staticmethod
    def _target_sizes(target_sizes: Any, *, batch: int, device: torch.device) -> torch.Tensor:
        try:
            sizes = torch.as_tensor(target_sizes, device=device)
        except (TypeError, ValueError) as exc:
            raise ProcessingError(
                "target_sizes must be a (batch, 2) tensor or a list of (height, width) pairs; "
                f"got {target_sizes!r} ({exc})."
            ) from None
        if sizes.ndim != 2 or sizes.shape[1] != 2:
            raise ProcessingError(
                "target_sizes must hold one (height, width) pair per image, shape (batch, 2); "
                f"got shape {tuple(sizes.shape)}."
            )
        if sizes.shape[0] != batch:
            raise ProcessingError(
                f"target_sizes has {sizes.shape[0]} sizes but the outputs hold {batch} images; "
                "pass one (height, width) per image, in batch order."
            )
        return sizes
