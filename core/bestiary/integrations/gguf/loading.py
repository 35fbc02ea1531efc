"""Loading models, configs and tokenizers from GGUF files.

The plugin that declares a GGUF architecture (``ArchitectureSpec.gguf_architectures``)
also names a converter (``gguf_converter``) holding the metadata-to-config
map and the tensor-name map; nothing here knows a model family.

Tensors are dequantized one at a time straight into the requested dtype, or
(``keep_quantized=True``) kept packed in :class:`QuantizedLinear` /
:class:`QuantizedEmbedding` layers for Q8_0, Q4_0 and Q4_1 weights.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bestiary.errors import CheckpointError
from bestiary.hub import HubOptions, resolve_file
from bestiary.registry import get_registry

from .reader import GGUFFile

logger = logging.getLogger(__name__)


def gguf_path(path_or_repo: str | os.PathLike, gguf_file: str, options: HubOptions) -> Path:
    """Resolve the GGUF file inside a folder or hub repo (or a direct path)."""
    direct = Path(gguf_file)
    if direct.is_absolute() and direct.is_file():
        return direct
    return resolve_file(path_or_repo, gguf_file, options)


def _open(path_or_repo: str | os.PathLike, gguf_file: str, options: HubOptions) -> GGUFFile:
    return GGUFFile(gguf_path(path_or_repo, gguf_file, options))


def converter_for(arch: str) -> Any:
    """The converter object the plugin declaring GGUF architecture ``arch`` registered."""
    registry = get_registry()
    spec = registry.gguf_architecture(arch).spec
    if not spec.gguf_converter:
        raise CheckpointError(f"{spec.model_type!r} declares GGUF architecture {arch!r} but no gguf_converter.")
    return registry.resolve(spec.gguf_converter)


def gguf_model_type(path_or_repo: str | os.PathLike, gguf_file: str, options: HubOptions) -> str:
    """The model_type a GGUF file loads as."""
    with _open(path_or_repo, gguf_file, options) as handle:
        return config_dict(handle)["model_type"]


def config_dict(handle: GGUFFile) -> dict[str, Any]:
    """A config.json-style dict from an open GGUF file."""
    return converter_for(handle.architecture).config_from_metadata(handle.metadata, handle.tensor_names)


def config_dict_from_gguf(path_or_repo: str | os.PathLike, gguf_file: str, options: HubOptions) -> dict[str, Any]:
    """Read a GGUF file's metadata as a config dict (what ``Config.from_pretrained(gguf_file=)`` uses)."""
    with _open(path_or_repo, gguf_file, options) as handle:
        return config_dict(handle)


def tokenizer_from_gguf(path_or_repo: str | os.PathLike, gguf_file: str, options: HubOptions) -> Any:
    """Build a bestiary ``Tokenizer`` from a GGUF file's tokenizer metadata and chat template."""
    from bestiary.processing.tokenization import Tokenizer

    from .gguf_tokenizer import tokenizer_from_gguf as read_tokenizer

    path = gguf_path(path_or_repo, gguf_file, options)
    data = read_tokenizer(str(path))
    tokenizer = Tokenizer(**data.wrapper_kwargs(), name_or_path=str(path), gguf_pre=data.pre or "default")
    return tokenizer


