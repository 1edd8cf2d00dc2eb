/* socodec: the vocoder's anti-aliased SnakeBeta in one pass (CPU, float32).
 *
 * Built with transformer.c into one library and loaded by socodec/loading/native.py; the same
 * computation as Activation1d's PyTorch path (socodec/nn/vocoder.py), with the same folded filters:
 *
 *   x, y     [B, T, C]  channels contiguous (a channels-last [B, C, 1, T] tensor's memory)
 *   w        [29, C]    rows 0-6 the even-phase up filter, 7-13 the odd-phase up filter (both on
 *                       x replicate-padded by 3), 14-20 / 21-27 the down filter's taps on the even /
 *                       odd phase (padded by 3), 28 the gain g. Taps 6 of the even up filter, 0 of
 *                       the odd one, 0 of the down filter's even row and 6 of its odd row are zero
 *                       and skipped (so a NaN reaches no further than in the spec's filters).
 *
 * For every pair n (the 2T-rate samples 2n and 2n+1) u_e, u_o are the two phases and
 * s = u + g sin(u)^2; the 2T-rate signal is replicate-padded (its first sample before, its last
 * after) and y[m] = sum_q down_e[q] s_e[m-3+q] + down_o[q] s_o[m-3+q].
 *
 * With AVX-512 and C a multiple of 16 (every layer of the released vocoder), each thread takes a
 * contiguous run of outputs and walks it 16 channels at a time, keeping the last 7 input rows and
 * the last 7 pairs of both phases in registers (block_run). Otherwise the time axis is cut into
 * tiles of TILE outputs; each thread takes a contiguous run of tiles and keeps the phases of one
 * tile (plus 3 pairs each side) in a small buffer. Either way every sample is read once and
 * nothing of the 2T-rate signal goes to memory, and each output is computed by the same
 * operations whatever the split or thread count: results do not depend on either. The threads
 * are those of parallel.h (PyTorch's own OpenMP threads, else POSIX threads).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "parallel.h"

#define PAD 3
#define TAPS 7
#define TILE 256

/* the library's interface version (both sources): socodec/loading/native.py checks it */
int socodec_abi(void) { return 2; }

#ifdef _OPENMP
int socodec_activation_openmp(void) { return 1; }
#else
int socodec_activation_openmp(void) { return 0; }
#endif

/* sin(x)^2. x is reduced by the nearest multiple k of pi (pi in two parts, with fused
 * multiply-adds: exact enough for |k| well past 1e6), then sin(r) = r + r^3 P(r^2) on
 * [-pi/2, pi/2] with P the Taylor polynomial to r^13 (truncation error < 6e-8). The sign of
 * sin(x) = (-1)^k sin(r) does not matter once squared. */
static inline float sin2f(float x) {
    float k = rintf(x * 0.318309886183790671538f);
    float r = fmaf(-k, 3.14159274101257324219f, x);
    r = fmaf(-k, -8.74227765734758577e-08f, r);
    float r2 = r * r;
    float p = 1.6059043836821614599e-10f;
    p = p * r2 - 2.5052108385441718775e-08f;
    p = p * r2 + 2.7557319223985890653e-06f;
    p = p * r2 - 1.9841269841269841270e-04f;
    p = p * r2 + 8.3333333333333333333e-03f;
    p = p * r2 - 1.6666666666666666667e-01f;
    float s = r + r * r2 * p;
    return s * s;
}

typedef struct {
    const float *x;
    float *y;
    const float *w;
    int64_t B, T, C;
} activation_t;

/* the 7 input rows x[n-3 .. n+3] (replicate-clamped) of one item */
static void rows_at(const float *x, int64_t T, int64_t C, int64_t n, const float **rows) {
    if (n >= PAD && n < T - PAD) {
        for (int q = 0; q < TAPS; q++) rows[q] = x + (n - PAD + q) * C;
        return;
    }
    for (int q = 0; q < TAPS; q++) {
        int64_t i = n - PAD + q;
        i = i < 0 ? 0 : (i >= T ? T - 1 : i);
        rows[q] = x + i * C;
    }
}

