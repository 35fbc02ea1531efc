"""C source of the native block-quantized kernels (compiled on first use by :mod:`.native`).

Per output row the weight holds float16 block scales (and float16 block minimums
for Q4_1) and the values:

- Q8_0: int8, as GGUF stores them.
- Q4_0/Q4_1: 4-bit values interleaved for SIMD. Each group of 64 values (two
  32-value blocks) is eight uint32 words; nibble ``v`` (bits ``4v..4v+3``) of word
  ``L`` holds value ``8v + L`` of the group. So bits 0..15 of the eight words are
  the first block, bits 16..31 the second, and one AND with ``0xF << 4v`` puts
  eight values in eight 32-bit lanes at once (scaled by ``16**(v % 4)``, which the
  kernel divides out of ``x`` beforehand: exact powers of two). Rows with an odd
  number of blocks are padded with a zero block (scale 0); Q4 scales/minimums
  then have ``2 * groups`` columns.

``x`` is float32 ``[M, K]``, ``out`` float32 ``[M, N]``; ``out[m, n]`` is the dot
product of row ``m`` of ``x`` with dequantized row ``n`` of the weight, summed
block by block in float32: ``scale_b * sum_j q_j x_j`` (+ ``min_b * sum_j x_j`` for
Q4_1; Q4_0 values are centred, ``q - 8``). Single rows (decoding) are served by
:mod:`bestiary.nn.matvec_source` instead.

With AVX2+FMA+F16C (x86-64 since 2013) the inner loops use intrinsics; other
machines get portable C that the compiler vectorizes as it can.
"""

