/* NVC native coding core: the whole per-step work of encoding and decoding a slab in C.
 *
 * Python module `codec._nvcore` (glue: codec/native_core.py). Per slab, in its own thread:
 *   decode: for every wavefront step, gather the context from the padded slab buffer,
 *           compute the integer features, run the exact network (in chunks of NVC_CHUNK
 *           voxels), derive mean and table key, decode the tokens grouped by key (stable),
 *           then the extra bits in step order, and write the voxels back;
 *   encode: (1) prediction pass over the fully known slab in row chunks -> one packed
 *           symbol (key | token << 11 | extra << 18) per voxel plus token counts per key;
 *           (2) emission of the symbols in the decoder's order.
 * The symbol order, features, network and coder are those of the reference Python path
 * (docs/codec.md, "Bit-exact payload"); the range coder is codec/native/rangecoder.h, a
 * bit-exact twin of constriction 0.5's queue RangeEncoder/RangeDecoder.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core.h"
#include "rangecoder.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
#error "the payload is little-endian u32 words; add a byte swap for big-endian hosts"
#endif

enum { CTX_LOCAL = 0, CTX_PAPER = 1 };
enum { OK = 0, ERR_CORRUPT = 1, ERR_RANGE = 2, ERR_TABLE = 3, ERR_NOMEM = 4, ERR_SYMBOL = 5 };
static const char *error_text(int code) {
    switch (code) {
    case ERR_CORRUPT: return "range-coded stream is corrupt";
    case ERR_RANGE: return "decoded values leave the declared range: corrupt payload";
    case ERR_TABLE: return "a voxel selects a coding table the file does not hold: corrupt payload";
    case ERR_NOMEM: return "out of memory";
    case ERR_SYMBOL: return "a token has probability zero in its table";
    default: return "unknown error";
    }
}

#define N_THRESHOLDS 76
#define FEATURE_CLIP 1023.0f
#define SYM_KEY(s) ((s) & 0x7FFu)
#define SYM_TOKEN(s) (((s) >> 11) & 0x7Fu)
#define SYM_EXTRA(s) ((s) >> 18)

static int g_kernel = NVC_KERNEL_SCALAR;

/* ------------------------------------------------------------------ shared job description */
typedef struct {
    nvc_net net;
    nvc_forward_fn forward;
    int pairs;                    /* LOCAL features straight into the integer kernel's pairs (vnni) */
    int32_t thr32[N_THRESHOLDS];  /* thresholds saturated to int32, for the vector bucket count */
    int ctx;                      /* CTX_LOCAL or CTX_PAPER */
    int n_nb;                     /* context voxels */
    const int32_t *nb;            /* n_nb x 3 (dz, dy, dx) */
    int64_t thresholds[N_THRESHOLDS];
    int32_t vmin, vmax;
    int H, W;
    int pz, py0, py1, px0, px1;   /* padding */
    ptrdiff_t rs, ss;             /* row and slice strides of the padded slab */
    int A, B;                     /* wavefront step t = x + A*y + B*z */
    const nvc_rc_categorical *cat;/* tables of used keys */
    int16_t key_table[NVC_N_KEYS];/* key -> index into cat, -1 when the key has no table */
} job_t;

typedef struct { int32_t start, z, y; } row_t;

static int cmp_row(const void *a, const void *b) {
    const row_t *p = a, *q = b;
    if (p->start != q->start) return p->start < q->start ? -1 : 1;
    return (p->z > q->z) - (p->z < q->z);
}

/* Rows (z, y) of a slab of depth D sorted by their first step A*y + B*z, ties by z
 * (= the reference's stable argsort over a z-major enumeration). */
static row_t *sorted_rows(const job_t *J, int D) {
    row_t *rows = malloc(sizeof(row_t) * (size_t)D * J->H);
    if (!rows) return NULL;
    size_t k = 0;
    for (int z = 0; z < D; z++)
        for (int y = 0; y < J->H; y++) rows[k++] = (row_t){J->A * y + J->B * z, z, y};
    qsort(rows, k, sizeof(row_t), cmp_row);
    return rows;
}

/* ------------------------------------------------------------------ per-thread work space */
typedef struct {
    double *in;                   /* NVC_CHUNK x n_inputs */
    int32_t *xp;                  /* integer kernel input pairs: in_pairs x NVC_CHUNK */
    double *scratch;              /* 2 x NVC_CHUNK x max_width */
    int64_t *out;                 /* NVC_CHUNK x 2 */
    ptrdiff_t *off;               /* n_nb flat offsets */
    /* per step (decoder) or per chunk (encoder) */
    ptrdiff_t *idx;
    int32_t *mu;
    uint16_t *key;
    uint8_t *first;
    int32_t *order;
    int32_t *token;
    int32_t count[NVC_N_KEYS + 1];
} work_t;

static void work_free(work_t *w) {
    free(w->in); free(w->xp); free(w->scratch); free(w->out); free(w->off); free(w->idx); free(w->mu); free(w->key);
    free(w->first); free(w->order); free(w->token);
    memset(w, 0, sizeof(*w));
}

static int work_init(work_t *w, const job_t *J, size_t max_step) {
    memset(w, 0, sizeof(*w));
    const int n_pad = NVC_CHUNK;
    w->in = calloc((size_t)n_pad * J->net.n_inputs, sizeof(double));
    w->scratch = calloc(nvc_scratch_doubles(&J->net, n_pad), sizeof(double));
    w->xp = calloc((size_t)(nvc_inet_pairs(&J->net) + 1) * n_pad, sizeof(int32_t));
    w->out = calloc((size_t)n_pad * 2, sizeof(int64_t));
    w->off = malloc(sizeof(ptrdiff_t) * (size_t)J->n_nb);
    if (max_step < NVC_CHUNK) max_step = NVC_CHUNK;
    w->idx = malloc(sizeof(ptrdiff_t) * max_step);
    w->mu = malloc(sizeof(int32_t) * max_step);
    w->key = malloc(sizeof(uint16_t) * max_step);
    w->first = malloc(max_step);
    w->order = malloc(sizeof(int32_t) * max_step);
    w->token = malloc(sizeof(int32_t) * max_step);
    if (!w->in || !w->xp || !w->scratch || !w->out || !w->off || !w->idx || !w->mu || !w->key || !w->first || !w->order ||
        !w->token) {
        work_free(w);
        return -1;
    }
    for (int k = 0; k < J->n_nb; k++)
        w->off[k] = J->nb[3 * k] * J->ss + J->nb[3 * k + 1] * J->rs + J->nb[3 * k + 2];
    return 0;
}

/* ------------------------------------------------------------------ features and coding parameters */
static inline int32_t iabs32(int32_t v) { return v < 0 ? -v : v; }

