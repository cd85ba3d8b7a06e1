"""Residual tokens, integer coding tables and the constriction range coder.

A residual r = x - mu (mu the network's integer mean) is split into a *token* and raw
*extra bits*, as in JPEG XL's hybrid integers: |r| < 16 has a token of its own; larger
magnitudes share a token per (exponent, two leading mantissa bits, sign) and send the
remaining low bits uniformly. The token alphabet stays at 127 symbols for any 16-bit data.

Tokens are coded with one of `N_SIDES * N_CLASSES` fixed categorical tables, chosen per
voxel by the network's integer scale class and by whether mu sits on the volume's minimum
or maximum (then the impossible side of the distribution is folded onto the end value).
The tables are integer frequencies stored in `codec/models/tables-*.npz` and turned into
constriction models by pure IEEE arithmetic (no libm at coding time), so every machine
builds identical models. `build_tables` (run once, by `nvc train`) derives them from
discretised Laplace distributions with scale BASE_SCALE * 2^(k/4).
"""

from __future__ import annotations

import hashlib
import io
import zlib
from functools import cached_property
from pathlib import Path

import constriction
import numpy as np

N_DIRECT = 15  # |r| <= 15 has its own token
MANTISSA_BITS = 2
MAX_EXPONENT = 15  # |r| <= 65535
N_TOKENS = 2 * N_DIRECT + 1 + 2 * (1 << MANTISSA_BITS) * (MAX_EXPONENT - 3)

N_CLASSES = 72
N_SIDES = 3  # 0: interior, 1: mu == vmin (r >= 0), 2: mu == vmax (r <= 0)
#: Per-volume tables are also split by the mean's level in the volume's range (eighths): noise
#: differs between air, tissue and bone. Shipped tables are the same for every level.
N_LEVELS = 8
N_SHAPES = N_SIDES * N_CLASSES  # distinct shipped tables
N_KEYS = N_LEVELS * N_SHAPES  # key = level * N_SHAPES + side * N_CLASSES + class
BASE_SCALE = 0.1
#: Frequencies of each table sum to about 2^FREQ_BITS; the largest is capped so that a
#: coded token costs at least -log2(1 - 2^-12) bits (bounds the voxels a payload can hold).
FREQ_BITS = 20
MIN_COST_GUARD = 1 << 12


def class_scale(k: np.ndarray | int) -> np.ndarray:
    """Laplace scale of coding class k (used for table generation and training only)."""
    return BASE_SCALE * np.exp2(np.asarray(k, dtype=np.float64) / 4.0)


