"""Writing a model (and optionally its tokenizer and chat template) as a GGUF file.

``model.save_pretrained(folder, gguf="Q8_0")`` or ``gguf="name.gguf:F16"``
writes one GGUF file through the converter of the plugin that declares the
model type's GGUF architecture: names and metadata are the plugin's, the
file format is llama.cpp's (read back by bestiary, the ``gguf`` package and
transformers).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterator

import torch

from bestiary.errors import CheckpointError, ConfigError
from bestiary.registry import get_registry

from .loading import interleave_rows
from .tokenizer_export import tokenizer_metadata
from .writer import write_gguf

logger = logging.getLogger(__name__)

EXPORT_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1")


def parse_target(spec: str) -> tuple[str | None, str]:
    """Split ``"name.gguf:Q8_0"``, ``"name.gguf"`` or ``"Q8_0"`` into (file name or None, tensor type)."""
    name, _, tensor_type = spec.partition(":")
    if not tensor_type and not name.endswith(".gguf"):
        name, tensor_type = "", name
    tensor_type = (tensor_type or "F16").upper()
    if tensor_type not in EXPORT_TYPES:
        raise ConfigError(
            f"save_pretrained(gguf={spec!r}): tensor type {tensor_type} is not writable; choose one of "
            f"{', '.join(EXPORT_TYPES)} (e.g. gguf='model.gguf:Q8_0')."
        )
    return name or None, tensor_type


def converter_for_model_type(model_type: str) -> Any:
    """The converter of the plugin registering ``model_type`` (it must declare a GGUF architecture)."""
    registry = get_registry()
    spec = registry.architecture(model_type).spec
    if not spec.gguf_converter or not spec.gguf_architectures:
        raise CheckpointError(f"model_type {model_type!r} has no GGUF support (its plugin declares no gguf_converter).")
    return registry.resolve(spec.gguf_converter)


def save_model_as_gguf(model: Any, directory: str | Path, gguf: str, tokenizer: Any = None) -> Path:
    """Write ``model`` (and ``tokenizer`` if given) as one GGUF file in ``directory``; return its path."""
    name, tensor_type = parse_target(gguf)
    config = model.config
    converter = converter_for_model_type(config.model_type)
    arch = converter.gguf_architecture(config.model_type)
    source_name = Path(getattr(model, "name_or_path", "") or "model").name
    metadata: dict[str, Any] = {"general.name": source_name}
    metadata.update(converter.metadata_from_config(arch, config))
    if tokenizer is not None:
        metadata.update(tokenizer_metadata(tokenizer, vocab_size=getattr(config, "vocab_size", None)))
    else:
        metadata[f"{arch}.vocab_size"] = config.vocab_size
    if tensor_type.startswith("Q"):
        metadata["general.quantization_version"] = 2  # llama.cpp's current block formats
    path = Path(directory) / (name or f"model-{tensor_type}.gguf")
    write_gguf(path, arch, metadata, _tensors(model, converter, arch), tensor_type)
    logger.info("Wrote %s (%s).", path, tensor_type)
    return path


def _tied_targets(model: Any) -> set[str]:
    """Names of tensors that are tied to another (written once, under the source's name)."""
    config = getattr(model, "config", None)
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    if not getattr(text_config, "tie_word_embeddings", False):
        return set()
    return set(getattr(model, "_tied_weights_keys", {}) or {})


def _float_state(model: Any) -> Iterator[tuple[str, torch.Tensor]]:
    """Every saved tensor as float, with kept-quantized layers dequantized back to ``<layer>.weight``."""
    packed = {
        name: module
        for name, module in model.named_modules()
        if hasattr(module, "dequantize_weight") and "qweight" in getattr(module, "_buffers", {})
    }
    for name, tensor in model.state_dict().items():
        layer, _, leaf = name.rpartition(".")
        if layer in packed:
            if leaf == "qweight":
                yield f"{layer}.weight", packed[layer].dequantize_weight(torch.float32)
            elif leaf not in ("scales", "mins"):
                yield name, tensor
            continue
        yield name, tensor


def _tensors(model: Any, converter: Any, arch: str) -> Iterator[tuple[str, torch.Tensor]]:
    tied_targets = _tied_targets(model)
    for hf_name, tensor in _float_state(model):
        if hf_name in tied_targets:
            continue
        gguf_name = converter.gguf_tensor_name(hf_name)
        if gguf_name is None:
            raise CheckpointError(
                f"No GGUF name for tensor {hf_name!r}: the {arch} converter of the plugin does not map it, "
                "so this model cannot be written as GGUF (save it as safetensors instead)."
            )
        heads = converter.row_permutation(arch, hf_name, model.config)
        tensor = tensor.detach().float()
        if heads is not None:
            tensor = tensor[interleave_rows(tensor.shape[0], heads)]
        yield gguf_name, tensor
    extra_tensors = getattr(converter, "extra_tensors", None)  # optional: tensors derived from the config
    for gguf_name, values in (extra_tensors(arch, model.config) if extra_tensors else {}).items():
        yield gguf_name, torch.tensor(values, dtype=torch.float32)
