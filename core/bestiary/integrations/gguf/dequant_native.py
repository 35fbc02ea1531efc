"""Native (C) block decoders for GGUF loading: dequantize to float32, repack for kept-quantized layers.

The C source below is compiled once per machine by :mod:`bestiary.native`,
loaded with ``ctypes``, and used by :func:`.dequant.dequantize` and by the
GGUF loader. Anything that goes wrong (no compiler, a failed build)
returns ``None`` and the callers use plain torch.

Arithmetic follows ``gguf.quants`` operation by operation (compiled with
``-ffp-contract=off``, so no fused multiply-adds), so the float32 results are
bit-identical to the reference.

``BESTIARY_GGUF_DEQUANT=torch`` disables the native decoders.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
from pathlib import Path

from bestiary.native import compile_library

__all__ = ["load_dequant_kernels", "DequantKernels", "NATIVE_TYPE_IDS", "ENV_VAR"]

logger = logging.getLogger(__name__)

ENV_VAR = "BESTIARY_GGUF_DEQUANT"

# GGML type ids (ggml.h) the C decoder handles.
NATIVE_TYPE_IDS = {"Q4_0": 2, "Q4_1": 3, "Q5_0": 6, "Q5_1": 7, "Q8_0": 8, "Q4_K": 12, "Q5_K": 13, "Q6_K": 14}

SOURCE = r"""
#include <stdint.h>
#include <string.h>

static inline float bd_half(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exponent = (h >> 10) & 0x1Fu, mantissa = h & 0x3FFu, bits;
    if (exponent == 0) {
        /* zero or subnormal: mantissa * 2^-24 is exact in float32 */
        float value = (float)mantissa * (1.0f / 16777216.0f);
        memcpy(&bits, &value, 4);
        bits |= sign;
    } else if (exponent == 31) {
        bits = sign | 0x7F800000u | (mantissa << 13);
    } else {
        bits = sign | ((exponent + 112u) << 23) | (mantissa << 13);
    }
    float out;
    memcpy(&out, &bits, 4);
    return out;
}

static inline uint16_t bd_u16(const uint8_t* p) { return (uint16_t)(p[0] | (p[1] << 8)); }

/* Q8_0: d(f16) q[32](i8); x = q * d */
static void bd_q8_0(const uint8_t* b, float* o) {
    const float d = bd_half(bd_u16(b));
    const int8_t* q = (const int8_t*)(b + 2);
    for (int j = 0; j < 32; ++j) o[j] = (float)q[j] * d;
}

/* Q4_0: d(f16) qs[16]; x = d * (nibble - 8), low nibbles first */
static void bd_q4_0(const uint8_t* b, float* o) {
    const float d = bd_half(bd_u16(b));
    const uint8_t* q = b + 2;
    for (int j = 0; j < 16; ++j) {
        o[j] = d * (float)((int)(q[j] & 15) - 8);
        o[j + 16] = d * (float)((int)(q[j] >> 4) - 8);
    }
}

/* Q4_1: d(f16) m(f16) qs[16]; x = d * nibble + m */
static void bd_q4_1(const uint8_t* b, float* o) {
    const float d = bd_half(bd_u16(b)), m = bd_half(bd_u16(b + 2));
    const uint8_t* q = b + 4;
    for (int j = 0; j < 16; ++j) {
        o[j] = d * (float)(q[j] & 15) + m;
        o[j + 16] = d * (float)(q[j] >> 4) + m;
    }
}

/* Q5_0: d(f16) qh(u32) qs[16]; x = d * ((nibble | bit << 4) - 16) */
static void bd_q5_0(const uint8_t* b, float* o) {
    const float d = bd_half(bd_u16(b));
    uint32_t qh;
    memcpy(&qh, b + 2, 4);
    const uint8_t* q = b + 6;
    for (int j = 0; j < 16; ++j) {
        int lo = (q[j] & 15) | (((qh >> j) & 1) << 4);
        int hi = (q[j] >> 4) | (((qh >> (j + 16)) & 1) << 4);
        o[j] = d * (float)(lo - 16);
        o[j + 16] = d * (float)(hi - 16);
    }
}

/* Q5_1: d(f16) m(f16) qh(u32) qs[16]; x = d * (nibble | bit << 4) + m */
static void bd_q5_1(const uint8_t* b, float* o) {
    const float d = bd_half(bd_u16(b)), m = bd_half(bd_u16(b + 2));
    uint32_t qh;
    memcpy(&qh, b + 4, 4);
    const uint8_t* q = b + 8;
    for (int j = 0; j < 16; ++j) {
        int lo = (q[j] & 15) | (((qh >> j) & 1) << 4);
        int hi = (q[j] >> 4) | (((qh >> (j + 16)) & 1) << 4);
        o[j] = d * (float)lo + m;
        o[j + 16] = d * (float)hi + m;
    }
}

