"""Reading and writing safetensors files.

The reader parses the header itself and checks every tensor's byte range
against the file size before reading, so a truncated or corrupt file fails
with an error naming the file and the tensor. Tensors are read with
``readinto`` straight into their final buffers: no memory map stays alive and
no tensor is held twice.
"""

from __future__ import annotations

import json
import math
import os
import struct
from pathlib import Path
from typing import Iterable, Mapping

import torch

from bestiary.errors import CheckpointError
from bestiary.files import atomic_path

DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}
DTYPE_NAMES = {dtype: name for name, dtype in DTYPES.items()}
_MAX_HEADER = 100 * 1024 * 1024


class TensorInfo:
    """Where one tensor lives inside a safetensors file."""

    __slots__ = ("name", "dtype", "shape", "start", "end")

    def __init__(self, name: str, dtype: torch.dtype, shape: tuple[int, ...], start: int, end: int) -> None:
        self.name, self.dtype, self.shape, self.start, self.end = name, dtype, shape, start, end


class SafetensorsFile:
    """An open safetensors file whose header has been validated."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        try:
            self._handle = open(self.path, "rb", buffering=0)
        except OSError as exc:
            raise CheckpointError(f"Cannot open weights file {self.path}: {exc}") from exc
        self.file_size = os.fstat(self._handle.fileno()).st_size
        self.metadata: dict[str, str] = {}
        self.tensors: dict[str, TensorInfo] = self._read_header()

    def _fail(self, problem: str) -> CheckpointError:
        return CheckpointError(
            f"{self.path} is not a valid safetensors file: {problem}. "
            "The file may be truncated or corrupt; download or save it again."
        )

    def _read_header(self) -> dict[str, TensorInfo]:
        prefix = self._handle.read(8)
        if len(prefix) < 8:
            raise self._fail(f"it has only {self.file_size} bytes, fewer than the 8-byte header length")
        (header_size,) = struct.unpack("<Q", prefix)
        if header_size > _MAX_HEADER or 8 + header_size > self.file_size:
            raise self._fail(f"its header claims {header_size} bytes but the file has {self.file_size}")
        try:
            header = json.loads(self._handle.read(header_size))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise self._fail(f"its header is not valid JSON ({exc})") from None
        if not isinstance(header, dict):
            raise self._fail("its header is not a JSON object")
        self.metadata = header.pop("__metadata__", None) or {}
        data_start = 8 + header_size
        data_size = self.file_size - data_start
        tensors = {}
        for name, entry in header.items():
            tensors[name] = self._parse_entry(name, entry, data_start, data_size)
        return tensors

    def _parse_entry(self, name: str, entry: dict, data_start: int, data_size: int) -> TensorInfo:
        try:
            dtype = DTYPES[entry["dtype"]]
            shape = tuple(int(dim) for dim in entry["shape"])
            begin, end = (int(offset) for offset in entry["data_offsets"])
        except (KeyError, TypeError, ValueError) as exc:
            raise self._fail(f"tensor {name!r} has a malformed header entry ({exc!r})") from None
        expected = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
        if end - begin != expected or begin < 0:
            raise self._fail(f"tensor {name!r} spans {end - begin} bytes but its shape {list(shape)} needs {expected}")
        if end > data_size:
            raise self._fail(
                f"tensor {name!r} ends at byte {data_start + end} but the file has only {self.file_size} bytes"
            )
        return TensorInfo(name, dtype, shape, data_start + begin, data_start + end)

    def keys(self) -> list[str]:
        """Names of the tensors in the file."""
        return list(self.tensors)

    def read(self, name: str, dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> torch.Tensor:
        """Read tensor ``name``, converted to ``dtype`` (floating tensors only) and moved to ``device``."""
        info = self.tensors[name]
        nbytes = info.end - info.start
        raw = torch.empty(nbytes, dtype=torch.uint8)
        if nbytes:
            view = memoryview(raw.numpy())
            read = os.preadv(self._handle.fileno(), [view], info.start)
            while read < nbytes:  # preadv may return short reads on large requests
                chunk = os.preadv(self._handle.fileno(), [view[read:]], info.start + read)
                if chunk <= 0:
                    raise self._fail(f"reading tensor {name!r} stopped after {read} of {nbytes} bytes")
                read += chunk
        tensor = raw.view(info.dtype).reshape(info.shape)
        if dtype is not None and tensor.is_floating_point() and tensor.dtype != dtype:
            tensor = tensor.to(dtype)
        if device is not None and torch.device(device) != tensor.device:
            tensor = tensor.to(device)
        return tensor

    def close(self) -> None:
        """Close the underlying file."""
        self._handle.close()

    def __enter__(self) -> "SafetensorsFile":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def load_file(path: str | os.PathLike, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """Read every tensor of a safetensors file."""
    with SafetensorsFile(path) as handle:
        return {name: handle.read(name, dtype) for name in handle.keys()}


def save_file(tensors: Mapping[str, torch.Tensor], path: str | os.PathLike, metadata: dict[str, str] | None = None) -> None:
    """Write ``tensors`` to ``path`` atomically (temporary file, then rename)."""
    from safetensors.torch import save_file as _save

    contiguous = {name: tensor.detach().to("cpu").contiguous() for name, tensor in tensors.items()}
    with atomic_path(path) as temporary:
        _save(contiguous, str(temporary), metadata={"format": "pt", **(metadata or {})})


def tensor_nbytes(tensors: Iterable[torch.Tensor]) -> int:
    """Total bytes of ``tensors``."""
    return sum(tensor.numel() * tensor.element_size() for tensor in tensors)
