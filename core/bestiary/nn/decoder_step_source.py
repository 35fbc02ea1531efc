"""C source of one decoding step of a Llama-family decoder stack, appended to :mod:`.matvec_source`.

``bd_decode`` runs every layer of a pre-norm decoder for one new token of one
sequence, in one OpenMP parallel region (threads meet at barriers between
phases instead of opening a region per operation):

1. RMSNorm of the hidden state, then q/k/v (``bm_matrix`` weights: float32 or
   packed GGUF blocks, optional biases).
2. Rotary embedding of q and k from the step's ``cos``/``sin`` rows
   (``x * cos + rotate_half(x) * sin`` over the whole head), and the new key and
   value written into the layer's cache at ``slot``.
3. Attention of each query head over cache slots ``[lo, slot]`` of its key/value
   head (grouped-query attention), where ``lo`` is 0, or ``slot - window + 1``
   for a sliding window: softmax of the scaled dot products, in float32.
4. The output projection, added to the hidden state (the residual).
5. RMSNorm, gate and up projections, ``silu(gate) * up``, the down projection
   added to the hidden state.

Finally the hidden state is normalised by ``final_norm`` (if given) into
``normed_out``. Caches are ``[kv_heads, capacity, head_dim]`` float32 arrays
(one sequence). Rows of each projection are dealt to threads in contiguous
tiles (see ``bm_run_tiles``); each thread prepares its own copy of a
projection's input (the norm, and the views quantized kernels read), which
costs less than another barrier.
"""

