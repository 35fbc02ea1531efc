"""Activation functions by the names transformers' configs use."""

from __future__ import annotations

import math

import torch
from torch import nn


class GELUTanh(nn.Module):
    """GELU with the tanh approximation ("gelu_new", "gelu_pytorch_tanh")."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.gelu(x, approximate="tanh")


class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class GELUFast(nn.Module):
    """The "gelu_fast" approximation."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * x * (1.0 + torch.tanh(x * 0.7978845608 * (1.0 + 0.044715 * x * x)))


class GELUExactNew(nn.Module):
    """The original "gelu_new" formula written out (same as GELUTanh numerically)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


_ACTIVATIONS = {
    "silu": nn.SiLU,
    "swish": nn.SiLU,
    "gelu": nn.GELU,
    "gelu_new": GELUExactNew,
    "gelu_pytorch_tanh": GELUTanh,
    "gelu_fast": GELUFast,
    "quick_gelu": QuickGELU,
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "leaky_relu": nn.LeakyReLU,
    "mish": nn.Mish,
    "relu6": nn.ReLU6,
}


def get_activation(name: str) -> nn.Module:
    """Return a new activation module for the config name ``name``."""
    try:
        return _ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(f"Unknown activation {name!r} (hidden_act); supported: {sorted(_ACTIVATIONS)}.") from None
