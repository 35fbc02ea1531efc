"""``OffloadedCache``: a dynamic cache whose layers live on the CPU and are prefetched to the compute device.

Each layer's keys/values are stored on ``offload_device``. When layer ``i``
updates, its history (prefetched while layer ``i - 1`` computed) is joined
with the new tokens on the compute device, the new tokens are appended to
the offloaded store, and layer ``i + 1`` starts copying (asynchronously from
pinned memory on CUDA). Device memory then holds about two layers of cache
instead of all of them; results are identical to :class:`DynamicCache`.
When the offload device is the compute device (the default on CPU-only
machines) nothing is copied.
"""

from __future__ import annotations

import torch

from bestiary.generation.cache import DynamicCache


class OffloadedCache(DynamicCache):
    """A :class:`DynamicCache` kept on ``offload_device`` and fetched layer by layer."""

    def __init__(self, *args: object, offload_device: str | torch.device = "cpu", **kwargs: object) -> None:
        super().__init__()
        self.offload_device = torch.device(offload_device)
        self._fetched: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def _fetch(self, layer_idx: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        keys, values = self.layer(layer_idx)
        return compute_copy(keys, device), compute_copy(values, device)

    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        device = key.device
        if self.offload_device == device:
            return super().update(key, value, layer_idx)
        history = None
        if layer_idx < len(self._keys):
            history = self._fetched.pop(layer_idx, None) or self._fetch(layer_idx, device)
        super().update(key.to(self.offload_device), value.to(self.offload_device), layer_idx)
        if self.offload_device.type == "cpu" and device.type == "cuda" and not self._keys[layer_idx].is_pinned():
            self._keys[layer_idx] = self._keys[layer_idx].pin_memory()
            self._values[layer_idx] = self._values[layer_idx].pin_memory()
        if layer_idx + 1 < len(self._keys):
            self._fetched[layer_idx + 1] = self._fetch(layer_idx + 1, device)
        if history is None:
            return key, value
        return torch.cat([history[0], key], dim=2), torch.cat([history[1], value], dim=2)

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self._fetched.clear()
        super().reorder_cache(beam_idx)

    def crop(self, max_length: int) -> None:
        self._fetched.clear()
        super().crop(max_length)

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._fetched.clear()
        super().batch_repeat_interleave(repeats)

    def reset(self) -> None:
        self._fetched.clear()
        super().reset()


def compute_copy(stored: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A copy of offloaded ``stored`` on the compute ``device``.

    Always a copy, also when the two devices name the same memory
    (``offload_device="cpu:0"`` with a CPU model): the cache then runs
    exactly as with a real accelerator.
    """
    return stored.to(device, non_blocking=True, copy=True)


__all__ = ["OffloadedCache", "compute_copy"]
