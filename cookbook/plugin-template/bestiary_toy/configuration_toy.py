"""ToyConfig: validated by pydantic, saved as config.json."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from bestiary.config import Config


class ToyConfig(Config):
    """Configuration of the toy classifier."""

    model_type: ClassVar[str] = "toy"

    vocab_size: int = Field(default=128, gt=0)
    hidden_size: int = Field(default=16, gt=0)
    initializer_range: float = 0.02