static inline int bucket_of(const job_t *J, int64_t d) {
    int lo = 0, hi = N_THRESHOLDS; /* number of thresholds <= d */
    while (lo < hi) {
        int mid = (lo + hi) >> 1;
        if (J->thresholds[mid] <= d) lo = mid + 1; else hi = mid;
    }
    return lo;
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define NVC_HAVE_PAIRS 1
#define VNNI_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx512dq")))

/* The 16 lanes' voxels at base + idx: one load when the lanes are consecutive voxels of a
 * row (encoder chunks; `run` is then idx[0]), else a gather (decoder steps). */
VNNI_TARGET static inline __m512i gather16(const int32_t *base, __m512i i0, __m512i i1, __mmask16 live,
                                          ptrdiff_t run) {
    if (run >= 0) return _mm512_maskz_loadu_epi32(live, base + run);
    const __m256i g0 = _mm512_mask_i64gather_epi32(_mm256_setzero_si256(), (__mmask8)live, i0, base, 4);
    const __m256i g1 = _mm512_mask_i64gather_epi32(_mm256_setzero_si256(), (__mmask8)(live >> 8), i1, base, 4);
    return _mm512_inserti64x4(_mm512_castsi256_si512(g0), g1, 1);
}

/* The LOCAL context's network inputs for n <= NVC_CHUNK voxels, 16 per vector, written as the
 * integer kernel's input pairs xp[p * vb + j] (vb = n rounded up to 16), plus ref/div/bucket.
 * Lane by lane these are the scalar loop's operations below (int32 MED predictor and activity,
 * IEEE float32 64/d, (v - r) * inv, floor, clip to +-1023; the bucket as the count of
 * thresholds <= d; the position (r - vmin) * 512 / span as an exact float64 floor: both
 * operands are integers below 2^26, so the rounded quotient cannot cross an integer), so the
 * inputs are the same integers; tests compare this path with the reference. */
VNNI_TARGET static void local_pairs(const job_t *J, const work_t *w, const int32_t *buf, const ptrdiff_t *idx,
                                    const uint8_t *first, int n, int64_t *ref, int64_t *div, int *bucket) {
    const ptrdiff_t *off = w->off;
    const int n_nb = J->n_nb, n_in = J->net.n_inputs, n_pairs = nvc_inet_pairs(&J->net);
    const int vb = (n + 15) / 16 * 16;
    const __m512 clip_hi = _mm512_set1_ps(FEATURE_CLIP), clip_lo = _mm512_set1_ps(-FEATURE_CLIP);
    const __m512 sixty_four = _mm512_set1_ps(64.0f);
    const __m512d span = _mm512_set1_pd((double)((int64_t)J->vmax - J->vmin + 1));
    const __m512i vmin = _mm512_set1_epi32(J->vmin), two = _mm512_set1_epi32(2);
    for (int v = 0; v < vb; v += 16) {
        const __mmask16 live = v + 16 <= n ? 0xFFFF : (v < n ? (__mmask16)((1u << (n - v)) - 1u) : 0);
        const __m512i i0 = _mm512_maskz_loadu_epi64((__mmask8)live, idx + v);
        const __m512i i1 = _mm512_maskz_loadu_epi64((__mmask8)(live >> 8), idx + v + 8);
        const __mmask16 fst = _mm_test_epi8_mask(_mm_maskz_loadu_epi8(live, first + v), _mm_set1_epi8(-1));
        const __m512i iota = _mm512_setr_epi64(0, 1, 2, 3, 4, 5, 6, 7);
        const __m512i s0 = _mm512_add_epi64(_mm512_set1_epi64(idx[v]), iota);
        const __m512i s1 = _mm512_add_epi64(s0, _mm512_set1_epi64(8));
        const __mmask16 same = (__mmask16)(_mm512_cmpeq_epi64_mask(i0, s0) | ((unsigned)_mm512_cmpeq_epi64_mask(i1, s1) << 8));
        const ptrdiff_t run = (same & live) == live ? idx[v] : -1;
        const __m512i W_ = gather16(buf + off[0], i0, i1, live, run), WW = gather16(buf + off[1], i0, i1, live, run);
        const __m512i NW = gather16(buf + off[4], i0, i1, live, run), N_ = gather16(buf + off[5], i0, i1, live, run);
        const __m512i NE = gather16(buf + off[6], i0, i1, live, run), NN = gather16(buf + off[9], i0, i1, live, run);
        const __m512i lo = _mm512_min_epi32(W_, N_), hi = _mm512_max_epi32(W_, N_);
        __m512i r = _mm512_sub_epi32(_mm512_add_epi32(W_, N_), NW);
        r = _mm512_mask_mov_epi32(r, _mm512_cmple_epi32_mask(NW, lo), hi);
        r = _mm512_mask_mov_epi32(r, _mm512_cmpge_epi32_mask(NW, hi), lo);
        __m512i act = _mm512_abs_epi32(_mm512_sub_epi32(W_, NW));
        act = _mm512_add_epi32(act, _mm512_abs_epi32(_mm512_sub_epi32(NW, N_)));
        act = _mm512_add_epi32(act, _mm512_abs_epi32(_mm512_sub_epi32(N_, NE)));
        act = _mm512_add_epi32(act, _mm512_abs_epi32(_mm512_sub_epi32(W_, WW)));
        act = _mm512_add_epi32(act, _mm512_abs_epi32(_mm512_sub_epi32(N_, NN)));
        const __m512i d = _mm512_add_epi32(act, two);
        const __m512 inv = _mm512_div_ps(sixty_four, _mm512_cvtepi32_ps(d));
        __m512i b = _mm512_setzero_si512();
        for (int k = 0; k < N_THRESHOLDS; k++)
            b = _mm512_mask_sub_epi32(b, _mm512_cmple_epi32_mask(_mm512_set1_epi32(J->thr32[k]), d), b,
                                      _mm512_set1_epi32(-1));
        const __m512i rel = _mm512_slli_epi32(_mm512_sub_epi32(r, vmin), 9);
        const __m512d q0 = _mm512_roundscale_pd(_mm512_div_pd(_mm512_cvtepi32_pd(_mm512_castsi512_si256(rel)), span),
                                                _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
        const __m512d q1 = _mm512_roundscale_pd(
            _mm512_div_pd(_mm512_cvtepi32_pd(_mm512_extracti64x4_epi64(rel, 1)), span), _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
        const __m512i pos = _mm512_inserti64x4(_mm512_castsi256_si512(_mm512_cvtpd_epi32(q0)), _mm512_cvtpd_epi32(q1), 1);
        for (int p = 0; p < n_pairs; p++) {
            __m512i f[2];
            for (int e = 0; e < 2; e++) {
                const int i = 2 * p + e;
                if (i < n_nb) {
                    const __m512i x = gather16(buf + off[i], i0, i1, live, run);
                    __m512 t = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(x, r)), inv);
                    t = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
                    t = _mm512_max_ps(_mm512_min_ps(t, clip_hi), clip_lo);
                    f[e] = _mm512_cvttps_epi32(t);
                    if (i >= 12) f[e] = _mm512_mask_mov_epi32(f[e], fst, _mm512_setzero_si512());
                } else if (i == n_nb) {
                    f[e] = _mm512_slli_epi32(b, 3);
                } else if (i == n_nb + 1) {
                    f[e] = pos;
                } else if (i == n_nb + 2 && i < n_in) {
                    f[e] = _mm512_maskz_mov_epi32(fst, _mm512_set1_epi32(256));
                } else {
                    f[e] = _mm512_setzero_si512();
                }
            }
            const __m512i pair = _mm512_or_si512(_mm512_and_si512(f[0], _mm512_set1_epi32(0xFFFF)), _mm512_slli_epi32(f[1], 16));
            _mm512_storeu_si512(w->xp + (size_t)p * vb + v, pair);
        }
        int32_t rr[16], dd[16], bb[16];
        _mm512_storeu_si512(rr, r);
        _mm512_storeu_si512(dd, d);
        _mm512_storeu_si512(bb, b);
        for (int j = 0; j < 16 && v + j < n; j++) {
            ref[v + j] = rr[j];
            div[v + j] = dd[j];
            bucket[v + j] = bb[j];
        }
    }
}
#endif

/* Mean and table key of n voxels at flat positions idx of the padded slab `buf`
 * (n <= NVC_CHUNK); `first` flags voxels in the slab's first slice. */
static void predict_chunk(const job_t *J, work_t *w, const int32_t *buf, const ptrdiff_t *idx, const uint8_t *first,
                          int n, int32_t *mu_out, uint16_t *key_out) {
    const int n_in = J->net.n_inputs;
    const int64_t vmin = J->vmin, vmax = J->vmax;
    int64_t ref[NVC_CHUNK], div[NVC_CHUNK];
    int bucket[NVC_CHUNK];
#ifdef NVC_HAVE_PAIRS
    if (J->pairs) {
        local_pairs(J, w, buf, idx, first, n, ref, div, bucket);
        nvc_forward_vnni_pairs(&J->net, w->xp, n, w->out, w->scratch);
    } else
#endif
    if (J->ctx == CTX_LOCAL) {
        const ptrdiff_t *off = w->off;
        const int64_t span = vmax - vmin + 1;
        for (int j = 0; j < n; j++) {
            const int32_t *p = buf + idx[j];
            double *row = w->in + (size_t)j * n_in;
            const int32_t W_ = p[off[0]], WW = p[off[1]], NW = p[off[4]], N_ = p[off[5]], NE = p[off[6]],
                          NN = p[off[9]];
            const int32_t lo = W_ < N_ ? W_ : N_, hi = W_ < N_ ? N_ : W_;
            const int32_t r = NW >= hi ? lo : (NW <= lo ? hi : (int32_t)((int64_t)W_ + N_ - NW));
            const int32_t act = iabs32(W_ - NW) + iabs32(NW - N_) + iabs32(N_ - NE) + iabs32(W_ - WW) + iabs32(N_ - NN);
            const int32_t d = act + 2;
            const float inv = 64.0f / (float)d;
            const int kmax = first[j] ? 12 : J->n_nb;
            for (int k = 0; k < kmax; k++) {
                float f = floorf((float)(p[off[k]] - r) * inv);
                if (f > FEATURE_CLIP) f = FEATURE_CLIP;
                if (f < -FEATURE_CLIP) f = -FEATURE_CLIP;
                row[k] = (double)f;
            }
            for (int k = kmax; k < J->n_nb; k++) row[k] = 0.0;
            const int b = bucket_of(J, d);
            row[J->n_nb] = 8.0 * b;
            row[J->n_nb + 1] = (double)((((int64_t)r - vmin) * 512) / span);
            row[J->n_nb + 2] = first[j] ? 256.0 : 0.0;
            ref[j] = r;
            div[j] = d;
            bucket[j] = b;
        }
    } else {
        const ptrdiff_t *off = w->off;
        const int64_t span = vmax - vmin > 1 ? vmax - vmin : 1;
        for (int j = 0; j < n; j++) {
            const int32_t *p = buf + idx[j];
            double *row = w->in + (size_t)j * n_in;
            for (int k = 0; k < J->n_nb; k++) row[k] = (double)((((int64_t)p[off[k]] - vmin) * 2046) / span - 1023);
        }
    }
    if (!J->pairs) {
        const int n_pad = (n + NVC_VOX_BLOCK - 1) / NVC_VOX_BLOCK * NVC_VOX_BLOCK;
        if (n_pad > n) memset(w->in + (size_t)n * n_in, 0, sizeof(double) * (size_t)(n_pad - n) * n_in);
        J->forward(&J->net, w->in, n, w->out, w->scratch);
    }
    const int64_t range = vmax - vmin + 1;
    for (int j = 0; j < n; j++) {
        int64_t o0 = w->out[2 * j], o1 = w->out[2 * j + 1];
        if (o0 > (1 << 30)) o0 = 1 << 30;
        if (o0 < -(1 << 30)) o0 = -(1 << 30);
        int64_t m, cls;
        if (J->ctx == CTX_LOCAL) {
            m = ref[j] + ((o0 * div[j] + (1 << 13)) >> 14);
            if (o1 > NVC_N_CLASSES) o1 = NVC_N_CLASSES;
            if (o1 < -NVC_N_CLASSES) o1 = -NVC_N_CLASSES;
            cls = bucket[j] + o1;
        } else {
            const int64_t span = vmax - vmin > 1 ? vmax - vmin : 1;
            const int64_t num = (o0 + 1023 * 4) * span + 2046 * 2, den = 2046 * 4;
            int64_t q = num / den; /* floor division, as Python's // */
            if (num % den != 0 && num < 0) q -= 1;
            m = vmin + q;
            if (o1 > 100) o1 = 100;
            if (o1 < -100) o1 = -100;
            cls = o1;
        }
        if (m < vmin) m = vmin;
        if (m > vmax) m = vmax;
        if (cls < 0) cls = 0;
        if (cls > NVC_N_CLASSES - 1) cls = NVC_N_CLASSES - 1;
        int side = m == vmin ? 1 : (m == vmax ? 2 : 0);
        if (vmin == vmax) side = 1;
        int64_t level = ((m - vmin) * NVC_N_LEVELS) / range;
        if (level > NVC_N_LEVELS - 1) level = NVC_N_LEVELS - 1;
        mu_out[j] = (int32_t)m;
        key_out[j] = (uint16_t)(level * NVC_N_SHAPES + side * NVC_N_CLASSES + cls);
    }
}

/* ------------------------------------------------------------------ tokens */
static inline void tokenize(int64_t r, uint32_t *token, uint32_t *nbits, uint32_t *extra) {
    const uint64_t a = (uint64_t)(r < 0 ? -r : r);
    if (a <= 15) {
        *token = (uint32_t)(r + 15);
        *nbits = 0;
        *extra = 0;
        return;
    }
    const int e = 63 - __builtin_clzll(a);
    const int nb = e - 2;
    const uint32_t m = (uint32_t)((a >> nb) & 3);
    *token = 31 + 2 * ((uint32_t)(e - 4) * 4 + m) + (r < 0);
    *nbits = (uint32_t)nb;
    *extra = (uint32_t)(a & ((1ull << nb) - 1));
}

static inline int token_nbits(uint32_t token) {
    if (token < 31) return 0;
    return (int)(((token - 31) >> 1) / 4) + 4 - 2;
}

static inline int64_t detokenize(uint32_t token, uint32_t extra) {
    if (token < 31) return (int64_t)token - 15;
    const uint32_t k = token - 31, neg = k & 1, kk = k >> 1;
    const int e = (int)(kk / 4) + 4, m = (int)(kk % 4), nb = e - 2;
    const int64_t a = ((int64_t)(4 + m) << nb) + extra;
    return neg ? -a : a;
}

/* Stable counting sort of n keys: order[] lists positions grouped by key, ascending. */
static void sort_by_key(work_t *w, const uint16_t *key, int n) {
    int32_t *c = w->count;
    memset(c, 0, sizeof(w->count));
    for (int j = 0; j < n; j++) c[key[j] + 1]++;
    for (int k = 0; k < NVC_N_KEYS; k++) c[k + 1] += c[k];
    for (int j = 0; j < n; j++) w->order[c[key[j]]++] = j;
}

/* ------------------------------------------------------------------ decode one slab */
static int decode_slab(const job_t *J, int D, const uint32_t *words, size_t n_words, int32_t *out) {
    const int H = J->H, W = J->W;
    const ptrdiff_t slab_size = (ptrdiff_t)(D + J->pz) * J->ss;
    int32_t *buf = malloc(sizeof(int32_t) * (size_t)slab_size);
    row_t *rows = sorted_rows(J, D);
    work_t w;
    int err = OK;
    if (!buf || !rows || work_init(&w, J, (size_t)D * H)) {
        free(buf); free(rows);
        return ERR_NOMEM;
    }
    for (ptrdiff_t i = 0; i < slab_size; i++) buf[i] = J->vmin;
    nvc_rc_decoder dec;
    if (nvc_rc_decoder_init(&dec, words, n_words)) { err = ERR_NOMEM; goto done; }
    const size_t n_rows = (size_t)D * H;
    const int64_t n_steps = (int64_t)rows[n_rows - 1].start + W;
    size_t lo = 0, hi = 0;
    for (int64_t t = 0; t < n_steps && err == OK; t++) {
        while (hi < n_rows && rows[hi].start <= t) hi++;
        while (lo < hi && rows[lo].start <= t - W) lo++;
        const int n = (int)(hi - lo);
        if (n == 0) continue;
        for (int j = 0; j < n; j++) {
            const row_t *r = &rows[lo + j];
            w.idx[j] = (ptrdiff_t)(r->z + J->pz) * J->ss + (ptrdiff_t)(r->y + J->py0) * J->rs + (t - r->start) + J->px0;
            w.first[j] = r->z == 0;
        }
        for (int j = 0; j < n; j += NVC_CHUNK) {
            const int m = n - j < NVC_CHUNK ? n - j : NVC_CHUNK;
            predict_chunk(J, &w, buf, w.idx + j, w.first + j, m, w.mu + j, w.key + j);
        }
        sort_by_key(&w, w.key, n);
        for (int q = 0; q < n; q++) {
            const int j = w.order[q];
            const int tab = J->key_table[w.key[j]];
            if (tab < 0) { err = ERR_TABLE; break; }
            const nvc_rc_categorical *cat = &J->cat[tab];
            const uint32_t s = (uint32_t)nvc_rc_categorical_find(cat, nvc_rc_decode_quantile(&dec));
            if (nvc_rc_decode_consume(&dec, cat->cdf[s], cat->cdf[s + 1] - cat->cdf[s])) { err = ERR_CORRUPT; break; }
            w.token[j] = (int32_t)s;
        }
        if (err) break;
        for (int j = 0; j < n; j++) {
            const int nb = token_nbits((uint32_t)w.token[j]);
            uint32_t extra = 0;
            if (nb > 0) {
                const uint32_t size = 1u << nb;
                extra = nvc_rc_uniform_find(size, nvc_rc_decode_quantile(&dec));
                uint32_t left, prob;
                nvc_rc_uniform_interval(size, extra, &left, &prob);
                if (nvc_rc_decode_consume(&dec, left, prob)) { err = ERR_CORRUPT; break; }
            }
            const int64_t v = (int64_t)w.mu[j] + detokenize((uint32_t)w.token[j], extra);
            if (v < J->vmin || v > J->vmax) { err = ERR_RANGE; break; }
            buf[w.idx[j]] = (int32_t)v;
        }
    }
    if (err == OK) {
        for (int z = 0; z < D; z++)
            for (int y = 0; y < H; y++)
                memcpy(out + ((size_t)z * H + y) * W, buf + (ptrdiff_t)(z + J->pz) * J->ss + (ptrdiff_t)(y + J->py0) * J->rs + J->px0,
                       sizeof(int32_t) * (size_t)W);
    }
done:
    work_free(&w);
    free(buf);
    free(rows);
    return err;
}

/* ------------------------------------------------------------------ encode one slab */
/* Prediction pass: every voxel of slices [z0, z1) of `vol` (Z x H x W) -> packed symbol. */
static int predict_slab(const job_t *J, const int32_t *vol, int z0, int z1, uint32_t *sym, int64_t *counts) {
    const int H = J->H, W = J->W, D = z1 - z0;
    const ptrdiff_t slab_size = (ptrdiff_t)(D + J->pz) * J->ss;
    int32_t *buf = malloc(sizeof(int32_t) * (size_t)slab_size);
    work_t w;
    if (!buf || work_init(&w, J, NVC_CHUNK)) { free(buf); return ERR_NOMEM; }
    for (ptrdiff_t i = 0; i < slab_size; i++) buf[i] = J->vmin;
    for (int z = 0; z < D; z++)
        for (int y = 0; y < H; y++)
            memcpy(buf + (ptrdiff_t)(z + J->pz) * J->ss + (ptrdiff_t)(y + J->py0) * J->rs + J->px0,
                   vol + ((size_t)(z0 + z) * H + y) * W, sizeof(int32_t) * (size_t)W);
    int err = OK;
    for (int z = 0; z < D && !err; z++)
        for (int y = 0; y < H && !err; y++)
            for (int x0 = 0; x0 < W; x0 += NVC_CHUNK) {
                const int m = W - x0 < NVC_CHUNK ? W - x0 : NVC_CHUNK;
                const ptrdiff_t base = (ptrdiff_t)(z + J->pz) * J->ss + (ptrdiff_t)(y + J->py0) * J->rs + J->px0 + x0;
                for (int j = 0; j < m; j++) { w.idx[j] = base + j; w.first[j] = z == 0; }
                predict_chunk(J, &w, buf, w.idx, w.first, m, w.mu, w.key);
                uint32_t *s = sym + ((size_t)(z0 + z) * H + y) * W + x0;
                for (int j = 0; j < m; j++) {
                    uint32_t token, nbits, extra;
                    tokenize((int64_t)buf[base + j] - w.mu[j], &token, &nbits, &extra);
                    s[j] = w.key[j] | (token << 11) | (extra << 18);
                    counts[(size_t)w.key[j] * NVC_N_TOKENS + token]++;
                }
            }
    work_free(&w);
    free(buf);
    return err;
}

/* Emission: the symbols of slices [z0, z1) in the decoder's order -> range-coded words. */
static int emit_slab(const job_t *J, const uint32_t *sym, int z0, int z1, nvc_rc_encoder *enc) {
    const int H = J->H, W = J->W, D = z1 - z0;
    row_t *rows = sorted_rows(J, D);
    work_t w;
    if (!rows || work_init(&w, J, (size_t)D * H)) { free(rows); return ERR_NOMEM; }
    const size_t n_rows = (size_t)D * H;
    const int64_t n_steps = (int64_t)rows[n_rows - 1].start + W;
    size_t lo = 0, hi = 0;
    int err = OK;
    for (int64_t t = 0; t < n_steps && !err; t++) {
        while (hi < n_rows && rows[hi].start <= t) hi++;
        while (lo < hi && rows[lo].start <= t - W) lo++;
        const int n = (int)(hi - lo);
        if (n == 0) continue;
        uint32_t *step = (uint32_t *)w.token;
        for (int j = 0; j < n; j++) {
            const row_t *r = &rows[lo + j];
            step[j] = sym[((size_t)(z0 + r->z) * H + r->y) * W + (size_t)(t - r->start)];
            w.key[j] = (uint16_t)SYM_KEY(step[j]);
        }
        sort_by_key(&w, w.key, n);
        for (int q = 0; q < n; q++) {
            const uint32_t s = step[w.order[q]];
            const int tab = J->key_table[SYM_KEY(s)];
            if (tab < 0) { err = ERR_TABLE; break; }
            const nvc_rc_categorical *cat = &J->cat[tab];
            const uint32_t tok = SYM_TOKEN(s);
            const uint32_t left = cat->cdf[tok], prob = cat->cdf[tok + 1] - left;
            if (prob == 0) { err = ERR_SYMBOL; break; }
            if (nvc_rc_encode(enc, left, prob)) { err = ERR_NOMEM; break; }
        }
        if (err) break;
        for (int j = 0; j < n; j++) {
            const int nb = token_nbits(SYM_TOKEN(step[j]));
            if (nb > 0) {
                uint32_t left, prob;
                nvc_rc_uniform_interval(1u << nb, SYM_EXTRA(step[j]), &left, &prob);
                if (nvc_rc_encode(enc, left, prob)) { err = ERR_NOMEM; break; }
            }
        }
    }
    if (!err && nvc_rc_encoder_finish(enc)) err = ERR_NOMEM;
    work_free(&w);
    free(rows);
    return err;
}

/* ------------------------------------------------------------------ threads: one slab per task */
typedef struct {
    const job_t *J;
    int kind;                     /* 0 decode, 1 predict, 2 emit */
    int n_tasks;
    int next;
    pthread_mutex_t lock;
    /* decode */
    const int *depths;
    const uint32_t **words;
    const size_t *n_words;
    int32_t **outs;
    /* encode */
    const int32_t *vol;
    const int *z0, *z1;
    uint32_t *sym;
    int64_t **counts;             /* per task */
    nvc_rc_encoder *encoders;     /* per task */
    int *errors;                  /* per task */
} pool_t;

static void *pool_worker(void *arg) {
    pool_t *P = arg;
    for (;;) {
        pthread_mutex_lock(&P->lock);
        const int i = P->next++;
        pthread_mutex_unlock(&P->lock);
        if (i >= P->n_tasks) return NULL;
        if (P->kind == 0)
            P->errors[i] = decode_slab(P->J, P->depths[i], P->words[i], P->n_words[i], P->outs[i]);
        else if (P->kind == 1)
            P->errors[i] = predict_slab(P->J, P->vol, P->z0[i], P->z1[i], P->sym, P->counts[i]);
        else
            P->errors[i] = emit_slab(P->J, P->sym, P->z0[i], P->z1[i], &P->encoders[i]);
    }
}

static void pool_run(pool_t *P, int threads) {
    if (threads > P->n_tasks) threads = P->n_tasks;
    if (threads < 1) threads = 1;
    pthread_mutex_init(&P->lock, NULL);
    P->next = 0;
    pthread_t tid[64];
    int started = 0;
    for (int k = 1; k < threads && k < 64; k++)
        if (pthread_create(&tid[started], NULL, pool_worker, P) == 0) started++;
    pool_worker(P);
    for (int k = 0; k < started; k++) pthread_join(tid[k], NULL);
    pthread_mutex_destroy(&P->lock);
}

/* ------------------------------------------------------------------ Python glue */
typedef struct {
    Py_buffer views[8];
    int n;
} views_t;

static void views_release(views_t *v) {
    for (int i = 0; i < v->n; i++) PyBuffer_Release(&v->views[i]);
    v->n = 0;
}

static void *get_buffer(views_t *v, PyObject *obj, Py_ssize_t min_bytes, int writable, const char *what) {
    Py_buffer *b = &v->views[v->n];
    if (PyObject_GetBuffer(obj, b, (writable ? PyBUF_WRITABLE : 0) | PyBUF_C_CONTIGUOUS) < 0) return NULL;
    v->n++;
    if (b->len < min_bytes) {
        PyErr_Format(PyExc_ValueError, "%s: buffer of %zd bytes, need %zd", what, b->len, min_bytes);
        return NULL;
    }
    return b->buf;
}

/* net = (dims int32 [L, n_in, w_1, ..., w_L], params float64): per layer wt (n_in x n_out_pad), bias, scale. */
static int parse_net(views_t *v, PyObject *dims_obj, PyObject *params_obj, nvc_net *net) {
    Py_buffer *b = &v->views[v->n];
    if (PyObject_GetBuffer(dims_obj, b, PyBUF_C_CONTIGUOUS) < 0) return -1;
    v->n++;
    const int32_t *dims = b->buf;
    const Py_ssize_t nd = b->len / 4;
    if (nd < 3 || dims[0] < 1 || dims[0] > NVC_MAX_LAYERS || nd != dims[0] + 2) {
        PyErr_SetString(PyExc_ValueError, "network dims are malformed");
        return -1;
    }
    net->n_layers = dims[0];
    net->n_inputs = dims[1];
    size_t need = 0;
    int max_width = 0;
    for (int l = 0; l < net->n_layers; l++) {
        const int a = dims[1 + l], c = dims[2 + l];
        if (a < 1 || c < 1 || a > 4096 || c > 4096) {
            PyErr_SetString(PyExc_ValueError, "network widths out of range");
            return -1;
        }
        const int cp = (c + NVC_OUT_BLOCK - 1) / NVC_OUT_BLOCK * NVC_OUT_BLOCK;
        need += (size_t)a * cp + 2 * (size_t)cp;
        if (cp > max_width) max_width = cp;
    }
    if (dims[1 + net->n_layers] != 2) {
        PyErr_SetString(PyExc_ValueError, "network must have 2 outputs");
        return -1;
    }
    const double *p = get_buffer(v, params_obj, (Py_ssize_t)(need * sizeof(double)), 0, "network parameters");
    if (!p) return -1;
    for (int l = 0; l < net->n_layers; l++) {
        nvc_layer *L = &net->layers[l];
        L->n_in = dims[1 + l];
        L->n_out = dims[2 + l];
        L->n_out_pad = (L->n_out + NVC_OUT_BLOCK - 1) / NVC_OUT_BLOCK * NVC_OUT_BLOCK;
        L->wt = p;
        p += (size_t)L->n_in * L->n_out_pad;
        L->bias = p;
        p += L->n_out_pad;
        L->scale = p;
        p += L->n_out_pad;
    }
    net->max_width = max_width;
    if (nvc_inet_prepare(net)) { PyErr_NoMemory(); return -1; }
    return 0;
}

/* Context: (ctx kind, neighbours int32 k x 3, thresholds int64[76], A, B). */
static int parse_context(views_t *v, job_t *J, int ctx, PyObject *nb_obj, PyObject *thr_obj) {
    Py_buffer *b = &v->views[v->n];
    if (PyObject_GetBuffer(nb_obj, b, PyBUF_C_CONTIGUOUS) < 0) return -1;
    v->n++;
    J->nb = b->buf;
    J->n_nb = (int)(b->len / 12);
    const int64_t *thr = get_buffer(v, thr_obj, N_THRESHOLDS * 8, 0, "thresholds");
    if (!thr) return -1;
    memcpy(J->thresholds, thr, sizeof(J->thresholds));
    J->ctx = ctx;
    int pz = 0, py0 = 0, py1 = 0, px0 = 0, px1 = 0;
    for (int k = 0; k < J->n_nb; k++) {
        const int dz = J->nb[3 * k], dy = J->nb[3 * k + 1], dx = J->nb[3 * k + 2];
        if (-dz > pz) pz = -dz;
        if (-dy > py0) py0 = -dy;
        if (dy > py1) py1 = dy;
        if (-dx > px0) px0 = -dx;
        if (dx > px1) px1 = dx;
    }
    J->pz = pz; J->py0 = py0; J->py1 = py1; J->px0 = px0; J->px1 = px1;
    J->rs = J->W + px0 + px1;
    J->ss = (ptrdiff_t)(J->H + py0 + py1) * J->rs;
    const int want = ctx == CTX_LOCAL ? J->n_nb + 3 : J->n_nb;
    if ((ctx != CTX_LOCAL && ctx != CTX_PAPER) || (ctx == CTX_LOCAL && J->n_nb < 13) || J->net.n_inputs != want) {
        PyErr_SetString(PyExc_ValueError, "context does not match the network's inputs");
        return -1;
    }
    return 0;
}

/* Tables: quantized probabilities uint32 (1728 x 127, each used row summing to 2^24) and used uint8[1728]. */
static nvc_rc_categorical *parse_tables(views_t *v, job_t *J, PyObject *probs_obj, PyObject *used_obj) {
    const uint32_t *probs = get_buffer(v, probs_obj, NVC_N_KEYS * NVC_N_TOKENS * 4, 0, "table probabilities");
    if (!probs) return NULL;
    const uint8_t *used = get_buffer(v, used_obj, NVC_N_KEYS, 0, "table mask");
    if (!used) return NULL;
    int n_used = 0;
    for (int k = 0; k < NVC_N_KEYS; k++) n_used += used[k] != 0;
    nvc_rc_categorical *cat = calloc(n_used ? n_used : 1, sizeof(nvc_rc_categorical));
    if (!cat) { PyErr_NoMemory(); return NULL; }
    int i = 0;
    for (int k = 0; k < NVC_N_KEYS; k++) {
        if (used[k]) {
            nvc_rc_categorical_init(&cat[i], probs + (size_t)k * NVC_N_TOKENS, NVC_N_TOKENS);
            J->key_table[k] = (int16_t)i++;
        } else {
            J->key_table[k] = -1;
        }
    }
    J->cat = cat;
    return cat;
}

static void set_forward(job_t *J) {
    J->forward = nvc_kernel_fn(g_kernel);
    J->pairs = g_kernel == NVC_KERNEL_VNNI && J->ctx == CTX_LOCAL && nvc_inet_pairs(&J->net) > 0;
    for (int k = 0; k < N_THRESHOLDS; k++)
        J->thr32[k] = J->thresholds[k] > INT32_MAX ? INT32_MAX : (J->thresholds[k] < INT32_MIN ? INT32_MIN : (int32_t)J->thresholds[k]);
}

static int resolve_threads(int threads, int n_tasks) {
    if (threads <= 0) {
        long c = sysconf(_SC_NPROCESSORS_ONLN);
        threads = c > 0 ? (int)c : 1;
    }
    if (threads > n_tasks) threads = n_tasks;
    return threads < 1 ? 1 : threads;
}

static PyObject *py_decode(PyObject *self, PyObject *args) {
    PyObject *dims, *params, *nb, *thr, *probs, *used, *payloads, *outs, *depths_obj;
    int ctx, A, B, vmin, vmax, H, W, threads;
    if (!PyArg_ParseTuple(args, "OOiOOiiiiOOOOOiii", &dims, &params, &ctx, &nb, &thr, &A, &B, &vmin, &vmax, &probs,
                          &used, &payloads, &outs, &depths_obj, &H, &W, &threads))
        return NULL;
    views_t v = {.n = 0};
    job_t *J = calloc(1, sizeof(job_t));
    nvc_rc_categorical *cat = NULL;
    PyObject *result = NULL;
    Py_buffer *slab_views = NULL;
    int n = 0, *depths = NULL, *errors = NULL;
    const uint32_t **words = NULL;
    size_t *n_words = NULL;
    int32_t **out_ptrs = NULL;
    if (!J) return PyErr_NoMemory();
    J->vmin = vmin; J->vmax = vmax; J->H = H; J->W = W; J->A = A; J->B = B;
    if (H < 1 || W < 1 || vmax < vmin) { PyErr_SetString(PyExc_ValueError, "bad geometry"); goto fail; }
    if (parse_net(&v, dims, params, &J->net) || parse_context(&v, J, ctx, nb, thr)) goto fail;
    if (!(cat = parse_tables(&v, J, probs, used))) goto fail;
    set_forward(J);
    if (!PyList_Check(payloads) || !PyList_Check(outs) || !PyList_Check(depths_obj)) {
        PyErr_SetString(PyExc_TypeError, "payloads, outputs and depths must be lists");
        goto fail;
    }
    n = (int)PyList_GET_SIZE(payloads);
    if (PyList_GET_SIZE(outs) != n || PyList_GET_SIZE(depths_obj) != n) {
        PyErr_SetString(PyExc_ValueError, "payloads, outputs and depths differ in length");
        goto fail;
    }
    slab_views = calloc(2 * (size_t)n + 1, sizeof(Py_buffer));
    depths = calloc(n + 1, sizeof(int));
    errors = calloc(n + 1, sizeof(int));
    words = calloc(n + 1, sizeof(*words));
    n_words = calloc(n + 1, sizeof(size_t));
    out_ptrs = calloc(n + 1, sizeof(*out_ptrs));
    if (!slab_views || !depths || !errors || !words || !n_words || !out_ptrs) { PyErr_NoMemory(); goto fail; }
    int got = 0;
    for (int i = 0; i < n; i++) {
        depths[i] = (int)PyLong_AsLong(PyList_GET_ITEM(depths_obj, i));
        if (depths[i] < 1) { if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "bad slab depth"); goto release; }
        if (PyObject_GetBuffer(PyList_GET_ITEM(payloads, i), &slab_views[got], PyBUF_C_CONTIGUOUS) < 0) goto release;
        got++;
        words[i] = slab_views[got - 1].buf;
        n_words[i] = (size_t)slab_views[got - 1].len / 4;
        if (PyObject_GetBuffer(PyList_GET_ITEM(outs, i), &slab_views[got], PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0)
            goto release;
        got++;
        if (slab_views[got - 1].len < (Py_ssize_t)depths[i] * H * W * 4) {
            PyErr_SetString(PyExc_ValueError, "output array too small");
            goto release;
        }
        out_ptrs[i] = slab_views[got - 1].buf;
    }
    {
        pool_t P = {.J = J, .kind = 0, .n_tasks = n, .depths = depths, .words = words, .n_words = n_words,
                    .outs = out_ptrs, .errors = errors};
        const int nt = resolve_threads(threads, n);
        Py_BEGIN_ALLOW_THREADS
        pool_run(&P, nt);
        Py_END_ALLOW_THREADS
    }
    for (int i = 0; i < n; i++)
        if (errors[i]) {
            if (errors[i] == ERR_NOMEM) PyErr_NoMemory();
            else PyErr_Format(PyExc_ValueError, "slab %d: %s", i, error_text(errors[i]));
            goto release;
        }
    result = Py_None;
    Py_INCREF(result);
release:
    for (int i = 0; i < got; i++) PyBuffer_Release(&slab_views[i]);
fail:
    views_release(&v);
    nvc_inet_free(&J->net);
    free(cat); free(J); free(slab_views); free(depths); free(errors); free(words); free(n_words); free(out_ptrs);
    return result;
}

static int parse_bounds(PyObject *bounds, int Z, int **z0, int **z1) {
    if (!PyList_Check(bounds)) { PyErr_SetString(PyExc_TypeError, "bounds must be a list"); return -1; }
    const int n = (int)PyList_GET_SIZE(bounds);
    *z0 = calloc(n + 1, sizeof(int));
    *z1 = calloc(n + 1, sizeof(int));
    if (!*z0 || !*z1) { PyErr_NoMemory(); return -1; }
    for (int i = 0; i < n; i++) {
        int a, b;
        if (!PyArg_ParseTuple(PyList_GET_ITEM(bounds, i), "ii", &a, &b)) return -1;
        if (a < 0 || b <= a || b > Z) { PyErr_SetString(PyExc_ValueError, "bad slab bounds"); return -1; }
        (*z0)[i] = a;
        (*z1)[i] = b;
    }
    return n;
}

static PyObject *py_predict(PyObject *self, PyObject *args) {
    PyObject *dims, *params, *nb, *thr, *vol_obj, *bounds, *sym_obj, *counts_obj;
    int ctx, vmin, vmax, Z, H, W, threads;
    if (!PyArg_ParseTuple(args, "OOiOOiiOiiiOOOi", &dims, &params, &ctx, &nb, &thr, &vmin, &vmax, &vol_obj, &Z, &H, &W,
                          &bounds, &sym_obj, &counts_obj, &threads))
        return NULL;
    views_t v = {.n = 0};
    job_t *J = calloc(1, sizeof(job_t));
    int *z0 = NULL, *z1 = NULL, *errors = NULL, n = 0;
    int64_t **counts = NULL;
    PyObject *result = NULL;
    if (!J) return PyErr_NoMemory();
    J->vmin = vmin; J->vmax = vmax; J->H = H; J->W = W;
    if (Z < 1 || H < 1 || W < 1 || vmax < vmin) { PyErr_SetString(PyExc_ValueError, "bad geometry"); goto fail; }
    if (parse_net(&v, dims, params, &J->net) || parse_context(&v, J, ctx, nb, thr)) goto fail;
    set_forward(J);
    const size_t nvox = (size_t)Z * H * W;
    const int32_t *vol = get_buffer(&v, vol_obj, (Py_ssize_t)(nvox * 4), 0, "volume");
    uint32_t *sym = vol ? get_buffer(&v, sym_obj, (Py_ssize_t)(nvox * 4), 1, "symbols") : NULL;
    int64_t *total = sym ? get_buffer(&v, counts_obj, NVC_N_KEYS * NVC_N_TOKENS * 8, 1, "counts") : NULL;
    if (!total) goto fail;
    if ((n = parse_bounds(bounds, Z, &z0, &z1)) < 0) goto fail;
    errors = calloc(n + 1, sizeof(int));
    counts = calloc(n + 1, sizeof(*counts));
    if (!errors || !counts) { PyErr_NoMemory(); goto fail; }
    for (int i = 0; i < n; i++)
        if (!(counts[i] = calloc(NVC_N_KEYS * NVC_N_TOKENS, sizeof(int64_t)))) { PyErr_NoMemory(); goto fail; }
    {
        pool_t P = {.J = J, .kind = 1, .n_tasks = n, .vol = vol, .z0 = z0, .z1 = z1, .sym = sym, .counts = counts,
                    .errors = errors};
        const int nt = resolve_threads(threads, n);
        Py_BEGIN_ALLOW_THREADS
        pool_run(&P, nt);
        Py_END_ALLOW_THREADS
    }
    for (int i = 0; i < n; i++) {
        if (errors[i]) { PyErr_NoMemory(); goto fail; }
        for (int k = 0; k < NVC_N_KEYS * NVC_N_TOKENS; k++) total[k] += counts[i][k];
    }
    result = Py_None;
    Py_INCREF(result);
fail:
    views_release(&v);
    if (counts)
        for (int i = 0; i < n; i++) free(counts[i]);
    nvc_inet_free(&J->net);
    free(counts); free(errors); free(z0); free(z1); free(J);
    return result;
}

static PyObject *py_emit(PyObject *self, PyObject *args) {
    PyObject *probs, *used, *sym_obj, *bounds;
    int A, B, Z, H, W, threads;
    if (!PyArg_ParseTuple(args, "iiOOOiiiOi", &A, &B, &probs, &used, &sym_obj, &Z, &H, &W, &bounds, &threads))
        return NULL;
    views_t v = {.n = 0};
    job_t *J = calloc(1, sizeof(job_t));
    nvc_rc_categorical *cat = NULL;
    int *z0 = NULL, *z1 = NULL, *errors = NULL, n = 0;
    nvc_rc_encoder *enc = NULL;
    PyObject *result = NULL;
    if (!J) return PyErr_NoMemory();
    J->H = H; J->W = W; J->A = A; J->B = B;
    J->net.n_inputs = 1; J->net.max_width = 1; /* no network in the emission pass */
    if (Z < 1 || H < 1 || W < 1) { PyErr_SetString(PyExc_ValueError, "bad geometry"); goto fail; }
    if (!(cat = parse_tables(&v, J, probs, used))) goto fail;
    const uint32_t *sym = get_buffer(&v, sym_obj, (Py_ssize_t)Z * H * W * 4, 0, "symbols");
    if (!sym) goto fail;
    if ((n = parse_bounds(bounds, Z, &z0, &z1)) < 0) goto fail;
    errors = calloc(n + 1, sizeof(int));
    enc = calloc(n + 1, sizeof(nvc_rc_encoder));
    if (!errors || !enc) { PyErr_NoMemory(); goto fail; }
    for (int i = 0; i < n; i++)
        if (nvc_rc_encoder_init(&enc[i])) { PyErr_NoMemory(); goto fail; }
    {
        pool_t P = {.J = J, .kind = 2, .n_tasks = n, .z0 = z0, .z1 = z1, .sym = (uint32_t *)sym, .encoders = enc,
                    .errors = errors};
        const int nt = resolve_threads(threads, n);
        Py_BEGIN_ALLOW_THREADS
        pool_run(&P, nt);
        Py_END_ALLOW_THREADS
    }
    for (int i = 0; i < n; i++)
        if (errors[i]) {
            if (errors[i] == ERR_NOMEM) PyErr_NoMemory();
            else PyErr_Format(PyExc_ValueError, "slab %d: %s", i, error_text(errors[i]));
            goto fail;
        }
    result = PyList_New(n);
    if (!result) goto fail;
    for (int i = 0; i < n; i++) {
        PyObject *b = PyBytes_FromStringAndSize((const char *)enc[i].words, (Py_ssize_t)enc[i].len * 4);
        if (!b) { Py_CLEAR(result); goto fail; }
        PyList_SET_ITEM(result, i, b);
    }
fail:
    if (enc)
        for (int i = 0; i < n; i++) nvc_rc_encoder_free(&enc[i]);
    views_release(&v);
    free(enc); free(errors); free(z0); free(z1); free(cat); free(J);
    return result;
}

static PyObject *py_forward(PyObject *self, PyObject *args) {
    PyObject *dims, *params, *in_obj;
    int n;
    if (!PyArg_ParseTuple(args, "OOOi", &dims, &params, &in_obj, &n)) return NULL;
    views_t v = {.n = 0};
    nvc_net net;
    memset(&net, 0, sizeof(net));
    PyObject *result = NULL;
    double *in = NULL, *scratch = NULL;
    if (n < 0 || parse_net(&v, dims, params, &net)) goto fail;
    const double *src = get_buffer(&v, in_obj, (Py_ssize_t)n * net.n_inputs * 8, 0, "inputs");
    if (!src) goto fail;
    result = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)n * 16);
    if (!result) goto fail;
    int64_t *out = (int64_t *)PyBytes_AS_STRING(result);
    in = calloc((size_t)NVC_CHUNK * net.n_inputs, sizeof(double));
    scratch = calloc(nvc_scratch_doubles(&net, NVC_CHUNK), sizeof(double));
    if (!in || !scratch) { Py_CLEAR(result); PyErr_NoMemory(); goto fail; }
    nvc_forward_fn fwd = nvc_kernel_fn(g_kernel);
    for (int j = 0; j < n; j += NVC_CHUNK) {
        const int m = n - j < NVC_CHUNK ? n - j : NVC_CHUNK;
        memset(in, 0, sizeof(double) * (size_t)NVC_CHUNK * net.n_inputs);
        memcpy(in, src + (size_t)j * net.n_inputs, sizeof(double) * (size_t)m * net.n_inputs);
        fwd(&net, in, m, out + (size_t)j * 2, scratch);
    }
