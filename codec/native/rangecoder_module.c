/*
 * codec._rangecoder: a small Python binding of rangecoder.h, so that the C range coder is
 * tested from Python against constriction (tests/codec/test_rangecoder.py). Not used by the
 * codec itself. Python C API and the buffer protocol only (no numpy C API).
 *
 *   encode(tables, lengths, keys, symbols, stats=False) -> bytes
 *       (stats=True: (bytes, most words held back at once, flushes of held-back words,
 *       flushes with a carry), to show the tests reach every branch of the encoder)
 *   decode(tables, lengths, keys, payload) -> bytes
 *
 * tables:  C-contiguous 4-byte unsigned buffer of shape (T, N): per table the integer
 *          probabilities of codec.coder_model.quantized_probabilities (row t uses its first
 *          lengths[t] entries);
 * lengths: 4-byte integer buffer of T symbol counts;
 * keys:    4-byte integer buffer, one per symbol: k >= 0 codes the symbol with table k,
 *          k < 0 with constriction's Uniform(-k);
 * symbols: 4-byte integer buffer (encode); decode returns them as int32 bytes (native order);
 * payload: the coder's words as little-endian u32 bytes (what encode returns, what a .nvc
 *          slab holds).
 * Errors: ValueError (bad arguments, an impossible symbol, corrupt or truncated payload),
 * MemoryError.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "rangecoder.h"

typedef struct {
    Py_buffer tables, lengths, keys;
    int have_tables, have_lengths, have_keys;
    nvc_rc_categorical *cats;
    Py_ssize_t n_tables;
} coder_args;

static void release_args(coder_args *a) {
    if (a->have_tables) PyBuffer_Release(&a->tables);
    if (a->have_lengths) PyBuffer_Release(&a->lengths);
    if (a->have_keys) PyBuffer_Release(&a->keys);
    PyMem_Free(a->cats);
    a->cats = NULL;
}

static int get_buffer4(PyObject *obj, Py_buffer *view, int ndim, const char *name) {
    if (PyObject_GetBuffer(obj, view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | PyBUF_ND) < 0) return -1;
    if (view->itemsize != 4 || view->ndim != ndim) {
        PyErr_Format(PyExc_ValueError, "%s must be a C-contiguous %d-D array of 4-byte integers", name, ndim);
        PyBuffer_Release(view);
        return -1;
    }
    if (view->format && strchr("iIlL", view->format[0] == '<' || view->format[0] == '=' ? view->format[1] : view->format[0]) == NULL) {
        PyErr_Format(PyExc_ValueError, "%s must hold 4-byte integers (format %s)", name, view->format);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

/* Parse tables, lengths, keys; build the categorical tables. */
static int parse_common(coder_args *a, PyObject *tables, PyObject *lengths, PyObject *keys) {
    Py_ssize_t t, width;
    const uint32_t *probs;
    const int32_t *lens;
    memset(a, 0, sizeof(*a));
    if (get_buffer4(tables, &a->tables, 2, "tables") < 0) return -1;
    a->have_tables = 1;
    if (get_buffer4(lengths, &a->lengths, 1, "lengths") < 0) return -1;
    a->have_lengths = 1;
    if (get_buffer4(keys, &a->keys, 1, "keys") < 0) return -1;
    a->have_keys = 1;
    a->n_tables = a->tables.shape[0];
    width = a->tables.shape[1];
    if (a->lengths.shape[0] != a->n_tables) {
        PyErr_SetString(PyExc_ValueError, "lengths must have one entry per table");
        return -1;
    }
    a->cats = (nvc_rc_categorical *)PyMem_Malloc(sizeof(nvc_rc_categorical) * (size_t)(a->n_tables ? a->n_tables : 1));
    if (a->cats == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    probs = (const uint32_t *)a->tables.buf;
    lens = (const int32_t *)a->lengths.buf;
    for (t = 0; t < a->n_tables; t++) {
        if (lens[t] < 2 || lens[t] > width || lens[t] > NVC_RC_MAX_SYMBOLS ||
            nvc_rc_categorical_check_init(&a->cats[t], probs + t * width, lens[t]) != 0) {
            PyErr_Format(PyExc_ValueError, "table %zd: need 2..%d probabilities summing to 2^24", t, NVC_RC_MAX_SYMBOLS);
            return -1;
        }
    }
    return 0;
}

static int symbol_interval(const coder_args *a, int32_t key, int64_t symbol, uint32_t *left, uint32_t *prob) {
    if (key >= 0) {
        if (key >= a->n_tables) return -1;
        if (symbol < 0 || symbol >= a->cats[key].n) return -1;
        nvc_rc_categorical_interval(&a->cats[key], (int)symbol, left, prob);
    } else {
        uint32_t size = (uint32_t)(-(int64_t)key);
        if (symbol < 0 || symbol >= (int64_t)size) return -1;
        nvc_rc_uniform_interval(size, (uint32_t)symbol, left, prob);
    }
    return *prob ? 0 : -1;
}

static PyObject *rc_encode(PyObject *self, PyObject *args) {
    PyObject *tables, *lengths, *keys, *symbols, *out = NULL;
    coder_args a;
    Py_buffer sym;
    nvc_rc_encoder enc;
    Py_ssize_t i, n;
    int failed = 0, bad_symbol = 0, want_stats = 0;
    size_t max_inverted = 0, flushes = 0, carries = 0;
    (void)self;
    if (!PyArg_ParseTuple(args, "OOOO|p:encode", &tables, &lengths, &keys, &symbols, &want_stats)) return NULL;
    if (parse_common(&a, tables, lengths, keys) < 0) {
        release_args(&a);
        return NULL;
    }
    if (get_buffer4(symbols, &sym, 1, "symbols") < 0) {
        release_args(&a);
        return NULL;
    }
    n = a.keys.shape[0];
    if (sym.shape[0] != n) {
        PyErr_SetString(PyExc_ValueError, "keys and symbols differ in length");
        goto done_sym;
    }
    if (nvc_rc_encoder_init(&enc) != 0) {
        PyErr_NoMemory();
        goto done_sym;
    }
    Py_BEGIN_ALLOW_THREADS
    {
        const int32_t *k = (const int32_t *)a.keys.buf;
        const int32_t *s = (const int32_t *)sym.buf;
        for (i = 0; i <= n; i++) {
            uint32_t left, prob;
            size_t held = enc.num_inverted, len0 = enc.len;
            uint32_t first = enc.first_inverted_word;
            if (i == n) {  /* flush */
                if (nvc_rc_encoder_finish(&enc) != 0) failed = 1;
            } else if (symbol_interval(&a, k[i], s[i], &left, &prob) != 0) {
                bad_symbol = 1;
            } else if (nvc_rc_encode(&enc, left, prob) != 0) {
                failed = 1;
            }
            if (failed || bad_symbol) break;
            if (enc.num_inverted > max_inverted) max_inverted = enc.num_inverted;
            if (held && enc.len > len0) {  /* held-back words were written */
                flushes++;
                if (enc.words[len0] != first) carries++;
            }
        }
    }
    Py_END_ALLOW_THREADS
    if (bad_symbol) {
        PyErr_Format(PyExc_ValueError, "symbol %zd cannot be coded with key %d (outside the model or zero probability)",
                     i, (int)((const int32_t *)a.keys.buf)[i]);
    } else if (failed) {
        PyErr_NoMemory();
    } else {
        out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(enc.len * 4));
        if (out) {
            unsigned char *p = (unsigned char *)PyBytes_AS_STRING(out);
            size_t w;
            for (w = 0; w < enc.len; w++) nvc_rc_store_le32(p + 4 * w, enc.words[w]);
        }
        if (out && want_stats) {
            PyObject *tuple = Py_BuildValue("(Onnn)", out, (Py_ssize_t)max_inverted, (Py_ssize_t)flushes, (Py_ssize_t)carries);
            Py_DECREF(out);
            out = tuple;
        }
    }
    nvc_rc_encoder_free(&enc);
done_sym:
    PyBuffer_Release(&sym);
    release_args(&a);
    return out;
}

