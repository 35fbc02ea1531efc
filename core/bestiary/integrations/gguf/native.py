"""Building and loading the native kernels of :mod:`.native_source` with the system C compiler.

The shared library is compiled once per machine (``-O3 -march=native -fopenmp``)
into a cache folder and loaded with ``ctypes``; later processes only load it.
Its OpenMP runtime is the one torch already loaded (same ``libgomp.so.1``), so
the two share one thread pool. Anything that goes wrong (no compiler, a
failed build, a library that does not load) returns ``None`` and is logged
once; callers then use the torch code path.

Environment: ``CC`` picks the compiler, ``BESTIARY_CACHE_DIR`` (default
``$XDG_CACHE_HOME/bestiary`` or ``~/.cache/bestiary``) the cache folder.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

from .native_source import KERNEL_SOURCE

__all__ = ["load_native_kernels", "NativeKernels", "cache_dir", "KIND_Q8_0", "KIND_Q4_0", "KIND_Q4_1"]

logger = logging.getLogger(__name__)

KIND_Q8_0, KIND_Q4_0, KIND_Q4_1 = 0, 1, 2
DEFAULT_FLAGS = ("-O3", "-march=native", "-ffp-contract=off", "-fopenmp", "-fPIC", "-shared")
PORTABLE_FLAGS = ("-O3", "-ffp-contract=off", "-fopenmp", "-fPIC", "-shared")
BUILD_TIMEOUT_S = 120

_lock = threading.Lock()
_loaded: dict[tuple[str, ...], "NativeKernels | None"] = {}


def cache_dir() -> Path:
    """Return bestiary's cache folder (``BESTIARY_CACHE_DIR`` or the XDG cache)."""
    configured = os.environ.get("BESTIARY_CACHE_DIR")
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "bestiary"


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


def _compiler() -> str | None:
    for candidate in (os.environ.get("CC"), "gcc", "cc", "clang"):
        if candidate and shutil.which(candidate):
            return candidate
    return None


def _machine_fingerprint() -> str:
    """CPU identity, so a cache shared between machines never loads code built for another CPU."""
    parts = [platform.machine(), platform.system()]
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.startswith(("flags", "model name", "Features")):
                    parts.append(line.strip())
                if len(parts) > 4:
                    break
    except OSError:
        parts.append(platform.processor())
    return "\n".join(parts)


def _compiler_version(compiler: str) -> str:
    try:
        result = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return ""
    return result.stdout.splitlines()[0] if result.stdout else ""


def _build(compiler: str, flags: tuple[str, ...], target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as work:
        source = Path(work) / "bestiary_gguf_kernels.c"
        source.write_text(KERNEL_SOURCE, encoding="utf-8")
        output = Path(work) / target.name
        command = [compiler, *flags, str(source), "-o", str(output)]
        result = subprocess.run(command, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr.strip()[:2000]}")
        os.replace(output, target)


def load_native_kernels(flags: tuple[str, ...] = DEFAULT_FLAGS) -> NativeKernels | None:
    """Return the native kernels, building them on first use; ``None`` if that is impossible here."""
    with _lock:
        if flags in _loaded:
            return _loaded[flags]
        _loaded[flags] = kernels = _load(flags)
        return kernels


def _load(flags: tuple[str, ...]) -> NativeKernels | None:
    import torch  # torch's OpenMP runtime must be loaded before ours resolves libgomp

    compiler = _compiler()
    if compiler is None:
        logger.info("No C compiler found (set CC); GGUF quantized layers use the torch code path.")
        return None
    key = hashlib.sha256(
        "\n".join([KERNEL_SOURCE, " ".join(flags), _compiler_version(compiler), _machine_fingerprint(), torch.__version__]).encode()
    ).hexdigest()[:20]
    target = cache_dir() / "kernels" / f"gguf_{key}.so"
    try:
        if not target.exists():
            logger.info("Compiling GGUF kernels into %s", target)
            _build(compiler, flags, target)
        kernels = NativeKernels(ctypes.CDLL(str(target)), target)
    except (OSError, RuntimeError, subprocess.SubprocessError) as error:
        logger.warning("GGUF native kernels unavailable (%s); using the torch code path.", error)
        return None
    logger.debug("Loaded %r", kernels)
    return kernels
