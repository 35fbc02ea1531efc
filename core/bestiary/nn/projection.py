"""Linear projections of one input by several layers, computed together when decoding.

    query, key, value = project(hidden_states, (attn.q_proj, attn.k_proj, attn.v_proj))

Equivalent to ``tuple(layer(x) for layer in layers)``.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

__all__ = ["project"]


def project(x: torch.Tensor, layers: Sequence[nn.Module]) -> tuple[torch.Tensor, ...]:
    """Return ``layer(x)`` for each of ``layers``."""
    return tuple(layer(x) for layer in layers)