def _undo_row_interleave(rows: int, heads: int) -> torch.Tensor:
    """Row order that turns llama.cpp's per-head interleaved Q/K rows back into transformers' order."""
    head_dim = rows // heads
    return torch.arange(rows).reshape(heads, head_dim // 2, 2).transpose(1, 2).reshape(-1)


def interleave_rows(rows: int, heads: int) -> torch.Tensor:
    """Row order llama.cpp writes Q/K in (the inverse of :func:`_undo_row_interleave`)."""
    head_dim = rows // heads
    return torch.arange(rows).reshape(heads, 2, head_dim // 2).transpose(1, 2).reshape(-1)


class GGUFWeightSource:
    """A weight source (see :mod:`bestiary.weights`) reading a GGUF file through a plugin's name map."""

    def __init__(self, path: Path, config: Any) -> None:
        self.file = GGUFFile(path)
        self.arch = self.file.architecture
        self.converter = converter_for(self.arch)
        self.config = config
        self.description = str(path)
        self.to_gguf: dict[str, str] = {}
        self.unmapped: list[str] = []
        for name in self.file.tensor_names:
            mapped = self.converter.tensor_name(name)
            if mapped is None:
                self.unmapped.append(name)
            else:
                self.to_gguf[mapped] = name
        self.consumed: set[str] = set()

    def keys(self) -> list[str]:
        return [name for name in self.to_gguf if name not in self.consumed] + self.unmapped

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.file.tensor(self.to_gguf.get(name, name)).shape)

    def _permutation(self, name: str, rows: int) -> torch.Tensor | None:
        heads = self.converter.row_permutation(self.arch, name, self.config)
        return None if heads is None else _undo_row_interleave(rows, heads)

    def read(self, name: str, dtype: torch.dtype | None, device: torch.device | None) -> torch.Tensor:
        info = self.file.tensor(self.to_gguf.get(name, name))
        tensor = info.dequantize(dtype or torch.float32)
        order = self._permutation(name, tensor.shape[0])
        if order is not None:
            tensor = tensor[order]
        return tensor.to(device) if device is not None else tensor

    def raw_rows(self, name: str) -> tuple[torch.Tensor, Any, tuple[int, ...]]:
        """(raw block bytes as [rows, bytes_per_row], GGML type, torch shape), with Q/K rows reordered."""
        info = self.file.tensor(self.to_gguf[name])
        rows = info.shape[0]
        raw = info.raw().reshape(rows, -1)
        order = self._permutation(name, rows)
        if order is not None:
            raw = raw[order]
        return raw.contiguous(), info.ggml_type, tuple(info.shape)

    def prepare_model(self, model: nn.Module, keep_quantized: bool) -> set[str]:
        """Swap Linear/Embedding layers whose weights are Q8_0/Q4_0/Q4_1 for packed layers.

        Returns the model keys those layers now hold (the loader must not expect them).
        """
        if not keep_quantized:
            return set()
        from .quantized_linear import KEPT_QUANTIZED_TYPES, QuantizedEmbedding, QuantizedLinear, replace_linear_with_quantized

        kept = {getattr(t, "name", t) for t in KEPT_QUANTIZED_TYPES}
        filled: set[str] = set()
        quantized_linears: dict[str, QuantizedLinear] = {}
        for module_name, module in list(model.named_modules()):
            weight_name = f"{module_name}.weight"
            if not isinstance(module, nn.Linear) or weight_name not in self.to_gguf:
                continue
            raw, ggml_type, shape = self.raw_rows(weight_name)
            if ggml_type.name not in kept:
                continue
            quantized_linears[module_name] = replace_linear_with_quantized(model, module_name, raw, ggml_type, shape)
            self.consumed.add(weight_name)
            filled.update(f"{module_name}.{key}" for key in ("qweight", "scales", "mins"))
        filled |= self._quantize_embeddings(model, kept, quantized_linears, QuantizedEmbedding, QuantizedLinear)
        logger.info("Kept %d layers quantized from %s.", len(quantized_linears), self.description)
        return filled

    def _quantize_embeddings(self, model, kept, quantized_linears, embedding_class, linear_class) -> set[str]:
        filled: set[str] = set()
        tied = bool(getattr(model.config, "tie_word_embeddings", False))
        for module_name, module in list(model.named_modules()):
            weight_name = f"{module_name}.weight"
            if not isinstance(module, nn.Embedding) or weight_name not in self.to_gguf:
                continue
            raw, ggml_type, shape = self.raw_rows(weight_name)
            if ggml_type.name not in kept:
                continue
            parent_name, _, attr = module_name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
            if tied and isinstance(output, nn.Linear) and output.weight.shape == shape:
                head = linear_class.from_gguf(raw, ggml_type, shape, name=weight_name)
                head_name = next(name for name, m in model.named_modules() if m is output)
                head_parent_name, _, head_attr = head_name.rpartition(".")
                setattr(model.get_submodule(head_parent_name) if head_parent_name else model, head_attr, head)
                setattr(parent, attr, embedding_class.tied_to(head, dtype=torch.float32))
                filled.update(f"{head_name}.{key}" for key in ("qweight", "scales", "mins"))
            else:
                setattr(parent, attr, embedding_class.from_gguf(raw, ggml_type, shape, name=weight_name))
            self.consumed.add(weight_name)
            filled.update(f"{module_name}.{key}" for key in ("qweight", "scales", "mins"))
        return filled

    def close(self) -> None:
        self.file.close()


def open_gguf_weights(path_or_repo: str | os.PathLike, gguf_file: str, options: HubOptions, config: Any) -> GGUFWeightSource:
    """Open a GGUF file as a weight source for ``PreTrainedModel.from_pretrained``."""
    return GGUFWeightSource(gguf_path(path_or_repo, gguf_file, options), config)