def tokenize(r: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split residuals into (token, number of extra bits, extra bits value)."""
    r = r.astype(np.int64)
    a = np.abs(r)
    small = a <= N_DIRECT
    # floor(log2(a)) exactly: frexp is bit manipulation, no rounding
    _, exp = np.frexp(np.maximum(a, 1).astype(np.float64))
    e = exp.astype(np.int64) - 1
    nb = np.where(small, 0, e - MANTISSA_BITS)
    m = np.where(small, 0, (a >> np.maximum(nb, 0)) & ((1 << MANTISSA_BITS) - 1))
    big_token = 2 * N_DIRECT + 1 + 2 * ((e - 4) * (1 << MANTISSA_BITS) + m) + (r < 0)
    token = np.where(small, r + N_DIRECT, big_token)
    extra = np.where(small, 0, a & ((np.int64(1) << nb) - 1))
    return token.astype(np.int32), nb.astype(np.int32), extra.astype(np.int32)


def token_extra_bits(token: np.ndarray) -> np.ndarray:
    """Number of raw bits that follow each token."""
    k = token.astype(np.int64) - (2 * N_DIRECT + 1)
    e = (k >> 1) // (1 << MANTISSA_BITS) + 4
    return np.where(k < 0, 0, e - MANTISSA_BITS).astype(np.int32)


def detokenize(token: np.ndarray, extra: np.ndarray) -> np.ndarray:
    """Inverse of `tokenize`."""
    token = token.astype(np.int64)
    k = token - (2 * N_DIRECT + 1)
    small = k < 0
    kk = np.maximum(k, 0)
    neg = kk & 1
    kk = kk >> 1
    e = kk // (1 << MANTISSA_BITS) + 4
    m = kk % (1 << MANTISSA_BITS)
    nb = e - MANTISSA_BITS
    a = (((1 << MANTISSA_BITS) + m) << nb) + extra.astype(np.int64)
    return np.where(small, token - N_DIRECT, np.where(neg == 1, -a, a))


def _token_ranges() -> tuple[np.ndarray, np.ndarray]:
    """Inclusive residual range [lo, hi] covered by each token."""
    lo = np.empty(N_TOKENS, dtype=np.int64)
    hi = np.empty(N_TOKENS, dtype=np.int64)
    for t in range(N_TOKENS):
        if t <= 2 * N_DIRECT:
            lo[t] = hi[t] = t - N_DIRECT
            continue
        k = t - (2 * N_DIRECT + 1)
        neg, k = k & 1, k >> 1
        e, m = k // (1 << MANTISSA_BITS) + 4, k % (1 << MANTISSA_BITS)
        a0 = ((1 << MANTISSA_BITS) + m) << (e - MANTISSA_BITS)
        a1 = a0 + (1 << (e - MANTISSA_BITS)) - 1
        lo[t], hi[t] = (-a1, -a0) if neg else (a0, a1)
    return lo, hi


def build_tables() -> np.ndarray:
    """Integer token frequencies, shape (N_SIDES, N_CLASSES, N_TOKENS), from discretised Laplace."""
    lo, hi = _token_ranges()
    total = 1 << FREQ_BITS
    out = np.zeros((N_SIDES, N_CLASSES, N_TOKENS), dtype=np.int64)

    def cdf(x: np.ndarray, b: float) -> np.ndarray:
        return np.where(x < 0, 0.5 * np.exp(np.minimum(x, 0) / b), 1 - 0.5 * np.exp(-np.maximum(x, 0) / b))

    for k in range(N_CLASSES):
        b = float(class_scale(k))
        p = cdf(hi + 0.5, b) - cdf(lo - 0.5, b)
        for side in range(N_SIDES):
            q = p.copy()
            if side == 1:  # r >= 0 only: all mass of r <= 0 on r = 0
                q[lo < 0] = 0
                q[N_DIRECT] = cdf(np.asarray(0.5), b)
            elif side == 2:
                q[hi > 0] = 0
                q[N_DIRECT] = 1 - cdf(np.asarray(-0.5), b)
            allowed = np.ones(N_TOKENS, bool)
            if side == 1:
                allowed = lo >= 0
            elif side == 2:
                allowed = hi <= 0
            f = np.where(allowed, np.maximum(1, np.round(q / q.sum() * total)), 0).astype(np.int64)
            cap = total - total // MIN_COST_GUARD
            top = int(np.argmax(f))
            if f[top] > cap:
                f[top] = cap
            out[side, k] = f
    return out


def tables_digest(freqs: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(freqs, dtype="<i8").tobytes()).hexdigest()


def save_tables(freqs: np.ndarray, directory: Path) -> Path:
    digest = tables_digest(freqs)[:16]
    path = directory / f"tables-{digest}.npz"
    buf = io.BytesIO()
    np.savez_compressed(buf, freqs=freqs.astype(np.uint32))
    path.write_bytes(buf.getvalue())
    return path


class CodingTables:
    """Constriction models for every (side, class), built once from integer frequencies."""

    def __init__(self, freqs: np.ndarray) -> None:
        if freqs.shape != (N_SIDES, N_CLASSES, N_TOKENS):
            raise ValueError(f"coding tables have shape {freqs.shape}")
        self.freqs = freqs.astype(np.int64)
        self.digest = tables_digest(self.freqs)

    @classmethod
    def load(cls, path: Path) -> "CodingTables":
        with np.load(path) as z:
            return cls(z["freqs"])

    @cached_property
    def models(self) -> list:
        """Flat list indexed by table key (every level shares the shipped tables)."""
        out = []
        for side in range(N_SIDES):
            for k in range(N_CLASSES):
                f = self.freqs[side, k].astype(np.float64)
                out.append(constriction.stream.model.Categorical(f / f.sum(), perfect=False))
        return out * N_LEVELS

    @cached_property
    def cost_bits(self) -> np.ndarray:
        """(N_KEYS, N_TOKENS) -log2 probability of each token (for rate estimates, not coding)."""
        f = self.freqs.astype(np.float64)
        with np.errstate(divide="ignore"):
            bits = -np.log2(np.maximum(f, 1) / f.sum(axis=-1, keepdims=True)).reshape(N_SHAPES, N_TOKENS)
        return np.tile(bits, (N_LEVELS, 1))


UNIFORM = constriction.stream.model.Uniform()


def group_bounds(sorted_keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start/end positions of runs of equal keys in a sorted array."""
    if len(sorted_keys) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    cut = np.flatnonzero(sorted_keys[1:] != sorted_keys[:-1]) + 1
    starts = np.concatenate([[0], cut])
    ends = np.concatenate([cut, [len(sorted_keys)]])
    return starts, ends


def encode_step(
    encoder: "constriction.stream.queue.RangeEncoder",
    tables: CodingTables,
    keys: np.ndarray,
    tokens: np.ndarray,
    nbits: np.ndarray,
    extra: np.ndarray,
) -> None:
    """Code one step's symbols of one slab: tokens grouped by table key, then extra bits."""
    order = np.argsort(keys, kind="stable")
    sk = keys[order]
    st = tokens[order]
    starts, ends = group_bounds(sk)
    models = tables.models
    for a, b in zip(starts.tolist(), ends.tolist()):
        encoder.encode(st[a:b], models[int(sk[a])])
    has = nbits > 0
    if has.any():
        encoder.encode(extra[has], UNIFORM, (np.int32(1) << nbits[has]).astype(np.int32))


def decode_step(
    decoder: "constriction.stream.queue.RangeDecoder",
    tables: CodingTables,
    keys: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of `encode_step`: returns (tokens, extra bits) in the step's voxel order."""
    order = np.argsort(keys, kind="stable")
    sk = keys[order]
    starts, ends = group_bounds(sk)
    models = tables.models
    tokens_sorted = np.empty(len(keys), dtype=np.int32)
    for a, b in zip(starts.tolist(), ends.tolist()):
        tokens_sorted[a:b] = decoder.decode(models[int(sk[a])], b - a)
    tokens = np.empty_like(tokens_sorted)
    tokens[order] = tokens_sorted
    nbits = token_extra_bits(tokens)
    extra = np.zeros(len(keys), dtype=np.int32)
    has = nbits > 0
    if has.any():
        extra[has] = decoder.decode(UNIFORM, (np.int32(1) << nbits[has]).astype(np.int32))
    return tokens, extra


# --------------------------------------------------------------------------- per-volume tables
#: 2^(i/4) * 2^16 for i = 0..3, rounded: adaptive frequencies are 2^(q/4) built from these
#: integers, never from libm.
_QUARTER_OCTAVE = (65536, 77936, 92682, 110218)
MAX_LOG_COUNT = 127


def quantise_counts(counts: np.ndarray) -> np.ndarray:
    """Counts -> uint8 codes q = ceil(4 * log2(count + 1)) (0 means the token never occurs)."""
    c = counts.astype(np.int64)
    q = np.zeros(c.shape, dtype=np.int64)
    # integer search against the exact thresholds of dequantise_codes
    levels = dequantise_codes(np.arange(1, MAX_LOG_COUNT + 1))
    q[c > 0] = np.searchsorted(levels, c[c > 0] + 1, side="left") + 1
    return np.minimum(q, MAX_LOG_COUNT).astype(np.uint8)


def dequantise_codes(q: np.ndarray) -> np.ndarray:
    """uint8 codes -> integer frequencies ~2^(q/4) (0 for code 0)."""
    q = np.asarray(q, dtype=np.int64)
    f = (np.asarray(_QUARTER_OCTAVE, dtype=np.int64)[q % 4] << (q // 4)) >> 16
    return np.where(q > 0, np.maximum(f, 1), 0)


class AdaptiveTables:
    """Token tables measured on the volume itself and stored in the file (only for used keys)."""

    def __init__(self, codes: dict[int, np.ndarray]) -> None:
        self.codes = codes
        models: list = [None] * N_KEYS
        for key, q in codes.items():
            f = dequantise_codes(q).astype(np.float64)
            models[key] = constriction.stream.model.Categorical(f / f.sum(), perfect=False)
        self.models = models

    @staticmethod
    def count(keys: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        """(N_KEYS, N_TOKENS) histogram of coded symbols."""
        flat = keys.astype(np.int64) * N_TOKENS + tokens
        return np.bincount(flat, minlength=N_KEYS * N_TOKENS).reshape(N_KEYS, N_TOKENS)

    @classmethod
    def from_counts(cls, counts: np.ndarray) -> "AdaptiveTables":
        return cls({int(k): quantise_counts(counts[k]) for k in np.flatnonzero(counts.sum(axis=1))})

    def cost_bits(self, counts: np.ndarray) -> float:
        """Code length of symbols with these counts under these tables (ideal, in bits)."""
        total = 0.0
        for key, q in self.codes.items():
            f = dequantise_codes(q).astype(np.float64)
            c = counts[key]
            used = c > 0
            total -= float((c[used] * np.log2(f[used] / f.sum())).sum())
        return total

    def to_bytes(self) -> bytes:
        bitmap = np.zeros(N_KEYS, dtype=bool)
        bitmap[list(self.codes)] = True
        rows = [self.codes[k] for k in sorted(self.codes)]
        body = np.packbits(bitmap).tobytes() + (np.stack(rows).tobytes() if rows else b"")
        return zlib.compress(body, 9)

    @classmethod
    def from_bytes(cls, blob: bytes) -> "AdaptiveTables":
        from codec.errors import FormatError

        n_keys = N_KEYS
        head = (n_keys + 7) // 8
        try:
            body = zlib.decompressobj().decompress(blob, head + n_keys * N_TOKENS + 1)
        except zlib.error as exc:
            raise FormatError(f"stored coding tables are corrupt: {exc}") from None
        if len(body) < head:
            raise FormatError("stored coding tables are truncated")
        bitmap = np.unpackbits(np.frombuffer(body[:head], np.uint8))[:n_keys].astype(bool)
        used = np.flatnonzero(bitmap)
        if len(body) != head + len(used) * N_TOKENS:
            raise FormatError("stored coding tables have the wrong size")
        rows = np.frombuffer(body[head:], np.uint8).reshape(len(used), N_TOKENS)
        if (rows > MAX_LOG_COUNT).any() or (len(used) and (rows.max(axis=1) == 0).any()):
            raise FormatError("stored coding tables hold invalid codes")
        return cls({int(k): rows[i].copy() for i, k in enumerate(used)})
