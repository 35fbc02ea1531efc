"""Normalisation layers."""

from __future__ import annotations

import functools

import torch
from torch import nn


class RMSNorm(nn.Module):
    """Root-mean-square layer norm computed in float32, as Llama-family models do."""

    def __init__(self, hidden_size: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        weight = self.weight
        float32 = hidden_states.dtype is torch.float32 and weight.dtype is torch.float32
        if float32 and not torch.compiler.is_compiling():
            # The formula below, bit for bit, in 6 tensor operations where torch.rms_norm takes 24 (its
            # mean and eps are Python numbers, each converted to a tensor on every call); this runs twice
            # per layer for every decoded token. (Compiled graphs fuse the formula below anyway.)
            size = _float32_scalar(hidden_states.shape[-1], hidden_states.device)
            eps = _float32_scalar(self.variance_epsilon, hidden_states.device)
            square_sum = (hidden_states * hidden_states).sum(-1, keepdim=True)
            inverse_rms = torch.addcdiv(eps, square_sum, size).rsqrt_()  # eps + sum / size: the mean plus eps
            return hidden_states * inverse_rms * weight
        input_dtype = hidden_states.dtype
        hidden_states = hidden_states.to(torch.float32)
        variance = hidden_states.pow(2).mean(-1, keepdim=True)
        hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)
        return weight * hidden_states.to(input_dtype)

    def extra_repr(self) -> str:
        return f"{tuple(self.weight.shape)}, eps={self.variance_epsilon}"


@functools.lru_cache(maxsize=64)
def _float32_scalar(value: float, device: torch.device) -> torch.Tensor:
    """``value`` as a 0-dim float32 tensor on ``device`` (created outside inference mode: autograd may use it)."""
    with torch.inference_mode(False):
        return torch.tensor(value, dtype=torch.float32, device=device)
