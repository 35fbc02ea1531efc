"""Writing GGUF files atomically with the ``gguf`` package's ``GGUFWriter``.

    write_gguf("model.gguf", "llama", {"llama.block_count": 2, ...},
               model.state_dict().items(), tensor_type="Q8_0")

Tensors are quantized as they arrive and spooled to a temporary file by
``GGUFWriter``, so memory stays near one tensor. The file is written under a
temporary name in the target folder and renamed when complete.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import torch
from gguf import GGUFValueType, GGUFWriter

from bestiary.errors import CheckpointError, ConfigError
from bestiary.files import atomic_path

from .ggml_types import GGMLQuantizationType, resolve_type
from .quantizer import can_quantize, quantize

__all__ = ["write_gguf", "TypedValue", "choose_tensor_type"]

logger = logging.getLogger(__name__)

Q = GGMLQuantizationType
WRITABLE_TYPES = (Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1)


@dataclass(frozen=True)
class TypedValue:
    """A metadata value with an explicit GGUF type, e.g. ``TypedValue(7, GGUFValueType.INT32)``.

    For arrays, ``value_type`` is ``GGUFValueType.ARRAY`` and ``item_type`` the element type.
    """

    value: Any
    value_type: GGUFValueType
    item_type: GGUFValueType | None = None


def _int_type(values: Iterable[int]) -> GGUFValueType:
    values = list(values)
    low, high = (min(values), max(values)) if values else (0, 0)
    if low >= 0:
        return GGUFValueType.UINT32 if high < 2**32 else GGUFValueType.UINT64
    return GGUFValueType.INT32 if -(2**31) <= low and high < 2**31 else GGUFValueType.INT64


def _scalar_type(value: Any, key: str) -> GGUFValueType:
    if isinstance(value, (bool, np.bool_)):
        return GGUFValueType.BOOL
    if isinstance(value, (int, np.integer)):
        return _int_type([int(value)])
    if isinstance(value, (float, np.floating)):
        return GGUFValueType.FLOAT32
    if isinstance(value, str):
        return GGUFValueType.STRING
    raise ConfigError(
        f"GGUF metadata {key!r}: cannot store a {type(value).__name__}; use str, int, float, bool, "
        "a list of one of those, or TypedValue(value, GGUFValueType...)."
    )


def _typed(key: str, value: Any) -> TypedValue:
    """Infer a GGUF type: bool, int (u32, i32, u64 or i64 by range), float32, str or arrays of those."""
    if isinstance(value, TypedValue):
        return value
    if isinstance(value, (list, tuple, np.ndarray)):
        items = list(value.tolist() if isinstance(value, np.ndarray) else value)
        kinds = {_scalar_type(item, key) for item in items} or {GGUFValueType.STRING}
        if kinds <= {GGUFValueType.UINT32, GGUFValueType.UINT64, GGUFValueType.INT32, GGUFValueType.INT64}:
            return TypedValue(items, GGUFValueType.ARRAY, _int_type(items))
        if kinds <= {GGUFValueType.UINT32, GGUFValueType.UINT64, GGUFValueType.INT32, GGUFValueType.INT64, GGUFValueType.FLOAT32}:
            return TypedValue([float(item) for item in items], GGUFValueType.ARRAY, GGUFValueType.FLOAT32)
        if len(kinds) != 1:
            raise ConfigError(f"GGUF metadata {key!r}: array mixes types {sorted(k.name for k in kinds)}.")
        return TypedValue(items, GGUFValueType.ARRAY, kinds.pop())
    return TypedValue(value.item() if isinstance(value, np.generic) else value, _scalar_type(value, key))


def choose_tensor_type(name: str, shape: tuple[int, ...], requested: GGMLQuantizationType) -> GGMLQuantizationType:
    """Return the type a tensor is stored as: ``requested`` for matrices it fits, F32 otherwise.

    As llama.cpp does, vectors (norm weights, biases) stay F32; a matrix whose
    rows do not split into 32-value blocks falls back to F16 (or F32 if asked).
    """
    if len(shape) < 2 or requested == Q.F32:
        return Q.F32
    if requested in (Q.F16, Q.BF16) or can_quantize(shape, requested):
        return requested
    logger.info("GGUF: %s %s does not fit %s blocks; stored as F16", name, shape, requested.name)
    return Q.F16


def _set_alignment(writer: GGUFWriter, value: Any) -> None:
    alignment = int(value.value if isinstance(value, TypedValue) else value)
    if alignment <= 0 or alignment & (alignment - 1):
        raise ConfigError(f"GGUF metadata 'general.alignment' must be a power of two, got {alignment}.")
    writer.add_custom_alignment(alignment)


def _add_tensor(writer: GGUFWriter, name: str, tensor: torch.Tensor, ggml_type: GGMLQuantizationType) -> None:
    data = quantize(tensor, ggml_type, name=repr(name))
    if ggml_type in (Q.F32, Q.F16):
        writer.add_tensor(name, data.numpy())
    else:
        writer.add_tensor(name, data.numpy(), raw_shape=data.shape, raw_dtype=ggml_type)


def write_gguf(
    path: str | os.PathLike[str],
    arch: str,
    metadata: Mapping[str, Any],
    tensors: Iterable[tuple[str, torch.Tensor]],
    tensor_type: str | GGMLQuantizationType = "F32",
    *,
    tensor_types: Mapping[str, str | GGMLQuantizationType] | None = None,
) -> Path:
    """Write a GGUF file at ``path`` and return its path.

    ``metadata`` maps keys to plain values (types inferred: ints as uint32 when
    non-negative, floats as float32) or :class:`TypedValue`. ``general.architecture``
    is set from ``arch``. Matrices are stored as ``tensor_type`` (F32, F16, BF16,
    Q8_0, Q4_0 or Q4_1) and vectors as F32; ``tensor_types`` overrides the type
    of single tensors by name. Tensor shapes are given in torch order.
    """
    path = Path(path)
    requested = resolve_type(tensor_type)
    if requested not in WRITABLE_TYPES:
        raise ConfigError(
            f"write_gguf: tensor_type {requested.name} is not writable; choose one of "
            f"{', '.join(t.name for t in WRITABLE_TYPES)}."
        )
    overrides = {name: resolve_type(value) for name, value in (tensor_types or {}).items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_path(path) as temporary:
            writer = GGUFWriter(str(temporary), arch, use_temp_file=True)
            for key, value in metadata.items():
                if key == "general.architecture":
                    continue
                if key == "general.alignment":
                    _set_alignment(writer, value)
                    continue
                typed = _typed(key, value)
                writer.add_key_value(key, typed.value, typed.value_type, sub_type=typed.item_type)
            for name, tensor in tensors:
                ggml_type = overrides.get(name) or choose_tensor_type(name, tuple(tensor.shape), requested)
                _add_tensor(writer, name, tensor, ggml_type)
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
            writer.close()
    except OSError as error:
        raise CheckpointError(f"Cannot write GGUF file {path}: {error}") from error
    logger.info("Wrote GGUF file %s", path)
    return path