fail:
    views_release(&v);
    nvc_inet_free(&net);
    free(in); free(scratch);
    return result;
}

static int kernel_by_name(const char *name) {
    for (int k = 0; k < NVC_N_KERNELS; k++)
        if (!strcmp(name, nvc_kernel_name(k))) return k;
    return -1;
}

static int best_kernel(void) {
    if (nvc_kernel_available(NVC_KERNEL_VNNI)) return NVC_KERNEL_VNNI;
    if (nvc_kernel_available(NVC_KERNEL_AVX512)) return NVC_KERNEL_AVX512;
    if (nvc_kernel_available(NVC_KERNEL_AVX2)) return NVC_KERNEL_AVX2;
    if (nvc_kernel_available(NVC_KERNEL_NEON)) return NVC_KERNEL_NEON;
    return NVC_KERNEL_SCALAR;
}

static PyObject *py_set_kernel(PyObject *self, PyObject *args) {
    const char *name;
    if (!PyArg_ParseTuple(args, "s", &name)) return NULL;
    const int k = !strcmp(name, "auto") ? best_kernel() : kernel_by_name(name);
    if (k < 0 || !nvc_kernel_available(k)) {
        PyErr_Format(PyExc_ValueError, "network kernel %s is not available on this CPU", name);
        return NULL;
    }
    g_kernel = k;
    return PyUnicode_FromString(nvc_kernel_name(k));
}

