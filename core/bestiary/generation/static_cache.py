"""Preallocated caches: :class:`StaticCache` and :class:`OffloadedStaticCache`.

A static cache allocates ``max_cache_len`` slots per layer on the first
update; the token at absolute position ``p`` lives in slot ``p``. Every step
therefore sees tensors of the same shape, which is what ``torch.compile``
needs to compile the decode step once and reuse it.

Where a step writes is recorded by :meth:`StaticCache.begin_step`. In eager
mode the cache calls it itself from ``key_positions`` (the model asks for
key positions before any update). A compiled forward cannot run that
bookkeeping (it reads a Python int), so ``generate()`` calls ``begin_step``
eagerly before each compiled step; the compiled graph then only reads the
tensors it prepared.
"""

from __future__ import annotations

import torch

from bestiary.errors import GenerationError
from bestiary.generation.cache import Cache
from bestiary.generation.offloaded_cache import compute_copy


class StaticCache(Cache):
    """A cache with ``max_cache_len`` preallocated slots per layer (slot = absolute position)."""

    is_compileable = True

    def __init__(self, max_cache_len: int, *args: object, **kwargs: object) -> None:
        if int(max_cache_len) <= 0:
            raise GenerationError(f"max_cache_len must be positive, got {max_cache_len}.")
        self.max_cache_len = int(max_cache_len)
        self._keys: list[torch.Tensor] = []
        self._values: list[torch.Tensor] = []
        self._length = 0
        self._arange: torch.Tensor | None = None
        self._write_pos: torch.Tensor | None = None
        self._positions: torch.Tensor | None = None

    # -- step bookkeeping -------------------------------------------------------
    def begin_step(self, cache_position: torch.Tensor) -> None:
        """Record that this step writes the tokens at ``cache_position`` (eager only)."""
        end = int(cache_position[-1]) + 1
        if end > self.max_cache_len:
            raise GenerationError(
                f"The static cache holds {self.max_cache_len} tokens but this step reaches position {end - 1}; "
                "create it with a larger max_cache_len (or pass max_cache_len= to generate())."
            )
        if self._arange is None or self._arange.device != cache_position.device:
            self._arange = torch.arange(self.max_cache_len, device=cache_position.device)
        self._write_pos = cache_position
        self._positions = torch.where(self._arange < end, self._arange, -1)
        self._length = end

    def key_positions(self, layer_idx: int, cache_position: torch.Tensor) -> torch.Tensor:
        if layer_idx == 0 and not torch.compiler.is_compiling():
            self.begin_step(cache_position)
        return self._positions

    # -- storage --------------------------------------------------------------------
    def _allocate(self, layer_idx: int, key: torch.Tensor, value: torch.Tensor) -> None:
        shape_k = (key.shape[0], key.shape[1], self.max_cache_len, key.shape[3])
        shape_v = (value.shape[0], value.shape[1], self.max_cache_len, value.shape[3])
        keys = torch.zeros(shape_k, dtype=key.dtype, device=self._storage_device(key))
        values = torch.zeros(shape_v, dtype=value.dtype, device=self._storage_device(value))
        if layer_idx == len(self._keys):
            self._keys.append(keys)
            self._values.append(values)
        else:
            self._keys[layer_idx], self._values[layer_idx] = keys, values

    def _storage_device(self, tensor: torch.Tensor) -> torch.device:
        return tensor.device

    def _needs_allocation(self, layer_idx: int, key: torch.Tensor) -> bool:
        if layer_idx >= len(self._keys):
            return True
        stored = self._keys[layer_idx]
        return stored.shape[0] != key.shape[0] or stored.dtype != key.dtype or stored.shape[1] != key.shape[1]

    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self._write_pos is None:
            raise GenerationError("StaticCache.update was called before key_positions/begin_step for this step.")
        if not torch.compiler.is_compiling() and self._needs_allocation(layer_idx, key):
            if layer_idx > len(self._keys):
                raise IndexError(f"Cache layers must be filled in order; got layer {layer_idx} with {len(self._keys)} stored.")
            self._allocate(layer_idx, key, value)
        keys, values = self._keys[layer_idx], self._values[layer_idx]
        keys.index_copy_(2, self._write_pos, key)
        values.index_copy_(2, self._write_pos, value)
        return keys, values

    def claim_decode_slot(
        self, cache_position: torch.Tensor, num_layers: int
    ) -> tuple[int, list[tuple[torch.Tensor, torch.Tensor]]] | None:
        if type(self) is not StaticCache or len(self._keys) != num_layers or cache_position.shape[0] != 1:
            return None  # subclasses keep other copies in step; an empty cache has no storage yet
        self.begin_step(cache_position)
        return int(cache_position[0]), list(zip(self._keys, self._values))

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self._length

    def get_max_cache_shape(self) -> int | None:
        return self.max_cache_len

    def layer(self, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The filled part of one layer's keys and values."""
        return self._keys[layer_idx][:, :, : self._length], self._values[layer_idx][:, :, : self._length]

    def __len__(self) -> int:
        return len(self._keys)

    def crop(self, max_length: int) -> None:
        if max_length < 0:
            max_length = self._length + max_length
        self._length = min(self._length, max_length)

    def reset(self) -> None:
        for buffer in (*self._keys, *self._values):
            buffer.zero_()
        self._length = 0
        self._write_pos = None

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        for buffer in (*self._keys, *self._values):
            buffer.copy_(buffer.index_select(0, beam_idx.to(buffer.device)))  # in place: addresses stay fixed

    def batch_repeat_interleave(self, repeats: int) -> None:
        for buffers in (self._keys, self._values):
            for i, stored in enumerate(buffers):
                buffers[i] = stored.repeat_interleave(repeats, dim=0)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        for buffers in (self._keys, self._values):
            for i, stored in enumerate(buffers):
                buffers[i] = stored.index_select(0, indices.to(stored.device))


class OffloadedStaticCache(StaticCache):
    """A static cache whose buffers live on ``offload_device`` (CPU), each layer fetched to the compute device when used.

    While layer ``i`` computes, layer ``i + 1`` is already being copied to
    the compute device (asynchronously on CUDA, from pinned memory). New
    keys/values are written to both copies, so results are identical to
    :class:`StaticCache`. When the offload device is the compute device, no
    copy happens.
    """

    is_compileable = False

    def __init__(self, max_cache_len: int, *args: object, offload_device: str | torch.device = "cpu", **kwargs: object) -> None:
        super().__init__(max_cache_len)
        self.offload_device = torch.device(offload_device)
        self._fetched: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._compute_device: torch.device | None = None

    def _storage_device(self, tensor: torch.Tensor) -> torch.device:
        return self.offload_device

    def _allocate(self, layer_idx: int, key: torch.Tensor, value: torch.Tensor) -> None:
        super()._allocate(layer_idx, key, value)
        if self.offload_device.type == "cpu" and key.device.type == "cuda":
            self._keys[layer_idx] = self._keys[layer_idx].pin_memory()
            self._values[layer_idx] = self._values[layer_idx].pin_memory()

    def _fetch(self, layer_idx: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        keys, values = self._keys[layer_idx], self._values[layer_idx]
        if self.offload_device == device:
            return keys, values
        return compute_copy(keys, device), compute_copy(values, device)

    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self._write_pos is None:
            raise GenerationError("OffloadedStaticCache.update was called before key_positions/begin_step for this step.")
        if self._needs_allocation(layer_idx, key):
            self._allocate(layer_idx, key, value)
            self._fetched.pop(layer_idx, None)
        device = key.device
        fetched = self._fetched.pop(layer_idx, None) or self._fetch(layer_idx, device)
        keys, values = fetched
        position = self._write_pos.to(device)
        if keys.data_ptr() != self._keys[layer_idx].data_ptr():
            keys.index_copy_(2, position, key)
            values.index_copy_(2, position, value)
        stored_position = self._write_pos.to(self.offload_device)
        self._keys[layer_idx].index_copy_(2, stored_position, key.to(self.offload_device))
        self._values[layer_idx].index_copy_(2, stored_position, value.to(self.offload_device))
        following = layer_idx + 1
        if following < len(self._keys):
            self._fetched[following] = self._fetch(following, device)  # prefetch while this layer computes
        return keys, values

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self._fetched.clear()
        super().reorder_cache(beam_idx)

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._fetched.clear()
        super().batch_repeat_interleave(repeats)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._fetched.clear()
        super().batch_select_indices(indices)

    def reset(self) -> None:
        self._fetched.clear()
        super().reset()


__all__ = ["OffloadedStaticCache", "StaticCache"]
