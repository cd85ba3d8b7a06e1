/*
 * rangecoder.h -- a bit-exact C twin of constriction 0.5.0's queue range coder.
 *
 * Header-only C99 (static inline), no dependencies beyond <stdint.h>, <stddef.h>, <stdlib.h>,
 * <string.h>; portable (integer arithmetic only, no floats, no intrinsics), so x86-64 and
 * ARM64 produce identical words. Written from the behaviour of constriction
 * (https://github.com/bamler-lab/constriction, MIT/Apache-2.0), not copied from it.
 *
 * WHAT IT MIRRORS (the types the Python API `constriction.stream.queue.RangeEncoder` /
 * `RangeDecoder` uses: `DefaultRangeEncoder` = RangeEncoder<Word = u32, State = u64>) with
 * the models codec/entropy.py uses:
 *   - `constriction.stream.model.Categorical(p, perfect=False)` =
 *     DefaultContiguousCategoricalEntropyModel (u32 probabilities, PRECISION 24) built by
 *     `from_floating_point_probabilities_fast`. Its integer probabilities are computed in
 *     Python by codec/coder_model.py (`quantized_probabilities`), never here: the float
 *     arithmetic stays out of the native core. Pass those integers to
 *     nvc_rc_categorical_init.
 *   - `constriction.stream.model.Uniform()` with per-symbol sizes = UniformModel<u32, 24>.
 * The full specification is docs/codec.md, "Range coder (bit-exact)".
 *
 * STATE (encoder and decoder): lower (u64), range (u64), initially lower = 0,
 * range = 2^64 - 1. Coding a symbol with interval [left, left + prob) of 2^24:
 *     scale = range >> 24;  lower += scale * left (mod 2^64);  range = scale * prob;
 *     if range < 2^32: renormalise by one word (lower <<= 32, range <<= 32).
 * The encoder emits lower's top word at each renormalisation; while lower + range wraps
 * past 2^64 (a pending carry), words are held back ("inverted" situation) and flushed as
 * first_word, then 0xFFFFFFFF... (no carry) or first_word + 1, then 0x00000000... (carry).
 *
 * PAYLOAD: the sequence of u32 words; in a .nvc file each word is stored little-endian
 * (the engine reads payloads with numpy's native-order u32 view on little-endian hosts).
 * Use nvc_rc_load_le32 / nvc_rc_store_le32 to convert between bytes and words.
 *
 * USAGE (encoder): init; per symbol nvc_rc_encode(e, left, prob) with the interval from
 * nvc_rc_categorical_interval / nvc_rc_uniform_interval; nvc_rc_encoder_finish(e); the payload
 * is e->words[0 .. e->len). An encoder that coded no symbol gives an empty payload.
 * USAGE (decoder): init over the payload words; per symbol q = nvc_rc_decode_quantile(d),
 * s = nvc_rc_categorical_find(t, q) (or nvc_rc_uniform_find), then
 * nvc_rc_decode_consume(d, left, prob) with that symbol's interval; -1 means the data is
 * corrupt or truncated (never an out-of-bounds read, never a loop).
 *
 * ERRORS: decoding invalid data is always detected as one of: (a) the quantile would be
 * >= 2^24 (constriction's InvalidData); (b) the decoder needs a second word past the end of
 * the payload (a valid stream never needs more than one: the encoder writes R + 1 or R + 2
 * words for R renormalisations and the decoder reads 2 + R; constriction silently shifts in
 * zeros there, this twin accepts exactly one such zero word and refuses more); (c) the
 * interval passed to consume does not contain the last quantile (a caller bug or a broken
 * table). After an error every further call returns the error again.
 *
 * THREADS: no globals; one encoder/decoder per stream, tables are read-only after init
 * and may be shared between threads.
 *
 * TABLES IN THE CODEC: codec.coder_model.table_probabilities(pred.coding_tables) gives the
 * (1728, 127) uint32 probabilities per table key (key = level * 216 + side * 72 + class); the
 * shipped tables repeat the same 216 rows for each of the 8 levels, per-volume tables have
 * all-zero rows for keys they do not hold (no model: coding such a key is an error). Build
 * one nvc_rc_categorical per distinct row (about 1 KB each).
 *
 * TESTS: tests/codec/test_rangecoder.py (through codec/native/rangecoder_module.c) proves
 * byte identity with constriction; docs/decisions/0110 says why this is hand-written.
 */
