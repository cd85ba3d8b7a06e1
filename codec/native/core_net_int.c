/* The exact integer MLP on 16-bit integers: the AVX-512 VNNI kernel ("vnni").
 *
 * The same integers as the float64 kernels (core_net.c) and codec/network.py's numpy
 * reference, by a different exactness argument, checked per network when it is loaded
 * (nvc_inet_prepare) and per call for the inputs:
 *
 *   - weights are integers |w| <= 32767 (int16); network inputs are integers |x| <= 1023
 *     (features are clipped to +-1023, the extra inputs are smaller; a call whose inputs
 *     leave that range runs the float64 kernel instead);
 *   - hidden activations are integers in [-32767, 32767]; the layer they feed takes each as
 *     hi * 256 + lo with lo = h & 255 in [0, 255] and hi = h >> 8 in [-128, 127];
 *   - a layer fed by inputs sums x . w in int32 (vpdpwssd adds two int16 products per lane,
 *     wrapping on overflow), a layer fed by activations sums lo . w and hi . w separately;
 *     every partial sum, in any order, is bounded by sum_i |w_oi| * max|x| (1023 for inputs,
 *     255 for lo, 128 for hi), and the network qualifies only when that bound is below 2^31
 *     for every output channel: no sum wraps;
 *   - the int32 sums go to float64 (exact), acc = hi_sum * 256 + lo_sum + bias is an integer
 *     below 2^41 (|bias| <= 2^40): exact, equal to the float64 kernels' accumulator;
 *   - from there the post-ops are the float64 kernels' (scale by 2^-shift, slope 1/8 below
 *     zero, floor, clamp), so the activations and outputs are the same integers.
 *
 * The test suite forces this kernel against the reference (tests/codec/test_native.py, the
 * extremes test included), like every other kernel.
 *
 * Layout: activations are int16 rows per voxel; weights are int16 pairs (inputs 2p, 2p+1)
 * packed in an int32, pair-major (n_pairs x n_out_pad), 16 output channels per vector.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core.h"

#define IN_MAX 1023.0
#define ACT_MAX_D 32767.0
#define SUM_LIMIT 2147483647.0 /* int32 */

typedef struct {
    int n_in, n_out, n_pairs, n_out_pad; /* n_out_pad: multiple of 16 */
    int split;                           /* fed by activations: hi and lo halves */
    int32_t *wpair;                      /* n_pairs x n_out_pad */
    double *bias, *scale;                /* n_out_pad (padding: 0 and 1) */
} nvc_ilayer;

struct nvc_inet {
    int n_layers;
    int in_pairs;  /* input pairs: n_inputs / 2 rounded up */
    int max_pad;   /* widest n_out_pad */
    nvc_ilayer layers[NVC_MAX_LAYERS];
    void *block;
};

/* hidden widths pad to blocks of 8 channels (whole pairs), the output layer to pairs */
static int pad_out(int n, int hidden) { return hidden ? (n + 7) / 8 * 8 : (n + 1) / 2 * 2; }

static int is_int16(double w) { return w == floor(w) && fabs(w) <= 32767.0; }

/* Does layer l (float64 form) meet the integer kernel's bounds? */
static int layer_qualifies(const nvc_layer *L, int l) {
    const double x_max = l == 0 ? IN_MAX : 255.0;
    for (int o = 0; o < L->n_out; o++) {
        double sum = 0.0;
        for (int i = 0; i < L->n_in; i++) {
            const double w = L->wt[(size_t)i * L->n_out_pad + o];
            if (!is_int16(w)) return 0;
            sum += fabs(w);
        }
        if (sum * x_max > SUM_LIMIT) return 0;
        const double b = L->bias[o];
        if (b != floor(b) || fabs(b) > 1099511627776.0) return 0; /* 2^40 */
        int e;
        if (frexp(L->scale[o], &e) != 0.5) return 0; /* a power of two */
    }
    return 1;
}