DECODER_SOURCE = r"""
typedef struct {
    const float* input_norm;
    const float* post_norm;
    bm_matrix qkv[3];
    bm_matrix o;
    bm_matrix gate_up[2];
    bm_matrix down;
    float* keys;
    float* values;
    int64_t capacity;
    int64_t window;
} bd_layer;

typedef struct {
    int64_t layers, hidden, heads, kv_heads, head_dim, intermediate;
    float eps, scaling;
    const bd_layer* layer;
    const float* final_norm;
} bd_model;

#ifdef BM_AVX2
static float bd_dot(const float* a, const float* b, int64_t n) {
    __m256 acc = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc);
    float total = bm_hsum(acc);
    for (; i < n; ++i) total += a[i] * b[i];
    return total;
}

static void bd_axpy(float alpha, const float* x, float* y, int64_t n) {
    const __m256 a = _mm256_set1_ps(alpha);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_fmadd_ps(a, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
    for (; i < n; ++i) y[i] += alpha * x[i];
}

static void bd_rms_norm(const float* x, const float* weight, int64_t n, float eps, float* out) {
    const float inverse = 1.f / sqrtf(eps + bd_dot(x, x, n) / (float)n);
    for (int64_t i = 0; i < n; ++i) out[i] = x[i] * inverse * weight[i];
}

/* x * cos + rotate_half(x) * sin, in place, for one head of ``dim`` values. */
static void bd_rotate(float* x, const float* cos, const float* sin, int64_t dim) {
    const int64_t half = dim / 2;
    for (int64_t i = 0; i < half; ++i) {
        const float first = x[i], second = x[i + half];
        x[i] = first * cos[i] - second * sin[i];
        x[i + half] = second * cos[i + half] + first * sin[i + half];
    }
}

static int bd_quantized(const bm_matrix* mats, int64_t count) {
    for (int64_t i = 0; i < count; ++i)
        if (mats[i].kind != BM_F32) return 1;
    return 0;
}

/* This thread's share of x @ mats (outputs concatenated into out, or added to it). */
static void bd_project(const float* x, int64_t K, const bm_matrix* mats, int64_t count, float* out, int accumulate,
                       int int8, char* scratch, int thread, int nthreads) {
    bm_input in = {x, x, NULL, NULL, NULL, NULL, K, K / 32, 0, 0, 0};
    if (bd_quantized(mats, count)) bm_prepare_into(x, K, int8, &in, scratch);
    int64_t first, last;
    bm_share(bm_tile_count(mats, count), thread, nthreads, &first, &last);
    bm_run_tiles(mats, &in, out, first, last, accumulate);
}

/* One query head over its key/value head's slots [lo, slot]. */
static void bd_attend_head(const float* q, const float* keys, const float* values, int64_t lo, int64_t slot,
                           int64_t dim, float scaling, float* scores, float* out) {
    float top = -INFINITY;
    for (int64_t s = lo; s <= slot; ++s) {
        const float score = bd_dot(q, keys + s * dim, dim) * scaling;
        scores[s - lo] = score;
        top = score > top ? score : top;
    }
    float total = 0.f;
    for (int64_t s = lo; s <= slot; ++s) total += (scores[s - lo] = expf(scores[s - lo] - top));
    const float inverse = 1.f / total;
    for (int64_t d = 0; d < dim; ++d) out[d] = 0.f;
    for (int64_t s = lo; s <= slot; ++s) bd_axpy(scores[s - lo] * inverse, values + s * dim, out, dim);
}

static void bd_layer_step(const bd_model* m, const bd_layer* L, float* hidden, const float* cos, const float* sin,
                          int64_t slot, float* qkv, float* attended, float* gate_up, float* activated, float* normed,
                          char* scratch, float* scores, int int8, int thread, int nthreads) {
    const int64_t D = m->hidden, H = m->heads, G = m->kv_heads, hd = m->head_dim, I = m->intermediate;
    const int64_t group = H / G;
    int64_t first, last;

    bd_rms_norm(hidden, L->input_norm, D, m->eps, normed);
    bd_project(normed, D, L->qkv, 3, qkv, 0, int8, scratch, thread, nthreads);
    #pragma omp barrier

    bm_share(H + G, thread, nthreads, &first, &last);
    for (int64_t item = first; item < last; ++item) {
        if (item < H) {
            bd_rotate(qkv + item * hd, cos, sin, hd);
        } else {
            const int64_t g = item - H;
            float* key = qkv + (H + g) * hd;
            const float* value = qkv + (H + G + g) * hd;
            bd_rotate(key, cos, sin, hd);
            for (int64_t d = 0; d < hd; ++d) {
                L->keys[(g * L->capacity + slot) * hd + d] = key[d];
                L->values[(g * L->capacity + slot) * hd + d] = value[d];
            }
        }
    }
    #pragma omp barrier

    const int64_t lo = L->window > 0 && slot - L->window + 1 > 0 ? slot - L->window + 1 : 0;
    bm_share(H, thread, nthreads, &first, &last);
    for (int64_t h = first; h < last; ++h) {
        const int64_t g = h / group;
        bd_attend_head(qkv + h * hd, L->keys + g * L->capacity * hd, L->values + g * L->capacity * hd, lo, slot, hd,
                       m->scaling, scores, attended + h * hd);
    }
    #pragma omp barrier

    bd_project(attended, H * hd, &L->o, 1, hidden, 1, int8, scratch, thread, nthreads);
    #pragma omp barrier

    bd_rms_norm(hidden, L->post_norm, D, m->eps, normed);
    bd_project(normed, D, L->gate_up, 2, gate_up, 0, int8, scratch, thread, nthreads);
    #pragma omp barrier

    bm_share(I, thread, nthreads, &first, &last);
    for (int64_t i = first; i < last; ++i) {
        const float gate = gate_up[i];
        activated[i] = gate / (1.f + expf(-gate)) * gate_up[I + i];
    }
    #pragma omp barrier

    bd_project(activated, I, &L->down, 1, hidden, 1, int8, scratch, thread, nthreads);
    #pragma omp barrier
}
#endif

static int64_t bd_max(int64_t a, int64_t b) { return a > b ? a : b; }

/* Decode one token through every layer (see the module docstring). ``hidden`` [hidden] is updated in place;
   ``normed_out`` [hidden] receives final_norm(hidden) when final_norm is set. Returns 0; -1 when out of
   memory; -2 when this build has no AVX2 kernels. */
int bd_decode(const bd_model* m, float* hidden, const float* cos, const float* sin, int64_t slot, float* normed_out,
              int nthreads, int int8) {
#ifdef BM_AVX2
    const int64_t D = m->hidden, H = m->heads, G = m->kv_heads, hd = m->head_dim, I = m->intermediate;
    const int64_t widest = bd_max(bd_max(D, I), H * hd);
    const size_t scratch_bytes = (bm_scratch_bytes(widest) + 63) & ~(size_t)63;
    const size_t shared_floats = (size_t)((H + 2 * G) * hd + H * hd + 3 * I);
    const size_t thread_floats = (size_t)(widest + slot + 1 + 16);
    if (nthreads < 1) nthreads = 1;
    char* block = (char*)calloc(1, sizeof(float) * (shared_floats + nthreads * thread_floats) + nthreads * scratch_bytes + 64);
    if (!block) return -1;
    float* qkv = (float*)block;
    float* attended = qkv + (H + 2 * G) * hd;
    float* gate_up = attended + H * hd;
    float* activated = gate_up + 2 * I;
    float* per_thread = activated + I;
    char* scratches = (char*)(per_thread + nthreads * thread_floats);
    #pragma omp parallel num_threads(nthreads)
    {
        const int thread = omp_get_thread_num(), count = omp_get_num_threads();
        float* normed = per_thread + thread * thread_floats;
        float* scores = normed + widest + 8;
        char* scratch = scratches + thread * scratch_bytes;
        for (int64_t l = 0; l < m->layers; ++l)
            bd_layer_step(m, &m->layer[l], hidden, cos, sin, slot, qkv, attended, gate_up, activated, normed, scratch,
                          scores, int8, thread, count);
        if (thread == 0 && m->final_norm) bd_rms_norm(hidden, m->final_norm, D, m->eps, normed_out);
    }
    free(block);
    return 0;
#else
    (void)m; (void)hidden; (void)cos; (void)sin; (void)slot; (void)normed_out; (void)nthreads; (void)int8;
    return -2;
#endif
}
"""
