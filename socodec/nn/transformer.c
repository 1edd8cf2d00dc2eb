/* socodec: kernels for HuBERT's transformer on CPU (float32), built with activation.c into one library
 * by socodec/loading/native.py and used by socodec/nn/hubert.py:
 *
 *   socodec_attention        softmax(q k^T * scale) v per head, keys past each item's length left out
 *                            (flash-style: the T x T scores never exist whole). AVX-512 and OpenMP only
 *                            (socodec_attention_supported); elsewhere PyTorch's attention runs.
 *                            The softmax runs in base 2 (log2 e folded into the queries' scale). Each
 *                            query's maximum is set by the first block of keys and then moves only
 *                            where a numerator 2^(score - maximum) would exceed 2^64 (below that they
 *                            are as exact and far from overflow), so later blocks go from scores to
 *                            numerators in one pass.
 *   socodec_bias_gelu        x <- GELU(x + bias), in place, rows of a [R, C] matrix
 *   socodec_layer_norm_gelu  y <- GELU(LayerNorm(x) * w + b) over the C values of each row
 *
 * GELU is the exact (erf) one: x * (1 + erf(x / sqrt 2)) / 2, with erf to ~1.5e-7 absolute. Every
 * output is computed by the same operations whatever the thread count or the batch: results do not
 * depend on either.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "parallel.h"

/* ------------------------------------------------------------------ row-wise kernels */

/* exp(x) for x <= 0 (x below -87 taken as -87: ~1.6e-38): x = n ln2 + r (ln2 in two parts), exp(r)
 * by its degree-7 Taylor polynomial (|r| <= ln2/2: truncation < 2.4e-8), 2^n put into the exponent bits. */
static inline float exp_neg(float x) {
    x = x < -87.0f ? -87.0f : x;
    float n = rintf(x * 1.44269504088896341f);
    float r = fmaf(-n, 0.693359375f, x);
    r = fmaf(-n, -2.12194440e-4f, r);
    float p = 1.98412698e-4f;
    p = fmaf(p, r, 1.38888889e-3f);
    p = fmaf(p, r, 8.33333333e-3f);
    p = fmaf(p, r, 4.16666667e-2f);
    p = fmaf(p, r, 1.66666667e-1f);
    p = fmaf(p, r, 0.5f);
    p = fmaf(p, r, 1.0f);
    p = fmaf(p, r, 1.0f);
    union { int32_t i; float f; } scale = {.i = ((int32_t)n + 127) << 23};
    return p * scale.f;
}

/* GELU(x) = x * Phi(x), Phi(x) = (1 + erf(x / sqrt 2)) / 2. erf(z) = 1 - t P(t) exp(-z^2) for z >= 0,
 * t = 1 / (1 + p z) (Abramowitz & Stegun 7.1.26: absolute error < 1.5e-7); odd in z. */
static inline float gelu(float x) {
    float z = fabsf(x) * 0.70710678118654752f;
    float t = 1.0f / fmaf(0.3275911f, z, 1.0f);
    float poly = fmaf(fmaf(fmaf(fmaf(1.061405429f, t, -1.453152027f), t, 1.421413741f), t, -0.284496736f), t,
                      0.254829592f) * t;
    float tail = 0.5f * poly * exp_neg(-z * z); /* (1 - erf(z)) / 2 = Phi(-|x|) */
    float phi = x >= 0.0f ? 1.0f - tail : tail;
    return x * phi;
}

typedef struct {
    float *x;          /* bias_gelu: in/out; layer_norm_gelu: out */
    const float *in;   /* layer_norm_gelu's input */
    const float *w, *b;
    int64_t cols;
    float eps;
} rows_t;

static int bias_gelu_rows(const void *ctx, int64_t r0, int64_t r1) {
    const rows_t *a = (const rows_t *)ctx;
    const int64_t C = a->cols;
    const float *restrict bias = a->b;
    for (int64_t r = r0; r < r1; r++) {
        float *restrict x = a->x + r * C;
#pragma omp simd
        for (int64_t c = 0; c < C; c++) x[c] = gelu(x[c] + bias[c]);
    }
    return 0;
}

