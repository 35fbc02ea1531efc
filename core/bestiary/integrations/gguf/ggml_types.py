"""GGML tensor types: name resolution and block layouts.

A GGML tensor type packs ``block_size`` values into ``type_size`` bytes.
Plain float types have ``block_size == 1``.
"""

from __future__ import annotations

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from bestiary.errors import ConfigError

__all__ = ["GGMLQuantizationType", "block_layout", "resolve_type", "FLOAT_TYPES"]

FLOAT_TYPES = frozenset(
    {GGMLQuantizationType.F32, GGMLQuantizationType.F16, GGMLQuantizationType.BF16}
)


def resolve_type(value: str | int | GGMLQuantizationType) -> GGMLQuantizationType:
    """Return the GGML type named by ``value`` ("Q8_0", "q4_1", 8 or the enum itself)."""
    if isinstance(value, GGMLQuantizationType):
        return value
    if isinstance(value, str):
        try:
            return GGMLQuantizationType[value.strip().upper()]
        except KeyError:
            pass
    elif isinstance(value, int):
        try:
            return GGMLQuantizationType(value)
        except ValueError:
            pass
    known = ", ".join(t.name for t in GGMLQuantizationType)
    raise ConfigError(f"Unknown GGML tensor type {value!r}; known types: {known}.")


def block_layout(ggml_type: GGMLQuantizationType) -> tuple[int, int]:
    """Return ``(values per block, bytes per block)`` of a GGML type."""
    return GGML_QUANT_SIZES[ggml_type]
