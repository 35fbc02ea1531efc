"""The key/value cache of Whisper's decoder: self-attention keys grow, cross-attention keys are computed once.

It has the shape of an encoder-decoder cache (``self_attention_cache``,
``cross_attention_cache``, ``is_updated``) built from the core
:class:`~bestiary.generation.cache.DynamicCache`.
"""

from __future__ import annotations

import torch

from bestiary.generation.cache import DynamicCache


class EncoderDecoderCache:
    """Two caches per decoder: the growing self-attention one and the fixed cross-attention one.

    ``is_updated[layer_idx]`` says whether the cross-attention keys and values
    of that layer are already stored (they depend only on the encoder output).
    """

    def __init__(
        self, self_attention_cache: DynamicCache | None = None, cross_attention_cache: DynamicCache | None = None
    ) -> None:
        self.self_attention_cache = self_attention_cache if self_attention_cache is not None else DynamicCache()
        self.cross_attention_cache = cross_attention_cache if cross_attention_cache is not None else DynamicCache()
        self.is_updated: dict[int, bool] = {
            layer_idx: True for layer_idx in range(len(self.cross_attention_cache))
        }

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """Number of decoder tokens seen so far."""
        return self.self_attention_cache.get_seq_length(layer_idx)

    def key_positions(self, layer_idx: int, cache_position: torch.Tensor) -> torch.Tensor:
        """Absolute positions of the self-attention key slots of this step."""
        return self.self_attention_cache.key_positions(layer_idx, cache_position)

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Reorder the batch dimension of both caches."""
        self.self_attention_cache.reorder_cache(beam_idx)
        self.cross_attention_cache.reorder_cache(beam_idx)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Keep only the batch rows at ``indices`` in both caches."""
        self.reorder_cache(indices)

    def reset(self) -> None:
        """Empty both caches."""
        self.self_attention_cache.reset()
        self.cross_attention_cache.reset()
        self.is_updated = {}