/* LayerNorm as PyTorch's: mean, then the biased variance of (x - mean), 1 / sqrt(var + eps). */
static int layer_norm_gelu_rows(const void *ctx, int64_t r0, int64_t r1) {
    const rows_t *a = (const rows_t *)ctx;
    const int64_t C = a->cols;
    const float *restrict w = a->w, *restrict b = a->b;
    for (int64_t r = r0; r < r1; r++) {
        const float *restrict x = a->in + r * C;
        float *restrict y = a->x + r * C;
        float sum = 0.0f, sq = 0.0f;
#pragma omp simd reduction(+ : sum)
        for (int64_t c = 0; c < C; c++) sum += x[c];
        float mean = sum / (float)C;
#pragma omp simd reduction(+ : sq)
        for (int64_t c = 0; c < C; c++) sq += (x[c] - mean) * (x[c] - mean);
        float inv = 1.0f / sqrtf(sq / (float)C + a->eps);
#pragma omp simd
        for (int64_t c = 0; c < C; c++) y[c] = gelu((x[c] - mean) * inv * w[c] + b[c]);
    }
    return 0;
}

void socodec_bias_gelu(float *x, const float *bias, int64_t rows, int64_t cols, int threads) {
    if (rows <= 0 || cols <= 0) return;
    rows_t a = {x, NULL, NULL, bias, cols, 0.0f};
    parallel_for(bias_gelu_rows, &a, rows, threads);
}

void socodec_layer_norm_gelu(const float *x, float *y, const float *w, const float *b, int64_t rows, int64_t cols,
                             float eps, int threads) {
    if (rows <= 0 || cols <= 0) return;
    rows_t a = {y, x, w, b, cols, eps};
    parallel_for(layer_norm_gelu_rows, &a, rows, threads);
}

/* ------------------------------------------------------------------ attention */

#if defined(__AVX512F__) && defined(_OPENMP)

int socodec_attention_supported(void) { return 1; }

#define QB 256  /* queries per task */
#define LDQ (QB + 16)  /* row stride of a task's transposed queries (not a multiple of 4 KiB) */
#define KB 128  /* keys per block */
#define SUB 64  /* queries whose scores are held at once: [KB][SUB] */
#define PR 4    /* queries of the value micro-kernel */

/* 2^x for 16 lanes, x <= 0: x = n + f with n = round(x), |f| <= 1/2, 2^f = 1 + f P(f) with
 * Cephes' degree-5 P for exp2f (relative error < 2e-7), and 2^n applied by scalef. The scores
 * are in base-2 units (log2(e) is folded into the queries' scale). */
static inline __m512 exp16(__m512 x) {
    /* 2^-150 is 0 in float32; keeps -inf finite. max returns its second operand when either is
     * NaN: a NaN score stays NaN (and reaches the output, as in PyTorch), it is not clamped away. */
    x = _mm512_max_ps(_mm512_set1_ps(-150.0f), x);
    const __m512 n = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m512 f = _mm512_sub_ps(x, n);
    __m512 p = _mm512_set1_ps(1.535336188319500e-4f);
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.339887440266574e-3f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.618437357674640e-3f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.550332471162809e-2f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.402264791363012e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.931472028550421e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n);
}

/* acc[r][h] = k[r][D] . qt[D][16 h .. 16 h + 15] (row stride LDQ): 8 keys' scores for 32 queries, each a
 * chain of fused multiply-adds over d in order (lift_query() repeats it for one query) */
static inline __attribute__((always_inline)) void score_tile(const float *restrict k, int64_t D,
                                                             const float *restrict qt, __m512 acc[8][2]) {
    for (int r = 0; r < 8; r++) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
    for (int64_t d = 0; d < D; d++) {
        __m512 q0 = _mm512_loadu_ps(qt + d * LDQ), q1 = _mm512_loadu_ps(qt + d * LDQ + 16);
        for (int r = 0; r < 8; r++) {
            __m512 kv = _mm512_set1_ps(k[r * D + d]);
            acc[r][0] = _mm512_fmadd_ps(kv, q0, acc[r][0]);
            acc[r][1] = _mm512_fmadd_ps(kv, q1, acc[r][1]);
        }
    }
}

/* st[8][32] (row stride SUB) = k[8][D] . qt[D][32] (row stride LDQ): 8 keys' scores for 32 queries;
 * mx[32] <- max(mx, the scores of the first `valid` keys) */
static inline void scores(const float *restrict k, int64_t D, const float *restrict qt, float *restrict st,
                          float *restrict mx, int valid) {
    __m512 acc[8][2];
    score_tile(k, D, qt, acc);
    __m512 m0 = _mm512_loadu_ps(mx), m1 = _mm512_loadu_ps(mx + 16);
    for (int r = 0; r < 8; r++) {
        _mm512_storeu_ps(st + r * SUB, acc[r][0]);
        _mm512_storeu_ps(st + r * SUB + 16, acc[r][1]);
        if (r < valid) {
            m0 = _mm512_max_ps(m0, acc[r][0]);
            m1 = _mm512_max_ps(m1, acc[r][1]);
        }
    }
    _mm512_storeu_ps(mx, m0);
    _mm512_storeu_ps(mx + 16, m1);
}