static PyObject *rc_decode(PyObject *self, PyObject *args) {
    PyObject *tables, *lengths, *keys, *out = NULL;
    coder_args a;
    Py_buffer payload;
    nvc_rc_decoder dec;
    uint32_t *words = NULL;
    int32_t *symbols;
    Py_ssize_t i = 0, n, n_words;
    int status = 0; /* 0 ok, 1 corrupt, 2 bad key */
    (void)self;
    if (!PyArg_ParseTuple(args, "OOOy*:decode", &tables, &lengths, &keys, &payload)) return NULL;
    if (parse_common(&a, tables, lengths, keys) < 0) {
        release_args(&a);
        PyBuffer_Release(&payload);
        return NULL;
    }
    if (payload.len % 4) {
        PyErr_SetString(PyExc_ValueError, "payload length is not a multiple of 4 bytes");
        goto done;
    }
    n = a.keys.shape[0];
    n_words = payload.len / 4;
    words = (uint32_t *)PyMem_Malloc((size_t)(n_words ? n_words : 1) * sizeof(uint32_t));
    out = PyBytes_FromStringAndSize(NULL, n * 4);
    if (words == NULL || out == NULL) {
        Py_CLEAR(out);
        PyErr_NoMemory();
        goto done;
    }
    for (i = 0; i < n_words; i++) words[i] = nvc_rc_load_le32((const unsigned char *)payload.buf + 4 * i);
    symbols = (int32_t *)PyBytes_AS_STRING(out);
    Py_BEGIN_ALLOW_THREADS
    {
        const int32_t *k = (const int32_t *)a.keys.buf;
        nvc_rc_decoder_init(&dec, words, (size_t)n_words);
        for (i = 0; i < n; i++) {
            uint32_t q = nvc_rc_decode_quantile(&dec), left = 0, prob = 0, s;
            if (q == NVC_RC_INVALID_QUANTILE) {
                status = 1;
                break;
            }
            if (k[i] >= 0) {
                if (k[i] >= a.n_tables) {
                    status = 2;
                    break;
                }
                s = (uint32_t)nvc_rc_categorical_find(&a.cats[k[i]], q);
                nvc_rc_categorical_interval(&a.cats[k[i]], (int)s, &left, &prob);
            } else {
                uint32_t size = (uint32_t)(-(int64_t)k[i]);
                if (size < 2 || size > NVC_RC_MAX_UNIFORM_SIZE) {
                    status = 2;
                    break;
                }
                s = nvc_rc_uniform_find(size, q);
                nvc_rc_uniform_interval(size, s, &left, &prob);
            }
            if (nvc_rc_decode_consume(&dec, left, prob) != 0) {
                status = 1;
                break;
            }
            symbols[i] = (int32_t)s;
        }
    }
    Py_END_ALLOW_THREADS
    if (status) {
        Py_CLEAR(out);
        if (status == 2)
            PyErr_Format(PyExc_ValueError, "symbol %zd: key %d selects no model", i, (int)((const int32_t *)a.keys.buf)[i]);
        else
            PyErr_Format(PyExc_ValueError, "corrupt or truncated payload (at symbol %zd)", i);
    }
done:
    PyMem_Free(words);
    PyBuffer_Release(&payload);
    release_args(&a);
    return out;
}

static PyMethodDef methods[] = {
    {"encode", rc_encode, METH_VARARGS, "encode(tables, lengths, keys, symbols, stats=False) -> payload bytes (little-endian u32 words)"},
    {"decode", rc_decode, METH_VARARGS, "decode(tables, lengths, keys, payload) -> int32 symbols as bytes"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_rangecoder",
    "Test binding of codec/native/rangecoder.h (the C twin of constriction's range coder).", -1, methods,
};

PyMODINIT_FUNC PyInit__rangecoder(void) {
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    if (PyModule_AddIntConstant(m, "PRECISION", NVC_RC_PRECISION) < 0 ||
        PyModule_AddIntConstant(m, "MAX_SYMBOLS", NVC_RC_MAX_SYMBOLS) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
