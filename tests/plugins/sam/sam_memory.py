"""Peak bytes of live tensors allocated inside a block: a deterministic memory meter for any device.

tracemalloc does not see PyTorch's CPU allocator, and torch only keeps
allocation statistics for accelerators. This meter watches every operator
through a ``TorchDispatchMode``: each new storage an operator returns is
counted until it is freed (checked through a weak reference), and the
running total's maximum is the peak. Tensors that existed before the block
(weights) are not counted; scratch memory inside one operator is not seen.
"""

from __future__ import annotations

import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


class PeakTensorMemory(TorchDispatchMode):
    """``with PeakTensorMemory() as meter: ...`` then read ``meter.peak`` (bytes)."""

    def __init__(self) -> None:
        super().__init__()
        self._live: dict[int, tuple[StorageWeakRef, int]] = {}
        self.current = 0
        self.peak = 0

    def _sweep(self) -> None:
        for key in [key for key, (ref, _) in self._live.items() if ref.expired()]:
            self.current -= self._live.pop(key)[1]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for leaf in tree_leaves(out):
            if isinstance(leaf, torch.Tensor) and not leaf.is_meta:
                storage = leaf.untyped_storage()
                key, size = storage.data_ptr(), storage.nbytes()
                if not key:
                    continue
                if key in self._live and self._live[key][0].expired():  # freed, and its address reused
                    self.current -= self._live.pop(key)[1]
                if key not in self._live:
                    self._live[key] = (StorageWeakRef(storage), size)
                    self.current += size
        if self.current > self.peak:
            # ``current`` may still count freed storages; sweep them out before calling it a new peak.
            self._sweep()
            self.peak = max(self.peak, self.current)
        return out