#ifndef NVC_RANGECODER_H
#define NVC_RANGECODER_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define NVC_RC_PRECISION 24                                   /* probabilities sum to 2^24 */
#define NVC_RC_TOTAL ((uint32_t)1 << NVC_RC_PRECISION)
#ifndef NVC_RC_MAX_SYMBOLS
#define NVC_RC_MAX_SYMBOLS 128                                /* >= entropy.N_TOKENS (127) */
#endif
#define NVC_RC_LUT_BITS 8                                     /* quantile buckets: 2^8 */
#define NVC_RC_LUT_SHIFT (NVC_RC_PRECISION - NVC_RC_LUT_BITS)
#define NVC_RC_INVALID_QUANTILE 0xFFFFFFFFu                   /* returned on invalid data */
#define NVC_RC_MAX_UNIFORM_SIZE NVC_RC_TOTAL                  /* Uniform sizes in [2, 2^24] */

#if NVC_RC_MAX_SYMBOLS > 65535
#error "NVC_RC_MAX_SYMBOLS must fit the uint16_t lookup table"
#endif

/* ------------------------------------------------------------------------- words <-> bytes */
static inline uint32_t nvc_rc_load_le32(const unsigned char *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

static inline void nvc_rc_store_le32(unsigned char *p, uint32_t w) {
    p[0] = (unsigned char)(w & 0xFFu);
    p[1] = (unsigned char)((w >> 8) & 0xFFu);
    p[2] = (unsigned char)((w >> 16) & 0xFFu);
    p[3] = (unsigned char)(w >> 24);
}

/* ------------------------------------------------------------------------- encoder */
typedef struct nvc_rc_encoder {
    uint32_t *words;      /* payload words written so far (after finish: the whole payload) */
    size_t len;           /* words used */
    size_t cap;           /* words allocated */
    uint64_t lower;
    uint64_t range;
    size_t num_inverted;  /* > 0: "inverted" situation, that many words held back */
    uint32_t first_inverted_word;
    int finished;
} nvc_rc_encoder;

static inline void nvc_rc_encoder_reset(nvc_rc_encoder *e) {
    e->len = 0;
    e->lower = 0;
    e->range = UINT64_MAX;
    e->num_inverted = 0;
    e->first_inverted_word = 0;
    e->finished = 0;
}

/* 0 ok, -1 no memory. */
static inline int nvc_rc_encoder_init(nvc_rc_encoder *e) {
    e->cap = 256;
    e->words = (uint32_t *)malloc(e->cap * sizeof(uint32_t));
    nvc_rc_encoder_reset(e);
    if (e->words == NULL) {
        e->cap = 0;
        return -1;
    }
    return 0;
}

static inline void nvc_rc_encoder_free(nvc_rc_encoder *e) {
    free(e->words);
    e->words = NULL;
    e->len = e->cap = 0;
}

static inline int nvc_rc__write(nvc_rc_encoder *e, uint32_t w) {
    if (e->len == e->cap) {
        size_t cap = e->cap ? e->cap * 2 : 256;
        uint32_t *grown;
        if (cap < e->cap || cap > ((size_t)-1) / sizeof(uint32_t)) return -1;
        grown = (uint32_t *)realloc(e->words, cap * sizeof(uint32_t));
        if (grown == NULL) return -1;
        e->words = grown;
        e->cap = cap;
    }
    e->words[e->len++] = w;
    return 0;
}

/* Write the held-back words: first, then (num_inverted - 1) x rest. */
static inline int nvc_rc__flush_inverted(nvc_rc_encoder *e, int carry) {
    uint32_t first = carry ? e->first_inverted_word + 1u : e->first_inverted_word;
    uint32_t rest = carry ? 0u : 0xFFFFFFFFu;
    size_t i;
    if (nvc_rc__write(e, first)) return -1;
    for (i = 1; i < e->num_inverted; i++)
        if (nvc_rc__write(e, rest)) return -1;
    e->num_inverted = 0;
    return 0;
}

/* Code one symbol whose interval is [left, left + prob) of 2^24.
 * 0 ok; -1: no memory, an empty or out-of-range interval, or the encoder is finished. */
static inline int nvc_rc_encode(nvc_rc_encoder *e, uint32_t left, uint32_t prob) {
    uint64_t scale, new_lower;
    if (e->finished || prob == 0 || left >= NVC_RC_TOTAL || prob > NVC_RC_TOTAL - left) return -1;
    scale = e->range >> NVC_RC_PRECISION;
    new_lower = e->lower + scale * (uint64_t)left;  /* mod 2^64 */
    e->range = scale * (uint64_t)prob;              /* >= 2^8: range >= 2^32 before */
    if (e->num_inverted) {
        if (new_lower + e->range > new_lower) {     /* the pending carry is resolved */
            if (nvc_rc__flush_inverted(e, new_lower < e->lower)) return -1;
        }
    }
    e->lower = new_lower;
    if (e->range < ((uint64_t)1 << 32)) {
        uint32_t lower_word = (uint32_t)(e->lower >> 32);
        e->range <<= 32;
        e->lower <<= 32;
        if (e->num_inverted) {
            e->num_inverted++;
        } else if (e->lower + e->range > e->lower) {
            if (nvc_rc__write(e, lower_word)) return -1;
        } else {
            e->num_inverted = 1;
            e->first_inverted_word = lower_word;
        }
    }
    return 0;
}

/* Flush exactly as constriction's get_compressed() seals: nothing if no symbol was coded;
 * else the held-back words, the top word of point = lower + 2^32 - 1, and a 0 word when
 * the top word of lower + range equals it. Then e->words[0 .. e->len) is the payload.
 * 0 ok, -1 no memory. Encoding after finish is refused. */
static inline int nvc_rc_encoder_finish(nvc_rc_encoder *e) {
    uint64_t point;
    uint32_t point_word, upper_word;
    if (e->finished) return 0;
    e->finished = 1;
    if (e->range == UINT64_MAX) return 0;           /* only before the first symbol */
    point = e->lower + (((uint64_t)1 << 32) - 1u);
    if (e->num_inverted) {
        if (nvc_rc__flush_inverted(e, point < e->lower)) return -1;
    }
    point_word = (uint32_t)(point >> 32);
    if (nvc_rc__write(e, point_word)) return -1;
    upper_word = (uint32_t)((e->lower + e->range) >> 32);
    if (upper_word == point_word) {
        if (nvc_rc__write(e, 0u)) return -1;
    }
    return 0;
}

/* ------------------------------------------------------------------------- decoder */
typedef struct nvc_rc_decoder {
    const uint32_t *words;  /* not owned; must outlive the decoder */
    size_t len;
    size_t pos;             /* next word to read */
    uint64_t lower;
    uint64_t range;
    uint64_t point;
    uint64_t scale;         /* of the pending symbol (set by decode_quantile) */
    uint32_t quantile;      /* of the pending symbol */
    int past_end;           /* zero words shifted in after the end (at most 1 is valid) */
    int pending;            /* decode_quantile called, consume not yet */
    int error;
} nvc_rc_decoder;

static inline int nvc_rc__read(nvc_rc_decoder *d, uint32_t *w) {
    if (d->pos < d->len) {
        *w = d->words[d->pos++];
        return 0;
    }
    *w = 0;
    if (++d->past_end > 1) return -1;
    return 0;
}

/* Start decoding `len` words. Like constriction, the first two words (fewer if the payload
 * is shorter, then left-aligned) form the point. 0 ok, -1 if len > 0 and words is NULL. */
static inline int nvc_rc_decoder_init(nvc_rc_decoder *d, const uint32_t *words, size_t len) {
    size_t i, n;
    d->words = words;
    d->len = words ? len : 0;
    d->pos = 0;
    d->lower = 0;
    d->range = UINT64_MAX;
    d->point = 0;
    d->scale = 0;
    d->quantile = 0;
    d->past_end = 0;
    d->pending = 0;
    d->error = (len > 0 && words == NULL);
    n = d->len < 2 ? d->len : 2;
    for (i = 0; i < n; i++) d->point = (d->point << 32) | words[d->pos++];
    if (n == 1) {
        d->point <<= 32;
        d->past_end = 1;   /* the missing second word counts as the one zero word allowed */
    }
    /* n == 0: an encoder that coded any symbol wrote at least one word, so decoding a symbol
       from an empty payload is refused (decode_quantile); constriction would return garbage. */
    return d->error ? -1 : 0;
}

/* The quantile of the next symbol, in [0, 2^24), or NVC_RC_INVALID_QUANTILE on invalid
 * data (then consume returns -1 as well). */
static inline uint32_t nvc_rc_decode_quantile(nvc_rc_decoder *d) {
    uint64_t q;
    if (d->error || d->len == 0) {
        d->error = 1;
        return NVC_RC_INVALID_QUANTILE;
    }
    d->scale = d->range >> NVC_RC_PRECISION;
    q = (d->point - d->lower) / d->scale;           /* scale >= 2^8: range >= 2^32 */
    if (q >= NVC_RC_TOTAL) {
        d->error = 1;
        return NVC_RC_INVALID_QUANTILE;
    }
    d->quantile = (uint32_t)q;
    d->pending = 1;
    return d->quantile;
}

/* Consume the symbol whose interval [left, left + prob) contains the last quantile.
 * 0 ok, -1 corrupt/exhausted data (or an interval that does not contain the quantile). */
static inline int nvc_rc_decode_consume(nvc_rc_decoder *d, uint32_t left, uint32_t prob) {
    if (d->error || !d->pending) {
        d->error = 1;
        return -1;
    }
    d->pending = 0;
    if (prob == 0 || left > d->quantile || d->quantile - left >= prob || prob > NVC_RC_TOTAL - left) {
        d->error = 1;
        return -1;
    }
    d->lower += d->scale * (uint64_t)left;
    d->range = d->scale * (uint64_t)prob;
    if (d->range < ((uint64_t)1 << 32)) {
        uint32_t w;
        d->lower <<= 32;
        d->range <<= 32;
        if (nvc_rc__read(d, &w)) {
            d->error = 1;
            return -1;
        }
        d->point = (d->point << 32) | w;
    }
    return 0;
}

/* Words read so far, the zero word shifted in past the end excluded. */
static inline size_t nvc_rc_decoder_position(const nvc_rc_decoder *d) { return d->pos; }

/* ------------------------------------------------------------------------- categorical */
typedef struct {
    uint32_t cdf[NVC_RC_MAX_SYMBOLS + 1];   /* cdf[0] = 0, cdf[n] = 2^24, non-decreasing */
    int n;                                  /* symbols 0 .. n-1 */
    /* lut[b] = the symbol whose interval holds quantile b << NVC_RC_LUT_SHIFT; the symbol of
       any quantile q lies in [lut[q >> SHIFT], lut[(q >> SHIFT) + 1]] */
    uint16_t lut[(1 << NVC_RC_LUT_BITS) + 1];
} nvc_rc_categorical;

/* Build a table from integer probabilities that sum to 2^24 (as produced by
 * codec.coder_model.quantized_probabilities, the twin of constriction's
 * Categorical(p, perfect=False)). 2 <= n <= NVC_RC_MAX_SYMBOLS. A probability of 0 is
 * accepted (constriction can produce one for float32 input, never for the float64 tables
 * of the codec): that symbol is never decoded and encoding it fails, as in constriction.
 * Returns 0, or -1 (table left with n = 0) if the probabilities break these rules. */
static inline int nvc_rc_categorical_check_init(nvc_rc_categorical *t, const uint32_t *quantized_probs, int n) {
    int s, b;
    uint64_t acc = 0;
    t->n = 0;
    if (n < 2 || n > NVC_RC_MAX_SYMBOLS) return -1;
    t->cdf[0] = 0;
    for (s = 0; s < n; s++) {
        acc += quantized_probs[s];
        if (acc > NVC_RC_TOTAL) return -1;
        t->cdf[s + 1] = (uint32_t)acc;
    }
    if (acc != NVC_RC_TOTAL) return -1;
    s = 0;
    for (b = 0; b <= (1 << NVC_RC_LUT_BITS); b++) {
        uint32_t q = (uint32_t)b << NVC_RC_LUT_SHIFT;
        if (q >= NVC_RC_TOTAL) q = NVC_RC_TOTAL - 1u;
        while (t->cdf[s + 1] <= q) s++;
        t->lut[b] = (uint16_t)s;
    }
    t->n = n;
    return 0;
}

/* As nvc_rc_categorical_check_init, for callers that validated the probabilities already. */
static inline void nvc_rc_categorical_init(nvc_rc_categorical *t, const uint32_t *quantized_probs, int n) {
    (void)nvc_rc_categorical_check_init(t, quantized_probs, n);
}

/* The symbol s with cdf[s] <= quantile < cdf[s + 1] (quantile < 2^24; larger values give
 * the last symbol, and consume then reports the error). Returns -1 for an empty table. */
static inline int nvc_rc_categorical_find(const nvc_rc_categorical *t, uint32_t quantile) {
    int lo, hi;
    uint32_t b;
    if (t->n <= 0) return -1;
    if (quantile >= NVC_RC_TOTAL) return t->n - 1;
    b = quantile >> NVC_RC_LUT_SHIFT;
    lo = t->lut[b];
    hi = t->lut[b + 1];
    while (lo < hi) {  /* invariant: cdf[lo] <= q, and the answer is <= hi */
        int mid = (lo + hi + 1) >> 1;
        if (t->cdf[mid] <= quantile) lo = mid; else hi = mid - 1;
    }
    return lo;
}

/* The interval of `symbol`; prob = 0 (refused by encode/consume) if it is not in [0, n). */
static inline void nvc_rc_categorical_interval(const nvc_rc_categorical *t, int symbol, uint32_t *left, uint32_t *prob) {
    if (symbol < 0 || symbol >= t->n) {
        *left = 0;
        *prob = 0;
        return;
    }
    *left = t->cdf[symbol];
    *prob = t->cdf[symbol + 1] - t->cdf[symbol];
}

/* ------------------------------------------------------------------------- uniform */
/* constriction's UniformModel<u32, 24>(size), 2 <= size <= 2^24: every symbol but the last
 * gets floor(2^24 / size), the last one the rest. (constriction refuses size 1; so must the
 * caller: a symbol with 0 extra bits is not coded at all.) */
static inline void nvc_rc_uniform_interval(uint32_t size, uint32_t symbol, uint32_t *left, uint32_t *prob) {
    uint32_t per_bin, last;
    if (size < 2 || size > NVC_RC_MAX_UNIFORM_SIZE || symbol >= size) {
        *left = 0;   /* refused by encode/consume, as constriction refuses it */
        *prob = 0;
        return;
    }
    per_bin = NVC_RC_TOTAL / size;
    last = size - 1u;
    *left = symbol * per_bin;
    *prob = symbol < last ? per_bin : NVC_RC_TOTAL - last * per_bin;
}

/* The symbol whose interval holds `quantile` (size outside [2, 2^24]: 0, and the interval
 * of nvc_rc_uniform_interval is then empty, so consume reports the error). */
static inline uint32_t nvc_rc_uniform_find(uint32_t size, uint32_t quantile) {
    uint32_t per_bin, guess;
    if (size < 2 || size > NVC_RC_MAX_UNIFORM_SIZE) return 0;
    per_bin = NVC_RC_TOTAL / size;
    guess = quantile / per_bin;
    return guess < size - 1u ? guess : size - 1u;
}

#endif /* NVC_RANGECODER_H */
