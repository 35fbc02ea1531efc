"""Image loading and conversion helpers for image processors.

Everything here turns what a user hands an image processor (PIL images,
numpy arrays, torch tensors, file paths, URLs, data URIs, or lists of them)
into channels-first torch tensors, the form the processing steps work on.
"""

from __future__ import annotations

import base64
import binascii
import io
import logging
import os
import urllib.request
from collections.abc import Iterable
from enum import IntEnum
from pathlib import Path
from typing import Any, Literal

import numpy as np
import PIL.Image
import PIL.ImageOps
import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as tvF

from bestiary.errors import ProcessingError

logger = logging.getLogger(__name__)

ChannelOrder = Literal["channels_first", "channels_last"]

IMAGENET_DEFAULT_MEAN = (0.485, 0.456, 0.406)
IMAGENET_DEFAULT_STD = (0.229, 0.224, 0.225)
IMAGENET_STANDARD_MEAN = (0.5, 0.5, 0.5)
IMAGENET_STANDARD_STD = (0.5, 0.5, 0.5)
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

DEFAULT_URL_TIMEOUT = 10.0


class Resampling(IntEnum):
    """Resampling filters by PIL's integer codes, the values stored in ``preprocessor_config.json``."""

    NEAREST = 0
    LANCZOS = 1
    BILINEAR = 2
    BICUBIC = 3
    BOX = 4
    HAMMING = 5


# PIL filter -> torchvision mode, as transformers maps them (PIL's NEAREST rounds like NEAREST_EXACT).
_TORCHVISION_MODES = {
    Resampling.NEAREST: InterpolationMode.NEAREST_EXACT,
    Resampling.LANCZOS: InterpolationMode.LANCZOS,
    Resampling.BILINEAR: InterpolationMode.BILINEAR,
    Resampling.BICUBIC: InterpolationMode.BICUBIC,
    Resampling.BOX: InterpolationMode.BOX,
    Resampling.HAMMING: InterpolationMode.HAMMING,
}
# Filters torchvision cannot apply to tensors; resized through PIL instead.
PIL_ONLY_FILTERS = frozenset({Resampling.BOX, Resampling.HAMMING})


def to_resampling(value: Any) -> Resampling:
    """Return the :class:`Resampling` for a PIL code, PIL enum, torchvision mode or filter name."""
    if isinstance(value, InterpolationMode):
        if value == InterpolationMode.NEAREST:
            return Resampling.NEAREST
        for code, mode in _TORCHVISION_MODES.items():
            if mode == value:
                return code
    if isinstance(value, str):
        name = value.upper().replace("-", "_")
        if name == "NEAREST_EXACT":
            name = "NEAREST"
        if name in Resampling.__members__:
            return Resampling[name]
    elif isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        try:
            return Resampling(int(value))
        except ValueError:
            pass
    choices = ", ".join(f"{m.value} ({m.name.lower()})" for m in Resampling)
    raise ProcessingError(f"resample={value!r} is not a resampling filter; use one of {choices}.")


def torchvision_interpolation(resample: Any) -> InterpolationMode:
    """Return the torchvision interpolation mode transformers uses for a PIL resampling filter."""
    return _TORCHVISION_MODES[to_resampling(resample)]


# -- loading ---------------------------------------------------------------
def is_url(value: str) -> bool:
    """True when ``value`` is an http(s) URL."""
    return value.startswith(("http://", "https://"))


def _offline() -> bool:
    flags = (os.environ.get("HF_HUB_OFFLINE", ""), os.environ.get("BESTIARY_OFFLINE", ""))
    return any(flag.upper() in {"1", "ON", "YES", "TRUE"} for flag in flags)


def _http_get(url: str, timeout: float) -> bytes:
    request = urllib.request.Request(url, headers={"User-Agent": "bestiary"})
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 (http/https checked by caller)
        return response.read()


def fetch_url(url: str, timeout: float | None = None) -> bytes:
    """Return the bytes at an http(s) URL; raise :class:`ProcessingError` naming the URL on any failure."""
    if _offline():
        raise ProcessingError(
            f"Cannot fetch {url}: network access is off (HF_HUB_OFFLINE / BESTIARY_OFFLINE). "
            "Download the file and pass its local path instead."
        )
    try:
        return _http_get(url, DEFAULT_URL_TIMEOUT if timeout is None else timeout)
    except Exception as exc:  # urllib raises URLError, HTTPError, TimeoutError, ssl errors, ...
        raise ProcessingError(
            f"Cannot fetch {url}: {exc}. Check the address and the network, or pass a local file path."
        ) from exc