static PyObject *py_kernel(PyObject *self, PyObject *noargs) { return PyUnicode_FromString(nvc_kernel_name(g_kernel)); }

static PyObject *py_kernels(PyObject *self, PyObject *noargs) {
    PyObject *out = PyList_New(0);
    for (int k = 0; out && k < NVC_N_KERNELS; k++)
        if (nvc_kernel_available(k)) {
            PyObject *s = PyUnicode_FromString(nvc_kernel_name(k));
            PyList_Append(out, s);
            Py_XDECREF(s);
        }
    return out;
}

static PyMethodDef methods[] = {
    {"decode", py_decode, METH_VARARGS, "Decode slabs (one thread per slab) into int32 arrays."},
    {"predict", py_predict, METH_VARARGS, "Encoder prediction pass: packed symbols and token counts."},
    {"emit", py_emit, METH_VARARGS, "Encoder emission pass: range-coded payload per slab."},
    {"forward", py_forward, METH_VARARGS, "Exact network forward pass (for tests): int64 (n, 2) as bytes."},
    {"set_kernel", py_set_kernel, METH_VARARGS, "Force the network kernel: scalar, avx2, avx512, vnni, neon or auto."},
    {"kernel", py_kernel, METH_NOARGS, "Name of the network kernel in use."},
    {"kernels", py_kernels, METH_NOARGS, "Network kernels available on this CPU."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_nvcore", "NVC native coding core.", -1, methods};

PyMODINIT_FUNC PyInit__nvcore(void) {
    const char *want = getenv("NVC_KERNEL");
    g_kernel = best_kernel();
    if (want && *want && strcmp(want, "auto")) {
        const int k = kernel_by_name(want);
        if (k >= 0 && nvc_kernel_available(k)) g_kernel = k;
    }
    return PyModule_Create(&module);
}
