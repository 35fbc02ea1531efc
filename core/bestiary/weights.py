"""Where checkpoint weights come from: finding the files and reading tensors.

A :class:`WeightSource` hides whether tensors live in one safetensors file,
in shards listed by an index, or (only when no safetensors exist) in a
``pytorch_model.bin`` read with ``torch.load(weights_only=True)``. Other
formats (GGUF) provide the same three methods.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Iterable, Protocol

import torch

from bestiary.errors import CheckpointError, HubError
from bestiary.hub import HubOptions, resolve_file
from bestiary.safetensors_io import SafetensorsFile

logger = logging.getLogger(__name__)

SAFE_WEIGHTS = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
PICKLE_WEIGHTS = "pytorch_model.bin"
PICKLE_INDEX = "pytorch_model.bin.index.json"


class WeightSource(Protocol):
    """Anything the loader can read checkpoint tensors from."""

    description: str

    def keys(self) -> list[str]: ...

    def shape(self, name: str) -> tuple[int, ...]: ...

    def read(self, name: str, dtype: torch.dtype | None, device: torch.device | None) -> torch.Tensor: ...

    def close(self) -> None: ...


class SafetensorsSource:
    """Tensors from one or several safetensors files."""

    def __init__(self, files: list[Path], weight_map: dict[str, Path] | None = None) -> None:
        self.files = {path: SafetensorsFile(path) for path in _progress(files, "Reading checkpoint headers")}
        if weight_map is None:
            weight_map = {name: path for path, handle in self.files.items() for name in handle.keys()}
        else:
            for name, path in weight_map.items():
                if name not in self.files[path].tensors:
                    raise CheckpointError(
                        f"The index lists tensor {name!r} in {path.name}, but that file does not contain it. "
                        "The checkpoint is inconsistent; download or save it again."
                    )
        self.weight_map = weight_map
        self.description = ", ".join(str(path) for path in files)

    def keys(self) -> list[str]:
        return list(self.weight_map)

    def shape(self, name: str) -> tuple[int, ...]:
        return self.files[self.weight_map[name]].tensors[name].shape

    def read(self, name: str, dtype: torch.dtype | None, device: torch.device | None) -> torch.Tensor:
        return self.files[self.weight_map[name]].read(name, dtype, device)

    def close(self) -> None:
        for handle in self.files.values():
            handle.close()


class PickleSource:
    """Tensors from ``pytorch_model.bin`` files, unpickled with ``weights_only=True`` only."""

    def __init__(self, files: list[Path]) -> None:
        self.tensors: dict[str, torch.Tensor] = {}
        for path in _progress(files, "Loading checkpoint shards"):
            try:
                state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except Exception as exc:
                raise CheckpointError(
                    f"Cannot read {path} with torch.load(weights_only=True): {exc}. bestiary never unpickles "
                    "arbitrary objects; convert the checkpoint to safetensors."
                ) from exc
            if not isinstance(state, dict):
                raise CheckpointError(f"{path} does not hold a state dict (found {type(state).__name__}).")
            self.tensors.update(state)
        self.description = ", ".join(str(path) for path in files)

    def keys(self) -> list[str]:
        return list(self.tensors)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.tensors[name].shape)

    def read(self, name: str, dtype: torch.dtype | None, device: torch.device | None) -> torch.Tensor:
        tensor = self.tensors[name]
        if dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(dtype)
        return tensor.to(device) if device is not None else tensor.clone()

    def close(self) -> None:
        self.tensors.clear()


def open_weights(path_or_repo: str | os.PathLike, options: HubOptions, use_safetensors: bool | None = None) -> WeightSource:
    """Find the weight files of a checkpoint and open them.

    Looks for ``model.safetensors``, then its sharded index, then (unless
    ``use_safetensors`` is True) ``pytorch_model.bin`` and its index.
    """
    single = resolve_file(path_or_repo, SAFE_WEIGHTS, options, required=False)
    if single is not None:
        return SafetensorsSource([single])
    index = resolve_file(path_or_repo, SAFE_INDEX, options, required=False)
    if index is not None:
        weight_map = _read_index(path_or_repo, index, options)
        return SafetensorsSource(sorted(set(weight_map.values())), weight_map)
    if use_safetensors:
        raise CheckpointError(f"No {SAFE_WEIGHTS} or {SAFE_INDEX} in {path_or_repo} and use_safetensors=True.")
    single = resolve_file(path_or_repo, PICKLE_WEIGHTS, options, required=False)
    if single is not None:
        return PickleSource([single])
    index = resolve_file(path_or_repo, PICKLE_INDEX, options, required=False)
    if index is not None:
        weight_map = _read_index(path_or_repo, index, options)
        return PickleSource(sorted(set(weight_map.values())))
    raise CheckpointError(
        f"No weights found in {path_or_repo}: looked for {SAFE_WEIGHTS}, {SAFE_INDEX}, {PICKLE_WEIGHTS} and "
        f"{PICKLE_INDEX}. Pass gguf_file= for a GGUF checkpoint, or save the model with save_pretrained()."
    )


def _read_index(path_or_repo: str | os.PathLike, index: Path, options: HubOptions) -> dict[str, Path]:
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{index} is not a valid shard index (needs a 'weight_map' object): {exc}") from None
    files: dict[str, Path] = {}
    for shard in sorted(set(weight_map.values())):
        try:
            files[shard] = resolve_file(path_or_repo, shard, options)
        except HubError as exc:
            raise CheckpointError(f"{index.name} lists the shard {shard}, which is missing: {exc}") from exc
    return {name: files[shard] for name, shard in weight_map.items()}


def _progress(items: list, description: str) -> Iterable:
    if len(items) <= 1:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=description, unit="file", disable=not logger.isEnabledFor(logging.WARNING))
