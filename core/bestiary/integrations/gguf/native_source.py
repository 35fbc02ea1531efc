"""C source of the native block-quantized kernels (compiled on first use by :mod:`.native`).

Weights are kept as GGUF stores them, minus the interleaving: per output row,
the scales (float16) of its 32-value blocks, optionally the block minimums
(float16, Q4_1), and the values (int8 for Q8_0; for Q4 16 bytes per block, the
low nibbles holding values 0..15 and the high nibbles values 16..31).

``x`` is float32 ``[M, K]``, ``out`` float32 ``[M, N]``; ``out[m, n]`` is the dot
product of row ``m`` of ``x`` with dequantized row ``n`` of the weight, summed
block by block in float32: ``scale_b * sum_j q_j x_j`` (+ ``min_b * sum_j x_j``).

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

/* Convert one row's float16 block parameters to float32. */
static void bq_halves(const uint16_t* in, float* out, int64_t count) {
    int64_t i = 0;
#ifdef BQ_AVX2
    for (; i + 8 <= count; i += 8)
        _mm256_storeu_ps(out + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(in + i))));
#endif
    for (; i < count; ++i) out[i] = bq_half(in[i]);
}

/* Block sums of x: xs[m * nb + b] = sum of x[m, 32b .. 32b+31]. */
static float* bq_block_sums(const float* x, int64_t M, int64_t K) {
    int64_t nb = K / 32;
    float* xs = (float*)malloc(sizeof(float) * (size_t)(M * nb + 1));
    if (!xs) return NULL;
    for (int64_t i = 0; i < M * nb; ++i) {
        float s = 0.f;
        for (int j = 0; j < 32; ++j) s += x[i * 32 + j];
        xs[i] = s;
    }
    return xs;
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
static inline __m256 bq_u8x8(__m128i v) { return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(v)); }

/* One block of 32 weights as four vectors of 8 floats (unscaled integer values). */
static inline void bq_load_q8(const int8_t* q, __m256* w) {
    __m128i a = _mm_loadu_si128((const __m128i*)q), b = _mm_loadu_si128((const __m128i*)(q + 16));
    w[0] = bq_i8x8(a); w[1] = bq_i8x8(_mm_srli_si128(a, 8));
    w[2] = bq_i8x8(b); w[3] = bq_i8x8(_mm_srli_si128(b, 8));
}
static inline void bq_load_q4(const uint8_t* p, int centered, __m256* w) {
    const __m128i mask = _mm_set1_epi8(0x0F);
    __m128i raw = _mm_loadu_si128((const __m128i*)p);
    __m128i lo = _mm_and_si128(raw, mask), hi = _mm_and_si128(_mm_srli_epi16(raw, 4), mask);
    if (centered) { /* Q4_0: value - 8, exact in int8 */
        const __m128i eight = _mm_set1_epi8(8);
        lo = _mm_sub_epi8(lo, eight); hi = _mm_sub_epi8(hi, eight);
        w[0] = bq_i8x8(lo); w[1] = bq_i8x8(_mm_srli_si128(lo, 8));
        w[2] = bq_i8x8(hi); w[3] = bq_i8x8(_mm_srli_si128(hi, 8));
    } else {
        w[0] = bq_u8x8(lo); w[1] = bq_u8x8(_mm_srli_si128(lo, 8));
        w[2] = bq_u8x8(hi); w[3] = bq_u8x8(_mm_srli_si128(hi, 8));
    }
}
static inline __m256 bq_dot_block(const __m256* w, const float* x) {
    __m256 s = _mm256_mul_ps(w[0], _mm256_loadu_ps(x));
    __m256 t = _mm256_mul_ps(w[1], _mm256_loadu_ps(x + 8));
    s = _mm256_fmadd_ps(w[2], _mm256_loadu_ps(x + 16), s);
    t = _mm256_fmadd_ps(w[3], _mm256_loadu_ps(x + 24), t);
    return _mm256_add_ps(s, t);
}
#endif

/* Integer values of one block as 32 floats (portable path). */
static inline void bq_block_values(int kind, const uint8_t* row, int64_t b, float* v) {
    if (kind == 0) {
        const int8_t* q = (const int8_t*)row + b * 32;
        for (int j = 0; j < 32; ++j) v[j] = (float)q[j];
    } else {
        const uint8_t* p = row + b * 16;
        float offset = kind == 1 ? 8.f : 0.f;
        for (int j = 0; j < 16; ++j) {
            v[j] = (float)(p[j] & 0x0F) - offset;
            v[j + 16] = (float)(p[j] >> 4) - offset;
        }
    }
}

/* kind: 0 = Q8_0 (int8 values), 1 = Q4_0 (nibble - 8), 2 = Q4_1 (nibble, plus block minimum). */
static void bq_row(int kind, const uint8_t* row, const float* d, const float* mins, int64_t nb,
                   const float* x, const float* xs, int64_t K, int64_t mt, float* out, int64_t N) {
#ifdef BQ_AVX2
    __m256 acc[BQ_TILE];
    for (int64_t m = 0; m < mt; ++m) acc[m] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; ++b) {
        __m256 w[4];
        if (kind == 0) bq_load_q8((const int8_t*)row + b * 32, w);
        else bq_load_q4(row + b * 16, kind == 1, w);
        __m256 scale = _mm256_broadcast_ss(d + b);
        for (int64_t m = 0; m < mt; ++m)
            acc[m] = _mm256_fmadd_ps(scale, bq_dot_block(w, x + m * K + b * 32), acc[m]);
    }
    for (int64_t m = 0; m < mt; ++m) {
        float total = bq_hsum(acc[m]);
        if (kind == 2) {
            float offset = 0.f;
            for (int64_t b = 0; b < nb; ++b) offset += mins[b] * xs[m * nb + b];
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
            if (kind == 2) acc[m] += mins[b] * xs[m * nb + b];
        }
    }
    for (int64_t m = 0; m < mt; ++m) out[m * N] = acc[m];
#endif
}

#ifdef BQ_AVX2
/* Decoding (M == 1): rows n and n+1 of W together, sharing the loads of x and giving the
   core two independent accumulation chains. */
static void bq_matvec_pair(int kind, const uint8_t* r0, const uint8_t* r1, const float* d0, const float* d1,
                           const float* m0, const float* m1, int64_t nb, const float* x, const float* xs,
                           float* out0, float* out1) {
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; ++b) {
        __m256 w[4], v[4];
        if (kind == 0) {
            bq_load_q8((const int8_t*)r0 + b * 32, w);
            bq_load_q8((const int8_t*)r1 + b * 32, v);
        } else {
            bq_load_q4(r0 + b * 16, kind == 1, w);
            bq_load_q4(r1 + b * 16, kind == 1, v);
        }
        const float* xb = x + b * 32;
        __m256 x0 = _mm256_loadu_ps(xb), x1 = _mm256_loadu_ps(xb + 8);
        __m256 x2 = _mm256_loadu_ps(xb + 16), x3 = _mm256_loadu_ps(xb + 24);
        __m256 s = _mm256_fmadd_ps(w[2], x2, _mm256_mul_ps(w[0], x0));
        __m256 t = _mm256_fmadd_ps(w[3], x3, _mm256_mul_ps(w[1], x1));
        __m256 s2 = _mm256_fmadd_ps(v[2], x2, _mm256_mul_ps(v[0], x0));
        __m256 t2 = _mm256_fmadd_ps(v[3], x3, _mm256_mul_ps(v[1], x1));
        a0 = _mm256_fmadd_ps(_mm256_broadcast_ss(d0 + b), _mm256_add_ps(s, t), a0);
        a1 = _mm256_fmadd_ps(_mm256_broadcast_ss(d1 + b), _mm256_add_ps(s2, t2), a1);
    }
    float total0 = bq_hsum(a0), total1 = bq_hsum(a1);
    if (kind == 2) {
        float o0 = 0.f, o1 = 0.f;
        for (int64_t b = 0; b < nb; ++b) { o0 += m0[b] * xs[b]; o1 += m1[b] * xs[b]; }
        total0 += o0; total1 += o1;
    }
    *out0 = total0;
    *out1 = total1;
}

static void bq_matvec(int kind, const float* x, int64_t K, const void* values, const uint16_t* scales,
                      const uint16_t* mins, int64_t N, float* out, const float* xs, int nthreads) {
    const int64_t nb = K / 32;
    const int64_t row_bytes = kind == 0 ? K : K / 2;
    #pragma omp parallel num_threads(nthreads)
    {
        float* params = (float*)malloc(sizeof(float) * (size_t)(4 * nb + 8));
        if (params) {
            float *d0 = params, *d1 = params + nb, *m0 = params + 2 * nb, *m1 = params + 3 * nb;
            #pragma omp for schedule(static)
            for (int64_t pair = 0; pair < (N + 1) / 2; ++pair) {
                int64_t n = pair * 2, second = n + 1 < N ? n + 1 : n;
                float spare;
                bq_halves(scales + n * nb, d0, nb);
                bq_halves(scales + second * nb, d1, nb);
                if (kind == 2) {
                    bq_halves(mins + n * nb, m0, nb);
                    bq_halves(mins + second * nb, m1, nb);
                }
                const uint8_t* base = (const uint8_t*)values;
                bq_matvec_pair(kind, base + n * row_bytes, base + second * row_bytes, d0, d1, m0, m1, nb, x, xs,
                               out + n, second != n ? out + second : &spare);
            }
            free(params);
        }
    }
}
#endif

/* out[M, N] = x[M, K] @ dequantized(W)[N, K]^T. Returns 0, or -1 when out of memory. */
int bq_matmul(int kind, const float* x, int64_t M, int64_t K, const void* values, const uint16_t* scales,
              const uint16_t* mins, int64_t N, float* out, int nthreads) {
    const int64_t nb = K / 32;
    const int64_t row_bytes = kind == 0 ? K : K / 2;
    float* xs = kind == 2 ? bq_block_sums(x, M, K) : NULL;
    if (kind == 2 && !xs) return -1;
#ifdef BQ_AVX2
    if (M == 1) {
        bq_matvec(kind, x, K, values, scales, mins, N, out, xs, nthreads);
        free(xs);
        return 0;
    }
#endif
    #pragma omp parallel num_threads(nthreads)
    {
        float* params = (float*)malloc(sizeof(float) * (size_t)(2 * nb + 8));
        if (params) {
            float* d = params;
            float* mn = params + nb;
            #pragma omp for schedule(static)
            for (int64_t n = 0; n < N; ++n) {
                bq_halves(scales + n * nb, d, nb);
                if (kind == 2) bq_halves(mins + n * nb, mn, nb);
                const uint8_t* row = (const uint8_t*)values + n * row_bytes;
                for (int64_t m0 = 0; m0 < M; m0 += BQ_TILE) {
                    int64_t mt = M - m0 < BQ_TILE ? M - m0 : BQ_TILE;
                    bq_row(kind, row, d, mn, nb, x + m0 * K, xs ? xs + m0 * nb : NULL, K, mt, out + m0 * N + n, N);
                }
            }
            free(params);
        }
    }
    free(xs);
    return 0;
}

/* out[rows, K] = dequantized rows [row0, row0 + rows) of W, float32. */
void bq_dequantize(int kind, const void* values, const uint16_t* scales, const uint16_t* mins,
                   int64_t row0, int64_t rows, int64_t K, float* out, int nthreads) {
    const int64_t nb = K / 32;
    const int64_t row_bytes = kind == 0 ? K : K / 2;
    #pragma omp parallel for num_threads(nthreads) schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
        int64_t n = row0 + r;
        const uint8_t* row = (const uint8_t*)values + n * row_bytes;
        float v[32];
        for (int64_t b = 0; b < nb; ++b) {
            float d = bq_half(scales[n * nb + b]);
            float* o = out + r * K + b * 32;
            bq_block_values(kind, row, b, v);
            if (kind == 2) {
                float mn = bq_half(mins[n * nb + b]);
                for (int j = 0; j < 32; ++j) o[j] = d * v[j] + mn;
            } else {
                for (int j = 0; j < 32; ++j) o[j] = v[j] * d;
            }
        }
    }
}
"""
