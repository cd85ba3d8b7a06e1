"""The C range coder (codec/native/rangecoder.h) is a bit-exact twin of constriction 0.5.0.

constriction (`stream.queue.RangeEncoder/RangeDecoder`, `model.Categorical(p, perfect=False)`,
`model.Uniform()`) is the reference: it wrote every `.nvc` payload so far. Checked here, through
the test binding `codec._rangecoder`:

* `codec.coder_model.quantized_cdf` gives exactly constriction's integer model (read back from
  constriction's own output: one symbol on a fresh encoder writes the word left * 2^8), and
  refuses exactly the inputs constriction refuses;
* random symbol sequences (random tables with zero and tiny entries, the shipped tables,
  per-volume tables from random counts, uniform sizes 2^1..2^13 and others) give byte-identical
  payloads from both coders; each decodes the other's output; every encoder branch is reached
  (long runs of held-back words, with and without a carry);
* on arbitrary bytes the C decoder either refuses or returns what constriction returns;
  truncated payloads are refused (never a crash, never an out-of-bounds read);
* a slab payload of a frozen conformance file is reproduced word for word from the engine's
  symbols, and decoded back.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

import constriction
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from codec import entropy, registry
from codec.coder_model import PRECISION, TOTAL, quantized_cdf, quantized_probabilities, table_probabilities, uniform_interval

try:
    from codec import _rangecoder as rc
except ImportError:  # pragma: no cover - a broken build must not pass silently
    pytest.fail(
        "codec._rangecoder is not built: run `pip install -e .` or `python setup.py build_ext --inplace`",
        pytrace=False,
    )

Categorical = constriction.stream.model.Categorical
UNIFORM = constriction.stream.model.Uniform()
MAX_N = rc.MAX_SYMBOLS
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --------------------------------------------------------------------------- helpers
def constriction_cdf(model, n: int) -> np.ndarray:
    """constriction's left cumulatives of `model` (-1 where it refuses the symbol), and 2^24.

    Encoding one symbol on a fresh encoder (lower 0, range 2^64 - 1) sets
    lower = left * (2^40 - 1); the flush writes the top word of lower + 2^32 - 1, which is
    exactly left * 2^8.
    """
    out = []
    for s in range(n):
        enc = constriction.stream.queue.RangeEncoder()
        try:
            enc.encode(np.array([s], np.int32), model)
        except KeyError:  # "zero probability"
            out.append(-1)
            continue
        word = int(enc.get_compressed()[0])
        assert word % 256 == 0
        out.append(word // 256)
    return np.array(out + [TOTAL], dtype=np.int64)


def runs(keys: np.ndarray):
    """(start, end) of runs of equal consecutive keys."""
    if len(keys) == 0:
        return
    cut = np.flatnonzero(keys[1:] != keys[:-1]) + 1
    bounds = np.concatenate([[0], cut, [len(keys)]])
    yield from zip(bounds[:-1].tolist(), bounds[1:].tolist())


def reference_encode(models: list, keys: np.ndarray, symbols: np.ndarray) -> bytes:
    """constriction's payload: key k >= 0 codes with models[k], k < 0 with Uniform(-k)."""
    enc = constriction.stream.queue.RangeEncoder()
    for a, b in runs(keys):
        if keys[a] >= 0:
            enc.encode(symbols[a:b].astype(np.int32), models[int(keys[a])])
        else:
            enc.encode(symbols[a:b].astype(np.int32), UNIFORM, (-keys[a:b]).astype(np.int32))
    return enc.get_compressed().astype("<u4").tobytes()


def reference_decode(models: list, keys: np.ndarray, payload: bytes) -> np.ndarray:
    dec = constriction.stream.queue.RangeDecoder(np.frombuffer(payload, "<u4").astype(np.uint32))
    out = np.empty(len(keys), np.int32)
    for a, b in runs(keys):
        if keys[a] >= 0:
            out[a:b] = dec.decode(models[int(keys[a])], b - a)
        else:
            out[a:b] = dec.decode(UNIFORM, (-keys[a:b]).astype(np.int32))
    return out


def c_decode(tables: np.ndarray, lengths: np.ndarray, keys: np.ndarray, payload: bytes) -> np.ndarray:
    return np.frombuffer(rc.decode(tables, lengths, keys.astype(np.int32), payload), np.int32)


