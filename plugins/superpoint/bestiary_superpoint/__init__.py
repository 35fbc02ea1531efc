"""SuperPoint for bestiary: keypoint detection, description and matching.

Import classes from their modules (``bestiary_superpoint.modeling_superpoint``,
``bestiary_superpoint.image_processing_superpoint``,
``bestiary_superpoint.matching``) or from this package: names are imported on
first access, so importing the package (which plugin discovery does) imports
neither torch nor model code.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY: dict[str, str] = {
    "SuperPointConfig": "bestiary_superpoint.configuration_superpoint",
    "SuperPointForKeypointDetection": "bestiary_superpoint.modeling_superpoint",
    "SuperPointKeypointDescriptionOutput": "bestiary_superpoint.modeling_superpoint",
    "SuperPointImageProcessor": "bestiary_superpoint.image_processing_superpoint",
    "MutualNearestNeighborMatcher": "bestiary_superpoint.matching",
    "DescriptorMatches": "bestiary_superpoint.matching",
    "match_descriptors": "bestiary_superpoint.matching",
    "match_keypoints": "bestiary_superpoint.matching",
    "KeypointMatchingPipeline": "bestiary_superpoint.pipeline_keypoint_matching",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'bestiary_superpoint' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