def _decode_image_bytes(data: bytes, name: str) -> PIL.Image.Image:
    try:
        image = PIL.Image.open(io.BytesIO(data))
        image.load()
    except (PIL.UnidentifiedImageError, OSError, ValueError) as exc:
        raise ProcessingError(f"{name} is not a readable image ({exc}).") from None
    return image


def load_image(source: str | os.PathLike | bytes | PIL.Image.Image, timeout: float | None = None) -> PIL.Image.Image:
    """Return an upright RGB PIL image from a path, an http(s) URL, a ``data:image/...`` URI, bytes or a PIL image.

    The EXIF orientation is applied. Transparency is dropped the way
    ``Image.convert("RGB")`` drops it, as transformers' loaders do.
    """
    if isinstance(source, PIL.Image.Image):
        image = source
    elif isinstance(source, (bytes, bytearray, memoryview)):
        image = _decode_image_bytes(bytes(source), "The image bytes")
    elif isinstance(source, (str, os.PathLike)):
        text = os.fspath(source)
        if isinstance(source, str) and is_url(text):
            image = _decode_image_bytes(fetch_url(text, timeout), f"The file at {text}")
        elif isinstance(source, str) and text.startswith("data:image/"):
            try:
                payload = base64.b64decode(text.split(",", 1)[1], validate=False)
            except (IndexError, binascii.Error) as exc:
                raise ProcessingError(f"The data URI {text[:40]}... is not valid base64 image data ({exc}).") from None
            image = _decode_image_bytes(payload, "The data URI image")
        else:
            path = Path(text).expanduser()
            if not path.is_file():
                raise ProcessingError(
                    f"Image file {text!r} does not exist. Pass an existing path, an http(s) URL, "
                    "a PIL image, a numpy array or a torch tensor."
                )
            try:
                image = PIL.Image.open(path)
                image.load()
            except (PIL.UnidentifiedImageError, OSError, ValueError) as exc:
                raise ProcessingError(f"Image file {str(path)!r} is not a readable image ({exc}).") from None
    else:
        raise ProcessingError(f"Cannot load an image from {type(source).__name__}.")
    image = PIL.ImageOps.exif_transpose(image)
    return image if image.mode == "RGB" else image.convert("RGB")


# -- channel layout ----------------------------------------------------------
def normalize_channel_order(value: Any) -> ChannelOrder | None:
    """Return "channels_first" / "channels_last" for the spellings transformers accepts, None for None."""
    if value is None:
        return None
    text = str(getattr(value, "value", value)).lower()
    if text in {"channels_first", "first", "chw"}:
        return "channels_first"
    if text in {"channels_last", "last", "hwc"}:
        return "channels_last"
    raise ProcessingError(f"input_data_format={value!r} is not valid; use 'channels_first' or 'channels_last'.")


def infer_channel_order(shape: tuple[int, ...], num_channels: Iterable[int] = (1, 3, 4)) -> ChannelOrder:
    """Return where the channel axis of a 3-D image of ``shape`` is.

    When both ends could be channels (a 3x4x3 image), channels first is
    assumed, as transformers does, and a warning says how to choose.
    """
    num_channels = tuple(num_channels)
    first, last = shape[0] in num_channels, shape[-1] in num_channels
    if first and last:
        logger.warning(
            "The channel axis of an image of shape %s is ambiguous; assuming channels first. "
            "Pass input_data_format='channels_last' if that is wrong.",
            tuple(shape),
        )
        return "channels_first"
    if first:
        return "channels_first"
    if last:
        return "channels_last"
    raise ProcessingError(
        f"Cannot tell the channel axis of an image of shape {tuple(shape)}: neither the first nor the last "
        f"dimension is one of {num_channels} channels. Pass input_data_format='channels_first' or 'channels_last'."
    )


# -- conversion --------------------------------------------------------------
def pil_to_rgb_array(image: PIL.Image.Image) -> np.ndarray:
    """Return an (H, W, 3) uint8 array, compositing any transparency onto white."""
    has_alpha = "A" in image.getbands() or image.info.get("transparency") is not None
    if has_alpha:
        rgba = image.convert("RGBA")
        background = PIL.Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = PIL.Image.alpha_composite(background, rgba)
    return np.asarray(image.convert("RGB"))


