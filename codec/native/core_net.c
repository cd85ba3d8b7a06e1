/* The exact integer MLP in float64: scalar, AVX2+FMA (x86-64) and NEON (ARM64) kernels.
 *
 * Every weight is an integer |w| <= 32767, every activation an integer |h| <= 32767, fan-in
 * <= 4096 and |bias| <= 2^40, so every partial sum of h . w + b, in any order and with or
 * without fused multiply-add, is an integer below 2^53: exactly representable, hence exact.
 * Scaling by 2^-shift, the leaky slope 1/8 and floor are exact too. All kernels therefore
 * return the same integers as codec/network.py's numpy reference; tests force each kernel.
 *
 * Layout: activations are row-major per voxel; weights are transposed (n_in x n_out_pad)
 * and zero padded to blocks of NVC_OUT_BLOCK outputs. Loops run output block outermost
 * so one block's weights (n_in x 8 doubles) stay in L1 while the voxels of a chunk stream.
 */
#include <math.h>
#include <string.h>

#include "core.h"

#define ACT_MAX 32767.0
#define OUT_LIMIT 4611686018427387904.0 /* 2^62: outputs are clipped far tighter later */

static inline double post_hidden(double acc, double scale) {
    double y = acc * scale;
    if (y < 0) y *= 0.125;
    y = floor(y);
    if (y > ACT_MAX) y = ACT_MAX;
    if (y < -ACT_MAX) y = -ACT_MAX;
    return y;
}

static inline int64_t post_output(double acc, double scale) {
    double y = floor(acc * scale);
    if (y > OUT_LIMIT) y = OUT_LIMIT;
    if (y < -OUT_LIMIT) y = -OUT_LIMIT;
    return (int64_t)y;
}

/* ------------------------------------------------------------------ portable scalar */
static void layer_scalar(const nvc_layer *L, const double *h, int stride, int n_pad, double *o, int hidden,
                         int64_t *out, int n) {
    const int np = L->n_out_pad;
    for (int ob = 0; ob < np; ob += NVC_OUT_BLOCK) {
        for (int v = 0; v < n_pad; v += 4) {
            double acc[4][NVC_OUT_BLOCK];
            for (int r = 0; r < 4; r++)
                for (int c = 0; c < NVC_OUT_BLOCK; c++) acc[r][c] = L->bias[ob + c];
            const double *h0 = h + (size_t)v * stride;
            for (int i = 0; i < L->n_in; i++) {
                const double *w = L->wt + (size_t)i * np + ob;
                for (int r = 0; r < 4; r++) {
                    const double x = h0[(size_t)r * stride + i];
                    for (int c = 0; c < NVC_OUT_BLOCK; c++) acc[r][c] += x * w[c];
                }
            }
            for (int r = 0; r < 4; r++) {
                if (hidden) {
                    for (int c = 0; c < NVC_OUT_BLOCK; c++)
                        o[(size_t)(v + r) * np + ob + c] = post_hidden(acc[r][c], L->scale[ob + c]);
                } else if (v + r < n) {
                    for (int c = ob; c < L->n_out && c < ob + NVC_OUT_BLOCK; c++)
                        out[(size_t)(v + r) * 2 + c] = post_output(acc[r][c - ob], L->scale[c]);
                }
            }
        }
    }
}

typedef void (*layer_fn)(const nvc_layer *, const double *, int, int, double *, int, int64_t *, int);

static void run_layers(layer_fn layer, const nvc_net *net, const double *in, int n, int64_t *out, double *scratch) {
    const int n_pad = (n + NVC_VOX_BLOCK - 1) / NVC_VOX_BLOCK * NVC_VOX_BLOCK;
    double *buf[2] = {scratch, scratch + (size_t)n_pad * net->max_width};
    const double *h = in;
    int stride = net->n_inputs;
    for (int l = 0; l < net->n_layers; l++) {
        const nvc_layer *L = &net->layers[l];
        const int hidden = l < net->n_layers - 1;
        double *o = buf[l & 1];
        layer(L, h, stride, n_pad, o, hidden, out, n);
        h = o;
        stride = L->n_out_pad;
    }
}

