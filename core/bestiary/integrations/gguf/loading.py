"""Loading models, configs and tokenizers from GGUF files.

The plugin that declares a GGUF architecture (``ArchitectureSpec.gguf_architectures``)
also names a converter (``gguf_converter``) holding the metadata-to-config
map and the tensor-name map; nothing here knows a model family.

Tensors are dequantized one at a time straight into the requested dtype, or
(``keep_quantized=True``) kept packed in :class:`QuantizedLinear` /
:class:`QuantizedEmbedding` layers for Q8_0, Q4_0 and Q4_1 weights: then
loading only moves bytes. The header is parsed once per file and shared by
the config, tokenizer and weight loads; the mapped file's pages are released
tensor by tensor, so the model and the file are never resident together.
"""

from __future__ import annotations

import ctypes
import inspect
import logging
import os
import sys
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bestiary.errors import CheckpointError
from bestiary.hub import HubOptions, resolve_file
from bestiary.registry import get_registry

from .reader import GGUFFile, GGUFTensorInfo

logger = logging.getLogger(__name__)


def gguf_path(path_or_repo: str | os.PathLike, gguf_file: str, options: HubOptions) -> Path:
    """Resolve the GGUF file inside a folder or hub repo (or a direct path)."""
    direct = Path(gguf_file)
    if direct.is_absolute() and direct.is_file():
        return direct
    return resolve_file(path_or_repo, gguf_file, options)


# One parsed header is shared by the config, tokenizer and weight loads of the same file: parsing
# SmolLM2's 49k-token vocabulary costs about 0.1 s each time. The entry is replaced when the file
# changes (size, modification time or inode) and holds no resident tensor data (pages are released
# after each tensor is read, see GGUFWeightSource.read).
_CACHE_SIZE = 1
_cache: "OrderedDict[tuple, GGUFFile]" = OrderedDict()
_cache_lock = threading.Lock()


def shared_gguf_file(path: Path) -> GGUFFile:
    """Return an open :class:`GGUFFile` for ``path``, reusing the last one while the file is unchanged.

    Callers must not ``close()`` it (that would empty it for the next caller); see :func:`clear_gguf_cache`.
    """
    path = Path(path).resolve()
    try:
        stat = path.stat()
    except OSError as error:
        raise CheckpointError(f"Cannot open GGUF file {path}: {error.strerror or error}.") from error
    key = (str(path), stat.st_size, stat.st_mtime_ns, stat.st_ino)
    with _cache_lock:
        handle = _cache.get(key)
        if handle is not None:
            _cache.move_to_end(key)
            return handle
    handle = GGUFFile(path)
    with _cache_lock:
        _cache[key] = handle
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return handle


def clear_gguf_cache() -> None:
    """Forget the shared parsed GGUF header (and unmap its file once nothing else uses it)."""
    with _cache_lock:
        _cache.clear()


def _open(path_or_repo: str | os.PathLike, gguf_file: str, options: HubOptions) -> GGUFFile:
    return shared_gguf_file(gguf_path(path_or_repo, gguf_file, options))


def converter_for(arch: str) -> Any:
    """The converter object the plugin declaring GGUF architecture ``arch`` registered."""
    registry = get_registry()
    spec = registry.gguf_architecture(arch).spec
    if not spec.gguf_converter:
        raise CheckpointError(
            f"Plugin model type {spec.model_type!r} declares GGUF architecture {arch!r} but no gguf_converter; "
            "its ArchitectureSpec needs gguf_converter='module:OBJECT'."
        )
    return registry.resolve(spec.gguf_converter)


def gguf_model_type(path_or_repo: str | os.PathLike, gguf_file: str, options: HubOptions) -> str:
    """Return the model_type a GGUF file loads as."""
    return config_dict(_open(path_or_repo, gguf_file, options))["model_type"]


def config_dict(handle: GGUFFile) -> dict[str, Any]:
    """Return a config.json-style dict from an open GGUF file."""
    converter = converter_for(handle.architecture)
    if "read_tensor" in inspect.signature(converter.config_from_metadata).parameters:
        # optional: tensors that hold configuration (Llama 3's rope_freqs)
        return converter.config_from_metadata(handle.metadata, handle.tensor_names, read_tensor=handle.load_tensor)
    return converter.config_from_metadata(handle.metadata, handle.tensor_names)


def _config_tensors(converter: Any) -> frozenset[str]:
    """GGUF tensors the converter reads into the config (so they are neither weights nor unexpected)."""
    declared = getattr(converter, "config_tensors", None)
    return frozenset(declared()) if declared is not None else frozenset()


