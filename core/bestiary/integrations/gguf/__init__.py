"""GGUF support: reading, dequantizing, quantizing, writing, kept-quantized layers, tokenizers.

Submodules are imported on first use of a name, so ``import
bestiary.integrations.gguf`` is cheap and imports neither torch nor gguf.

- :class:`GGUFFile` / :class:`GGUFTensorInfo`: metadata and raw tensors of a file.
- :func:`dequantize`: GGML bytes to a torch tensor of any float dtype.
- :func:`quantize`: a torch tensor to GGML bytes (F32, F16, BF16, Q8_0, Q4_0, Q4_1).
- :func:`write_gguf`: write a GGUF file atomically.
- :class:`QuantizedLinear`, :class:`QuantizedEmbedding`,
  :func:`replace_linear_with_quantized`: keep Q8_0/Q4_0/Q4_1 weights packed and
  compute with them.
- :func:`tokenizer_from_gguf`: a ``tokenizers.Tokenizer`` plus special tokens and
  chat template from a file's metadata.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "GGUFFile": "reader",
    "GGUFTensorInfo": "reader",
    "dequantize": "dequant",
    "SUPPORTED_TYPES": "dequant",
    "quantize": "quantizer",
    "QUANTIZABLE_TYPES": "quantizer",
    "write_gguf": "writer",
    "QuantizedLinear": "quantized_linear",
    "QuantizedEmbedding": "quantized_linear",
    "replace_linear_with_quantized": "quantized_linear",
    "KEPT_QUANTIZED_TYPES": "quantized_linear",
    "kernel_backend": "kernels",
    "set_kernel_backend": "kernels",
    "GGUFTokenizerData": "gguf_tokenizer",
    "tokenizer_from_gguf": "gguf_tokenizer",
    "resolve_type": "ggml_types",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