int nvc_inet_prepare(nvc_net *net) {
    net->inet = NULL;
    size_t bytes = 0;
    int max_pad = 0;
    for (int l = 0; l < net->n_layers; l++) {
        const nvc_layer *L = &net->layers[l];
        if (!layer_qualifies(L, l)) return 0;
        const int np = pad_out(L->n_out, l < net->n_layers - 1);
        bytes += (size_t)((L->n_in + 1) / 2) * np * sizeof(int32_t) + 2 * (size_t)np * sizeof(double);
        if (np > max_pad) max_pad = np;
    }
    nvc_inet *I = calloc(1, sizeof(nvc_inet));
    char *block = I ? aligned_alloc(64, (bytes + 63) / 64 * 64) : NULL;
    if (!block) { free(I); return -1; }
    I->block = block;
    I->n_layers = net->n_layers;
    I->in_pairs = (net->n_inputs + 1) / 2;
    I->max_pad = max_pad;
    for (int l = 0; l < net->n_layers; l++) {
        const nvc_layer *L = &net->layers[l];
        nvc_ilayer *Q = &I->layers[l];
        Q->n_in = L->n_in;
        Q->n_out = L->n_out;
        Q->n_pairs = (L->n_in + 1) / 2;
        Q->n_out_pad = pad_out(L->n_out, l < net->n_layers - 1);
        Q->split = l > 0;
        Q->bias = (double *)block;
        block += (size_t)Q->n_out_pad * sizeof(double);
        Q->scale = (double *)block;
        block += (size_t)Q->n_out_pad * sizeof(double);
        Q->wpair = (int32_t *)block;
        block += (size_t)Q->n_pairs * Q->n_out_pad * sizeof(int32_t);
        for (int o = 0; o < Q->n_out_pad; o++) {
            Q->bias[o] = o < L->n_out ? L->bias[o] : 0.0;
            Q->scale[o] = o < L->n_out ? L->scale[o] : 1.0;
        }
        for (int p = 0; p < Q->n_pairs; p++)
            for (int o = 0; o < Q->n_out_pad; o++) {
                int32_t w0 = 0, w1 = 0;
                if (o < L->n_out) {
                    w0 = (int32_t)L->wt[(size_t)(2 * p) * L->n_out_pad + o];
                    if (2 * p + 1 < L->n_in) w1 = (int32_t)L->wt[(size_t)(2 * p + 1) * L->n_out_pad + o];
                }
                Q->wpair[(size_t)p * Q->n_out_pad + o] = (int32_t)(((uint32_t)(uint16_t)(int16_t)w0) |
                                                                    ((uint32_t)(uint16_t)(int16_t)w1 << 16));
            }
    }
    net->inet = I;
    return 0;
}

void nvc_inet_free(nvc_net *net) {
    if (net->inet) {
        free(net->inet->block);
        free(net->inet);
        net->inet = NULL;
    }
}

size_t nvc_scratch_doubles(const nvc_net *net, int n_pad) {
    size_t need = (size_t)2 * n_pad * net->max_width;
    if (net->inet) {
        /* int32 pairs for n_pad rounded up to 16 voxels: inputs + two ping-pong (lo, hi)
         * activation buffers, 64-byte aligned pieces */
        const size_t vb = (size_t)(n_pad + 15) / 16 * 16;
        const size_t bytes = vb * net->inet->in_pairs * 4 + 4 * vb * (net->inet->max_pad / 2) * 4 + 6 * 64;
        const size_t d = (bytes + 7) / 8;
        if (d > need) need = d;
    }
    return need;
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

int nvc_vnni_available(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
}

#define VNNI_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni")))

static char *align64(char *p) { return (char *)(((uintptr_t)p + 63) & ~(uintptr_t)63); }

/* Input rows (double, n_in per voxel, n8 rows) -> int32 pairs xp[p * vb + v] for vb voxels
 * (rows past n8 are zero); 0 when an input is not an integer within +-IN_MAX (the caller
 * then runs the float64 kernel). */
VNNI_TARGET static int inputs_to_pairs(const double *in, int n8, int vb, int n_in, int n_pairs, int32_t *xp) {
    const __m512d lim = _mm512_set1_pd(IN_MAX), zero = _mm512_setzero_pd();
    const __m256i idx = _mm256_mullo_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), _mm256_set1_epi32(n_in));
    for (int v = 0; v < vb; v += 8) {
        const __mmask8 rows = v + 8 <= n8 ? 0xFF : (v < n8 ? (__mmask8)((1u << (n8 - v)) - 1u) : 0);
        const double *base = in + (size_t)v * n_in;
        for (int p = 0; p < n_pairs; p++) {
            __m256i half[2];
            for (int e = 0; e < 2; e++) {
                __m512d d = zero;
                if (2 * p + e < n_in) d = _mm512_mask_i32gather_pd(zero, rows, idx, base + 2 * p + e, 8);
                const __m512d r = _mm512_roundscale_pd(d, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
                if (_mm512_cmp_pd_mask(d, r, _CMP_NEQ_UQ) | _mm512_cmp_pd_mask(_mm512_abs_pd(d), lim, _CMP_NLE_UQ))
                    return 0;
                half[e] = _mm512_cvtpd_epi32(d);
            }
            const __m256i pair = _mm256_or_si256(_mm256_and_si256(half[0], _mm256_set1_epi32(0xFFFF)),
                                                 _mm256_slli_epi32(half[1], 16));
            _mm256_storeu_si256((__m256i *)(xp + (size_t)p * vb + v), pair);
        }
    }
    return 1;
}

