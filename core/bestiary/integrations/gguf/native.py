"""Loading the native kernels of :mod:`.native_source` (compiled on first use by :mod:`bestiary.native`).

Anything that goes wrong (no compiler, a failed build, a library that does not
load) returns ``None``; callers then use the torch code path.
"""

from __future__ import annotations

import ctypes
import threading
from pathlib import Path

from bestiary.native import DEFAULT_FLAGS, cache_dir, compile_library

from .native_source import KERNEL_SOURCE

__all__ = ["load_native_kernels", "NativeKernels", "cache_dir", "KIND_Q8_0", "KIND_Q4_0", "KIND_Q4_1"]

KIND_Q8_0, KIND_Q4_0, KIND_Q4_1 = 0, 1, 2
PORTABLE_FLAGS = ("-O3", "-ffp-contract=off", "-fopenmp", "-fPIC", "-shared")


class NativeKernels:
    """The loaded library: typed entry points ``matmul``, ``dequantize`` and ``has_avx2``."""

    def __init__(self, library: ctypes.CDLL, path: Path) -> None:
        self.path = path
        self._library = library
        pointer, size = ctypes.c_void_p, ctypes.c_int64
        self.matmul = library.bq_matmul
        self.matmul.restype = ctypes.c_int
        self.matmul.argtypes = [ctypes.c_int, pointer, size, size, pointer, pointer, pointer, size, pointer, ctypes.c_int]
        self.dequantize = library.bq_dequantize
        self.dequantize.restype = None
        self.dequantize.argtypes = [ctypes.c_int, pointer, pointer, pointer, size, size, size, pointer, ctypes.c_int]
        self.has_avx2 = bool(library.bq_has_avx2())

    def __repr__(self) -> str:
        return f"NativeKernels({str(self.path)!r}, avx2={self.has_avx2})"


def load_native_kernels(flags: tuple[str, ...] = DEFAULT_FLAGS) -> NativeKernels | None:
    """Return the native kernels, building them on first use; ``None`` if that is impossible here."""
    built = compile_library("gguf", KERNEL_SOURCE, flags)
    return None if built is None else _wrapped(built, flags)


_lock = threading.Lock()
_wrappers: dict[tuple[str, ...], NativeKernels] = {}


def _wrapped(built: tuple[ctypes.CDLL, Path], flags: tuple[str, ...]) -> NativeKernels:
    with _lock:
        if flags not in _wrappers:
            _wrappers[flags] = NativeKernels(*built)
        return _wrappers[flags]