/* The eight 6-bit scales and mins of Q4_K / Q5_K (12 bytes). */
static void bd_k_scale_min(const uint8_t* s, float d, float dmin, float* step, float* low) {
    for (int i = 0; i < 4; ++i) {
        step[i] = d * (float)(s[i] & 0x3F);
        low[i] = dmin * (float)(s[4 + i] & 0x3F);
        step[4 + i] = d * (float)((s[8 + i] & 0x0F) | ((s[i] >> 2) & 0x30));
        low[4 + i] = dmin * (float)((s[8 + i] >> 4) | ((s[4 + i] >> 2) & 0x30));
    }
}

/* Q4_K: d dmin (f16) scales[12] qs[128]; sub-block 2g / 2g+1 = low / high nibbles of bytes 32g.. */
static void bd_q4_k(const uint8_t* b, float* o) {
    float step[8], low[8];
    bd_k_scale_min(b + 4, bd_half(bd_u16(b)), bd_half(bd_u16(b + 2)), step, low);
    const uint8_t* q = b + 16;
    for (int g = 0; g < 4; ++g) {
        const float s0 = step[2 * g], l0 = low[2 * g], s1 = step[2 * g + 1], l1 = low[2 * g + 1];
        for (int j = 0; j < 32; ++j) {
            o[64 * g + j] = s0 * (float)(q[32 * g + j] & 15) - l0;
            o[64 * g + 32 + j] = s1 * (float)(q[32 * g + j] >> 4) - l1;
        }
    }
}

/* Q5_K: like Q4_K plus qh[32]: bit s of qh[j] is the fifth bit of value j of sub-block s. */
static void bd_q5_k(const uint8_t* b, float* o) {
    float step[8], low[8];
    bd_k_scale_min(b + 4, bd_half(bd_u16(b)), bd_half(bd_u16(b + 2)), step, low);
    const uint8_t* qh = b + 16;
    const uint8_t* q = b + 48;
    for (int g = 0; g < 4; ++g) {
        const int s0 = 2 * g, s1 = 2 * g + 1;
        for (int j = 0; j < 32; ++j) {
            int lo = (q[32 * g + j] & 15) | (((qh[j] >> s0) & 1) << 4);
            int hi = (q[32 * g + j] >> 4) | (((qh[j] >> s1) & 1) << 4);
            o[64 * g + j] = step[s0] * (float)lo - low[s0];
            o[64 * g + 32 + j] = step[s1] * (float)hi - low[s1];
        }
    }
}

/* Q6_K: ql[128] qh[64] scales[16](i8) d(f16); x = (d * scale) * (q - 32). */
static void bd_q6_k(const uint8_t* b, float* o) {
    const uint8_t* ql = b;
    const uint8_t* qh = b + 128;
    const int8_t* sc = (const int8_t*)(b + 192);
    const float d = bd_half(bd_u16(b + 208));
    float step[16];
    for (int i = 0; i < 16; ++i) step[i] = d * (float)sc[i];
    for (int p = 0; p < 256; ++p) {
        const int h = p >> 7, r = p & 127, t = r >> 6, k = r & 63, s = r >> 5, j = r & 31;
        const int low = (ql[64 * h + k] >> (4 * t)) & 15;
        const int high = (qh[32 * h + j] >> (2 * s)) & 3;
        o[p] = step[p >> 4] * (float)((low | (high << 4)) - 32);
    }
}

typedef void (*bd_block_fn)(const uint8_t*, float*);

static int bd_layout(int type, bd_block_fn* fn, int64_t* block_bytes, int64_t* block_values) {
    switch (type) {
        case 2: *fn = bd_q4_0; *block_bytes = 18; *block_values = 32; return 0;
        case 3: *fn = bd_q4_1; *block_bytes = 20; *block_values = 32; return 0;
        case 6: *fn = bd_q5_0; *block_bytes = 22; *block_values = 32; return 0;
        case 7: *fn = bd_q5_1; *block_bytes = 24; *block_values = 32; return 0;
        case 8: *fn = bd_q8_0; *block_bytes = 34; *block_values = 32; return 0;
        case 12: *fn = bd_q4_k; *block_bytes = 144; *block_values = 256; return 0;
        case 13: *fn = bd_q5_k; *block_bytes = 176; *block_values = 256; return 0;
        case 14: *fn = bd_q6_k; *block_bytes = 210; *block_values = 256; return 0;
        default: return -1;
    }
}