static void forward_scalar(const nvc_net *net, const double *in, int n, int64_t *out, double *scratch) {
    run_layers(layer_scalar, net, in, n, out, scratch);
}

/* ------------------------------------------------------------------ x86-64 AVX2 + FMA */
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define NVC_HAVE_AVX2 1

__attribute__((target("avx2,fma"))) static void layer_avx2(const nvc_layer *L, const double *h, int stride, int n_pad,
                                                           double *o, int hidden, int64_t *out, int n) {
    const int np = L->n_out_pad;
    const __m256d zero = _mm256_setzero_pd(), eighth = _mm256_set1_pd(0.125);
    const __m256d hi = _mm256_set1_pd(ACT_MAX), lo = _mm256_set1_pd(-ACT_MAX);
    for (int ob = 0; ob < np; ob += NVC_OUT_BLOCK) {
        const __m256d b0 = _mm256_loadu_pd(L->bias + ob), b1 = _mm256_loadu_pd(L->bias + ob + 4);
        const __m256d s0 = _mm256_loadu_pd(L->scale + ob), s1 = _mm256_loadu_pd(L->scale + ob + 4);
        for (int v = 0; v < n_pad; v += 4) {
            __m256d a00 = b0, a01 = b1, a10 = b0, a11 = b1, a20 = b0, a21 = b1, a30 = b0, a31 = b1;
            const double *h0 = h + (size_t)v * stride, *h1 = h0 + stride, *h2 = h1 + stride, *h3 = h2 + stride;
            const double *w = L->wt + ob;
            for (int i = 0; i < L->n_in; i++, w += np) {
                const __m256d w0 = _mm256_loadu_pd(w), w1 = _mm256_loadu_pd(w + 4);
                __m256d x = _mm256_broadcast_sd(h0 + i);
                a00 = _mm256_fmadd_pd(x, w0, a00);
                a01 = _mm256_fmadd_pd(x, w1, a01);
                x = _mm256_broadcast_sd(h1 + i);
                a10 = _mm256_fmadd_pd(x, w0, a10);
                a11 = _mm256_fmadd_pd(x, w1, a11);
                x = _mm256_broadcast_sd(h2 + i);
                a20 = _mm256_fmadd_pd(x, w0, a20);
                a21 = _mm256_fmadd_pd(x, w1, a21);
                x = _mm256_broadcast_sd(h3 + i);
                a30 = _mm256_fmadd_pd(x, w0, a30);
                a31 = _mm256_fmadd_pd(x, w1, a31);
            }
            __m256d acc[8] = {a00, a01, a10, a11, a20, a21, a30, a31};
            if (hidden) {
                for (int k = 0; k < 8; k++) {
                    __m256d y = _mm256_mul_pd(acc[k], (k & 1) ? s1 : s0);
                    __m256d neg = _mm256_cmp_pd(y, zero, _CMP_LT_OQ);
                    y = _mm256_blendv_pd(y, _mm256_mul_pd(y, eighth), neg);
                    y = _mm256_floor_pd(y);
                    y = _mm256_max_pd(_mm256_min_pd(y, hi), lo);
                    _mm256_storeu_pd(o + (size_t)(v + (k >> 1)) * np + ob + 4 * (k & 1), y);
                }
            } else {
                double tmp[8][4];
                for (int k = 0; k < 8; k++) _mm256_storeu_pd(tmp[k], acc[k]);
                for (int r = 0; r < 4 && v + r < n; r++)
                    for (int c = ob; c < L->n_out && c < ob + NVC_OUT_BLOCK; c++) {
                        const int k = 2 * r + ((c - ob) >> 2);
                        out[(size_t)(v + r) * 2 + c] = post_output(tmp[k][(c - ob) & 3], L->scale[c]);
                    }
            }
        }
    }
}