/* s_e and s_o of pair n for channels [c0, c0 + n): the two phases' SnakeBeta. Taps 6 of the even
 * up filter and 0 of the odd one are zero and skipped. */
static inline void pair_lanes(const float *const *rows, const float *restrict w, float *restrict se,
                              float *restrict so, int64_t C, int64_t c0, int64_t n) {
    const float *we = w + c0, *wo = w + TAPS * C + c0, *gain = w + 4 * TAPS * C + c0;
    const float *r[TAPS];
    for (int q = 0; q < TAPS; q++) r[q] = rows[q] + c0;
    se += c0;
    so += c0;
#pragma omp simd
    for (int64_t k = 0; k < n; k++) {
        float ue = 0.f, uo = 0.f;
        for (int q = 0; q < TAPS - 1; q++) {
            ue += we[q * C + k] * r[q][k];
            uo += wo[(q + 1) * C + k] * r[q + 1][k];
        }
        se[k] = ue + gain[k] * sin2f(ue);
        so[k] = uo + gain[k] * sin2f(uo);
    }
}

/* output m for channels [c0, c0 + n) from the phases of pairs m-3 .. m+3 (pe, po: pair m-3).
 * The down filter's even-row tap 0 and odd-row tap 6 are zero and skipped. */
static inline void down_lanes(const float *restrict pe, const float *restrict po, const float *restrict w,
                              float *restrict out, int64_t C, int64_t c0, int64_t n) {
    const float *de = w + 2 * TAPS * C + c0, *dodd = w + 3 * TAPS * C + c0;
    pe += c0;
    po += c0;
    out += c0;
#pragma omp simd
    for (int64_t k = 0; k < n; k++) {
        float z = 0.f;
        for (int q = 0; q < TAPS - 1; q++) z += de[(q + 1) * C + k] * pe[(q + 1) * C + k] + dodd[q * C + k] * po[q * C + k];
        out[k] = z;
    }
}

/* Over all C channels: in blocks of a fixed VW lanes when C allows (the compiler then emits
 * whole vector operations without remainder handling: ~1.3x faster for few channels). */
#define VW 16
static inline void pair(const float *const *rows, const float *w, float *se, float *so, int64_t C) {
    if (C % VW)
        pair_lanes(rows, w, se, so, C, 0, C);
    else
        for (int64_t c = 0; c < C; c += VW) pair_lanes(rows, w, se, so, C, c, VW);
}

static inline void down(const float *pe, const float *po, const float *w, float *out, int64_t C) {
    if (C % VW)
        down_lanes(pe, po, w, out, C, 0, C);
    else
        for (int64_t c = 0; c < C; c += VW) down_lanes(pe, po, w, out, C, c, VW);
}

/* tiles [first_tile, last_tile) of every item; -1 when scratch memory could not be had */
static int activation_tiles(const void *ctx, int64_t first_tile, int64_t last_tile) {
    const activation_t *j = (const activation_t *)ctx;
    const int64_t T = j->T, C = j->C, span = TILE + 2 * PAD;
    float *buf = malloc(sizeof(float) * (size_t)(2 * span + 4) * (size_t)C);
    if (buf == NULL) return -1;
    float *se = buf, *so = buf + span * C, *edge = buf + 2 * span * C; /* edge: 4 rows of scratch */
    const float *rows[TAPS];
    for (int64_t b = 0; b < j->B; b++) {
        const float *x = j->x + b * T * C;
        float *y = j->y + b * T * C;
        /* the padding values: s_e of pair 0 (the first 2T-rate sample), s_o of pair T-1 (the last) */
        float *first = edge, *last = edge + 2 * C;
        rows_at(x, T, C, 0, rows);
        pair(rows, j->w, first, first + C, C);
        rows_at(x, T, C, T - 1, rows);
        pair(rows, j->w, last + C, last, C);
        for (int64_t tile = first_tile; tile < last_tile; tile++) {
            int64_t t0 = tile * TILE, t1 = t0 + TILE < T ? t0 + TILE : T;
            int64_t n0 = t0 - PAD, n1 = t1 + PAD;
            for (int64_t n = n0; n < n1; n++) {
                float *pe = se + (n - n0) * C, *po = so + (n - n0) * C;
                if (n < 0 || n >= T) {
                    const float *v = n < 0 ? first : last;
                    for (int64_t c = 0; c < C; c++) pe[c] = po[c] = v[c];
                    continue;
                }
                rows_at(x, T, C, n, rows);
                pair(rows, j->w, pe, po, C);
            }
            for (int64_t m = t0; m < t1; m++) down(se + (m - t0) * C, so + (m - t0) * C, j->w, y + m * C, C);
        }
    }
    free(buf);
    return 0;
}