def pack_tables(prob_rows: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Ragged integer tables -> (T, max n) uint32 and their lengths, for the binding."""
    width = max(len(r) for r in prob_rows)
    tables = np.zeros((len(prob_rows), width), np.uint32)
    for i, r in enumerate(prob_rows):
        tables[i, : len(r)] = r
    return tables, np.array([len(r) for r in prob_rows], np.int32)


def sample_symbols(rng: np.random.Generator, probs: np.ndarray, count: int) -> np.ndarray:
    """Symbols drawn from integer probabilities, with some uniformly drawn (rare ones too)."""
    p = probs.astype(np.float64) / TOTAL
    out = rng.choice(len(p), size=count, p=p)
    rare = rng.random(count) < 0.1
    out[rare] = rng.integers(0, len(p), rare.sum())
    return out.astype(np.int32)


probability_entries = st.one_of(
    st.just(0.0),
    st.floats(1e-300, 1e-9),
    st.floats(0.0, 1.0),
    st.floats(1.0, 1e6),
)


# --------------------------------------------------------------------------- quantization
@FAST
@given(st.lists(probability_entries, min_size=1, max_size=MAX_N), st.booleans(), st.booleans())
def test_quantization_matches_constriction(values: list[float], single: bool, normalise: bool) -> None:
    p = np.array(values, np.float32 if single else np.float64)
    if normalise and p.sum() > 0:
        p = p / p.sum()
    try:
        model = Categorical(p, perfect=False)
    except ValueError:
        with pytest.raises(ValueError):
            quantized_cdf(p)
        return
    ours = quantized_cdf(p).astype(np.int64)
    theirs = constriction_cdf(model, len(p))
    probs = quantized_probabilities(p)
    assert ours[0] == 0 and ours[-1] == TOTAL and int(probs.sum()) == TOTAL
    refused = theirs[:-1] < 0
    assert np.all(probs[refused] == 0), "constriction refuses a symbol to which the twin gives probability"
    assert np.array_equal(ours[:-1][~refused], theirs[:-1][~refused])
    if not single:
        assert np.all(probs >= 1), "float64 input never gives a zero probability"


def test_quantization_edge_cases() -> None:
    # zero entries get one unit each (leaky), exactly as constriction does
    p = np.array([0.5, 0.0, 0.5])
    assert quantized_cdf(p).tolist() == constriction_cdf(Categorical(p, perfect=False), 3).tolist()
    assert quantized_probabilities(p)[1] == 1
    # float32 rounding can leave the last symbol with probability 0: constriction then refuses it
    p32 = np.array([0.8796512, 0.06421444, 0.0], np.float32)
    assert quantized_probabilities(p32).tolist() == [15635803, 1141413, 0]
    assert constriction_cdf(Categorical(p32, perfect=False), 3)[2] == -1
    with pytest.raises(ValueError):
        rc.encode(*pack_tables([quantized_probabilities(p32)]), np.zeros(1, np.int32), np.array([2], np.int32))
    for bad in ([1.0], [0.0, 0.0], [1e308, 1e308], [np.nan, 1.0], [1e-310, 1e-310]):
        with pytest.raises(ValueError):
            Categorical(np.array(bad), perfect=False)
        with pytest.raises(ValueError):
            quantized_cdf(np.array(bad))
    with pytest.raises(ValueError):  # constriction builds a broken model; the twin refuses
        quantized_cdf(np.array([0.5, -0.1, 0.6]))


def test_uniform_intervals() -> None:
    for size in [2, 3, 5, 1 << 13, (1 << 24) - 1, 1 << 24]:
        for s in sorted({0, 1, size // 2, size - 2, size - 1}):
            left, prob = uniform_interval(size, s)
            payload = rc.encode(np.zeros((0, 2), np.uint32), np.zeros(0, np.int32), np.array([-size], np.int32), np.array([s], np.int32))
            assert payload == reference_encode([], np.array([-size]), np.array([s]))
            assert int.from_bytes(payload[:4], "little") == ((left * ((1 << 40) - 1) + (1 << 32) - 1) >> 32)
            assert prob >= 1
    with pytest.raises(ValueError):  # constriction panics on Uniform(1); nothing to code
        rc.encode(np.zeros((0, 2), np.uint32), np.zeros(0, np.int32), np.array([-1], np.int32), np.array([0], np.int32))
    with pytest.raises(ValueError):
        uniform_interval(1, 0)


# --------------------------------------------------------------------------- coding
@FAST
@given(
    st.integers(0, 2**32 - 1),
    st.lists(st.integers(2, MAX_N), min_size=1, max_size=4),
    st.integers(0, 3000),
    st.floats(0.0, 1.0),
)
def test_random_sequences_are_byte_identical(seed: int, sizes: list[int], count: int, uniform_share: float) -> None:
    rng = np.random.default_rng(seed)
    floats, rows = [], []
    for n in sizes:
        p = rng.random(n) ** int(rng.integers(1, 12))
        p[rng.random(n) < 0.3] = 0.0
        p[rng.random(n) < 0.1] = 1e-12
        p[int(rng.integers(n))] += 1e-3
        floats.append(p)
        rows.append(quantized_probabilities(p))
    models = [Categorical(p, perfect=False) for p in floats]
    tables, lengths = pack_tables(rows)
    keys = rng.integers(0, len(sizes), count).astype(np.int32)
    # runs, like the engine's grouped steps
    keys = np.repeat(keys, rng.integers(1, 20, count))[:count]
    uniform = rng.random(count) < uniform_share
    bits = rng.integers(1, 14, count)
    odd = rng.random(count) < 0.05  # other sizes constriction supports
    usize = np.where(odd, rng.integers(2, 1 << 24, count), np.int64(1) << bits)
    keys = np.where(uniform, -usize, keys).astype(np.int32)
    symbols = np.zeros(count, np.int32)
    for k in range(len(sizes)):
        sel = keys == k
        symbols[sel] = sample_symbols(rng, rows[k], int(sel.sum()))
    symbols[uniform] = (rng.random(int(uniform.sum())) * usize[uniform]).astype(np.int32)

    ref = reference_encode(models, keys, symbols)
    ours = rc.encode(tables, lengths, keys, symbols)
    assert ours == ref
    assert np.array_equal(c_decode(tables, lengths, keys, ref), symbols)
    assert np.array_equal(reference_decode(models, keys, ours), symbols)


def steered_symbols(count: int, seed: int, size: int = 1 << 13) -> np.ndarray:
    """Uniform(size) symbols chosen to keep lower + range straddling 2^64 (held-back words).

    A shadow of the coder state (Python integers) picks, while the interval straddles, the
    symbol holding the wrap point (stay straddling), the one above it (resolve with a carry)
    or below it (resolve without). Only the choice of symbols depends on it.
    """
    rng = np.random.default_rng(seed)
    wrap = 1 << 64
    lower, width = 0, wrap - 1
    out = []
    for _ in range(count):
        scale = width >> PRECISION
        s = int(rng.integers(size))
        if lower + width >= wrap:
            at = ((wrap - lower) // scale) // (TOTAL // size)
            s = int(np.clip(at + rng.choice([0, 0, 0, 0, 1, -1]), 0, size - 1))
        left, prob = uniform_interval(size, s)
        lower = (lower + scale * left) % wrap
        width = scale * prob
        if width < 1 << 32:
            lower = (lower << 32) % wrap
            width <<= 32
        out.append(s)
    return np.array(out, np.int32)


@pytest.mark.parametrize("seed", range(6))
def test_held_back_words_and_carries(seed: int) -> None:
    size = 1 << 13
    symbols = steered_symbols(3000, seed, size)
    keys = np.full(len(symbols), -size, np.int32)
    empty = (np.zeros((0, 2), np.uint32), np.zeros(0, np.int32))
    ours, most_held, flushes, carries = rc.encode(*empty, keys, symbols, True)
    assert ours == reference_encode([], keys, symbols)
    assert np.array_equal(c_decode(*empty, keys, ours), symbols)
    # the branches constriction's encoder has: a run of several held-back words, resolved
    # with a carry (first word + 1, then zeros) and without (first word, then 0xFFFFFFFF)
    assert most_held >= 3 and carries >= 1 and flushes > carries


def test_empty_stream() -> None:
    empty = (np.zeros((0, 2), np.uint32), np.zeros(0, np.int32))
    none = np.zeros(0, np.int32)
    assert rc.encode(*empty, none, none) == b"" == reference_encode([], none, none)
    assert c_decode(*empty, none, b"").size == 0
    with pytest.raises(ValueError):  # constriction returns garbage here; nothing was coded
        c_decode(*empty, np.array([-2], np.int32), b"")


def test_one_zero_word_past_the_end_and_no_more() -> None:
    """A valid stream needs at most one word past its end (read as 0); a second is refused.

    Each sequence below has one renormalisation, so the encoder writes 1 + 1 or 1 + 2 words
    (the flush adds a 0 word when the final range is below 2^33) and the decoder reads 2 + 1.
    """
    empty = (np.zeros((0, 2), np.uint32), np.zeros(0, np.int32))
    cases = [
        ([1 << 13] * 3, [1, 2, 3]),
        ([1 << 13] * 3, [8191, 0, 4096]),
        ([1 << 13] * 3, [0, 0, 0]),
        ([1 << 24, 1 << 23, 83886], [14271106, 5343221, 42877]),  # final range in [2^32, 2^33)
        ([1 << 24, 1 << 23, 83886], [4526269, 2582260, 3437]),
    ]
    lengths = set()
    for sizes, symbols in cases:
        keys = -np.array(sizes, np.int32)
        symbols = np.array(symbols, np.int32)
        payload = rc.encode(*empty, keys, symbols)
        assert payload == reference_encode([], keys, symbols)
        lengths.add(len(payload))
        assert np.array_equal(c_decode(*empty, keys, payload), symbols)
        if len(payload) == 12:  # R + 2 words: the flush's 0 word is the one zero allowed
            assert payload.endswith(bytes(4))
            assert np.array_equal(c_decode(*empty, keys, payload[:-4]), symbols)
        with pytest.raises(ValueError):  # the first word alone: two words past the end
            c_decode(*empty, keys, payload[:4])
    assert lengths == {8, 12}


def shipped_tables() -> entropy.CodingTables:
    return registry.load_tables(registry.current_model("default").tables_file)


def emission(keys: np.ndarray, tokens: np.ndarray, extra: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The symbols of one step of one slab in coding order (docs/codec.md, bit-exact payload, 7).

    Tokens stably sorted by table key, then the extra bits of the voxels that have them, in
    step order, each with Uniform(2^nbits): key -(2^nbits).
    """
    order = np.argsort(keys, kind="stable")
    nbits = entropy.token_extra_bits(tokens)
    has = nbits > 0
    sym_keys = np.concatenate([keys[order], -(np.int64(1) << nbits[has])]).astype(np.int32)
    symbols = np.concatenate([tokens[order], extra[has]]).astype(np.int32)
    return sym_keys, symbols


class TwinTables:
    """The binding's view of a CodingTables/AdaptiveTables: only the keys that have a model."""

    def __init__(self, tables) -> None:
        probs = table_probabilities(tables)
        self.used = np.flatnonzero(probs.sum(axis=1) > 0)
        self.remap = np.full(entropy.N_KEYS, -1, np.int64)
        self.remap[self.used] = np.arange(len(self.used))
        self.tables = np.ascontiguousarray(probs[self.used])
        self.lengths = np.full(len(self.used), entropy.N_TOKENS, np.int32)

    def keys(self, sym_keys: np.ndarray) -> np.ndarray:
        return np.where(sym_keys >= 0, self.remap[np.maximum(sym_keys, 0)], sym_keys).astype(np.int32)


def random_steps(rng: np.random.Generator, tables, key_pool: np.ndarray, n_steps: int):
    """Steps of (keys, tokens, extra) with tokens drawn from each key's own table."""
    probs = table_probabilities(tables)
    for _ in range(n_steps):
        m = int(rng.integers(1, 400))
        keys = rng.choice(key_pool, m).astype(np.int32)
        tokens = np.empty(m, np.int32)
        for k in np.unique(keys):
            sel = keys == k
            tokens[sel] = sample_symbols(rng, probs[k], int(sel.sum()))
        nbits = entropy.token_extra_bits(tokens)
        extra = (rng.random(m) * (np.int64(1) << nbits)).astype(np.int32)
        yield keys, tokens, extra


def check_engine_tables(tables, key_pool: np.ndarray, seed: int) -> None:
    """entropy.encode_step with constriction vs the C coder on the emission order."""
    rng = np.random.default_rng(seed)
    twin = TwinTables(tables)
    enc = constriction.stream.queue.RangeEncoder()
    all_keys, all_symbols, steps = [], [], []
    for keys, tokens, extra in random_steps(rng, tables, key_pool, 12):
        entropy.encode_step(enc, tables, keys, tokens, entropy.token_extra_bits(tokens), extra)
        k, s = emission(keys, tokens, extra)
        all_keys.append(twin.keys(k))
        all_symbols.append(s)
        steps.append((keys, tokens, extra))
    ref = enc.get_compressed().astype("<u4").tobytes()
    keys_c, symbols_c = np.concatenate(all_keys), np.concatenate(all_symbols)
    ours = rc.encode(twin.tables, twin.lengths, keys_c, symbols_c)
    assert ours == ref
    assert np.array_equal(c_decode(twin.tables, twin.lengths, keys_c, ref), symbols_c)
    # constriction decodes the C coder's payload with the engine's own decode_step
    dec = constriction.stream.queue.RangeDecoder(np.frombuffer(ours, "<u4").astype(np.uint32))
    for keys, tokens, extra in steps:
        t, e = entropy.decode_step(dec, tables, keys)
        assert np.array_equal(t, tokens) and np.array_equal(e, extra)


@settings(max_examples=8, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_shipped_tables_are_byte_identical(seed: int) -> None:
    check_engine_tables(shipped_tables(), np.arange(entropy.N_KEYS), seed)


@settings(max_examples=8, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 60))
def test_volume_tables_are_byte_identical(seed: int, n_keys: int) -> None:
    rng = np.random.default_rng(seed)
    counts = np.zeros((entropy.N_KEYS, entropy.N_TOKENS), np.int64)
    keys = rng.choice(entropy.N_KEYS, n_keys, replace=False)
    for k in keys:
        # heavy-tailed counts: many tokens never seen (code 0), a few seen millions of times
        counts[k] = (rng.pareto(0.7, entropy.N_TOKENS) * (rng.random(entropy.N_TOKENS) < 0.4)).astype(np.int64)
        counts[k, rng.integers(entropy.N_TOKENS)] += 1 + int(rng.integers(0, 5_000_000))
    tables = entropy.AdaptiveTables.from_counts(counts)
    check_engine_tables(tables, keys, seed)


# --------------------------------------------------------------------------- hostile input
def random_model_set(rng: np.random.Generator):
    floats = [rng.random(int(rng.integers(2, MAX_N))) ** 3 for _ in range(3)]
    models = [Categorical(p, perfect=False) for p in floats]
    return models, *pack_tables([quantized_probabilities(p) for p in floats])


@FAST
@given(st.integers(0, 2**32 - 1), st.binary(max_size=400), st.integers(0, 500))
def test_arbitrary_bytes_decode_like_constriction_or_are_refused(seed: int, blob: bytes, count: int) -> None:
    rng = np.random.default_rng(seed)
    models, tables, lengths = random_model_set(rng)
    payload = blob[: len(blob) - len(blob) % 4]
    keys = np.where(rng.random(count) < 0.3, -(np.int64(1) << rng.integers(1, 14, count)), rng.integers(0, 3, count)).astype(np.int32)
    try:
        ours = c_decode(tables, lengths, keys, payload)
    except ValueError:
        ours = None
    try:
        theirs = reference_decode(models, keys, payload)
    except Exception:  # constriction's InvalidData
        theirs = None
    if theirs is None:
        assert ours is None, "constriction refuses data the C decoder accepted"
    if ours is not None:
        assert np.array_equal(ours, theirs)


@FAST
@given(st.integers(0, 2**32 - 1), st.integers(1, 2000), st.integers(1, 64), st.integers(0, 2**31))
def test_truncated_or_corrupted_payloads_are_refused_or_differ(seed: int, count: int, cut: int, flip: int) -> None:
    rng = np.random.default_rng(seed)
    models, tables, lengths = random_model_set(rng)
    keys = rng.integers(0, 3, count).astype(np.int32)
    symbols = np.concatenate([sample_symbols(rng, tables[k, : lengths[k]], 1) for k in keys])
    payload = rc.encode(tables, lengths, keys, symbols)
    words = len(payload) // 4
    # a payload shortened by two or more words can never decode to the coded symbols
    short = payload[: 4 * max(0, words - 1 - cut)]
    if words - len(short) // 4 >= 2:
        try:
            got = c_decode(tables, lengths, keys, short)
        except ValueError:
            got = None
        assert got is None or not np.array_equal(got, symbols)
    # one flipped bit: refused, or some symbols (never a crash); the twin agrees where it decodes
    bad = bytearray(payload)
    bad[flip % len(bad)] ^= 1 << (flip % 8)
    try:
        got = c_decode(tables, lengths, keys, bytes(bad))
    except ValueError:
        return
    assert np.array_equal(got, reference_decode(models, keys, bytes(bad)))


def test_invalid_quantile_is_refused_like_constriction() -> None:
    p = np.array([0.5, 0.5])
    tables, lengths = pack_tables([quantized_probabilities(p)])
    ff = b"\xff" * 8  # point 2^64 - 1: quantile 2^24, constriction's InvalidData
    with pytest.raises(ValueError):
        c_decode(tables, lengths, np.zeros(1, np.int32), ff)
    with pytest.raises(Exception):
        reference_decode([Categorical(p, perfect=False)], np.zeros(1, np.int32), ff)
    with pytest.raises(ValueError):
        rc.decode(tables, lengths, np.zeros(1, np.int32), b"\x00" * 5)  # not whole words
    with pytest.raises(ValueError):
        rc.decode(tables, lengths, np.array([7], np.int32), b"\x00" * 8)  # no such table


# --------------------------------------------------------------------------- real files
CONFORMANCE = Path(__file__).resolve().parent / "conformance"
VECTORS = json.loads((CONFORMANCE / "vectors.json").read_text())["vectors"]


def _vectors():
    spec = importlib.util.spec_from_file_location("nvc_make_vectors", CONFORMANCE / "make_vectors.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ["default_i16_ct", "default_odd_4d", "default_u16_structured"])
def test_conformance_payloads_are_reproduced_word_for_word(name: str, monkeypatch) -> None:
    """Re-run the engine's symbol emission through the C coder: the frozen payloads come out.

    `engine.encode_step` is wrapped to record each call's (encoder, tables, keys, tokens,
    extra); the C coder then codes the same symbols per slab stream, in the documented order.
    The C decoder decodes the frozen payloads back to the recorded tokens and extra bits.
    """
    import codec
    from codec import engine
    from codec import format as fmt

    gen = _vectors()
    frozen = (CONFORMANCE / "vectors" / f"{name}.nvc").read_bytes()
    calls: list = []
    original = engine.encode_step

    def recording(encoder, tables, keys, tokens, nbits, extra):
        calls.append((encoder, tables, keys.copy(), tokens.copy(), extra.copy()))
        return original(encoder, tables, keys, tokens, nbits, extra)

    monkeypatch.setattr(engine, "encode_step", recording)
    monkeypatch.setenv("NVC_NATIVE", "0")  # the reference path is the one that calls encode_step
    today = gen.encode_vector(name)
    assert hashlib.sha256(today).hexdigest() == VECTORS[name]["file_sha256"], "the encoder drifted (see test_conformance)"
    container, src = fmt.parse(frozen)
    payloads = [bytes(fmt.read_slab(src, slab)) for volume in container.volumes for slab in volume.slabs]

    streams: dict[int, list] = {}  # one per constriction encoder, in order of first use = slab order
    for encoder, tables, keys, tokens, extra in calls:
        streams.setdefault(id(encoder), []).append((tables, keys, tokens, extra))
    assert len(streams) == len(payloads)
    for payload, steps in zip(payloads, streams.values()):
        twin = TwinTables(steps[0][0])
        parts = [emission(keys, tokens, extra) for _, keys, tokens, extra in steps]
        sym_keys = twin.keys(np.concatenate([k for k, _ in parts]))
        symbols = np.concatenate([s for _, s in parts])
        assert rc.encode(twin.tables, twin.lengths, sym_keys, symbols) == payload
        assert np.array_equal(c_decode(twin.tables, twin.lengths, sym_keys, payload), symbols)
    assert codec.decode(frozen).shape == tuple(VECTORS[name]["shape"])

