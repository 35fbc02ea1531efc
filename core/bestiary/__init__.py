"""bestiary: a PyTorch model zoo with a small core and architectures as plugins.

Importing this package is cheap: it imports neither torch nor any plugin.
Public names are loaded on first access.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY: dict[str, str] = {
    "Config": "bestiary.config",
    "PreTrainedModel": "bestiary.modeling",
    "LoadReport": "bestiary.modeling",
    "ModelOutput": "bestiary.outputs",
    "list_architectures": "bestiary.registry",
    "get_registry": "bestiary.registry",
    "ArchitectureSpec": "bestiary.registry",
    "PipelineSpec": "bestiary.registry",
    "hookimpl": "bestiary.hookspecs",
    "AutoConfig": "bestiary.auto",
    "AutoTokenizer": "bestiary.auto",
    "AutoImageProcessor": "bestiary.auto",
    "AutoFeatureExtractor": "bestiary.auto",
    "AutoProcessor": "bestiary.auto",
    "Tokenizer": "bestiary.processing.tokenization",
    "BatchEncoding": "bestiary.processing.tokenization",
    "GenerationConfig": "bestiary.generation.config",
    "GenerationMixin": "bestiary.generation.mixin",
    "TextStreamer": "bestiary.generation.streamers",
    "TextIteratorStreamer": "bestiary.generation.streamers",
    "pipeline": "bestiary.pipelines",
}


def _auto_model_names() -> list[str]:
    from bestiary.tasks import TASKS

    return [task.auto_class for task in TASKS]


def __getattr__(name: str) -> Any:
    module_name = _LAZY.get(name)
    if module_name is None and name.startswith("Auto"):
        if name in _auto_model_names():
            module_name = "bestiary.auto"
    if module_name is None:
        raise AttributeError(f"module 'bestiary' has no attribute {name!r}")
    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY, *_auto_model_names()])