#if defined(__AVX512F__)
/* The AVX-512 path, for C a multiple of 16: one 16-channel block at a time, time innermost.
 * For output m it computes the SnakeBeta of pair m+3 from the input rows m .. m+6 (a sliding
 * window of 7 vectors), keeps the last 7 pairs of both phases in registers (sliding windows)
 * and applies the down filter, so nothing but x and y touches memory and the block's filters
 * stay in L1. Same arithmetic as the generic path, in another order of the sums. */
#define UNIT 64 /* outputs per unit of the parallel split */

static inline __m512 sin2_16(__m512 x) {
    const __m512 k = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(0.318309886183790671538f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(k, _mm512_set1_ps(3.14159274101257324219f), x);
    r = _mm512_fnmadd_ps(k, _mm512_set1_ps(-8.74227765734758577e-08f), r);
    const __m512 r2 = _mm512_mul_ps(r, r);
    __m512 p = _mm512_set1_ps(1.6059043836821614599e-10f);
    p = _mm512_fmadd_ps(p, r2, _mm512_set1_ps(-2.5052108385441718775e-08f));
    p = _mm512_fmadd_ps(p, r2, _mm512_set1_ps(2.7557319223985890653e-06f));
    p = _mm512_fmadd_ps(p, r2, _mm512_set1_ps(-1.9841269841269841270e-04f));
    p = _mm512_fmadd_ps(p, r2, _mm512_set1_ps(8.3333333333333333333e-03f));
    p = _mm512_fmadd_ps(p, r2, _mm512_set1_ps(-1.6666666666666666667e-01f));
    const __m512 s = _mm512_fmadd_ps(_mm512_mul_ps(r, r2), p, r);
    return _mm512_mul_ps(s, s);
}

typedef struct {
    __m512 xw[TAPS]; /* input rows n-3 .. n+3 (replicate-clamped) of the next pair n */
    __m512 e[TAPS], o[TAPS]; /* SnakeBeta of pairs m-3 .. m+3, even and odd phase */
} window_t;

/* SnakeBeta of pair n (both phases) into slot 6 of the windows, after sliding them by one. The
 * input window already holds rows n-3 .. n+3; pairs outside [0, T) are the padding values. */
static inline void next_pair(window_t *v, const float *w, int64_t C, int64_t n, int64_t T, __m512 first, __m512 last) {
    for (int q = 0; q < TAPS - 1; q++) {
        v->e[q] = v->e[q + 1];
        v->o[q] = v->o[q + 1];
    }
    if (n < 0 || n >= T) {
        v->e[TAPS - 1] = v->o[TAPS - 1] = n < 0 ? first : last;
        return;
    }
    __m512 ue = _mm512_mul_ps(_mm512_loadu_ps(w), v->xw[0]);
    __m512 uo = _mm512_mul_ps(_mm512_loadu_ps(w + (TAPS + 1) * C), v->xw[1]);
    for (int q = 1; q < TAPS - 1; q++) {
        ue = _mm512_fmadd_ps(_mm512_loadu_ps(w + q * C), v->xw[q], ue);
        uo = _mm512_fmadd_ps(_mm512_loadu_ps(w + (TAPS + q + 1) * C), v->xw[q + 1], uo);
    }
    const __m512 gain = _mm512_loadu_ps(w + 4 * TAPS * C);
    v->e[TAPS - 1] = _mm512_fmadd_ps(gain, sin2_16(ue), ue);
    v->o[TAPS - 1] = _mm512_fmadd_ps(gain, sin2_16(uo), uo);
}

static inline __m512 row_at(const float *x, int64_t i, int64_t T, int64_t C) {
    return _mm512_loadu_ps(x + (i < 0 ? 0 : (i >= T ? T - 1 : i)) * C);
}

/* outputs [m0, m1) of one item's channels [c0, c0 + 16) */
static void block_run(const float *x, float *y, const float *w, int64_t T, int64_t C, int64_t m0, int64_t m1) {
    /* the padding values: s_e of pair 0 (the first 2T-rate sample), s_o of pair T-1 (the last) */
    window_t v;
    for (int q = 0; q < TAPS; q++) v.xw[q] = row_at(x, q - PAD, T, C);
    next_pair(&v, w, C, 0, T, v.xw[0], v.xw[0]);
    const __m512 first = v.e[TAPS - 1];
    for (int q = 0; q < TAPS; q++) v.xw[q] = row_at(x, T - 1 - PAD + q, T, C);
    next_pair(&v, w, C, T - 1, T, first, first);
    const __m512 last = v.o[TAPS - 1];
    /* prime: pairs m0-3 .. m0+2, the input window then at pair m0+3 */
    for (int q = 0; q < TAPS; q++) v.xw[q] = row_at(x, m0 - 3 - PAD + q, T, C);
    for (int64_t n = m0 - 3; n < m0 + 3; n++) {
        next_pair(&v, w, C, n, T, first, last);
        for (int q = 0; q < TAPS - 1; q++) v.xw[q] = v.xw[q + 1];
        v.xw[TAPS - 1] = row_at(x, n + 1 + PAD, T, C);
    }
    const float *de = w + 2 * TAPS * C, *dodd = w + 3 * TAPS * C;
    for (int64_t m = m0; m < m1; m++) {
        next_pair(&v, w, C, m + 3, T, first, last);
        for (int q = 0; q < TAPS - 1; q++) v.xw[q] = v.xw[q + 1];
        v.xw[TAPS - 1] = row_at(x, m + 4 + PAD, T, C);
        __m512 z0 = _mm512_mul_ps(_mm512_loadu_ps(de + C), v.e[1]);
        __m512 z1 = _mm512_mul_ps(_mm512_loadu_ps(dodd), v.o[0]);
        for (int q = 1; q < TAPS - 1; q++) {
            z0 = _mm512_fmadd_ps(_mm512_loadu_ps(de + (q + 1) * C), v.e[q + 1], z0);
            z1 = _mm512_fmadd_ps(_mm512_loadu_ps(dodd + q * C), v.o[q], z1);
        }
        _mm512_storeu_ps(y + m * C, _mm512_add_ps(z0, z1));
    }
}

/* units [lo, hi) of UNIT outputs, of every item and every channel block */
static int activation_units(const void *ctx, int64_t lo, int64_t hi) {
    const activation_t *j = (const activation_t *)ctx;
    const int64_t T = j->T, C = j->C, m0 = lo * UNIT, m1 = hi * UNIT < T ? hi * UNIT : T;
    for (int64_t b = 0; b < j->B; b++)
        for (int64_t c = 0; c < C; c += 16)
            block_run(j->x + b * T * C + c, j->y + b * T * C + c, j->w + c, T, C, m0, m1);
    return 0;
}
#endif

/* Returns 0, or -1 when scratch memory could not be had (y is then incomplete). */
int socodec_activation(const float *x, float *y, const float *w, int64_t B, int64_t T, int64_t C, int threads) {
    if (B <= 0 || T <= 0 || C <= 0) return 0;
    const activation_t a = {x, y, w, B, T, C};
#if defined(__AVX512F__)
    if (C % 16 == 0) return parallel_for(activation_units, &a, (T + UNIT - 1) / UNIT, threads) ? -1 : 0;
#endif
    return parallel_for(activation_tiles, &a, (T + TILE - 1) / TILE, threads) ? -1 : 0;
}
