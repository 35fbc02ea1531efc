"""The first-party plugin catalog (``registry.yaml``).

It powers helpful errors ("model_type 'sam' is provided by bestiary-sam,
which is not installed") and the support tables in docs/.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

CATALOG_FILE = Path(__file__).with_name("catalog.yaml")


@functools.lru_cache(maxsize=1)
def load_catalog() -> dict[str, Any]:
    """Return the parsed catalog, or an empty one when the file is unavailable."""
    if not CATALOG_FILE.is_file():
        return {"plugins": []}
    import yaml

    with CATALOG_FILE.open(encoding="utf-8") as handle:
        return yaml.safe_load(handle) or {"plugins": []}
