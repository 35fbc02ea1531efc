"""What the image pipelines share: turning one image input into ``pixel_values`` for the model."""

from __future__ import annotations

import os
from typing import Any

import torch

from bestiary.errors import ProcessingError


def image_to_model_inputs(
    image_processor: Any,
    model: Any,
    image: Any,
    *,
    timeout: float | None = None,
    image_processor_kwargs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Return ``{"pixel_values": (1, C, H, W)}`` for one image (path, URL, PIL image, array or tensor).

    Paths and URLs are read with :func:`bestiary.processing.image_utils.load_image`
    (``timeout`` applies to URLs); pixel values take the model's floating dtype.
    """
    from bestiary.processing.image_utils import load_image

    if image is None:
        raise ProcessingError("The image pipeline got None; pass an image (a path, URL, PIL image, array or tensor).")
    if isinstance(image, (str, os.PathLike, bytes)):
        image = load_image(image, timeout=timeout)
    encoded = image_processor(image, return_tensors="pt", **(image_processor_kwargs or {}))
    pixel_values = encoded["pixel_values"]
    if pixel_values.dim() == 3:
        pixel_values = pixel_values[None]
    if pixel_values.shape[0] != 1:
        raise ProcessingError(
            f"One pipeline input gave {pixel_values.shape[0]} images; pass several images as a list instead."
        )
    dtype = getattr(model, "dtype", torch.float32)
    if dtype.is_floating_point:
        pixel_values = pixel_values.to(dtype)
    return {"pixel_values": pixel_values}
