"""``GenerationMixin``: ``generate()`` for models that decode (placeholder until the engine lands)."""

from __future__ import annotations


class GenerationMixin:
    """Adds ``generate()`` to a model class."""

    def can_generate(self) -> bool:
        return True