def config_dict_from_gguf(path_or_repo: str | os.PathLike, gguf_file: str, options: HubOptions) -> dict[str, Any]:
    """Read a GGUF file's metadata as a config dict (what ``Config.from_pretrained(gguf_file=)`` uses)."""
    return config_dict(_open(path_or_repo, gguf_file, options))


def gguf_has_tokenizer(path_or_repo: str | os.PathLike, gguf_file: str, options: HubOptions | None = None) -> bool:
    """Whether a GGUF file carries a tokenizer vocabulary (``tokenizer.ggml.tokens``) in its metadata."""
    return bool(_open(path_or_repo, gguf_file, options or HubOptions()).metadata.get("tokenizer.ggml.tokens"))


def tokenizer_from_gguf(path_or_repo: str | os.PathLike, gguf_file: str, options: HubOptions) -> Any:
    """Build a bestiary ``Tokenizer`` from a GGUF file's tokenizer metadata and chat template."""
    from bestiary.processing.tokenization import Tokenizer

    from .gguf_tokenizer import tokenizer_from_gguf as read_tokenizer

    handle = _open(path_or_repo, gguf_file, options)
    data = read_tokenizer(handle)
    return Tokenizer(**data.wrapper_kwargs(), name_or_path=str(handle.path), gguf_pre=data.pre or "default")


