"""Key/value caches for incremental decoding.

The contract a model relies on, per attention layer:

- ``key_positions(layer_idx, cache_position)``: before the update, the
  absolute position of every key slot that ``update`` will return (-1 for an
  empty slot). Attention masks are built from it.
- ``update(key, value, layer_idx)``: store the new keys/values
  ([batch, kv_heads, new_tokens, head_dim]) and return all keys/values the
  layer attends to.
- ``get_seq_length(layer_idx)``: how many tokens have been seen.

``DynamicCache`` grows with the sequence; other caches live beside it.
"""

from __future__ import annotations

import torch

_GROWTH = 256


class Cache:
    """Base class of key/value caches."""

    is_compileable: bool = False

    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def get_seq_length(self, layer_idx: int = 0) -> int:
        raise NotImplementedError

    def key_positions(self, layer_idx: int, cache_position: torch.Tensor) -> torch.Tensor:
        """Absolute positions of the key slots ``update`` will return for this step."""
        total = self.get_seq_length(layer_idx) + cache_position.shape[0]
        return torch.arange(total, device=cache_position.device)

    def get_max_cache_shape(self) -> int | None:
        """Maximum number of tokens the cache holds, or None when unbounded."""
        return None

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Reorder the batch dimension (beam search)."""
        raise NotImplementedError

    def crop(self, max_length: int) -> None:
        """Forget every token after the first ``max_length`` (assisted decoding rollback)."""
        raise NotImplementedError

    def reset(self) -> None:
        """Empty the cache."""
        raise NotImplementedError

    @property
    def seen_tokens(self) -> int:
        return self.get_seq_length()


class DynamicCache(Cache):
    """A cache that grows with the sequence.

    Storage grows in chunks, so each decoding step writes into preallocated
    memory instead of concatenating the whole history again.
    """

    def __init__(self) -> None:
        self._keys: list[torch.Tensor] = []
        self._values: list[torch.Tensor] = []
        self._lengths: list[int] = []

    def __len__(self) -> int:
        return len(self._keys)

    def _ensure_capacity(self, layer_idx: int, key: torch.Tensor, value: torch.Tensor, needed: int) -> None:
        if layer_idx == len(self._keys):
            capacity = needed + _GROWTH
            self._keys.append(key.new_empty(*key.shape[:2], capacity, key.shape[3]))
            self._values.append(value.new_empty(*value.shape[:2], capacity, value.shape[3]))
            self._lengths.append(0)
            return
        stored = self._keys[layer_idx]
        if needed <= stored.shape[2]:
            return
        capacity = max(needed, 2 * stored.shape[2]) + _GROWTH
        length = self._lengths[layer_idx]
        for buffers in (self._keys, self._values):
            old = buffers[layer_idx]
            grown = old.new_empty(*old.shape[:2], capacity, old.shape[3])
            grown[:, :, :length] = old[:, :, :length]
            buffers[layer_idx] = grown

    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        if layer_idx > len(self._keys):
            raise IndexError(f"Cache layers must be filled in order; got layer {layer_idx} with {len(self._keys)} stored.")
        start = self._lengths[layer_idx] if layer_idx < len(self._keys) else 0
        end = start + key.shape[2]
        self._ensure_capacity(layer_idx, key, value, end)
        self._keys[layer_idx][:, :, start:end] = key
        self._values[layer_idx][:, :, start:end] = value
        self._lengths[layer_idx] = end
        return self._keys[layer_idx][:, :, :end], self._values[layer_idx][:, :, :end]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self._lengths[layer_idx] if layer_idx < len(self._lengths) else 0

    def layer(self, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The stored keys and values of one layer."""
        length = self._lengths[layer_idx]
        return self._keys[layer_idx][:, :, :length], self._values[layer_idx][:, :, :length]

    def __getitem__(self, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.layer(layer_idx)

    def __iter__(self):
        return (self.layer(i) for i in range(len(self._keys)))

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        for buffers in (self._keys, self._values):
            for i, stored in enumerate(buffers):
                buffers[i] = stored.index_select(0, beam_idx.to(stored.device))

    def crop(self, max_length: int) -> None:
        if max_length < 0:
            max_length = self.get_seq_length() + max_length
        self._lengths = [min(length, max_length) for length in self._lengths]

    def reset(self) -> None:
        self._keys, self._values, self._lengths = [], [], []

    def batch_repeat_interleave(self, repeats: int) -> None:
        """Repeat each batch row ``repeats`` times (expanding a prompt cache for several return sequences)."""
        for buffers in (self._keys, self._values):
            for i, stored in enumerate(buffers):
                buffers[i] = stored.repeat_interleave(repeats, dim=0)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Keep only the batch rows at ``indices``."""
        self.reorder_cache(indices)

    @classmethod
    def from_legacy_cache(cls, past: tuple[tuple[torch.Tensor, torch.Tensor], ...]) -> "DynamicCache":
        """Build a cache from a tuple of (key, value) per layer."""
        cache = cls()
        for layer_idx, (key, value) in enumerate(past):
            cache.update(key, value, layer_idx)
        return cache

    def to_legacy_cache(self) -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
        """Return a tuple of (key, value) per layer."""
        return tuple(self.layer(i) for i in range(len(self._keys)))