/* Like scores(), then straight to the softmax numerators against the running maxima m[32] (base 2):
 * st <- 2^(st - m) for the first `valid` keys, sum[32] += their sum, mx[32] <- max(mx, their scores).
 * A query whose block maximum rises more than LIFT above m is redone by lift_query(). */
#define LIFT 64.0f
static inline void scores_exp(const float *restrict k, int64_t D, const float *restrict qt, float *restrict st,
                              const float *restrict m, float *restrict sum, float *restrict mx, int valid) {
    __m512 acc[8][2];
    score_tile(k, D, qt, acc);
    const __m512 m0 = _mm512_loadu_ps(m), m1 = _mm512_loadu_ps(m + 16);
    __m512 s0 = _mm512_loadu_ps(sum), s1 = _mm512_loadu_ps(sum + 16);
    __m512 x0 = _mm512_loadu_ps(mx), x1 = _mm512_loadu_ps(mx + 16);
    for (int r = 0; r < valid; r++) {
        x0 = _mm512_max_ps(x0, acc[r][0]);
        x1 = _mm512_max_ps(x1, acc[r][1]);
        const __m512 e0 = exp16(_mm512_sub_ps(acc[r][0], m0)), e1 = exp16(_mm512_sub_ps(acc[r][1], m1));
        s0 = _mm512_add_ps(s0, e0);
        s1 = _mm512_add_ps(s1, e1);
        _mm512_storeu_ps(st + r * SUB, e0);
        _mm512_storeu_ps(st + r * SUB + 16, e1);
    }
    _mm512_storeu_ps(sum, s0);
    _mm512_storeu_ps(sum + 16, s1);
    _mm512_storeu_ps(mx, x0);
    _mm512_storeu_ps(mx + 16, x1);
}

/* One query (column c of st, its transposed query qt[d LDQ]) whose scores in this block rose more than
 * LIFT above its maximum m: its maximum becomes the block's, *mx; its scores are recomputed (the same
 * fused multiply-adds, in the same order, as the tile), st's column <- 2^(score - *mx), and
 * l <- l alpha + their sum, alpha = 2^(m - *mx). Depends on this query's numbers only. */
static void lift_query(const float *kh, int64_t D, int64_t n, const float *qt, float *st, float *m, float *l,
                       float *alpha, float mx) {
    const float a = exp2f(*m - mx);
    float sum = 0.0f;
    for (int64_t j = 0; j < n; j++) {
        float s = 0.0f;
        for (int64_t d = 0; d < D; d++) s = fmaf(kh[j * D + d], qt[d * LDQ], s);
        const float e = exp2f(s - mx);
        st[j * SUB] = e;
        sum += e;
    }
    *alpha = a;
    *l = *l * a + sum;
    *m = mx;
}

/* o[PR][16 NV] <- o * alpha + p[PR][n] . v[n][16 NV], with p given transposed (pt[j SUB + i]) */
static inline __attribute__((always_inline)) void values(const float *restrict pt, const float *restrict v, int64_t n,
                                                         float *restrict o, const float *restrict alpha, const int NV) {
    __m512 acc[PR][4];
    for (int i = 0; i < PR; i++)
        for (int c = 0; c < NV; c++)
            acc[i][c] = _mm512_mul_ps(_mm512_loadu_ps(o + i * NV * 16 + c * 16), _mm512_set1_ps(alpha[i]));
    for (int64_t j = 0; j < n; j++) {
        __m512 row[4];
        for (int c = 0; c < NV; c++) row[c] = _mm512_loadu_ps(v + j * NV * 16 + c * 16);
        for (int i = 0; i < PR; i++) {
            __m512 p = _mm512_set1_ps(pt[j * SUB + i]);
            for (int c = 0; c < NV; c++) acc[i][c] = _mm512_fmadd_ps(p, row[c], acc[i][c]);
        }
    }
    for (int i = 0; i < PR; i++)
        for (int c = 0; c < NV; c++) _mm512_storeu_ps(o + i * NV * 16 + c * 16, acc[i][c]);
}