def _undo_row_interleave(rows: int, heads: int) -> torch.Tensor:
    """Row order that turns llama.cpp's per-head interleaved Q/K rows back into transformers' order."""
    head_dim = rows // heads
    return torch.arange(rows).reshape(heads, head_dim // 2, 2).transpose(1, 2).reshape(-1)


def interleave_rows(rows: int, heads: int) -> torch.Tensor:
    """Row order llama.cpp writes Q/K in (the inverse of :func:`_undo_row_interleave`)."""
    head_dim = rows // heads
    return torch.arange(rows).reshape(heads, 2, head_dim // 2).transpose(1, 2).reshape(-1)


class GGUFWeightSource:
    """A weight source (see :mod:`bestiary.weights`) reading a GGUF file through a plugin's name map.

    Tensors are decoded one at a time straight into the requested dtype; the
    file's pages behind each tensor are released once it is read, so peak
    memory stays near the size of the loaded model, not model plus file.
    """

    def __init__(self, path: Path, config: Any) -> None:
        self.file = shared_gguf_file(path)
        self.arch = self.file.architecture
        self.converter = converter_for(self.arch)
        self.config = config
        self.description = str(path)
        self.to_gguf: dict[str, str] = {}
        self.unmapped: list[str] = []
        config_tensors = _config_tensors(self.converter)
        for name in self.file.tensor_names:
            if name in config_tensors:
                continue
            mapped = self.converter.tensor_name(name)
            if mapped is None:
                self.unmapped.append(name)
            else:
                self.to_gguf[mapped] = name
        self.consumed: set[str] = set()

    def keys(self) -> list[str]:
        """Return the checkpoint keys still to be read (transformers names; unmapped GGUF names last)."""
        return [name for name in self.to_gguf if name not in self.consumed] + self.unmapped

    def shape(self, name: str) -> tuple[int, ...]:
        """Return the torch-order shape of checkpoint key ``name``."""
        return tuple(self.file.tensor(self.to_gguf.get(name, name)).shape)

    def _permutation(self, name: str, rows: int) -> torch.Tensor | None:
        heads = self.converter.row_permutation(self.arch, name, self.config)
        return None if heads is None else _undo_row_interleave(rows, heads)

    def read(self, name: str, dtype: torch.dtype | None, device: torch.device | None) -> torch.Tensor:
        """Return checkpoint key ``name`` decoded to ``dtype`` (float32 by default), owning its memory."""
        from .dequant import dequantize

        info = self.file.tensor(self.to_gguf.get(name, name))
        raw = info.raw()
        order = self._permutation(name, info.shape[0]) if info.shape else None
        if order is not None:  # reorder the (few) stored bytes, not the decoded values
            raw = raw.view(info.shape[0], -1)[order]
        label = f"{info.name!r} of {self.description}"
        tensor = dequantize(raw, info.ggml_type, info.shape, dtype=dtype or torch.float32, name=label)
        if _shares_memory(tensor, info):
            tensor = tensor.clone()  # never let a parameter alias the file's memory map
        release_pages(info)
        return tensor.to(device) if device is not None else tensor

    def raw_rows(self, name: str) -> tuple[torch.Tensor, Any, tuple[int, ...]]:
        """Return (raw block bytes as ``[rows, bytes_per_row]``, GGML type, torch shape), Q/K rows reordered."""
        info = self.file.tensor(self.to_gguf[name])
        rows = info.shape[0]
        raw = info.raw().reshape(rows, -1)
        order = self._permutation(name, rows)
        if order is not None:
            raw = raw[order]
        return raw, info.ggml_type, tuple(info.shape)

    def prepare_model(self, model: nn.Module, keep_quantized: bool) -> set[str]:
        """Swap Linear/Embedding layers whose weights are Q8_0/Q4_0/Q4_1 for packed layers.

        Only bytes are moved (no float work). Returns the model keys those
        layers now hold (the loader must not expect them).
        """
        if not keep_quantized:
            return set()
        from .quantized_linear import KEPT_QUANTIZED_TYPES

        kept = {t.name for t in KEPT_QUANTIZED_TYPES}
        embedding_dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
        tied = bool(getattr(model.config, "tie_word_embeddings", False))
        output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        filled: set[str] = set()
        count = 0
        for module_name, module in list(model.named_modules()):
            weight_name = f"{module_name}.weight"
            if not isinstance(module, (nn.Linear, nn.Embedding)) or weight_name not in self.to_gguf:
                continue
            if weight_name in self.consumed:
                continue
            info = self.file.tensor(self.to_gguf[weight_name])
            if info.ggml_type.name not in kept or len(info.shape) != 2:
                continue
            raw, ggml_type, shape = self.raw_rows(weight_name)
            label = f"{info.name!r} of {self.description}"
            if isinstance(module, nn.Linear):
                _set_module(model, module_name, _packed_linear(raw, ggml_type, shape, module.bias, label))
                filled.update(f"{module_name}.{key}" for key in _PACKED_KEYS)
            elif tied and isinstance(output, nn.Linear) and tuple(output.weight.shape) == shape:
                head = _packed_linear(raw, ggml_type, shape, None, label)
                head_name = next(n for n, m in model.named_modules() if m is output)
                _set_module(model, head_name, head)
                _set_module(model, module_name, _embedding_tied_to(head, embedding_dtype))
                filled.update(f"{name}.{key}" for name in (head_name, module_name) for key in _PACKED_KEYS)
            else:
                _set_module(model, module_name, _packed_embedding(raw, ggml_type, shape, embedding_dtype, label))
                filled.update(f"{module_name}.{key}" for key in _PACKED_KEYS)
            self.consumed.add(weight_name)
            release_pages(info)
            count += 1
        logger.info("Kept %d weights quantized from %s.", count, self.description)
        return filled

    def close(self) -> None:
        """Drop this source's references (the parsed header stays shared; see :func:`clear_gguf_cache`).

        Pages released after each tensor come back when a neighbour is read
        (the kernel maps pages around a fault), so every tensor's pages are
        released again here: about 55 MiB of a 94 MiB file stayed resident otherwise.
        """
        for info in self.file.tensors:
            release_pages(info)
        self.to_gguf, self.unmapped = {}, []


def open_gguf_weights(path_or_repo: str | os.PathLike, gguf_file: str, options: HubOptions, config: Any) -> GGUFWeightSource:
    """Open a GGUF file as a weight source for ``PreTrainedModel.from_pretrained``."""
    return GGUFWeightSource(gguf_path(path_or_repo, gguf_file, options), config)


# ---------------------------------------------------------------- memory of the mapped file

_MADV_DONTNEED = 4  # Linux
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_libc: Any = None


def release_pages(info: GGUFTensorInfo) -> None:
    """Tell the kernel the file pages behind ``info`` may be dropped from this process (Linux only).

    The map is private and never written, so a later read simply faults the
    bytes in again from the file; until then they stop counting as resident.
    """
    global _libc
    if not sys.platform.startswith("linux") or info.n_bytes == 0:
        return
    if _libc is None:
        try:
            _libc = ctypes.CDLL(None, use_errno=True)
            _libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        except (OSError, AttributeError):
            _libc = False
    if not _libc:
        return
    start = info.data.ctypes.data
    first = start - start % _PAGE
    last = -(-(start + info.n_bytes) // _PAGE) * _PAGE
    _libc.madvise(first, last - first, _MADV_DONTNEED)


def _shares_memory(tensor: torch.Tensor, info: GGUFTensorInfo) -> bool:
    start = info.data.ctypes.data
    return start <= tensor.data_ptr() < start + max(info.n_bytes, 1)


# ---------------------------------------------------------------- packed layers without float work

_PACKED_KEYS = ("qweight", "scales", "mins")
_pack_checked: dict[str, bool] = {}


def _native_pack(raw: torch.Tensor, ggml_type: Any, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None] | None:
    """Repack GGUF blocks into the packed layers' buffers with the C decoders (None when unavailable)."""
    from .dequant_native import load_dequant_kernels
    from .ggml_types import block_layout

    kernels = load_dequant_kernels()
    rows, cols = shape
    block_size, _ = block_layout(ggml_type)
    if kernels is None or cols % block_size:
        return None
    raw = raw.contiguous()
    n_blocks = cols // block_size
    scales_width = n_blocks if ggml_type.name == "Q8_0" else 2 * ((n_blocks + 1) // 2)
    scales = torch.empty(rows, scales_width, dtype=torch.float16)
    if ggml_type.name == "Q8_0":
        values = torch.empty(rows, cols, dtype=torch.int8)
        kernels.pack_q8_0(raw.data_ptr(), rows, n_blocks, values.data_ptr(), scales.data_ptr())
        return values, scales, None
    words = torch.empty(rows, 8 * ((n_blocks + 1) // 2), dtype=torch.int32)
    mins = torch.empty_like(scales) if ggml_type.name == "Q4_1" else None
    type_id = 2 if ggml_type.name == "Q4_0" else 3
    status = kernels.pack_q4(
        type_id, raw.data_ptr(), rows, n_blocks, words.data_ptr(), scales.data_ptr(), None if mins is None else mins.data_ptr()
    )
    return (words, scales, mins) if status == 0 else None


def _fast_pack_agrees(raw: torch.Tensor, ggml_type: Any, shape: tuple[int, ...]) -> bool:
    """Check once per type and process that the native repacking equals the layers' own packing."""
    from .quantized_linear import pack_gguf_blocks

    if ggml_type.name not in _pack_checked:
        rows = min(shape[0], 4)
        sample = raw[:rows].contiguous()
        ours = _native_pack(sample, ggml_type, (rows, shape[1]))
        theirs = pack_gguf_blocks(sample.reshape(-1), ggml_type, (rows, shape[1]))
        agree = ours is not None and all(
            (a is None and b is None) or (a is not None and b is not None and a.dtype == b.dtype and torch.equal(a, b))
            for a, b in zip(ours, theirs)
        )
        if ours is not None and not agree:
            logger.warning("Native GGUF repacking disagrees with pack_gguf_blocks for %s; using the slower path.", ggml_type.name)
        _pack_checked[ggml_type.name] = agree
    return _pack_checked[ggml_type.name]


def _fill_packed(layer: nn.Module, raw: torch.Tensor, ggml_type: Any, shape: tuple[int, ...], label: str) -> None:
    from .quantized_linear import pack_gguf_blocks

    packed = _native_pack(raw, ggml_type, shape) if _fast_pack_agrees(raw, ggml_type, shape) else None
    if packed is None:
        packed = pack_gguf_blocks(raw.contiguous().reshape(-1), ggml_type, shape, name=label)
    for key, tensor in zip(_PACKED_KEYS, packed):
        expected = layer._buffers.get(key)
        if (expected is None) != (tensor is None) or (
            tensor is not None and (tensor.shape != expected.shape or tensor.dtype != expected.dtype)
        ):
            raise CheckpointError(
                f"Tensor {label} ({ggml_type.name}, shape {shape}): packed buffer {key!r} does not fit "
                f"{type(layer).__name__}; load with keep_quantized=False."
            )
        setattr(layer, key, tensor)


def _packed_linear(raw: torch.Tensor, ggml_type: Any, shape: tuple[int, ...], bias: Any, label: str) -> nn.Module:
    from .quantized_linear import QuantizedLinear

    rows, cols = shape
    layer = QuantizedLinear(cols, rows, ggml_type, bias=False, device="meta")
    _fill_packed(layer, raw, ggml_type, shape, label)
    layer.bias = bias  # possibly still on the meta device: the loader fills it like any parameter
    return layer


def _packed_embedding(raw: torch.Tensor, ggml_type: Any, shape: tuple[int, ...], dtype: torch.dtype, label: str) -> nn.Module:
    from .quantized_linear import QuantizedEmbedding

    layer = QuantizedEmbedding(shape[0], shape[1], ggml_type, dtype, device="meta")
    _fill_packed(layer, raw, ggml_type, shape, label)
    return layer


def _embedding_tied_to(head: nn.Module, dtype: torch.dtype) -> nn.Module:
    from .quantized_linear import QuantizedEmbedding

    return QuantizedEmbedding.tied_to(head, dtype=dtype)


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, attr, module)
