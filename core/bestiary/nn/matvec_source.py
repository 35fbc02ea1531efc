"""C source of the decoding matrix-vector kernels (compiled on first use by :mod:`bestiary.native`).

``bm_matvec`` multiplies one float32 row ``x[K]`` by several weight matrices in
one call, writing their outputs one after the other into ``out``. Each matrix
is a float32 ``[rows, K]`` array or a block-quantized GGUF weight packed as
:mod:`bestiary.integrations.gguf.quantized_linear` keeps it:

- Q8_0: int8 values ``[rows, K]``, float16 scales ``[rows, K / 32]``.
- Q4_0 / Q4_1: each 64-value group is eight uint32 words; nibble ``v`` of word
  ``L`` holds value ``8v + L`` of the group, so one AND with ``0xF << 4v`` puts
  eight values in eight 32-bit lanes (scaled by ``16**(v % 4)``, which the
  kernel divides out of ``x`` beforehand: exact powers of two). Float16 scales
  (and Q4_1 minimums) ``[rows, 2 * groups]``; odd block counts are padded with
  a zero block.

With ``quantize_activations`` set, quantized matrices are multiplied as llama.cpp
does: ``x`` is quantized per 32-value block to int8 (scale ``max|x| / 127``,
rounded to nearest) and each block product is an integer dot product
(``maddubs``/``madd``), scaled by both blocks' scales; the Q4_1 minimum and the
Q4_0 offset still use the exact float block sums of ``x``. About 1.8x faster
than the default float path, which dequantizes each block in registers and
keeps ``x`` in float32 (exactly "dequantize, then multiply" up to float32
rounding), but less exact (see :mod:`bestiary.nn.projection`).

Rows are dealt to the threads in contiguous tiles across all matrices, so
small projections (q/k/v of one layer) share one parallel region. Products
are accumulated in float32 block by block: ``sum_b scale_b * sum_j q_j x_j``
(+ ``offset_b * sum_j x_j``, the Q4_1 minimum or ``-8 * scale_b`` for Q4_0).
Needs AVX2, FMA and F16C (:func:`bm_supported` says whether they were compiled in).
"""

