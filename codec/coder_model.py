"""Integer coding models of the range coder, bit-exact with constriction 0.5.0 (pure numpy).

The `.nvc` payload is a constriction queue range-coder stream (docs/codec.md, "Range coder
(bit-exact)"). Its categorical models are built by constriction from float probabilities;
this module computes the integers constriction derives from them, so that a second coder
(`codec/native/rangecoder.h`) codes exactly the same intervals without constriction and
without doing any float arithmetic itself.

`quantized_probabilities(p)` is the twin of `constriction.stream.model.Categorical(p,
perfect=False)` (Rust: `DefaultContiguousCategoricalEntropyModel::
from_floating_point_probabilities_fast(p, None)`, u32 probabilities, precision 24), for the
float64 arrays codec/entropy.py passes (float32 arrays are handled the same way in float32).
For n = len(p) symbols, all arithmetic in p's float type with IEEE round-to-nearest:

1. refuse (ValueError) unless 2 <= n < 2^24 - 1 and the sum is a normal positive number
   (as constriction does); also refused here: negative or non-finite entries (constriction
   would build a broken model from them; the codec never passes any);
2. `norm` = the left-to-right sequential sum p[0] + p[1] + ... + p[n-1] (not numpy's
   pairwise `sum`, which rounds differently);
3. `scale = float(2^24 - n) / norm` (one correctly rounded division);
4. `cum_i` = the sequential sum of p[0..i) (cum_0 = 0), and
   `cdf[i] = trunc(cum_i * scale) + i` for i = 0..n-1 (one rounded product, then truncation
   toward zero to an integer), `cdf[n] = 2^24`;
5. the probability of symbol s is `cdf[s + 1] - cdf[s]`: the "+ i" is one unit of leakage
   per symbol, so zero and tiny probabilities stay codable; the last symbol takes whatever
   the truncations left over. With float64 input every probability is >= 1 (the last
   product is at most 2^24 - n after rounding). With float32 input the last product can
   round up past 2^24 - n, and then constriction's last symbol has probability 0: it cannot
   be encoded (constriction raises KeyError) and is never decoded. This twin returns that 0
   as well; the C coder refuses to encode a zero-width interval the same way.

`uniform_interval(size, symbol)` is `constriction.stream.model.Uniform(size)`
(UniformModel<u32, 24>): each symbol but the last gets floor(2^24 / size), the last one the
remainder; sizes must be in [2, 2^24] (constriction panics on size 1).
"""

from __future__ import annotations

import numpy as np

PRECISION = 24
TOTAL = 1 << PRECISION


def quantized_cdf(probabilities: np.ndarray) -> np.ndarray:
    """The n + 1 cumulative integers (uint32, cdf[0] = 0, cdf[n] = 2^24) of the model."""
    p = np.asarray(probabilities)
    if p.dtype not in (np.float64, np.float32):
        raise ValueError(f"probabilities must be float64 or float32, got {p.dtype}")
    if p.ndim != 1:
        raise ValueError("probabilities must be one-dimensional")
    n = len(p)
    if n < 2 or n >= TOTAL - 1:
        raise ValueError(f"a categorical model needs 2 to 2^24 - 2 symbols, got {n}")
    if not np.all(np.isfinite(p)) or np.any(p < 0):
        raise ValueError("probabilities must be finite and non-negative")
    f = p.dtype.type
    # sequential (left to right) partial sums: numpy's accumulate adds one element at a time
    with np.errstate(over="ignore"):  # an infinite sum is refused below
        partial = np.add.accumulate(p, dtype=p.dtype)
    norm = partial[-1]
    if not (np.isfinite(norm) and norm >= np.finfo(p.dtype).tiny):
        raise ValueError("probabilities are not normalizable (their sum is zero, subnormal or infinite)")
    scale = f(TOTAL - n) / norm
    cum = np.concatenate([np.zeros(1, p.dtype), partial[:-1]])
    with np.errstate(over="ignore", invalid="ignore"):
        scaled = cum * scale  # one rounded product per entry, in p's precision
    # trunc toward zero; every value is >= 0 and below 2^24 (Rust's saturating `as u32`)
    left = np.minimum(np.trunc(scaled), np.float64(np.iinfo(np.uint32).max)).astype(np.uint64)
    cdf = np.empty(n + 1, dtype=np.uint64)
    cdf[:n] = (left + np.arange(n, dtype=np.uint64)) & 0xFFFFFFFF
    cdf[n] = TOTAL
    return cdf.astype(np.uint32)


def quantized_probabilities(probabilities: np.ndarray) -> np.ndarray:
    """Integer probabilities (uint32, summing to 2^24) of Categorical(p, perfect=False).

    Each is >= 1 for float64 input; see the module docstring for the one float32 exception.
    """
    return np.diff(quantized_cdf(probabilities).astype(np.int64)).astype(np.uint32)


def uniform_interval(size: int, symbol: int) -> tuple[int, int]:
    """(left, prob) of `symbol` under constriction's Uniform(size), 2 <= size <= 2^24."""
    if not 2 <= size <= TOTAL:
        raise ValueError(f"uniform size must be in [2, 2^24], got {size}")
    if not 0 <= symbol < size:
        raise ValueError(f"symbol {symbol} is outside [0, {size})")
    per_bin = TOTAL // size
    left = symbol * per_bin
    return left, (per_bin if symbol < size - 1 else TOTAL - left)


def table_probabilities(tables) -> np.ndarray:
    """Per table key, the integer probabilities the coder uses: (N_KEYS, N_TOKENS) uint32.

    `tables` is a `codec.entropy.CodingTables` (shipped) or `AdaptiveTables` (per volume);
    the probabilities are built from exactly the float arrays entropy.py hands to
    constriction. Keys an AdaptiveTables does not hold get all-zero rows (no model: a symbol
    coded with such a key is an error).
    """
    from codec import entropy

    out = np.zeros((entropy.N_KEYS, entropy.N_TOKENS), dtype=np.uint32)
    if isinstance(tables, entropy.AdaptiveTables):
        for key, q in tables.codes.items():
            f = entropy.dequantise_codes(q).astype(np.float64)
            out[key] = quantized_probabilities(f / f.sum())
        return out
    shapes = np.zeros((entropy.N_SHAPES, entropy.N_TOKENS), dtype=np.uint32)
    for side in range(entropy.N_SIDES):
        for k in range(entropy.N_CLASSES):
            f = tables.freqs[side, k].astype(np.float64)
            shapes[side * entropy.N_CLASSES + k] = quantized_probabilities(f / f.sum())
    out[:] = np.tile(shapes, (entropy.N_LEVELS, 1))
    return out
