"""Rope scaling in GGUF files, both ways (plain Python: no torch at import).

llama.cpp records rope scaling three ways, and bestiary reads and writes each:

- ``<arch>.rope.scaling.type`` "linear" or "yarn", with ``factor``,
  ``original_context_length`` and yarn's ``yarn_beta_fast``/``yarn_beta_slow``.
  Other parameters of those types are written under the same prefix with
  their transformers names (llama.cpp ignores keys it does not know).
- Llama 3's rope (``rope_type="llama3"``) as a tensor ``rope_freqs.weight``
  that divides each rotary frequency, and no scaling keys (llama.cpp stops on
  a type it does not know and applies any ``factor`` as linear scaling).
  bestiary also writes the four parameters under ``bestiary.rope.scaling.*``;
  a file without them (llama.cpp's own conversion) gets them fitted back from
  the tensor. Either way they are checked to reproduce the tensor.
- Rope types llama.cpp does not implement (dynamic, longrope, ...) are kept
  under ``bestiary.rope.scaling.*`` only: bestiary reads them back exactly,
  llama.cpp runs the file without that scaling (a warning says so).
"""

from __future__ import annotations

import logging
import math
from typing import Any

logger = logging.getLogger(__name__)

ROPE_FREQS = "rope_freqs.weight"
OWN_PREFIX = "bestiary.rope.scaling."
LLAMA_CPP_TYPES = frozenset({"linear", "yarn"})
LLAMA3_PARAMETERS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
# transformers' rope_parameters names that llama.cpp spells its own way after "<arch>.rope.scaling."
_TO_GGUF = {
    "original_max_position_embeddings": "original_context_length",
    "beta_fast": "yarn_beta_fast",
    "beta_slow": "yarn_beta_slow",
}
_FROM_GGUF = {gguf: name for name, gguf in _TO_GGUF.items()}
_LLAMA3_DEFAULT_CONTEXT = 8192  # Llama 3.1-3.3's original context, for files that do not record it
_FIT_TOLERANCE = 1e-5


def rope_scaling_metadata(arch: str, params: dict[str, Any]) -> dict[str, Any]:
    """GGUF metadata for ``rope_parameters`` (empty for the default rope; see the module docstring)."""
    kind = params.get("rope_type", "default")
    if kind in ("default", None):
        return {}
    values = {
        name: _plain(name, value)
        for name, value in params.items()
        if name not in ("rope_type", "rope_theta") and value is not None
    }
    if kind in LLAMA_CPP_TYPES:
        prefix = f"{arch}.rope.scaling."
        return {prefix + "type": kind, **{prefix + _TO_GGUF.get(name, name): value for name, value in values.items()}}
    if kind != "llama3":  # llama.cpp reads Llama 3's rope from rope_freqs.weight
        logger.warning(
            "rope_type %r has no llama.cpp equivalent: the GGUF file records it for bestiary, but llama.cpp will "
            "run it without rope scaling.", kind,
        )
    # Not under "<arch>.rope.scaling.": llama.cpp would apply a "factor" found there as linear scaling.
    return {OWN_PREFIX + "type": kind, **{OWN_PREFIX + name: value for name, value in values.items()}}


def rope_freqs_tensor(params: dict[str, Any], head_dim: int) -> list[float] | None:
    """llama.cpp's ``rope_freqs.weight`` values for a Llama 3 rope, else None."""
    if params.get("rope_type") != "llama3":
        return None
    return llama3_factors(params, float(params.get("rope_theta", 10000.0)), head_dim)


def rope_scaling_from_metadata(
    arch: str, metadata: dict[str, Any], rope_freqs: list[float] | None, theta: float, head_dim: int, source: str
) -> dict[str, Any] | None:
    """rope_scaling for a config from GGUF metadata and the file's ``rope_freqs.weight`` values (if any)."""
    own = _prefixed(metadata, OWN_PREFIX)
    own_kind = own.pop("type", None)
    if rope_freqs is not None:
        return _llama3_from_factors(own if own_kind == "llama3" else {}, rope_freqs, theta, head_dim, source)
    if own_kind:
        return {"rope_type": own_kind, **own}
    found = {_FROM_GGUF.get(key, key): value for key, value in _prefixed(metadata, f"{arch}.rope.scaling.").items()}
    kind = found.pop("type", None)
    if kind in (None, "none"):
        return None
    return {"rope_type": kind, **found}


def llama3_factors(params: dict[str, Any], theta: float, head_dim: int) -> list[float]:
    """How much Llama 3's rope divides each rotary frequency (transformers' and llama.cpp's rule)."""
    factor = float(params["factor"])
    low, high = float(params["low_freq_factor"]), float(params["high_freq_factor"])
    context = float(params["original_max_position_embeddings"])
    low_wavelength, high_wavelength = context / low, context / high
    factors = []
    for wavelength in _wavelengths(theta, head_dim):
        if wavelength < high_wavelength:
            factors.append(1.0)
        elif wavelength > low_wavelength:
            factors.append(factor)
        else:
            smooth = (context / wavelength - low) / (high - low)
            factors.append(1.0 / ((1.0 - smooth) / factor + smooth))
    return factors


