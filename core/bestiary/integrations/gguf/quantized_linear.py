"""Layers that keep GGUF Q8_0 / Q4_0 / Q4_1 weights packed and compute with them.

    layer = QuantizedLinear.from_gguf(info.raw(), "Q4_1", (out_features, in_features))
    y = layer(x)                    # x @ W.T (+ bias), W never fully dequantized

    replace_linear_with_quantized(model, "model.layers.0.mlp.up_proj", info.raw(), info.ggml_type)

Packed layout (buffers, so ``.to(device)`` and ``state_dict`` carry them):

- ``qweight``: int8 ``[out, in]`` for Q8_0; for Q4_0/Q4_1 int32 ``[out, 8 * groups]``,
  the 4-bit values of each 64-value group interleaved for SIMD (layout in
  :mod:`.native_source`; ``groups = ceil(in / 64)``)
- ``scales``: float16 ``[out, blocks]`` (Q4: ``2 * groups``, a zero block pads odd counts)
- ``mins``: float16, like ``scales`` (Q4_1 only)

Q8_0 takes 1.06 bytes per weight (27% of float32), Q4_1 0.63 (16%), Q4_0 0.56 (14%).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn

from bestiary.errors import CheckpointError, ConfigError, WeightShapeError
from bestiary.nn.projection import native_project

from .ggml_types import GGMLQuantizationType, block_layout, resolve_type
from .kernels import KINDS, dequantize_packed, kernel_backend, native_backend_active, pack_q4_values, packed_matmul
from .quantizer import quantize

__all__ = [
    "QuantizedLinear",
    "QuantizedEmbedding",
    "replace_linear_with_quantized",
    "quantize_linear_layers",
    "KEPT_QUANTIZED_TYPES",
    "pack_gguf_blocks",
]

Q = GGMLQuantizationType
KEPT_QUANTIZED_TYPES: frozenset[GGMLQuantizationType] = frozenset(KINDS)
"""GGML types a model can keep packed; others are dequantized at load time."""

_VALUE_OFFSET = {Q.Q8_0: 2, Q.Q4_0: 2, Q.Q4_1: 4}


def _kept_type(ggml_type: GGMLQuantizationType | str | int, name: str) -> GGMLQuantizationType:
    resolved = resolve_type(ggml_type)
    if resolved not in KEPT_QUANTIZED_TYPES:
        kept = ", ".join(t.name for t in sorted(KEPT_QUANTIZED_TYPES))
        raise ConfigError(
            f"{name}: GGML type {resolved.name} cannot be kept quantized (supported: {kept}); "
            "dequantize it to a float dtype instead."
        )
    return resolved


def pack_gguf_blocks(
    raw: torch.Tensor | np.ndarray, ggml_type: GGMLQuantizationType | str, shape: Sequence[int], *, name: str = "<weight>"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Split GGUF blocks of a ``[out, in]`` weight into ``(qweight, scales, mins or None)``."""
    ggml_type = _kept_type(ggml_type, name)
    rows, cols = (int(dim) for dim in shape)
    block_size, type_size = block_layout(ggml_type)
    data = torch.from_numpy(np.ascontiguousarray(raw).reshape(-1).view(np.uint8)) if isinstance(raw, np.ndarray) else raw
    data = data.reshape(-1).view(torch.uint8) if data.dtype != torch.uint8 else data.reshape(-1)
    n_blocks = cols // block_size
    if cols % block_size or data.numel() != rows * n_blocks * type_size:
        raise WeightShapeError(
            f"Tensor {name}: {data.numel()} bytes of {ggml_type.name} do not hold a [{rows}, {cols}] weight "
            f"(rows must split into {block_size}-value blocks of {type_size} bytes)."
        )
    blocks = data.view(rows, n_blocks, type_size)
    scales = blocks[..., 0:2].contiguous().view(torch.float16).reshape(rows, n_blocks)
    values = blocks[..., _VALUE_OFFSET[ggml_type] :]
    if ggml_type == Q.Q8_0:
        return values.reshape(rows, -1).view(torch.int8).clone(), scales, None
    mins = blocks[..., 2:4].contiguous().view(torch.float16).reshape(rows, n_blocks) if ggml_type == Q.Q4_1 else None
    nibbles = torch.cat([values & 0x0F, values >> 4], dim=-1)  # GGUF: low nibbles 0..15, high 16..31
    padded = 2 * ((n_blocks + 1) // 2)
    pad = (lambda t: t if t is None or padded == n_blocks else torch.cat([t, t.new_zeros(rows, 1)], dim=1))
    return pack_q4_values(nibbles), pad(scales), pad(mins)


class _PackedWeight(nn.Module):
    """Shared buffer handling of the packed layers."""

    ggml_type: GGMLQuantizationType

    def _init_buffers(self, rows: int, cols: int, ggml_type: GGMLQuantizationType, device: torch.device | str | None) -> None:
        if cols % 32:
            raise ConfigError(f"{type(self).__name__}: in_features {cols} is not a multiple of 32.")
        self.ggml_type = ggml_type
        self._kind = KINDS[ggml_type]
        self._cols = cols
        kernel_backend()  # resolve (and build the native kernels) now, not on the first token
        groups = (cols // 32 + 1) // 2
        if ggml_type == Q.Q8_0:
            qweight, n_params = torch.zeros(rows, cols, dtype=torch.int8, device=device), cols // 32
        else:
            qweight, n_params = torch.zeros(rows, 8 * groups, dtype=torch.int32, device=device), 2 * groups
        self.register_buffer("qweight", qweight)
        self.register_buffer("scales", torch.zeros(rows, n_params, dtype=torch.float16, device=device))
        mins = torch.zeros(rows, n_params, dtype=torch.float16, device=device) if ggml_type == Q.Q4_1 else None
        self.register_buffer("mins", mins)

    def _set_packed(self, qweight: torch.Tensor, scales: torch.Tensor, mins: torch.Tensor | None) -> None:
        self.qweight, self.scales, self.mins = qweight, scales, mins

    def packed(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Return ``(qweight, scales, mins)``."""
        return self.qweight, self.scales, self.mins

    def dequantize_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Return the full weight ``[rows, cols]`` in ``dtype`` (exactly GGUF's dequantized values)."""
        return dequantize_packed(KINDS[self.ggml_type], self.qweight, self.scales, self.mins, self._cols).to(dtype)

    def packed_bytes(self) -> int:
        """Return the bytes the packed weight occupies (values, scales, mins)."""
        return sum(t.numel() * t.element_size() for t in self.packed() if t is not None)


class QuantizedLinear(_PackedWeight):
    """``nn.Linear`` whose weight stays block-quantized (Q8_0, Q4_0 or Q4_1).

    The output has the input's dtype; the product is accumulated in float32.
    """

    @property
    def native_matvec(self) -> bool:
        """Whether :mod:`bestiary.nn.projection` may read the packed buffers (the "native" kernel backend)."""
        return native_backend_active()

    def __init__(
        self,
        in_features: int,
        out_features: int,
        ggml_type: GGMLQuantizationType | str = "Q8_0",
        bias: bool = False,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self._init_buffers(out_features, in_features, _kept_type(ggml_type, "QuantizedLinear"), device)
        self.register_parameter("bias", nn.Parameter(torch.zeros(out_features, device=device)) if bias else None)

    @classmethod
    def from_gguf(
        cls,
        raw: torch.Tensor | np.ndarray,
        ggml_type: GGMLQuantizationType | str,
        shape: Sequence[int],
        bias: torch.Tensor | nn.Parameter | None = None,
        *,
        name: str = "<weight>",
    ) -> "QuantizedLinear":
        """Return a layer holding GGUF blocks ``raw`` of a weight of torch shape ``(out, in)``."""
        rows, cols = (int(dim) for dim in shape)
        layer = cls(cols, rows, _kept_type(ggml_type, name), bias=False, device="meta")
        layer._set_packed(*pack_gguf_blocks(raw, layer.ggml_type, shape, name=name))
        layer.bias = bias if isinstance(bias, nn.Parameter) or bias is None else nn.Parameter(bias)
        return layer

    @classmethod
    def from_float(
        cls, weight: torch.Tensor, ggml_type: GGMLQuantizationType | str, bias: torch.Tensor | None = None
    ) -> "QuantizedLinear":
        """Return a layer holding ``weight`` ``[out, in]`` quantized to ``ggml_type`` (as llama.cpp would)."""
        ggml_type = _kept_type(ggml_type, "QuantizedLinear.from_float")
        raw = quantize(weight, ggml_type, name="QuantizedLinear weight")
        return cls.from_gguf(raw, ggml_type, tuple(weight.shape), bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        if shape[-1] != self.in_features:
            raise WeightShapeError(
                f"QuantizedLinear expects inputs with {self.in_features} features, got shape {tuple(shape)}."
            )
        fast = native_project(x, (self,)) if native_backend_active() else None
        if fast is not None:
            return fast[0]
        buffers = self._buffers  # direct dict reads: nn.Module.__getattr__ costs microseconds per token
        out = packed_matmul(x.reshape(-1, shape[-1]), self._kind, buffers["qweight"], buffers["scales"], buffers["mins"])
        bias = self._parameters.get("bias")
        if bias is not None:
            out += bias
        out = out.view(*shape[:-1], self.out_features)
        return out if x.dtype is torch.float32 else out.to(x.dtype)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"ggml_type={self.ggml_type.name}, bias={self.bias is not None}"
        )


class QuantizedEmbedding(_PackedWeight):
    """``nn.Embedding`` whose table stays block-quantized; looked-up rows are dequantized."""

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        ggml_type: GGMLQuantizationType | str = "Q8_0",
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim, self.dtype = num_embeddings, embedding_dim, dtype
        self._init_buffers(num_embeddings, embedding_dim, _kept_type(ggml_type, "QuantizedEmbedding"), device)

    @classmethod
    def from_gguf(
        cls,
        raw: torch.Tensor | np.ndarray,
        ggml_type: GGMLQuantizationType | str,
        shape: Sequence[int],
        dtype: torch.dtype = torch.float32,
        *,
        name: str = "<embedding>",
    ) -> "QuantizedEmbedding":
        """Return an embedding holding GGUF blocks ``raw`` of a table of torch shape ``(num, dim)``."""
        num, dim = (int(size) for size in shape)
        layer = cls(num, dim, ggml_type, dtype, device="meta")
        layer._set_packed(*pack_gguf_blocks(raw, layer.ggml_type, shape, name=name))
        return layer

    @classmethod
    def tied_to(cls, linear: QuantizedLinear, dtype: torch.dtype = torch.float32) -> "QuantizedEmbedding":
        """Return an embedding sharing ``linear``'s packed weight (tied input/output embeddings)."""
        layer = cls(linear.out_features, linear.in_features, linear.ggml_type, dtype, device="meta")
        layer._set_packed(*linear.packed())
        return layer

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        flat = input_ids.reshape(-1)
        mins = None if self.mins is None else self.mins.index_select(0, flat)
        rows = dequantize_packed(
            KINDS[self.ggml_type], self.qweight.index_select(0, flat), self.scales.index_select(0, flat), mins, self._cols
        )
        return rows.to(self.dtype).reshape(*input_ids.shape, self.embedding_dim)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, ggml_type={self.ggml_type.name}"


def _parent_and_attr(module: nn.Module, name: str) -> tuple[nn.Module, str]:
    path, _, attr = name.rpartition(".")
    try:
        parent = module.get_submodule(path) if path else module
    except AttributeError as error:
        raise CheckpointError(f"Module has no submodule {path!r} (from {name!r}): {error}") from None
    if not hasattr(parent, attr):
        raise CheckpointError(f"Module {path or type(module).__name__!r} has no attribute {attr!r} (from {name!r}).")
    return parent, attr


def replace_linear_with_quantized(
    module: nn.Module,
    name: str,
    raw: torch.Tensor | np.ndarray,
    ggml_type: GGMLQuantizationType | str,
    shape: Sequence[int] | None = None,
) -> QuantizedLinear:
    """Swap the ``nn.Linear`` at dotted path ``name`` in ``module`` for a :class:`QuantizedLinear`.

    ``raw`` holds the GGUF blocks of the weight; ``shape`` (torch order, ``(out, in)``)
    defaults to the existing layer's. The existing bias (possibly still on the meta
    device, to be filled by the loader) is kept under the same name. Returns the new layer.
    """
    parent, attr = _parent_and_attr(module, name)
    old = getattr(parent, attr)
    if not isinstance(old, (nn.Linear, QuantizedLinear)):
        raise CheckpointError(f"{name!r} is a {type(old).__name__}, not an nn.Linear; it cannot hold a quantized weight.")
    expected = (old.out_features, old.in_features)
    shape = tuple(int(dim) for dim in (shape or expected))
    if shape != expected:
        raise WeightShapeError(
            f"Weight for {name!r} has shape {shape} but the layer is {expected} (out_features, in_features)."
        )
    new = QuantizedLinear.from_gguf(raw, ggml_type, shape, old.bias, name=repr(name + ".weight"))
    setattr(parent, attr, new)
    return new


def quantize_linear_layers(
    module: nn.Module, ggml_type: GGMLQuantizationType | str, *, skip: Sequence[str] = ()
) -> list[str]:
    """Quantize every ``nn.Linear`` of ``module`` whose input size splits into 32-blocks, in place.

    Layers whose dotted name starts with an entry of ``skip`` are left alone.
    Returns the names of the replaced layers.
    """
    ggml_type = _kept_type(ggml_type, "quantize_linear_layers")
    targets = [
        name
        for name, child in module.named_modules()
        if isinstance(child, nn.Linear) and child.in_features % 32 == 0 and not any(name.startswith(s) for s in skip)
    ]
    for name in targets:
        parent, attr = _parent_and_attr(module, name)
        old = getattr(parent, attr)
        setattr(parent, attr, QuantizedLinear.from_float(old.weight.detach(), ggml_type, old.bias))
    return targets

