"""Swin's image processor: transformers reads Swin checkpoints' settings with ``ViTImageProcessor``."""

from __future__ import annotations

from typing import ClassVar

from bestiary.processing.image_processing import ImageProcessor


class SwinImageProcessor(ImageProcessor):
    """Resize to ``size``, rescale, normalize: ViT's pipeline and defaults, as transformers uses for Swin.

    Settings missing from a ``preprocessor_config.json`` take ViT's defaults
    (224x224, bilinear, mean and std 0.5), exactly as transformers fills them;
    Microsoft's Swin checkpoints set bicubic resizing and ImageNet's mean and
    std explicitly. Files are written back with the type they were read with
    (``ViTImageProcessor`` or the legacy ``ViTFeatureExtractor``'s successor).
    """

    default_transformers_class: ClassVar[str] = "ViTImageProcessor"
