"""``Qwen2VLVideoProcessor``: videos (frame sequences) to flat patches, like the image processor.

transformers 5 keeps video settings apart from image settings (its
``Qwen2VLVideoProcessor``, saved under ``video_processor`` in
``processor_config.json`` or in ``video_preprocessor_config.json``), with
their own defaults (larger ``min_pixels``, smaller ``max_pixels``). This class
mirrors it: every frame of a video is resized to the same
:func:`~bestiary_qwen2_vl.image_processing_qwen2_vl.smart_resize` size, and
each ``temporal_patch_size`` consecutive frames form one temporal slice of
patches (the last frame is repeated to fill the final slice). Outputs are
``pixel_values_videos`` and ``video_grid_thw``.

A video is a 4-D array or tensor (frames, H, W, C or frames, C, H, W), a
list of frames (PIL images, 3-D arrays, image paths), or a list of such
videos. Video files are not decoded here: read the frames first (for
example with PyAV or torchvision) and pass them.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import PIL.Image
import torch

from bestiary.errors import HubError, ProcessingError
from bestiary.hub import HubOptions, resolve_file
from bestiary.processing.base import PREPROCESSOR_CONFIG_NAME, PROCESSOR_CONFIG_NAME, read_json_object
from bestiary.processing.batch_feature import BatchFeature
from bestiary.processing.image_utils import load_image, to_channels_first_tensor
from bestiary_qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor, _fold_call_limits

logger = logging.getLogger(__name__)

VIDEO_PROCESSOR_CONFIG_NAME = "video_preprocessor_config.json"
# keys of an image processor's file that mean nothing to the video processor
_IMAGE_ONLY_KEYS = ("image_processor_type", "processor_class", "feature_extractor_type")


class Qwen2VLVideoProcessor(Qwen2VLImageProcessor):
    """Video processor of Qwen2-VL (see the module docstring).

    Frame sampling (``do_sample_frames``) keeps ``num_frames`` evenly spaced
    frames, or ``fps`` frames per second of a video whose own frame rate is
    given as ``video_fps``. ``cap_pixels_per_frame`` bounds a whole video's
    pixel budget as the reference implementation does (off by default, as
    in transformers).
    """

    config_filename: ClassVar[str] = VIDEO_PROCESSOR_CONFIG_NAME
    type_key: ClassVar[str] = "video_processor_type"
    legacy_type_keys: ClassVar[tuple[str, ...]] = ()
    processor_key: ClassVar[str] = "video_processor"
    transformers_class: ClassVar[str | None] = "Qwen2VLVideoProcessor"
    model_input_names: ClassVar[tuple[str, ...]] = ("pixel_values_videos", "video_grid_thw")
    output_keys: ClassVar[tuple[str, str]] = ("pixel_values_videos", "video_grid_thw")
    item_name: ClassVar[str] = "video"

    size: dict[str, int] | None = {"shortest_edge": 128 * 28 * 28, "longest_edge": 28 * 28 * 768}
    do_sample_frames: bool = False
    num_frames: int | None = None
    fps: float | None = None
    min_frames: int = 4
    max_frames: int = 768
    max_video_tokens: int = 128000
    cap_pixels_per_frame: bool | None = None
    return_metadata: bool = False

    @classmethod
    def _read_settings(cls, path_or_repo: str | os.PathLike, options: HubOptions) -> tuple[dict[str, Any], Path]:
        """Settings from ``processor_config.json``, else ``video_preprocessor_config.json``, else the image settings."""
        local = Path(path_or_repo).expanduser()
        if local.is_file():
            return read_json_object(local), local
        try:
            combined = resolve_file(path_or_repo, PROCESSOR_CONFIG_NAME, options, required=False)
        except HubError:
            combined = None
        if combined is not None:
            nested = read_json_object(combined).get(cls.processor_key)
            if isinstance(nested, dict):
                return dict(nested), combined
        for filename in (VIDEO_PROCESSOR_CONFIG_NAME, PREPROCESSOR_CONFIG_NAME):
            path = resolve_file(path_or_repo, filename, options, required=False)
            if path is not None:
                data = read_json_object(path)
                for key in _IMAGE_ONLY_KEYS:
                    data.pop(key, None)
                return data, path
        raise HubError(
            f"No video processor settings in {str(path_or_repo)!r}: looked for 'video_processor' in "
            f"{PROCESSOR_CONFIG_NAME}, {VIDEO_PROCESSOR_CONFIG_NAME} and {PREPROCESSOR_CONFIG_NAME}. "
            "Build one with Qwen2VLVideoProcessor(...) and save_pretrained() it."
        )

    def check_settings(self) -> None:
        """Raise :class:`ProcessingError` when frame sampling settings contradict each other."""
        super().check_settings()
        if self.num_frames is not None and self.fps is not None:
            raise ProcessingError("num_frames and fps both choose how many frames to sample; set only one.")
        if self.min_frames > self.max_frames:
            raise ProcessingError(f"min_frames ({self.min_frames}) is larger than max_frames ({self.max_frames}).")

    # -- calling -----------------------------------------------------------------------
    def __call__(self, videos: Any, **kwargs: Any) -> BatchFeature:
        """Process one video or a batch; see :meth:`preprocess`."""
        return self.preprocess(videos, **kwargs)

    def preprocess(
        self,
        videos: Any,
        *,
        return_tensors: str | None = None,
        video_fps: float | list[float] | None = None,
        input_data_format: str | None = None,
        device: torch.device | str | None = None,
        **overrides: Any,
    ) -> BatchFeature:
        """Return ``pixel_values_videos`` and ``video_grid_thw`` for one video or a batch.

        ``video_fps`` (one value or one per video) is the frame rate of the
        given frames, needed to sample by ``fps``. Settings may be overridden
        for this call (``num_frames=``, ``do_sample_frames=``, ``size=``, ...).
        """
        overrides = _fold_call_limits(self, overrides)
        processor = self.with_overrides(**overrides) if overrides else self
        processor.check_settings()
        clips = to_video_tensors(videos, do_convert_rgb=processor.do_convert_rgb, input_data_format=input_data_format)
        rates = video_fps if isinstance(video_fps, (list, tuple)) else [video_fps] * len(clips)
        if len(rates) != len(clips):
            raise ProcessingError(f"video_fps lists {len(rates)} frame rates for {len(clips)} videos; give one per video.")
        patches, grids = [], []
        for index, (frames, rate) in enumerate(zip(clips, rates)):
            if device is not None:
                frames = frames.to(device)
            if processor.do_sample_frames:
                frames = frames[processor.sample_frames(frames.shape[0], rate, index)]
            flat, grid = processor.process_frames(frames, index)
            patches.append(flat)
            grids.append(list(grid))
        pixel_key, grid_key = self.output_keys
        data = {pixel_key: torch.cat(patches, dim=0), grid_key: torch.tensor(grids, dtype=torch.long)}
        return BatchFeature(data, tensor_type=return_tensors)

    def sample_frames(self, total: int, video_fps: float | None = None, index: int = 0) -> torch.Tensor:
        """Indices of the frames kept out of ``total`` (evenly spaced), per ``num_frames`` or ``fps``."""
        step = self.temporal_patch_size
        if self.num_frames is not None:
            count = round(self.num_frames / step) * step
        elif self.fps is not None:
            if video_fps is None:
                raise ProcessingError(
                    f"Sampling video {index} at fps={self.fps} needs its frame rate: pass video_fps=, or sample "
                    "with num_frames= instead."
                )
            limit = math.floor(min(self.max_frames, total) / step) * step
            count = total / video_fps * self.fps
            count = min(max(count, self.min_frames), limit, total)
            count = math.floor(count / step) * step
        else:
            return torch.arange(total)
        if count <= 0 or count > total:
            raise ProcessingError(
                f"Video {index} has {total} frames; sampling {count} of them is impossible. "
                "Lower num_frames / fps, or turn do_sample_frames off."
            )
        return torch.arange(0, total, total / count).int().long()

    def process_frames(self, frames: torch.Tensor, index: int) -> tuple[torch.Tensor, tuple[int, int, int]]:
        """Resize, rescale, normalize and patchify one video (frames, C, H, W)."""
        if self.cap_pixels_per_frame and self.do_resize:
            # each frame gets an even share of a whole-video budget of max_video_tokens tokens (90% of it)
            budget = int(self.max_video_tokens * self.factor * self.factor * 0.9)
            share = budget * self.temporal_patch_size // int(frames.shape[0])
            capped = max(min(self.max_pixels, share), int(self.min_pixels * 1.05))
            if capped != self.max_pixels:
                processor = self.with_overrides(size={"shortest_edge": self.min_pixels, "longest_edge": capped})
                return Qwen2VLImageProcessor.process_frames(processor, frames, index)
        return super().process_frames(frames, index)

    def get_num_of_video_patches(self, num_frames: int, height: int, width: int, videos_kwargs: dict | None = None) -> int:
        """Patches (before merging) of a video of this size and length (transformers' name)."""
        processor = self.with_overrides(**_fold_call_limits(self, dict(videos_kwargs or {}))) if videos_kwargs else self
        new_height, new_width = processor.output_size(height, width)
        grid_t = -(-num_frames // processor.temporal_patch_size)
        return grid_t * (new_height // processor.patch_size) * (new_width // processor.patch_size)


# -- video inputs --------------------------------------------------------------------
def _is_frame(value: Any) -> bool:
    if isinstance(value, (PIL.Image.Image, str, os.PathLike)):
        return True
    return isinstance(value, (np.ndarray, torch.Tensor)) and value.ndim in (2, 3)


def _is_clip(value: Any) -> bool:
    if isinstance(value, (np.ndarray, torch.Tensor)):
        return value.ndim == 4
    return isinstance(value, (list, tuple)) and len(value) > 0 and all(_is_frame(frame) for frame in value)


def to_video_tensors(
    videos: Any, *, do_convert_rgb: bool | None = True, input_data_format: str | None = None
) -> list[torch.Tensor]:
    """Return each video of ``videos`` as a (frames, C, H, W) tensor (see the module docstring for the forms)."""
    if isinstance(videos, (str, os.PathLike)):
        raise ProcessingError(
            f"{str(videos)!r}: video files are not decoded by bestiary. Read the frames first (PyAV, torchvision.io, "
            "decord) and pass them as a (frames, H, W, C) array or a list of images."
        )
    if isinstance(videos, (np.ndarray, torch.Tensor)) and videos.ndim == 5:
        clips = list(videos)
    elif _is_clip(videos):
        clips = [videos]
    elif isinstance(videos, (list, tuple)) and videos and all(_is_clip(item) for item in videos):
        clips = list(videos)
    elif _is_frame(videos):
        clips = [[videos]]
    else:
        raise ProcessingError(
            "A video must be a 4-D array or tensor (frames, H, W, C or frames, C, H, W), a list of frames (PIL images, "
            f"3-D arrays, image paths), or a list of such videos; got {type(videos).__name__}."
        )
    return [_clip_tensor(clip, index, do_convert_rgb, input_data_format) for index, clip in enumerate(clips)]


def _clip_tensor(clip: Any, index: int, do_convert_rgb: bool | None, input_data_format: str | None) -> torch.Tensor:
    frames = []
    for frame in clip:
        if isinstance(frame, (str, os.PathLike)):
            frame = load_image(frame)
        frames.append(to_channels_first_tensor(frame, input_data_format=input_data_format, do_convert_rgb=do_convert_rgb))
    if not frames:
        raise ProcessingError(f"Video {index} has no frames.")
    shapes = {tuple(frame.shape) for frame in frames}
    if len(shapes) > 1:
        raise ProcessingError(f"The frames of video {index} differ in size ({sorted(shapes)[:3]}); give same-size frames.")
    return torch.stack(frames)