static void values_nv(const float *pt, const float *v, int64_t n, float *o, const float *alpha, int64_t nv) {
    switch (nv) {
    case 1: values(pt, v, n, o, alpha, 1); break;
    case 2: values(pt, v, n, o, alpha, 2); break;
    case 3: values(pt, v, n, o, alpha, 3); break;
    default: values(pt, v, n, o, alpha, 4); break;
    }
}

/* One key block's online-softmax step for 16 queries (a column strip of st, keys j < n):
 * m <- max(m, block_max) (block_max: the largest score of each query in the block, from scores()),
 * st <- exp(st - m), alpha <- exp(m_old - m), l <- l alpha + sum_j st. */
static inline void softmax16(float *st, int64_t n, const float *block_max, float *m, float *l, float *alpha) {
    __m512 old = _mm512_loadu_ps(m), mx = _mm512_max_ps(old, _mm512_loadu_ps(block_max)), sum = _mm512_setzero_ps();
    for (int64_t j = 0; j < n; j++) {
        __m512 e = exp16(_mm512_sub_ps(_mm512_loadu_ps(st + j * SUB), mx));
        _mm512_storeu_ps(st + j * SUB, e);
        sum = _mm512_add_ps(sum, e);
    }
    __m512 a = exp16(_mm512_sub_ps(old, mx)); /* 0 on the first block (old = -inf) */
    _mm512_storeu_ps(alpha, a);
    _mm512_storeu_ps(l, _mm512_fmadd_ps(_mm512_loadu_ps(l), a, sum));
    _mm512_storeu_ps(m, mx);
}

typedef struct {
    const float *q, *k, *v; /* k, v: [B, H, Tk, D] */
    float *out;
    const int64_t *kv_len;
    int64_t H, Tq, Tk, D, qs_b, qs_t, os_b, os_t;
    float scale;
} attention_t;

/* queries [i0, i0 + QB) of one (item, head) against all its keys */
static void attention_task(const attention_t *a, int64_t task, float *buf) {
    const int64_t D = a->D, nv = D / 16, qblocks = (a->Tq + QB - 1) / QB;
    const int64_t bh = task / qblocks, i0 = (task % qblocks) * QB, b = bh / a->H, h = bh % a->H;
    const int64_t rows = a->Tq - i0 < QB ? a->Tq - i0 : QB, rows32 = (rows + 31) & ~31, L = a->kv_len[b];
    float *qt = buf, *st = qt + LDQ * D, *o = st + SUB * KB, *m = o + QB * D, *l = m + QB, *alpha = l + QB;
    float *bmax = alpha + QB;  /* [SUB]: each query's largest score in the current key block */
    float *last8 = bmax + 2 * SUB; /* [8][D]: the keys of a last, partial group of 8, zero-padded */
    const float scale2 = a->scale * 1.44269504088896341f; /* scores in base 2: softmax by 2^x */
    for (int64_t i = 0; i < QB; i++) {
        if (i < rows) {
            const float *src = a->q + b * a->qs_b + (i0 + i) * a->qs_t + h * D;
            for (int64_t d = 0; d < D; d++) qt[d * LDQ + i] = src[d] * scale2;
        } else {
            for (int64_t d = 0; d < D; d++) qt[d * LDQ + i] = 0.0f;
        }
        m[i] = -INFINITY;
        l[i] = 0.0f;
    }
    memset(o, 0, sizeof(float) * QB * D);
    const float *kh = a->k + bh * a->Tk * D, *vh = a->v + bh * a->Tk * D;
    if (L % 8) {
        memset(last8, 0, sizeof(float) * 8 * D);
        memcpy(last8, kh + (L & ~7) * D, sizeof(float) * (size_t)((L % 8) * D));
    }
    for (int64_t j0 = 0; j0 < L; j0 += KB) {
        const int64_t n = L - j0 < KB ? L - j0 : KB, n8 = (n + 7) & ~7;
        for (int64_t r0 = 0; r0 < rows32; r0 += SUB) {
            const int64_t sub = rows32 - r0 < SUB ? rows32 - r0 : SUB;
            if (j0 > 0) {
                /* one pass: the numerators against the maxima so far; the rare query whose scores rise
                 * far above its maximum is redone alone */
                float *sums = bmax + SUB; /* [SUB] */
                for (int64_t i = 0; i < sub; i++) bmax[i] = -INFINITY, sums[i] = 0.0f;
                for (int64_t j = 0; j < n8; j += 8) {
                    const float *keys = j0 + j + 8 <= L ? kh + (j0 + j) * D : last8;
                    const int valid = n - j < 8 ? (int)(n - j) : 8;
                    for (int64_t i = 0; i < sub; i += 32)
                        scores_exp(keys, D, qt + r0 + i, st + j * SUB + i, m + r0 + i, sums + i, bmax + i, valid);
                }
                for (int64_t i = 0; i < sub; i++) {
                    if (bmax[i] - m[r0 + i] > LIFT) { /* not bmax > m + LIFT: m + LIFT may round up */
                        lift_query(kh + j0 * D, D, n, qt + r0 + i, st + i, m + r0 + i, l + r0 + i, alpha + r0 + i, bmax[i]);
                    } else {
                        l[r0 + i] += sums[i];
                        alpha[r0 + i] = 1.0f;
                    }
                }
            } else { /* the first block: its maxima first, then the numerators */
                for (int64_t i = 0; i < sub; i++) bmax[i] = -INFINITY;
                for (int64_t j = 0; j < n8; j += 8) {
                    const float *keys = j0 + j + 8 <= L ? kh + (j0 + j) * D : last8;
                    const int valid = n - j < 8 ? (int)(n - j) : 8;
                    for (int64_t i = 0; i < sub; i += 32) scores(keys, D, qt + r0 + i, st + j * SUB + i, bmax + i, valid);
                }
                for (int64_t i = 0; i < sub; i += 16)
                    softmax16(st + i, n, bmax + i, m + r0 + i, l + r0 + i, alpha + r0 + i);
            }
            for (int64_t i = 0; i < sub && r0 + i < rows; i += PR)
                values_nv(st + i, vh + j0 * D, n, o + (r0 + i) * D, alpha + r0 + i, nv);
        }
    }
    for (int64_t i = 0; i < rows; i++) {
        float *dst = a->out + b * a->os_b + (i0 + i) * a->os_t + h * D;
        const float inv = 1.0f / l[i];
        for (int64_t d = 0; d < D; d++) dst[d] = o[i * D + d] * inv;
    }
}