VNNI_TARGET static inline __m512d lo_half(__m512i v) { return _mm512_cvtepi32_pd(_mm512_castsi512_si256(v)); }
VNNI_TARGET static inline __m512d hi_half(__m512i v) { return _mm512_cvtepi32_pd(_mm512_extracti64x4_epi64(v, 1)); }

/* Hidden post-ops of one channel for 16 voxels (exact float64 accumulator halves a0, a1):
 * scale by 2^-shift, slope 1/8 below zero, floor, clamp: the activation, as 16 int32. */
VNNI_TARGET static inline __m512i post_hidden16(__m512d a0, __m512d a1, double bias, double scale) {
    const __m512d b = _mm512_set1_pd(bias), s = _mm512_set1_pd(scale);
    const __m512d eighth = _mm512_set1_pd(0.125), zero = _mm512_setzero_pd();
    const __m512d hi = _mm512_set1_pd(ACT_MAX_D), lo = _mm512_set1_pd(-ACT_MAX_D);
    __m256i r[2];
    const __m512d a[2] = {a0, a1};
    for (int h = 0; h < 2; h++) {
        __m512d y = _mm512_mul_pd(_mm512_add_pd(a[h], b), s);
        const __mmask8 neg = _mm512_cmp_pd_mask(y, zero, _CMP_LT_OQ);
        y = _mm512_mask_mul_pd(y, neg, y, eighth);
        y = _mm512_roundscale_pd(y, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
        y = _mm512_max_pd(_mm512_min_pd(y, hi), lo);
        r[h] = _mm512_cvtpd_epi32(y);
    }
    return _mm512_inserti64x4(_mm512_castsi256_si512(r[0]), r[1], 1);
}

/* One block of OB output channels [ob, ob + OB) for 16 voxels [v, v + 16). Inputs: lo pairs
 * (and hi pairs when split) at in_lo[p * vb + v]; hidden outputs: lo/hi pairs, output layer:
 * int64 (voxel, channel) in out for voxels < n. */
VNNI_TARGET static inline __attribute__((always_inline)) void block16(const nvc_ilayer *Q, const int OB, int ob, int v,
                                                                    int vb, const int32_t *in_lo, const int32_t *in_hi,
                                                                    int hidden, int32_t *out_lo, int32_t *out_hi,
                                                                    int64_t *out, int n) {
    __m512i accl[8], acch[8];
    for (int c = 0; c < OB; c++) accl[c] = acch[c] = _mm512_setzero_si512();
    const int op = Q->n_out_pad;
    const int32_t *w = Q->wpair + ob;
    const int32_t *xl = in_lo + v, *xh = in_hi ? in_hi + v : NULL;
    if (Q->split) {
        for (int p = 0; p < Q->n_pairs; p++, w += op, xl += vb, xh += vb) {
            const __m512i al = _mm512_loadu_si512(xl), ah = _mm512_loadu_si512(xh);
            for (int c = 0; c < OB; c++) {
                const __m512i wc = _mm512_set1_epi32(w[c]);
                accl[c] = _mm512_dpwssd_epi32(accl[c], al, wc);
                acch[c] = _mm512_dpwssd_epi32(acch[c], ah, wc);
            }
        }
    } else {
        for (int p = 0; p < Q->n_pairs; p++, w += op, xl += vb) {
            const __m512i al = _mm512_loadu_si512(xl);
            for (int c = 0; c < OB; c++) accl[c] = _mm512_dpwssd_epi32(accl[c], al, _mm512_set1_epi32(w[c]));
        }
    }
    const __m512d k256 = _mm512_set1_pd(256.0);
    if (hidden) {
        for (int c = 0; c < OB; c += 2) {
            __m512i h[2];
            for (int e = 0; e < 2; e++) {
                __m512d a0 = lo_half(accl[c + e]), a1 = hi_half(accl[c + e]);
                if (Q->split) {
                    a0 = _mm512_add_pd(_mm512_mul_pd(lo_half(acch[c + e]), k256), a0);
                    a1 = _mm512_add_pd(_mm512_mul_pd(hi_half(acch[c + e]), k256), a1);
                }
                h[e] = post_hidden16(a0, a1, Q->bias[ob + c + e], Q->scale[ob + c + e]);
            }
            const __m512i low = _mm512_set1_epi32(255);
            const __m512i pl = _mm512_or_si512(_mm512_and_si512(h[0], low), _mm512_slli_epi32(_mm512_and_si512(h[1], low), 16));
            const __m512i ph = _mm512_or_si512(_mm512_and_si512(_mm512_srai_epi32(h[0], 8), _mm512_set1_epi32(0xFFFF)),
                                               _mm512_slli_epi32(_mm512_srai_epi32(h[1], 8), 16));
            const size_t at = (size_t)((ob + c) / 2) * vb + v;
            _mm512_storeu_si512(out_lo + at, pl);
            _mm512_storeu_si512(out_hi + at, ph);
        }
    } else {
        for (int c = 0; c < OB && ob + c < Q->n_out; c++) {
            __m512d a0 = lo_half(accl[c]), a1 = hi_half(accl[c]);
            if (Q->split) {
                a0 = _mm512_add_pd(_mm512_mul_pd(lo_half(acch[c]), k256), a0);
                a1 = _mm512_add_pd(_mm512_mul_pd(hi_half(acch[c]), k256), a1);
            }
            double acc[16];
            _mm512_storeu_pd(acc, a0);
            _mm512_storeu_pd(acc + 8, a1);
            for (int r = 0; r < 16 && v + r < n; r++) {
                double y = floor((acc[r] + Q->bias[ob + c]) * Q->scale[ob + c]);
                if (y > 4611686018427387904.0) y = 4611686018427387904.0;
                if (y < -4611686018427387904.0) y = -4611686018427387904.0;
                out[(size_t)(v + r) * 2 + ob + c] = (int64_t)y;
            }
        }
    }
}

VNNI_TARGET static void layer16(const nvc_ilayer *Q, int vb, const int32_t *in_lo, const int32_t *in_hi, int hidden,
                                int32_t *out_lo, int32_t *out_hi, int64_t *out, int n) {
    for (int v = 0; v < vb; v += 16) {
        if (!hidden && v >= n) break;
        int ob = 0;
        for (; ob + 8 <= Q->n_out_pad; ob += 8) block16(Q, 8, ob, v, vb, in_lo, in_hi, hidden, out_lo, out_hi, out, n);
        for (; ob < Q->n_out_pad; ob += 2) block16(Q, 2, ob, v, vb, in_lo, in_hi, hidden, out_lo, out_hi, out, n);
    }
}

/* Buffers for the layers' activations, carved from scratch after `skip` bytes. */
static void carve(const nvc_inet *I, int vb, double *scratch, size_t skip, int32_t *buf[4]) {
    char *p = align64((char *)scratch + skip);
    for (int k = 0; k < 4; k++) {
        buf[k] = (int32_t *)p;
        p = align64(p + (size_t)vb * (I->max_pad / 2) * 4);
    }
}

VNNI_TARGET static void run_pairs(const nvc_inet *I, const int32_t *xp, int vb, int n, int64_t *out, int32_t *buf[4]) {
    const int32_t *lo_in = xp, *hi_in = NULL;
    for (int l = 0; l < I->n_layers; l++) {
        const nvc_ilayer *Q = &I->layers[l];
        const int hidden = l < I->n_layers - 1;
        int32_t *lo_out = buf[2 * (l & 1)], *hi_out = buf[2 * (l & 1) + 1];
        layer16(Q, vb, lo_in, hi_in, hidden, lo_out, hi_out, out, n);
        lo_in = lo_out;
        hi_in = hi_out;
    }
}

void nvc_forward_vnni_pairs(const nvc_net *net, const int32_t *xp, int n, int64_t *out, double *scratch) {
    int32_t *buf[4];
    const int vb = (n + 15) / 16 * 16;
    carve(net->inet, vb, scratch, 0, buf);
    run_pairs(net->inet, xp, vb, n, out, buf);
}

int nvc_inet_pairs(const nvc_net *net) { return net->inet ? net->inet->in_pairs : 0; }

VNNI_TARGET void nvc_forward_vnni(const nvc_net *net, const double *in, int n, int64_t *out, double *scratch) {
    const nvc_inet *I = net->inet;
    if (!I) { nvc_forward_avx512(net, in, n, out, scratch); return; }
    const int n8 = (n + NVC_VOX_BLOCK - 1) / NVC_VOX_BLOCK * NVC_VOX_BLOCK;
    const int vb = (n + 15) / 16 * 16;
    int32_t *xp = (int32_t *)align64((char *)scratch);
    const size_t x_bytes = (size_t)vb * I->in_pairs * 4 + 64;
    if (!inputs_to_pairs(in, n8, vb, net->n_inputs, I->in_pairs, xp)) {
        nvc_forward_avx512(net, in, n, out, scratch);
        return;
    }
    int32_t *buf[4];
    carve(I, vb, scratch, x_bytes, buf);
    run_pairs(I, xp, vb, n, out, buf);
}
#else
int nvc_vnni_available(void) { return 0; }
int nvc_inet_pairs(const nvc_net *net) { (void)net; return 0; }
#endif