/* out[n_blocks * block_values] = the float32 values of n_blocks consecutive blocks. Returns -1 for an unknown type. */
int bd_dequantize(int type, const uint8_t* src, int64_t n_blocks, float* out, int nthreads) {
    bd_block_fn fn;
    int64_t bytes, values;
    if (bd_layout(type, &fn, &bytes, &values) != 0) return -1;
    #pragma omp parallel for num_threads(nthreads) schedule(static) if(nthreads > 1 && n_blocks >= 4096)
    for (int64_t i = 0; i < n_blocks; ++i) fn(src + i * bytes, out + i * values);
    return 0;
}

/* Split rows of Q8_0 blocks into int8 values [rows, nb * 32] and float16 scales [rows, nb]. */
void bd_pack_q8_0(const uint8_t* src, int64_t rows, int64_t nb, int8_t* values, uint16_t* scales) {
    for (int64_t r = 0; r < rows; ++r) {
        for (int64_t b = 0; b < nb; ++b) {
            const uint8_t* block = src + (r * nb + b) * 34;
            scales[r * nb + b] = bd_u16(block);
            memcpy(values + (r * nb + b) * 32, block + 2, 32);
        }
    }
}

/* 16 bits of interleaved nibbles for one Q4 block: nibble v of lane L holds block value 8v + L. */
static inline uint32_t bd_q4_lane(const uint8_t* q, int lane) {
    const uint32_t a = q[lane], c = q[8 + lane];
    return (a & 15) | ((c & 15) << 4) | ((a >> 4) << 8) | ((c >> 4) << 12);
}

/* Repack rows of Q4_0 (type 2) / Q4_1 (type 3) blocks into the SIMD-interleaved layout of the
   kept-quantized layers: words [rows, 8 * groups], scales and mins [rows, 2 * groups] (odd block
   counts padded with a zero block). mins may be NULL for Q4_0. */
int bd_pack_q4(int type, const uint8_t* src, int64_t rows, int64_t nb, uint32_t* words, uint16_t* scales,
               uint16_t* mins) {
    if (type != 2 && type != 3) return -1;
    const int64_t bytes = type == 2 ? 18 : 20, offset = type == 2 ? 2 : 4, groups = (nb + 1) / 2;
    for (int64_t r = 0; r < rows; ++r) {
        const uint8_t* row = src + r * nb * bytes;
        for (int64_t g = 0; g < groups; ++g) {
            const uint8_t* b0 = row + 2 * g * bytes;
            const uint8_t* b1 = 2 * g + 1 < nb ? b0 + bytes : NULL;
            uint32_t* w = words + (r * groups + g) * 8;
            for (int lane = 0; lane < 8; ++lane)
                w[lane] = bd_q4_lane(b0 + offset, lane) | (b1 ? bd_q4_lane(b1 + offset, lane) << 16 : 0u);
            uint16_t* s = scales + r * 2 * groups + 2 * g;
            s[0] = bd_u16(b0);
            s[1] = b1 ? bd_u16(b1) : 0;
            if (mins) {
                uint16_t* m = mins + r * 2 * groups + 2 * g;
                m[0] = type == 3 ? bd_u16(b0 + 2) : 0;
                m[1] = (b1 && type == 3) ? bd_u16(b1 + 2) : 0;
            }
        }
    }
    return 0;
}
"""

_lock = threading.Lock()
_state: dict[str, "DequantKernels | None"] = {}


class DequantKernels:
    """The loaded decoder library: ``dequantize``, ``pack_q8_0`` and ``pack_q4`` entry points."""

    def __init__(self, library: ctypes.CDLL, path: Path) -> None:
        self.path = path
        self._library = library
        pointer, size = ctypes.c_void_p, ctypes.c_int64
        self.dequantize = library.bd_dequantize
        self.dequantize.restype = ctypes.c_int
        self.dequantize.argtypes = [ctypes.c_int, pointer, size, pointer, ctypes.c_int]
        self.pack_q8_0 = library.bd_pack_q8_0
        self.pack_q8_0.restype = None
        self.pack_q8_0.argtypes = [pointer, size, size, pointer, pointer]
        self.pack_q4 = library.bd_pack_q4
        self.pack_q4.restype = ctypes.c_int
        self.pack_q4.argtypes = [ctypes.c_int, pointer, size, size, pointer, pointer, pointer]

    def __repr__(self) -> str:
        return f"DequantKernels({str(self.path)!r})"


def load_dequant_kernels() -> DequantKernels | None:
    """Return the native decoders, compiling them on first use; ``None`` if disabled or impossible here."""
    if os.environ.get(ENV_VAR, "").strip().lower() == "torch":
        return None
    with _lock:
        if "kernels" not in _state:
            _state["kernels"] = _load()
        return _state["kernels"]


def _load() -> DequantKernels | None:
    built = compile_library("gguf_dequant", SOURCE)
    return None if built is None else DequantKernels(*built)
