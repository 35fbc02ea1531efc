"""Reading GGUF files: metadata as plain Python values, tensors as raw memory-mapped bytes.

    gguf_file = GGUFFile("model.gguf")
    gguf_file.architecture                   # "llama"
    gguf_file.metadata["llama.block_count"]  # 30
    info = gguf_file.tensor("blk.0.attn_q.weight")
    info.shape, info.type_name               # (576, 576), "Q4_1"
    weight = info.dequantize(torch.float32)

The file is memory mapped (copy on write): nothing is read before it is used
and the file is never modified. The header is parsed by :mod:`.header`, which
agrees with the ``gguf`` package's ``GGUFReader`` but is a hundred times faster.
"""

from __future__ import annotations

import difflib
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np
from gguf import GGUFValueType

from bestiary.errors import CheckpointError

from .ggml_types import GGMLQuantizationType, block_layout
from .header import ParsedHeader, parse_header

if TYPE_CHECKING:
    import torch

__all__ = ["GGUFFile", "GGUFTensorInfo"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GGUFTensorInfo:
    """One tensor of a GGUF file: its name, torch-order shape, GGML type and raw bytes."""

    name: str
    shape: tuple[int, ...]
    ggml_type: GGMLQuantizationType
    n_elements: int
    n_bytes: int
    data: np.ndarray = field(repr=False, compare=False)
    """The tensor's bytes as a flat ``uint8`` array (a view of the memory map)."""
    file: str = field(default="", repr=False, compare=False)

    @property
    def type_name(self) -> str:
        """Return the GGML type's name, e.g. ``"Q4_1"``."""
        return self.ggml_type.name

    def raw(self) -> "torch.Tensor":
        """Return the raw bytes as a flat ``torch.uint8`` tensor sharing the memory map."""
        import torch

        return torch.from_numpy(self.data)

    def dequantize(self, dtype: "torch.dtype | None" = None) -> "torch.Tensor":
        """Return the tensor's values in ``dtype`` (float32 by default), shaped ``self.shape``."""
        from .dequant import dequantize

        label = f"{self.name!r} of {self.file}" if self.file else repr(self.name)
        return dequantize(self.raw(), self.ggml_type, self.shape, dtype=dtype, name=label)


class GGUFFile:
    """A GGUF file opened for reading: ``metadata``, ``architecture``, ``tensors``, ``tensor(name)``."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        header = parse_header(self.path)
        self.version: int = header.version
        self.metadata: dict[str, Any] = header.metadata
        self.value_types: dict[str, GGUFValueType] = header.value_types
        self._tensors = {info.name: info for info in _tensor_infos(header, self.path)}

    def __repr__(self) -> str:
        return f"GGUFFile({str(self.path)!r}, architecture={self.metadata.get('general.architecture')!r}, tensors={len(self._tensors)})"

    def __enter__(self) -> "GGUFFile":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Drop this object's references to the memory map (tensors already taken stay valid)."""
        self._tensors = {}

    @property
    def architecture(self) -> str:
        """Return ``general.architecture`` (e.g. ``"llama"``)."""
        arch = self.metadata.get("general.architecture")
        if not isinstance(arch, str):
            raise CheckpointError(
                f"GGUF file {self.path} has no 'general.architecture' metadata; it was not written "
                "by a model converter this library understands."
            )
        return arch

    @property
    def tensors(self) -> list[GGUFTensorInfo]:
        """Return every tensor in file order."""
        return list(self._tensors.values())

    @property
    def tensor_names(self) -> list[str]:
        """Return every tensor name in file order."""
        return list(self._tensors)

    def __contains__(self, name: object) -> bool:
        return name in self._tensors

    def __iter__(self) -> Iterator[GGUFTensorInfo]:
        return iter(self._tensors.values())

    def __len__(self) -> int:
        return len(self._tensors)

    def tensor(self, name: str) -> GGUFTensorInfo:
        """Return the tensor called ``name``; the error lists the closest names in the file."""
        try:
            return self._tensors[name]
        except KeyError:
            close = difflib.get_close_matches(name, self._tensors, n=3)
            hint = f" Closest names: {', '.join(close)}." if close else ""
            raise CheckpointError(
                f"GGUF file {self.path} has no tensor {name!r} ({len(self._tensors)} tensors).{hint}"
            ) from None

    def load_tensor(self, name: str, dtype: "torch.dtype | None" = None) -> "torch.Tensor":
        """Return tensor ``name`` dequantized to ``dtype`` (float32 by default)."""
        return self.tensor(name).dequantize(dtype)


def _tensor_infos(header: ParsedHeader, path: Path) -> Iterator[GGUFTensorInfo]:
    file_size = len(header.buffer)
    for raw in header.tensors:
        try:
            ggml_type = GGMLQuantizationType(raw.type_id)
        except ValueError:
            raise CheckpointError(
                f"GGUF file {path}: tensor {raw.name!r} has unknown GGML type id {raw.type_id}; "
                "the file is corrupt or newer than the installed gguf package (upgrade gguf)."
            ) from None
        shape = tuple(reversed(raw.dims))
        block_size, type_size = block_layout(ggml_type)
        n_elements = math.prod(shape)
        if raw.dims and raw.dims[0] % block_size:
            raise CheckpointError(
                f"GGUF file {path}: tensor {raw.name!r} has rows of {raw.dims[0]} values, not a "
                f"multiple of the {ggml_type.name} block size {block_size}; the file is corrupt."
            )
        n_bytes = n_elements // block_size * type_size
        start = header.data_start + raw.offset
        if start + n_bytes > file_size:
            raise CheckpointError(
                f"GGUF file {path} is truncated: tensor {raw.name!r} ({ggml_type.name}, shape {shape}) "
                f"needs bytes {start}..{start + n_bytes} but the file has {file_size}. "
                "Download or export it again."
            )
        yield GGUFTensorInfo(
            name=raw.name,
            shape=shape,
            ggml_type=ggml_type,
            n_elements=n_elements,
            n_bytes=n_bytes,
            data=np.frombuffer(header.buffer, dtype=np.uint8, count=n_bytes, offset=start),
            file=str(path),
        )