/* q [B, Tq, H D] (rows of H heads of D values; strides in floats, the last axis contiguous), k and v
 * [B, H, Tk, D] contiguous -> out [B, Tq, H D] (strides os_b, os_t); item b's queries see its keys
 * [0, kv_len[b]), 1 <= kv_len[b] <= Tk. Returns 0, -1 when scratch memory could not be had, -2 for an
 * unsupported D (a multiple of 16, up to 64). */
int socodec_attention(const float *q, const float *k, const float *v, float *out, const int64_t *kv_len,
                      int64_t B, int64_t H, int64_t Tq, int64_t Tk, int64_t D, int64_t qs_b, int64_t qs_t,
                      int64_t os_b, int64_t os_t, float scale, int threads) {
    if (D <= 0 || D % 16 || D > 64) return -2;
    if (B <= 0 || Tq <= 0 || Tk <= 0) return 0;
    if (threads < 1) threads = 1;
    if (threads > MAX_THREADS) threads = MAX_THREADS;
    const size_t per_thread = (size_t)(LDQ * D + SUB * KB + QB * D + 3 * QB + 2 * SUB + 8 * D + 16);
    const size_t bytes = sizeof(float) * per_thread * (size_t)threads;
    float *bufs = aligned_alloc(64, (bytes + 63) & ~(size_t)63); /* C11: a multiple of the alignment */
    if (bufs == NULL) return -1;
    const attention_t a = {q, k, v, out, kv_len, H, Tq, Tk, D, qs_b, qs_t, os_b, os_t, scale};
    const int64_t tasks = B * H * ((Tq + QB - 1) / QB);
#pragma omp parallel num_threads(threads)
    {
        float *buf = bufs + per_thread * (size_t)omp_get_thread_num();
#pragma omp for schedule(dynamic)
        for (int64_t t = 0; t < tasks; t++) attention_task(&a, t, buf);
    }
    free(bufs);
    return 0;
}

#else

int socodec_attention_supported(void) { return 0; }

int socodec_attention(const float *q, const float *k, const float *v, float *out, const int64_t *kv_len,
                      int64_t B, int64_t H, int64_t Tq, int64_t Tk, int64_t D, int64_t qs_b, int64_t qs_t,
                      int64_t os_b, int64_t os_t, float scale, int threads) {
    (void)q, (void)k, (void)v, (void)out, (void)kv_len, (void)B, (void)H, (void)Tq, (void)Tk, (void)D;
    (void)qs_b, (void)qs_t, (void)os_b, (void)os_t;
    (void)scale, (void)threads;
    return -2;
}

#endif