def _wavelengths(theta: float, head_dim: int) -> list[float]:
    return [2.0 * math.pi * theta ** (index / head_dim) for index in range(0, head_dim, 2)]


def _llama3_from_factors(
    found: dict[str, Any], factors: list[float], theta: float, head_dim: int, source: str
) -> dict[str, Any] | None:
    if len(factors) != head_dim // 2:
        raise _rope_freqs_error(source, f"has {len(factors)} values; the rotary dimension {head_dim} needs {head_dim // 2}")
    if all(abs(value - 1.0) <= _FIT_TOLERANCE for value in factors):
        return None
    if all(name in found for name in LLAMA3_PARAMETERS):
        params = {name: found[name] for name in LLAMA3_PARAMETERS}  # written by bestiary: exact
    else:
        params = _fit_llama3(factors, theta, head_dim, int(found.get("original_max_position_embeddings", _LLAMA3_DEFAULT_CONTEXT)))
    if not _close(llama3_factors(params, theta, head_dim), factors):
        raise _rope_freqs_error(source, "does not follow Llama 3's rope rule with the parameters in the file")
    return {"rope_type": "llama3", **params}


def _fit_llama3(factors: list[float], theta: float, head_dim: int, context: int) -> dict[str, Any]:
    """Llama 3 rope parameters that reproduce ``factors``, for an assumed original ``context``.

    Frequencies with factor 1 keep their speed, those with the largest factor
    are slowed by it, and in between the rule interpolates linearly in
    ``context / wavelength``; two of those points give both thresholds. With
    fewer, any thresholds in the gaps between wavelengths reproduce the tensor.
    """
    factor = max(factors)
    wavelengths = _wavelengths(theta, head_dim)
    unscaled = [w for w, f in zip(wavelengths, factors) if abs(f - 1.0) <= _FIT_TOLERANCE]
    scaled = [w for w, f in zip(wavelengths, factors) if abs(f - factor) <= _FIT_TOLERANCE * factor]
    middle = [(w, f) for w, f in zip(wavelengths, factors) if w not in unscaled and w not in scaled]
    # smooth = (1/f - 1/factor) / (1 - 1/factor) = (context/w - low) / (high - low), linear in 1/w
    points = [(1.0 / w, (1.0 / f - 1.0 / factor) / (1.0 - 1.0 / factor)) for w, f in middle]
    before = max(unscaled, default=min(wavelengths) / 2)
    after = min(scaled, default=max(wavelengths) * 2)
    if len(points) >= 2:
        (x0, y0), (x1, y1) = points[0], points[-1]
        slope = (y1 - y0) / (x1 - x0)  # = context / (high - low)
        inverse_high = x0 + (1.0 - y0) / slope  # smooth reaches 1 at the high-frequency threshold
        inverse_low = x0 - y0 / slope  # and 0 at the low-frequency one
    elif points:
        (x, smooth), = points
        inverse_high = 1.0 / math.sqrt(before * middle[0][0])
        inverse_low = (x - smooth * inverse_high) / (1.0 - smooth)
    else:
        inverse_high, inverse_low = 1.0 / (before * (after / before) ** (1 / 3)), 1.0 / (before * (after / before) ** (2 / 3))
    return {
        "factor": factor,
        "low_freq_factor": context * inverse_low,
        "high_freq_factor": context * inverse_high,
        "original_max_position_embeddings": context,
    }


def _close(expected: list[float], actual: list[float]) -> bool:
    return all(abs(a - b) <= _FIT_TOLERANCE * max(1.0, abs(b)) for a, b in zip(expected, actual))


def _rope_freqs_error(source: str, problem: str) -> Exception:
    from bestiary.errors import CheckpointError

    return CheckpointError(
        f"GGUF {source}: tensor {ROPE_FREQS} {problem}. bestiary reads it as Llama 3's rope scaling; this file's "
        "rope cannot be represented as a config (re-export it from its transformers checkpoint)."
    )


def _prefixed(metadata: dict[str, Any], prefix: str) -> dict[str, Any]:
    return {key[len(prefix) :]: value for key, value in metadata.items() if key.startswith(prefix)}


_FLOAT_PARAMETERS = frozenset(
    {"factor", "low_freq_factor", "high_freq_factor", "beta_fast", "beta_slow", "attention_factor", "mscale", "mscale_all_dim"}
)


def _plain(name: str, value: Any) -> Any:
    """A parameter as GGUF should store it: llama.cpp reads factors as float32, lists of numbers as float arrays."""
    if name in _FLOAT_PARAMETERS and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, (list, tuple)):
        return [float(item) for item in value]
    return value
