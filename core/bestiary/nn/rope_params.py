"""Rotary-embedding settings in configs: normalising and validating them (imports no torch)."""

from __future__ import annotations

from typing import Any

from bestiary.errors import ConfigError

ROPE_TYPES = ("default", "linear", "dynamic", "llama3", "yarn", "longrope")
_REQUIRED = {
    "linear": ("factor",),
    "dynamic": ("factor",),
    "llama3": ("factor", "low_freq_factor", "high_freq_factor"),
    "yarn": ("factor",),
    "longrope": ("short_factor", "long_factor"),
}


def normalise_rope_parameters(data: dict[str, Any], default_theta: float = 10000.0) -> dict[str, Any]:
    """Fold ``rope_theta``, ``rope_scaling`` and ``partial_rotary_factor`` of ``data`` into ``rope_parameters``.

    ``data`` is a raw config dict and is modified in place; the merged dict is returned.
    """
    scaling = data.pop("rope_scaling", None)
    params = dict(scaling or data.get("rope_parameters") or {})
    theta = data.pop("rope_theta", None)
    partial = data.get("partial_rotary_factor")
    if "type" in params and "rope_type" not in params:
        params["rope_type"] = params.pop("type")
    params.setdefault("rope_type", "default")
    params.setdefault("rope_theta", theta if theta is not None else default_theta)
    if partial is not None:
        params.setdefault("partial_rotary_factor", partial)
    if params["rope_type"] in {"llama3", "yarn", "longrope"}:
        original = data.get("original_max_position_embeddings") or data.get("max_position_embeddings")
        if original is not None:
            params.setdefault("original_max_position_embeddings", original)
    validate_rope_parameters(params)
    data["rope_parameters"] = params
    return params


def validate_rope_parameters(params: dict[str, Any]) -> None:
    """Raise :class:`ConfigError` naming the field when ``params`` cannot be used."""
    rope_type = params.get("rope_type")
    if rope_type not in ROPE_TYPES:
        raise ConfigError(f"rope_parameters.rope_type {rope_type!r} is not supported; use one of {ROPE_TYPES}.")
    missing = [key for key in _REQUIRED.get(rope_type, ()) if params.get(key) is None]
    if missing:
        raise ConfigError(f"rope_parameters of type {rope_type!r} needs {', '.join(missing)}.")
    factor = params.get("factor")
    if factor is not None and rope_type in {"linear", "dynamic", "llama3"} and float(factor) < 1.0:
        raise ConfigError(f"rope_parameters.factor must be >= 1 for {rope_type!r}, got {factor}.")