MATVEC_SOURCE = r"""
#include <stdint.h>
#include <math.h>
#include <stdlib.h>
#include <omp.h>
#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>
#define BM_AVX2 1
#endif

enum { BM_Q8_0 = 0, BM_Q4_0 = 1, BM_Q4_1 = 2, BM_F32 = 3 };
#define BM_TILE 4
#define BM_PREFETCH_ROWS 4

typedef struct {
    int64_t kind, rows;
    const void* values;
    const uint16_t* scales;
    const uint16_t* mins;
    const float* bias;
} bm_matrix;

int bm_supported(void) {
#ifdef BM_AVX2
    return 1;
#else
    return 0;
#endif
}

#ifdef BM_AVX2
static inline float bm_hsum(__m256 v) {
    __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
    lo = _mm_add_ps(lo, hi);
    lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
    lo = _mm_add_ss(lo, _mm_movehdup_ps(lo));
    return _mm_cvtss_f32(lo);
}

/* Shared per-call views of x. Float path: xp (x with the Q4 nibble scales divided out). 8-bit path:
   x quantized per 32-block to int8 (scale dx), in natural order (xq, for Q8_0) and permuted to the
   Q4 word layout (xq4). Both: exact float block sums xs (for Q4_1 minimums and the Q4_0 offset). */
typedef struct {
    const float *x, *xp, *xs, *dx;
    const int8_t *xq, *xq4;
    int64_t K, nb, groups, params, int8;
} bm_input;

/* ---- float32: up to four rows at once, sharing the loads of x ---- */
static void bm_tile_f32(const float* w, int64_t rows, const bm_input* in, float* out) {
    const int64_t K = in->K, K8 = K & ~(int64_t)7;
    const float* x = in->x;
    if (rows == BM_TILE) {
        const float *w0 = w, *w1 = w + K, *w2 = w + 2 * K, *w3 = w + 3 * K;
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        for (int64_t k = 0; k < K8; k += 8) {
            if (k % 16 == 0) {
                _mm_prefetch((const char*)(w0 + BM_PREFETCH_ROWS * K + k), _MM_HINT_T0);
                _mm_prefetch((const char*)(w1 + BM_PREFETCH_ROWS * K + k), _MM_HINT_T0);
                _mm_prefetch((const char*)(w2 + BM_PREFETCH_ROWS * K + k), _MM_HINT_T0);
                _mm_prefetch((const char*)(w3 + BM_PREFETCH_ROWS * K + k), _MM_HINT_T0);
            }
            __m256 xv = _mm256_loadu_ps(x + k);
            a0 = _mm256_fmadd_ps(_mm256_loadu_ps(w0 + k), xv, a0);
            a1 = _mm256_fmadd_ps(_mm256_loadu_ps(w1 + k), xv, a1);
            a2 = _mm256_fmadd_ps(_mm256_loadu_ps(w2 + k), xv, a2);
            a3 = _mm256_fmadd_ps(_mm256_loadu_ps(w3 + k), xv, a3);
        }
        out[0] = bm_hsum(a0); out[1] = bm_hsum(a1); out[2] = bm_hsum(a2); out[3] = bm_hsum(a3);
    } else {
        for (int64_t r = 0; r < rows; ++r) {
            __m256 a = _mm256_setzero_ps();
            for (int64_t k = 0; k < K8; k += 8) a = _mm256_fmadd_ps(_mm256_loadu_ps(w + r * K + k), _mm256_loadu_ps(x + k), a);
            out[r] = bm_hsum(a);
        }
    }
    for (int64_t r = 0; r < rows; ++r)
        for (int64_t k = K8; k < K; ++k) out[r] += w[r * K + k] * x[k];
}

/* ---- Q8_0: two rows at once ---- */
static inline __m256 bm_q8x8(const int8_t* q) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i*)q)));
}

static inline __m256 bm_dot_q8_block(const int8_t* q, const __m256* xv) {
    __m256 s = _mm256_mul_ps(bm_q8x8(q), xv[0]);
    __m256 t = _mm256_mul_ps(bm_q8x8(q + 8), xv[1]);
    s = _mm256_fmadd_ps(bm_q8x8(q + 16), xv[2], s);
    t = _mm256_fmadd_ps(bm_q8x8(q + 24), xv[3], t);
    return _mm256_add_ps(s, t);
}

static void bm_tile_q8(const bm_matrix* m, int64_t row, int64_t rows, const bm_input* in, float* out) {
    const int64_t K = in->K, nb = in->nb;
    for (int64_t r = 0; r < rows; r += 2) {
        const int64_t r1 = r + 1 < rows ? r + 1 : r;
        const int8_t *q0 = (const int8_t*)m->values + (row + r) * K, *q1 = (const int8_t*)m->values + (row + r1) * K;
        const uint16_t *d0 = m->scales + (row + r) * nb, *d1 = m->scales + (row + r1) * nb;
        __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
        for (int64_t b = 0; b < nb; ++b) {
            _mm_prefetch((const char*)(q0 + BM_PREFETCH_ROWS * K + b * 32), _MM_HINT_T0);
            _mm_prefetch((const char*)(q1 + BM_PREFETCH_ROWS * K + b * 32), _MM_HINT_T0);
            __m256 xv[4];
            for (int i = 0; i < 4; ++i) xv[i] = _mm256_loadu_ps(in->x + b * 32 + 8 * i);
            a0 = _mm256_fmadd_ps(_mm256_set1_ps(_cvtsh_ss(d0[b])), bm_dot_q8_block(q0 + b * 32, xv), a0);
            a1 = _mm256_fmadd_ps(_mm256_set1_ps(_cvtsh_ss(d1[b])), bm_dot_q8_block(q1 + b * 32, xv), a1);
        }
        out[r] = bm_hsum(a0);
        if (r1 != r) out[r1] = bm_hsum(a1);
    }
}

/* 8-bit activations: sum_j w_j * xq_j of a 32-block as eight int32 partial sums (w signed: sign trick). */
static inline __m256i bm_q8_int_block(const int8_t* w, __m256i xq) {
    __m256i v = _mm256_loadu_si256((const __m256i*)w);
    __m256i pairs = _mm256_maddubs_epi16(_mm256_sign_epi8(v, v), _mm256_sign_epi8(xq, v));
    return _mm256_madd_epi16(pairs, _mm256_set1_epi16(1));
}

static void bm_tile_q8_int(const bm_matrix* m, int64_t row, int64_t rows, const bm_input* in, float* out) {
    const int64_t K = in->K, nb = in->nb;
    for (int64_t r = 0; r < rows; r += 2) {
        const int64_t r1 = r + 1 < rows ? r + 1 : r;
        const int8_t *q0 = (const int8_t*)m->values + (row + r) * K, *q1 = (const int8_t*)m->values + (row + r1) * K;
        const uint16_t *d0 = m->scales + (row + r) * nb, *d1 = m->scales + (row + r1) * nb;
        __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
        for (int64_t b = 0; b < nb; ++b) {
            _mm_prefetch((const char*)(q0 + BM_PREFETCH_ROWS * K + b * 32), _MM_HINT_T0);
            _mm_prefetch((const char*)(q1 + BM_PREFETCH_ROWS * K + b * 32), _MM_HINT_T0);
            __m256i xq = _mm256_loadu_si256((const __m256i*)(in->xq + b * 32));
            float dx = in->dx[b];
            a0 = _mm256_fmadd_ps(_mm256_set1_ps(_cvtsh_ss(d0[b]) * dx), _mm256_cvtepi32_ps(bm_q8_int_block(q0 + b * 32, xq)), a0);
            a1 = _mm256_fmadd_ps(_mm256_set1_ps(_cvtsh_ss(d1[b]) * dx), _mm256_cvtepi32_ps(bm_q8_int_block(q1 + b * 32, xq)), a1);
        }
        out[r] = bm_hsum(a0);
        if (r1 != r) out[r1] = bm_hsum(a1);
    }
}

/* ---- Q4_0 / Q4_1: two rows at once ---- */
static inline __m256 bm_nibbles(__m256i words, __m256i mask, const float* x) {
    return _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_and_si256(words, mask)), _mm256_loadu_ps(x));
}

/* sum_b p[b] * xs[b] over the block parameters p (float16) of one row. */
static inline float bm_param_dot(const uint16_t* p, const float* xs, int64_t count) {
    __m256 acc = _mm256_setzero_ps();
    int64_t b = 0;
    for (; b + 8 <= count; b += 8)
        acc = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(p + b))), _mm256_loadu_ps(xs + b), acc);
    float total = bm_hsum(acc);
    for (; b < count; ++b) total += _cvtsh_ss(p[b]) * xs[b];
    return total;
}

static inline __m256 bm_q4_group(__m256i lo, const float* xg, __m256 d_lo, __m256 d_hi, __m256 acc) {
    const __m256i m0 = _mm256_set1_epi32(0xF), m1 = _mm256_set1_epi32(0xF0);
    const __m256i m2 = _mm256_set1_epi32(0xF00), m3 = _mm256_set1_epi32(0xF000);
    __m256i hi = _mm256_srli_epi32(lo, 16);
    __m256 s = _mm256_add_ps(bm_nibbles(lo, m0, xg), bm_nibbles(lo, m1, xg + 8));
    __m256 t = _mm256_add_ps(bm_nibbles(lo, m2, xg + 16), bm_nibbles(lo, m3, xg + 24));
    __m256 u = _mm256_add_ps(bm_nibbles(hi, m0, xg + 32), bm_nibbles(hi, m1, xg + 40));
    __m256 v = _mm256_add_ps(bm_nibbles(hi, m2, xg + 48), bm_nibbles(hi, m3, xg + 56));
    acc = _mm256_fmadd_ps(d_lo, _mm256_add_ps(s, t), acc);
    return _mm256_fmadd_ps(d_hi, _mm256_add_ps(u, v), acc);
}

static void bm_tile_q4(const bm_matrix* m, int64_t row, int64_t rows, const bm_input* in, float* out) {
    const int64_t groups = in->groups, params = in->params;
    for (int64_t r = 0; r < rows; r += 2) {
        const int64_t r1 = r + 1 < rows ? r + 1 : r;
        const uint32_t *w0 = (const uint32_t*)m->values + (row + r) * 8 * groups;
        const uint32_t *w1 = (const uint32_t*)m->values + (row + r1) * 8 * groups;
        const uint16_t *d0 = m->scales + (row + r) * params, *d1 = m->scales + (row + r1) * params;
        __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
        for (int64_t g = 0; g < groups; ++g) {
            const float* xg = in->xp + g * 64;
            _mm_prefetch((const char*)(w0 + (BM_PREFETCH_ROWS * groups + g) * 8), _MM_HINT_T0);
            _mm_prefetch((const char*)(w1 + (BM_PREFETCH_ROWS * groups + g) * 8), _MM_HINT_T0);
            a0 = bm_q4_group(_mm256_loadu_si256((const __m256i*)(w0 + g * 8)), xg,
                             _mm256_set1_ps(_cvtsh_ss(d0[2 * g])), _mm256_set1_ps(_cvtsh_ss(d0[2 * g + 1])), a0);
            a1 = bm_q4_group(_mm256_loadu_si256((const __m256i*)(w1 + g * 8)), xg,
                             _mm256_set1_ps(_cvtsh_ss(d1[2 * g])), _mm256_set1_ps(_cvtsh_ss(d1[2 * g + 1])), a1);
        }
        float o0 = bm_hsum(a0), o1 = bm_hsum(a1);
        if (m->kind == BM_Q4_1) {
            o0 += bm_param_dot(m->mins + (row + r) * params, in->xs, params);
            o1 += bm_param_dot(m->mins + (row + r1) * params, in->xs, params);
        } else {
            o0 -= 8.f * bm_param_dot(d0, in->xs, params);
            o1 -= 8.f * bm_param_dot(d1, in->xs, params);
        }
        out[r] = o0;
        if (r1 != r) out[r1] = o1;
    }
}

/* 8-bit activations, one 64-value group: byte 4L+i of the low-nibble vector is value 16i+L, of the
   high-nibble vector value 16i+8+L, so the int16 pair sums of maddubs alternate between the group's
   two blocks; madd with (1, 0) / (0, 1) weights separates them. */
static inline __m256 bm_q4_int_group(__m256i words, const int8_t* xg, __m256 scale_lo, __m256 scale_hi, __m256 acc) {
    const __m256i nibble = _mm256_set1_epi8(0x0F);
    const __m256i first = _mm256_set1_epi32(0x00000001), second = _mm256_set1_epi32(0x00010000);
    __m256i low = _mm256_and_si256(words, nibble), high = _mm256_and_si256(_mm256_srli_epi16(words, 4), nibble);
    __m256i pairs = _mm256_add_epi16(_mm256_maddubs_epi16(low, _mm256_loadu_si256((const __m256i*)xg)),
                                     _mm256_maddubs_epi16(high, _mm256_loadu_si256((const __m256i*)(xg + 32))));
    acc = _mm256_fmadd_ps(scale_lo, _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, first)), acc);
    return _mm256_fmadd_ps(scale_hi, _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, second)), acc);
}

static void bm_tile_q4_int(const bm_matrix* m, int64_t row, int64_t rows, const bm_input* in, float* out) {
    const int64_t groups = in->groups, params = in->params;
    for (int64_t r = 0; r < rows; r += 2) {
        const int64_t r1 = r + 1 < rows ? r + 1 : r;
        const uint32_t *w0 = (const uint32_t*)m->values + (row + r) * 8 * groups;
        const uint32_t *w1 = (const uint32_t*)m->values + (row + r1) * 8 * groups;
        const uint16_t *d0 = m->scales + (row + r) * params, *d1 = m->scales + (row + r1) * params;
        __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
        for (int64_t g = 0; g < groups; ++g) {
            _mm_prefetch((const char*)(w0 + (BM_PREFETCH_ROWS * groups + g) * 8), _MM_HINT_T0);
            _mm_prefetch((const char*)(w1 + (BM_PREFETCH_ROWS * groups + g) * 8), _MM_HINT_T0);
            const int8_t* xg = in->xq4 + g * 64;
            const float dx_lo = in->dx[2 * g], dx_hi = in->dx[2 * g + 1];
            a0 = bm_q4_int_group(_mm256_loadu_si256((const __m256i*)(w0 + g * 8)), xg,
                                 _mm256_set1_ps(_cvtsh_ss(d0[2 * g]) * dx_lo), _mm256_set1_ps(_cvtsh_ss(d0[2 * g + 1]) * dx_hi), a0);
            a1 = bm_q4_int_group(_mm256_loadu_si256((const __m256i*)(w1 + g * 8)), xg,
                                 _mm256_set1_ps(_cvtsh_ss(d1[2 * g]) * dx_lo), _mm256_set1_ps(_cvtsh_ss(d1[2 * g + 1]) * dx_hi), a1);
        }
        float o0 = bm_hsum(a0), o1 = bm_hsum(a1);
        if (m->kind == BM_Q4_1) {
            o0 += bm_param_dot(m->mins + (row + r) * params, in->xs, params);
            o1 += bm_param_dot(m->mins + (row + r1) * params, in->xs, params);
        } else {
            o0 -= 8.f * bm_param_dot(d0, in->xs, params);
            o1 -= 8.f * bm_param_dot(d1, in->xs, params);
        }
        out[r] = o0;
        if (r1 != r) out[r1] = o1;
    }
}

static void bm_tile(const bm_matrix* m, int64_t row, int64_t rows, const bm_input* in, float* out) {
    if (m->kind == BM_F32) bm_tile_f32((const float*)m->values + row * in->K, rows, in, out);
    else if (m->kind == BM_Q8_0) (in->int8 ? bm_tile_q8_int : bm_tile_q8)(m, row, rows, in, out);
    else (in->int8 ? bm_tile_q4_int : bm_tile_q4)(m, row, rows, in, out);
    if (m->bias)
        for (int64_t r = 0; r < rows; ++r) out[r] += m->bias[row + r];
}

/* Quantize x[32b .. 32b+31] to int8 as llama.cpp's Q8_0 does: scale max|x| / 127, round to nearest. */
static float bm_quantize_block(const float* x, int8_t* q) {
    float amax = 0.f;
    for (int j = 0; j < 32; ++j) amax = fabsf(x[j]) > amax ? fabsf(x[j]) : amax;
    const float d = amax / 127.f, id = d != 0.f ? 1.f / d : 0.f;
    for (int j = 0; j < 32; ++j) q[j] = (int8_t)roundf(x[j] * id);
    return d;
}

/* Bytes of scratch bm_prepare_into needs for K inputs. */
static size_t bm_scratch_bytes(int64_t K) {
    const int64_t groups = (K / 32 + 1) / 2, padded = 64 * groups, params = 2 * groups;
    return sizeof(float) * (size_t)(padded + 2 * params + 8) + 2 * (size_t)padded;
}

/* Fill in the views of x the quantized kernels read, in ``scratch`` of bm_scratch_bytes(K). */
static void bm_prepare_into(const float* x, int64_t K, int int8, bm_input* in, char* scratch) {
    in->x = x; in->K = K; in->nb = K / 32; in->groups = (in->nb + 1) / 2; in->params = 2 * in->groups; in->int8 = int8;
    const int64_t padded = 64 * in->groups;
    float *xp = (float*)scratch, *xs = xp + padded, *dx = xs + in->params + 8;
    int8_t *xq = (int8_t*)(dx + in->params), *xq4 = xq + padded;
    /* The padding block of an odd block count must read as zeros (scratch is reused across widths). */
    for (int64_t k = 32 * in->nb; k < padded; ++k) xp[k] = 0.f, xq[k] = 0, xq4[k] = 0;
    for (int64_t b = in->nb; b < in->params; ++b) xs[b] = 0.f, dx[b] = 0.f;
    for (int64_t b = 0; b < in->nb; ++b) {
        float s = 0.f;
        for (int j = 0; j < 32; ++j) s += x[b * 32 + j];
        xs[b] = s;
    }
    if (int8) {
        for (int64_t b = 0; b < in->nb; ++b) dx[b] = bm_quantize_block(x + 32 * b, xq + 32 * b);
        for (int64_t g = 0; g < in->groups; ++g)
            for (int L = 0; L < 8; ++L)
                for (int i = 0; i < 4; ++i) {
                    xq4[g * 64 + 4 * L + i] = xq[g * 64 + 16 * i + L];
                    xq4[g * 64 + 32 + 4 * L + i] = xq[g * 64 + 16 * i + 8 + L];
                }
    } else {
        static const float unscale[4] = {1.f, 1.f / 16.f, 1.f / 256.f, 1.f / 4096.f};
        for (int64_t k = 0; k < 32 * in->nb; ++k) xp[k] = x[k] * unscale[(k % 64) / 8 % 4];
    }
    in->xp = xp; in->xs = xs; in->dx = dx; in->xq = xq; in->xq4 = xq4;
}

static int64_t bm_tile_count(const bm_matrix* mats, int64_t count) {
    int64_t tiles = 0;
    for (int64_t i = 0; i < count; ++i) tiles += (mats[i].rows + BM_TILE - 1) / BM_TILE;
    return tiles;
}

/* Tiles [first, last) of the concatenated matrices (outputs one after the other in out); with
   ``accumulate``, results are added to out instead of stored (a residual connection). */
static void bm_run_tiles(const bm_matrix* mats, const bm_input* in, float* out, int64_t first, int64_t last,
                         int accumulate) {
    int64_t matrix = 0, first_tile = 0, offset = 0;
    for (int64_t t = first; t < last; ++t) {
        while (t - first_tile >= (mats[matrix].rows + BM_TILE - 1) / BM_TILE) {
            first_tile += (mats[matrix].rows + BM_TILE - 1) / BM_TILE;
            offset += mats[matrix].rows;
            ++matrix;
        }
        int64_t row = (t - first_tile) * BM_TILE;
        int64_t rows = mats[matrix].rows - row < BM_TILE ? mats[matrix].rows - row : BM_TILE;
        if (accumulate) {
            float tile[BM_TILE];
            bm_tile(&mats[matrix], row, rows, in, tile);
            for (int64_t r = 0; r < rows; ++r) out[offset + row + r] += tile[r];
        } else {
            bm_tile(&mats[matrix], row, rows, in, out + offset + row);
        }
    }
}

/* The share [*first, *last) of ``tiles`` that thread ``thread`` of ``nthreads`` runs (contiguous, static). */
static void bm_share(int64_t tiles, int thread, int nthreads, int64_t* first, int64_t* last) {
    *first = tiles * thread / nthreads;
    *last = tiles * (thread + 1) / nthreads;
}
#endif

/* out = concatenation over matrices of (W_i @ x + bias_i). Returns 0; -1 when out of memory;
   -2 when this build has no AVX2 kernels. */
int bm_matvec(const float* x, int64_t K, const bm_matrix* mats, int64_t count, float* out, int nthreads,
              int quantize_activations) {
#ifdef BM_AVX2
    int quantized = 0;
    for (int64_t i = 0; i < count; ++i) quantized |= mats[i].kind != BM_F32;
    const int64_t tiles = bm_tile_count(mats, count);
    bm_input in = {x, x, NULL, NULL, NULL, NULL, K, K / 32, 0, 0, 0};
    char* scratch = NULL;
    if (quantized) {
        if (!(scratch = (char*)malloc(bm_scratch_bytes(K)))) return -1;
        bm_prepare_into(x, K, quantize_activations, &in, scratch);
    }
    if (nthreads > tiles) nthreads = tiles > 0 ? (int)tiles : 1;
    #pragma omp parallel num_threads(nthreads)
    {
        int64_t first, last;
        bm_share(tiles, omp_get_thread_num(), omp_get_num_threads(), &first, &last);
        bm_run_tiles(mats, &in, out, first, last, 0);
    }
    free(scratch);
    return 0;
#else
    (void)x; (void)K; (void)mats; (void)count; (void)out; (void)nthreads; (void)quantize_activations;
    return -2;
#endif
}
"""