__attribute__((target("avx2,fma"))) static void forward_avx2(const nvc_net *net, const double *in, int n, int64_t *out,
                                                             double *scratch) {
    run_layers(layer_avx2, net, in, n, out, scratch);
}

/* ------------------------------------------------------------------ x86-64 AVX-512F: 8 voxels x 8 outputs */
__attribute__((target("avx512f"))) static void layer_avx512(const nvc_layer *L, const double *h, int stride, int n_pad,
                                                            double *o, int hidden, int64_t *out, int n) {
    const int np = L->n_out_pad;
    const __m512d eighth = _mm512_set1_pd(0.125), zero = _mm512_setzero_pd();
    const __m512d hi = _mm512_set1_pd(ACT_MAX), lo = _mm512_set1_pd(-ACT_MAX);
    for (int ob = 0; ob < np; ob += NVC_OUT_BLOCK) {
        const __m512d b = _mm512_loadu_pd(L->bias + ob), s = _mm512_loadu_pd(L->scale + ob);
        for (int v = 0; v < n_pad; v += 8) {
            __m512d a0 = b, a1 = b, a2 = b, a3 = b, a4 = b, a5 = b, a6 = b, a7 = b;
            const double *h0 = h + (size_t)v * stride;
            const double *w = L->wt + ob;
            for (int i = 0; i < L->n_in; i++, w += np) {
                const __m512d wv = _mm512_loadu_pd(w);
                const double *x = h0 + i;
                a0 = _mm512_fmadd_pd(_mm512_set1_pd(x[0]), wv, a0);
                a1 = _mm512_fmadd_pd(_mm512_set1_pd(x[stride]), wv, a1);
                a2 = _mm512_fmadd_pd(_mm512_set1_pd(x[2 * (size_t)stride]), wv, a2);
                a3 = _mm512_fmadd_pd(_mm512_set1_pd(x[3 * (size_t)stride]), wv, a3);
                a4 = _mm512_fmadd_pd(_mm512_set1_pd(x[4 * (size_t)stride]), wv, a4);
                a5 = _mm512_fmadd_pd(_mm512_set1_pd(x[5 * (size_t)stride]), wv, a5);
                a6 = _mm512_fmadd_pd(_mm512_set1_pd(x[6 * (size_t)stride]), wv, a6);
                a7 = _mm512_fmadd_pd(_mm512_set1_pd(x[7 * (size_t)stride]), wv, a7);
            }
            __m512d acc[8] = {a0, a1, a2, a3, a4, a5, a6, a7};
            if (hidden) {
                for (int r = 0; r < 8; r++) {
                    __m512d y = _mm512_mul_pd(acc[r], s);
                    const __mmask8 neg = _mm512_cmp_pd_mask(y, zero, _CMP_LT_OQ);
                    y = _mm512_mask_mul_pd(y, neg, y, eighth);
                    y = _mm512_roundscale_pd(y, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
                    y = _mm512_max_pd(_mm512_min_pd(y, hi), lo);
                    _mm512_storeu_pd(o + (size_t)(v + r) * np + ob, y);
                }
            } else {
                double tmp[8][8];
                for (int r = 0; r < 8; r++) _mm512_storeu_pd(tmp[r], acc[r]);
                for (int r = 0; r < 8 && v + r < n; r++)
                    for (int c = ob; c < L->n_out && c < ob + NVC_OUT_BLOCK; c++)
                        out[(size_t)(v + r) * 2 + c] = post_output(tmp[r][c - ob], L->scale[c]);
            }
        }
    }
}

__attribute__((target("avx512f"))) static void forward_avx512(const nvc_net *net, const double *in, int n,
                                                              int64_t *out, double *scratch) {
    run_layers(layer_avx512, net, in, n, out, scratch);
}

void nvc_forward_avx512(const nvc_net *net, const double *in, int n, int64_t *out, double *scratch) {
    forward_avx512(net, in, n, out, scratch);
}
#endif

/* ------------------------------------------------------------------ ARM64 NEON (always present on AArch64) */
#if defined(__aarch64__)
#include <arm_neon.h>
#define NVC_HAVE_NEON 1

static void layer_neon(const nvc_layer *L, const double *h, int stride, int n_pad, double *o, int hidden, int64_t *out,
                       int n) {
    const int np = L->n_out_pad;
    for (int ob = 0; ob < np; ob += NVC_OUT_BLOCK) {
        for (int v = 0; v < n_pad; v += 4) {
            float64x2_t acc[4][4];
            for (int r = 0; r < 4; r++)
                for (int c = 0; c < 4; c++) acc[r][c] = vld1q_f64(L->bias + ob + 2 * c);
            const double *h0 = h + (size_t)v * stride;
            const double *w = L->wt + ob;
            for (int i = 0; i < L->n_in; i++, w += np) {
                const float64x2_t w0 = vld1q_f64(w), w1 = vld1q_f64(w + 2), w2 = vld1q_f64(w + 4), w3 = vld1q_f64(w + 6);
                for (int r = 0; r < 4; r++) {
                    const float64x2_t x = vdupq_n_f64(h0[(size_t)r * stride + i]);
                    acc[r][0] = vfmaq_f64(acc[r][0], x, w0);
                    acc[r][1] = vfmaq_f64(acc[r][1], x, w1);
                    acc[r][2] = vfmaq_f64(acc[r][2], x, w2);
                    acc[r][3] = vfmaq_f64(acc[r][3], x, w3);
                }
            }
            for (int r = 0; r < 4; r++) {
                double tmp[8];
                for (int c = 0; c < 4; c++) vst1q_f64(tmp + 2 * c, acc[r][c]);
                if (hidden) {
                    for (int c = 0; c < NVC_OUT_BLOCK; c++)
                        o[(size_t)(v + r) * np + ob + c] = post_hidden(tmp[c], L->scale[ob + c]);
                } else if (v + r < n) {
                    for (int c = ob; c < L->n_out && c < ob + NVC_OUT_BLOCK; c++)
                        out[(size_t)(v + r) * 2 + c] = post_output(tmp[c - ob], L->scale[c]);
                }
            }
        }
    }
}

static void forward_neon(const nvc_net *net, const double *in, int n, int64_t *out, double *scratch) {
    run_layers(layer_neon, net, in, n, out, scratch);
}
#endif

/* ------------------------------------------------------------------ run-time choice */
int nvc_kernel_available(int kernel) {
    switch (kernel) {
    case NVC_KERNEL_SCALAR:
        return 1;
#ifdef NVC_HAVE_AVX2
    case NVC_KERNEL_AVX2:
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case NVC_KERNEL_AVX512:
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx512f");
    case NVC_KERNEL_VNNI:
        return nvc_vnni_available();
#endif
#ifdef NVC_HAVE_NEON
    case NVC_KERNEL_NEON:
        return 1;
#endif
    default:
        return 0;
    }
}

nvc_forward_fn nvc_kernel_fn(int kernel) {
    switch (kernel) {
#ifdef NVC_HAVE_AVX2
    case NVC_KERNEL_AVX2:
        return forward_avx2;
    case NVC_KERNEL_AVX512:
        return forward_avx512;
    case NVC_KERNEL_VNNI:
        return nvc_forward_vnni;
#endif
#ifdef NVC_HAVE_NEON
    case NVC_KERNEL_NEON:
        return forward_neon;
#endif
    default:
        return forward_scalar;
    }
}

const char *nvc_kernel_name(int kernel) {
    switch (kernel) {
    case NVC_KERNEL_AVX2:
        return "avx2";
    case NVC_KERNEL_NEON:
        return "neon";
    case NVC_KERNEL_AVX512:
        return "avx512";
    case NVC_KERNEL_VNNI:
        return "vnni";
    default:
        return "scalar";
    }
}