KERNEL_SOURCE = r"""
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>
#define BQ_AVX2 1
#endif

#define BQ_TILE 4

int bq_has_avx2(void) {
#ifdef BQ_AVX2
    return 1;
#else
    return 0;
#endif
}

static float bq_half(uint16_t h) {
#ifdef BQ_AVX2
    return _cvtsh_ss(h);
#else
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exponent = (h >> 10) & 0x1Fu, mantissa = h & 0x3FFu, bits;
    if (exponent == 0) {
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
#endif
}

/* Convert float16 block parameters to float32. */
static void bq_halves(const uint16_t* in, float* out, int64_t count) {
    int64_t i = 0;
#ifdef BQ_AVX2
    for (; i + 8 <= count; i += 8)
        _mm256_storeu_ps(out + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(in + i))));
#endif
    for (; i < count; ++i) out[i] = bq_half(in[i]);
}

/* Geometry of a row: blocks, stored block parameters per row, bytes of values per row. */
typedef struct { int64_t nb, params, row_bytes, groups; } bq_shape;

static bq_shape bq_geometry(int kind, int64_t K) {
    bq_shape g;
    g.nb = K / 32;
    g.groups = (g.nb + 1) / 2;
    g.params = kind == 0 ? g.nb : 2 * g.groups;
    g.row_bytes = kind == 0 ? K : 32 * g.groups;
    return g;
}

/* Block sums of x: xs[m * params + b] = sum of x[m, 32b .. 32b+31] (0 for padding blocks). */
static float* bq_block_sums(const float* x, int64_t M, int64_t K, int64_t params) {
    int64_t nb = K / 32;
    float* xs = (float*)calloc((size_t)(M * params + 1), sizeof(float));
    if (!xs) return NULL;
    for (int64_t m = 0; m < M; ++m)
        for (int64_t b = 0; b < nb; ++b) {
            float s = 0.f;
            for (int j = 0; j < 32; ++j) s += x[m * K + b * 32 + j];
            xs[m * params + b] = s;
        }
    return xs;
}

/* Integer values of block b as 32 floats (Q4_0 centred: value - 8). */
static inline void bq_block_values(int kind, const uint8_t* row, int64_t b, float* v) {
    if (kind == 0) {
        const int8_t* q = (const int8_t*)row + b * 32;
        for (int j = 0; j < 32; ++j) v[j] = (float)q[j];
        return;
    }
    const uint32_t* words = (const uint32_t*)row + (b / 2) * 8;
    int base = (int)(b % 2) * 16;
    float offset = kind == 1 ? 8.f : 0.f;
    for (int vv = 0; vv < 4; ++vv)
        for (int lane = 0; lane < 8; ++lane)
            v[vv * 8 + lane] = (float)((words[lane] >> (base + 4 * vv)) & 0xFu) - offset;
}

#ifdef BQ_AVX2
static inline float bq_hsum(__m256 v) {
    __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
    lo = _mm_add_ps(lo, hi);
    lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
    lo = _mm_add_ss(lo, _mm_movehdup_ps(lo));
    return _mm_cvtss_f32(lo);
}
static inline __m256 bq_i8x8(__m128i v) { return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(v)); }

/* Block b as four vectors of 8 floats (unscaled integer values, Q4_0 centred). */
static inline void bq_load_block(int kind, const uint8_t* row, int64_t b, __m256* w) {
    if (kind == 0) {
        const int8_t* q = (const int8_t*)row + b * 32;
        __m128i a = _mm_loadu_si128((const __m128i*)q), c = _mm_loadu_si128((const __m128i*)(q + 16));
        w[0] = bq_i8x8(a); w[1] = bq_i8x8(_mm_srli_si128(a, 8));
        w[2] = bq_i8x8(c); w[3] = bq_i8x8(_mm_srli_si128(c, 8));
        return;
    }
    __m256i words = _mm256_loadu_si256((const __m256i*)(row + (b / 2) * 32));
    if (b % 2) words = _mm256_srli_epi32(words, 16);
    const __m256i mask = _mm256_set1_epi32(0xF), eight = _mm256_set1_epi32(kind == 1 ? 8 : 0);
    for (int v = 0; v < 4; ++v)
        w[v] = _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_and_si256(_mm256_srli_epi32(words, 4 * v), mask), eight));
}

static inline __m256 bq_dot_block(const __m256* w, const float* x) {
    __m256 s = _mm256_mul_ps(w[0], _mm256_loadu_ps(x));
    __m256 t = _mm256_mul_ps(w[1], _mm256_loadu_ps(x + 8));
    s = _mm256_fmadd_ps(w[2], _mm256_loadu_ps(x + 16), s);
    t = _mm256_fmadd_ps(w[3], _mm256_loadu_ps(x + 24), t);
    return _mm256_add_ps(s, t);
}

#endif

/* Rows of x in tiles of up to BQ_TILE against one weight row. */
static void bq_row(int kind, const uint8_t* row, const float* d, const float* mins, int64_t nb,
                   const float* x, const float* xs, int64_t params, int64_t K, int64_t mt, float* out, int64_t N) {
#ifdef BQ_AVX2
    __m256 acc[BQ_TILE];
    for (int64_t m = 0; m < mt; ++m) acc[m] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; ++b) {
        __m256 w[4];
        bq_load_block(kind, row, b, w);
        __m256 scale = _mm256_broadcast_ss(d + b);
        for (int64_t m = 0; m < mt; ++m)
            acc[m] = _mm256_fmadd_ps(scale, bq_dot_block(w, x + m * K + b * 32), acc[m]);
    }
    for (int64_t m = 0; m < mt; ++m) {
        float total = bq_hsum(acc[m]);
        if (kind == 2) {
            float offset = 0.f;
            for (int64_t b = 0; b < nb; ++b) offset += mins[b] * xs[m * params + b];
            total += offset;
        }
        out[m * N] = total;
    }
#else
    float acc[BQ_TILE] = {0.f, 0.f, 0.f, 0.f};
    float v[32];
    for (int64_t b = 0; b < nb; ++b) {
        bq_block_values(kind, row, b, v);
        for (int64_t m = 0; m < mt; ++m) {
            const float* xb = x + m * K + b * 32;
            float s = 0.f;
            for (int j = 0; j < 32; ++j) s += v[j] * xb[j];
            acc[m] += d[b] * s;
            if (kind == 2) acc[m] += mins[b] * xs[m * params + b];
        }
    }
    for (int64_t m = 0; m < mt; ++m) out[m * N] = acc[m];
#endif
}

/* out[M, N] = x[M, K] @ dequantized(W)[N, K]^T. Returns 0, or -1 when out of memory.
   kind: 0 = Q8_0, 1 = Q4_0, 2 = Q4_1. */
int bq_matmul(int kind, const float* x, int64_t M, int64_t K, const void* values, const uint16_t* scales,
              const uint16_t* mins, int64_t N, float* out, int nthreads) {
    const bq_shape g = bq_geometry(kind, K);
    float* xs = kind == 2 ? bq_block_sums(x, M, K, g.params) : NULL;
    if (kind == 2 && !xs) return -1;
    #pragma omp parallel num_threads(nthreads)
    {
        float* params = (float*)malloc(sizeof(float) * (size_t)(2 * g.params + 8));
        if (params) {
            float* d = params;
            float* mn = params + g.params;
            #pragma omp for schedule(static)
            for (int64_t n = 0; n < N; ++n) {
                bq_halves(scales + n * g.params, d, g.params);
                if (kind == 2) bq_halves(mins + n * g.params, mn, g.params);
                const uint8_t* row = (const uint8_t*)values + n * g.row_bytes;
                for (int64_t m0 = 0; m0 < M; m0 += BQ_TILE) {
                    int64_t mt = M - m0 < BQ_TILE ? M - m0 : BQ_TILE;
                    bq_row(kind, row, d, mn, g.nb, x + m0 * K, xs ? xs + m0 * g.params : NULL, g.params, K, mt,
                           out + m0 * N + n, N);
                }
            }
            free(params);
        }
    }
    free(xs);
    return 0;
}

/* out[rows, K] = dequantized rows [row0, row0 + rows) of W, float32, exactly as GGUF defines them. */
void bq_dequantize(int kind, const void* values, const uint16_t* scales, const uint16_t* mins,
                   int64_t row0, int64_t rows, int64_t K, float* out, int nthreads) {
    const bq_shape g = bq_geometry(kind, K);
    #pragma omp parallel for num_threads(nthreads) schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
        int64_t n = row0 + r;
        const uint8_t* row = (const uint8_t*)values + n * g.row_bytes;
        float v[32];
        for (int64_t b = 0; b < g.nb; ++b) {
            float d = bq_half(scales[n * g.params + b]);
            float* o = out + r * K + b * 32;
            bq_block_values(kind, row, b, v);
            if (kind == 2) {
                float mn = bq_half(mins[n * g.params + b]);
                for (int j = 0; j < 32; ++j) o[j] = d * v[j] + mn;
            } else {
                for (int j = 0; j < 32; ++j) o[j] = v[j] * d;
            }
        }
    }
}
"""
