"""Compiling and loading bestiary's C kernels with the system compiler.

Each kernel library is a C source string compiled once per machine
(``-O3 -march=native -fopenmp``) into a cache folder and loaded with
``ctypes``; later processes only load it. The file name carries a hash of the
source, flags, compiler version, CPU and torch version, so a stale or foreign
build is never loaded. The OpenMP runtime is the one torch already loaded
(same ``libgomp.so.1``), so kernels and torch share one thread pool.

Anything that goes wrong (no compiler, a failed build, a library that does
not load) returns ``None`` and is logged once; callers then use torch.

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

__all__ = ["compile_library", "cache_dir", "DEFAULT_FLAGS", "BUILD_TIMEOUT_S"]

logger = logging.getLogger(__name__)

DEFAULT_FLAGS = ("-O3", "-march=native", "-ffp-contract=off", "-fopenmp", "-fPIC", "-shared")
BUILD_TIMEOUT_S = 120

_lock = threading.Lock()
_loaded: dict[tuple[str, str, tuple[str, ...]], "tuple[ctypes.CDLL, Path] | None"] = {}


def cache_dir() -> Path:
    """Return bestiary's cache folder (``BESTIARY_CACHE_DIR`` or the XDG cache)."""
    configured = os.environ.get("BESTIARY_CACHE_DIR")
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "bestiary"


def compile_library(
    name: str, source: str, flags: tuple[str, ...] = DEFAULT_FLAGS
) -> tuple[ctypes.CDLL, Path] | None:
    """Return ``(library, path)`` for C ``source``, compiling it on first use; ``None`` if impossible here."""
    key = (name, source, flags)
    with _lock:
        if key not in _loaded:
            _loaded[key] = _load(name, source, flags)
        return _loaded[key]


def _load(name: str, source: str, flags: tuple[str, ...]) -> tuple[ctypes.CDLL, Path] | None:
    import torch  # torch's OpenMP runtime must be loaded before ours resolves libgomp

    compiler = _compiler()
    if compiler is None:
        logger.info("No C compiler found (set CC); %s kernels fall back to torch.", name)
        return None
    fingerprint = "\n".join([source, " ".join(flags), _compiler_version(compiler), _machine_fingerprint(), torch.__version__])
    target = cache_dir() / "kernels" / f"{name}_{hashlib.sha256(fingerprint.encode()).hexdigest()[:20]}.so"
    try:
        if not target.exists():
            logger.info("Compiling %s kernels into %s", name, target)
            _build(compiler, flags, source, target)
        library = ctypes.CDLL(str(target))
    except (OSError, RuntimeError, subprocess.SubprocessError) as error:
        logger.warning("%s native kernels unavailable (%s); using torch.", name, error)
        return None
    logger.debug("Loaded %s kernels from %s", name, target)
    return library, target


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


def _build(compiler: str, flags: tuple[str, ...], source: str, target: Path) -> None:
    """Compile ``source`` into ``target`` atomically (another process may build the same file)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as work:
        source_path = Path(work) / (target.stem + ".c")
        source_path.write_text(source, encoding="utf-8")
        output = Path(work) / target.name
        command = [compiler, *flags, str(source_path), "-o", str(output)]
        result = subprocess.run(command, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr.strip()[:2000]}")
        os.replace(output, target)
