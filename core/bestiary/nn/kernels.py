"""The native decoding kernels: one C library (:mod:`.matvec_source` + :mod:`.decoder_step_source`).

Built on first use by :mod:`bestiary.native` and shared by
:mod:`bestiary.nn.projection` (matrix-vector products) and
:mod:`bestiary.nn.decoder_step` (a whole decoding step).
``BESTIARY_NATIVE_MATVEC=0`` turns both off.
"""

from __future__ import annotations

import ctypes
import logging
import os

from bestiary.nn.decoder_step_source import DECODER_SOURCE
from bestiary.nn.matvec_source import MATVEC_SOURCE

__all__ = ["Matrix", "DecoderLayer", "DecoderModel", "library", "loaded", "reset", "ENV_VAR", "KIND_F32"]

logger = logging.getLogger(__name__)

ENV_VAR = "BESTIARY_NATIVE_MATVEC"
_OFF = ("0", "false", "no", "off")
KIND_F32 = 3


class Matrix(ctypes.Structure):
    """``bm_matrix``: one weight the kernels multiply by (float32 or packed GGUF blocks)."""

    _fields_ = [
        ("kind", ctypes.c_int64),
        ("rows", ctypes.c_int64),
        ("values", ctypes.c_void_p),
        ("scales", ctypes.c_void_p),
        ("mins", ctypes.c_void_p),
        ("bias", ctypes.c_void_p),
    ]


class DecoderLayer(ctypes.Structure):
    """``bd_layer``: the weights and key/value cache of one decoder layer."""

    _fields_ = [
        ("input_norm", ctypes.c_void_p),
        ("post_norm", ctypes.c_void_p),
        ("qkv", Matrix * 3),
        ("o", Matrix),
        ("gate_up", Matrix * 2),
        ("down", Matrix),
        ("keys", ctypes.c_void_p),
        ("values", ctypes.c_void_p),
        ("capacity", ctypes.c_int64),
        ("window", ctypes.c_int64),
    ]


class DecoderModel(ctypes.Structure):
    """``bd_model``: the shapes of a decoder stack and its layers."""

    _fields_ = [
        ("layers", ctypes.c_int64),
        ("hidden", ctypes.c_int64),
        ("heads", ctypes.c_int64),
        ("kv_heads", ctypes.c_int64),
        ("head_dim", ctypes.c_int64),
        ("intermediate", ctypes.c_int64),
        ("eps", ctypes.c_float),
        ("scaling", ctypes.c_float),
        ("layer", ctypes.POINTER(DecoderLayer)),
        ("final_norm", ctypes.c_void_p),
    ]


_library: ctypes.CDLL | None = None
_state = "unloaded"  # "unloaded" | "loaded" | "unavailable"


def library() -> ctypes.CDLL | None:
    """The loaded kernels, building them on first use; None when unavailable or switched off."""
    if _library is not None or _state != "unloaded":
        return _library
    return _load()


def loaded() -> ctypes.CDLL | None:
    """The kernels if already loaded (never builds: usable while torch.compile traces)."""
    return _library


def _load() -> ctypes.CDLL | None:
    global _library, _state
    _state = "unavailable"
    if os.environ.get(ENV_VAR, "1").strip().lower() in _OFF:
        return None
    from bestiary.native import compile_library

    built = compile_library("decoding", MATVEC_SOURCE + DECODER_SOURCE)
    if built is None:
        return None
    loaded = built[0]
    if not loaded.bm_supported():
        logger.info("Native decoding kernels need AVX2, FMA and F16C; decoding uses torch.")
        return None
    loaded.bm_matvec.restype = ctypes.c_int
    loaded.bm_matvec.argtypes = [
        ctypes.c_void_p, ctypes.c_int64, ctypes.POINTER(Matrix), ctypes.c_int64, ctypes.c_void_p, ctypes.c_int,
        ctypes.c_int,
    ]
    loaded.bd_decode.restype = ctypes.c_int
    loaded.bd_decode.argtypes = [
        ctypes.POINTER(DecoderModel), ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
        ctypes.c_void_p, ctypes.c_int, ctypes.c_int,
    ]
    _library, _state = loaded, "loaded"
    return _library


def reset() -> None:
    """Forget the loaded library, so the next use checks ``BESTIARY_NATIVE_MATVEC`` again (tests)."""
    global _library, _state
    _library, _state = None, "unloaded"
