"""Processors: the tokenizer, chat templates and the shared preprocessor base.

Names are imported on first access, so ``import bestiary.processing`` stays
cheap and imports neither torch nor jinja2.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY: dict[str, str] = {
    "Tokenizer": "bestiary.processing.tokenization",
    "BatchEncoding": "bestiary.processing.tokenization",
    "render_chat_template": "bestiary.processing.chat_template",
    "get_json_schema": "bestiary.processing.chat_template",
    "Preprocessor": "bestiary.processing.base",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'bestiary.processing' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
