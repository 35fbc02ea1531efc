"""Segment Anything (SAM) for bestiary.

Import classes from their modules (``bestiary_sam.modeling_sam``,
``bestiary_sam.processing_sam``, ``bestiary_sam.automatic``) or from this
package: names are imported on first access, so importing the package (which
plugin discovery does) imports neither torch nor model code.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY: dict[str, str] = {
    "SamConfig": "bestiary_sam.configuration_sam",
    "SamVisionConfig": "bestiary_sam.configuration_sam",
    "SamPromptEncoderConfig": "bestiary_sam.configuration_sam",
    "SamMaskDecoderConfig": "bestiary_sam.configuration_sam",
    "SamModel": "bestiary_sam.modeling_sam",
    "SamImageSegmentationOutput": "bestiary_sam.modeling_sam",
    "SamImageProcessor": "bestiary_sam.image_processing_sam",
    "SamProcessor": "bestiary_sam.processing_sam",
    "SamAutomaticMaskGenerator": "bestiary_sam.automatic",
    "MaskGenerationSettings": "bestiary_sam.automatic",
    "GeneratedMasks": "bestiary_sam.automatic",
    "MaskBatch": "bestiary_sam.automatic",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'bestiary_sam' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