def convert_to_rgb(image: torch.Tensor) -> torch.Tensor:
    """Return a (3, H, W) tensor: grey is repeated, RGBA is composited onto white, RGB is unchanged."""
    if image.shape[-3] == 1:
        return tvF.grayscale_to_rgb(image)
    if image.shape[-3] == 4:
        if image.is_floating_point() and (image.min() < 0.0 or image.max() > 1.0):
            raise ProcessingError(
                "An RGBA float image must hold values in [0, 1] to be composited onto white; "
                f"found [{image.min().item()}, {image.max().item()}]."
            )
        dtype = image.dtype
        scaled = tvF.to_dtype(image, torch.float32, scale=True)
        rgb, alpha = scaled[..., :3, :, :], scaled[..., 3:, :, :]
        return tvF.to_dtype(rgb * alpha + (1 - alpha), dtype, scale=True)
    return image


def to_channels_first_tensor(
    image: Any,
    *,
    input_data_format: ChannelOrder | str | None = None,
    do_convert_rgb: bool | None = None,
) -> torch.Tensor:
    """Return one image as a contiguous (C, H, W) tensor, keeping its dtype (uint8 stays uint8).

    PIL images go through PIL's own RGB conversion (so their mode is
    respected); arrays and tensors are converted channel-wise when
    ``do_convert_rgb`` is set. Grey 2-D inputs get a channel axis.
    """
    if isinstance(image, PIL.Image.Image):
        array = pil_to_rgb_array(image) if do_convert_rgb else np.asarray(image)
        tensor = torch.from_numpy(np.array(array, copy=True))
        if tensor.ndim == 2:
            return tensor.unsqueeze(0).contiguous()
        return tensor.permute(2, 0, 1).contiguous()
    if isinstance(image, np.ndarray):
        if not image.flags.writeable or any(stride < 0 for stride in image.strides):
            image = image.copy()
        tensor = torch.from_numpy(image)
    elif isinstance(image, torch.Tensor):
        tensor = image
    else:
        raise ProcessingError(f"Cannot use an object of type {type(image).__name__} as an image.")
    if tensor.ndim == 2:
        tensor = tensor.unsqueeze(0)
        order = "channels_first"
    elif tensor.ndim == 3:
        order = normalize_channel_order(input_data_format) or infer_channel_order(tuple(tensor.shape))
    else:
        raise ProcessingError(
            f"An image must have 2 (H, W) or 3 (C, H, W or H, W, C) dimensions; got shape {tuple(tensor.shape)}."
        )
    if order == "channels_last":
        tensor = tensor.permute(2, 0, 1)
    if do_convert_rgb:
        tensor = convert_to_rgb(tensor)
    return tensor.contiguous()


def is_image_object(value: Any) -> bool:
    """True for a single image: PIL image, array/tensor of 2 or 3 dimensions, path, URL or bytes."""
    if isinstance(value, (PIL.Image.Image, str, os.PathLike, bytes, bytearray)):
        return True
    if isinstance(value, (np.ndarray, torch.Tensor)):
        return value.ndim in (2, 3)
    return False


def flatten_images(images: Any) -> list[Any]:
    """Return a flat list of single images from one image, a 4-D batch array/tensor or (nested) lists."""
    if isinstance(images, (np.ndarray, torch.Tensor)) and images.ndim == 4:
        return list(images)
    if is_image_object(images):
        return [images]
    if isinstance(images, (list, tuple)):
        flat: list[Any] = []
        for item in images:
            flat.extend(flatten_images(item))
        return flat
    if isinstance(images, (np.ndarray, torch.Tensor)):
        raise ProcessingError(
            f"An image array must have 2, 3 or (for a batch) 4 dimensions; got shape {tuple(images.shape)}."
        )
    raise ProcessingError(
        f"Cannot use an object of type {type(images).__name__} as an image. Pass a PIL image, a numpy array, "
        "a torch tensor, a file path, an http(s) URL, or a list of these."
    )


def to_tensor_images(
    images: Any,
    *,
    input_data_format: ChannelOrder | str | None = None,
    do_convert_rgb: bool | None = None,
    device: torch.device | str | None = None,
) -> list[torch.Tensor]:
    """Return every image of ``images`` as a (C, H, W) tensor, loading paths, URLs and bytes first."""
    tensors = []
    for image in flatten_images(images):
        if isinstance(image, (str, os.PathLike, bytes, bytearray)):
            image = load_image(image)
        tensor = to_channels_first_tensor(image, input_data_format=input_data_format, do_convert_rgb=do_convert_rgb)
        if device is not None:
            tensor = tensor.to(device)
        tensors.append(tensor)
    if not tensors:
        raise ProcessingError("No image was given (an empty list).")
    return tensors
