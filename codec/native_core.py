"""Glue to the native coding core (`codec._nvcore`, C sources in `codec/native/`).

The native core does per slab, in one C call and its own thread, what the reference Python
path (`codec.engine` with `native=False`) does per wavefront step: gather, features, exact
network, coding parameters, range coding. It produces the same integers and the same bytes
(tests/codec/test_native.py proves it against the reference); the Python path stays as the
readable reference implementation and as the fallback where the extension is not built.

Environment: `NVC_NATIVE=0` forces the reference path; `NVC_KERNEL=scalar|avx2|avx512|vnni|neon|auto`
forces a network kernel (also `use_kernel`); `NVC_THREADS` caps the slab threads.
"""

from __future__ import annotations

import os
from contextlib import contextmanager

import numpy as np

from codec.context import ACTIVITY_THRESHOLDS, ContextSpec
from codec.entropy import N_KEYS, N_TOKENS, AdaptiveTables, CodingTables
from codec.network import IntMLP, OUT_BLOCK
from codec.schedule import wavefront_constants

try:  # built by `pip install -e .` (setup.py); absent in a source tree that was never built
    from codec import _nvcore
except ImportError:  # pragma: no cover - exercised only where the extension is missing
    _nvcore = None

_CONTEXTS = {"local": 0, "paper": 1, "pyramid": 1}  # CTX_PAPER is generic over the neighbour list


def available() -> bool:
    """True when the native core is built and not switched off with NVC_NATIVE=0."""
    return _nvcore is not None and os.environ.get("NVC_NATIVE", "1") != "0"


def kernels() -> list[str]:
    """Network kernels this CPU can run (always "scalar"; "avx2" or "neon" where present)."""
    return list(_nvcore.kernels()) if _nvcore is not None else []


def kernel() -> str:
    return _nvcore.kernel()


@contextmanager
def use_kernel(name: str):
    """Force a network kernel ("scalar", "avx2", "neon", "auto") for the duration (tests, benchmarks)."""
    before = _nvcore.kernel()
    _nvcore.set_kernel(name)
    try:
        yield
    finally:
        _nvcore.set_kernel(before)


def slab_threads(threads: int | None, n_slabs: int) -> int:
    """Threads for the slabs: `threads`, else NVC_THREADS, else the CPUs this process may use."""
    if threads is None:
        env = os.environ.get("NVC_THREADS")
        if env:
            threads = int(env)
        else:
            try:
                threads = len(os.sched_getaffinity(0))
            except (AttributeError, OSError):
                threads = os.cpu_count() or 1
    return max(1, min(int(threads), max(1, n_slabs)))


# --------------------------------------------------------------------------- packing
def pack_net(net: IntMLP) -> tuple[np.ndarray, np.ndarray]:
    """(dims, params) as the C kernel reads them: per layer W^T (in x out padded), bias, 2^-shift."""
    cached = net.__dict__.get("_native_pack")
    if cached is not None:
        return cached
    dims = np.asarray([len(net.layers), net.n_inputs, *[l.weight.shape[0] for l in net.layers]], dtype=np.int32)
    parts = []
    for layer in net.layers:
        n_out, n_in = layer.weight.shape
        pad = -(-n_out // OUT_BLOCK) * OUT_BLOCK
        wt = np.zeros((n_in, pad), dtype=np.float64)
        wt[:, :n_out] = layer.weight.T
        bias = np.zeros(pad, dtype=np.float64)
        bias[:n_out] = layer.bias
        scale = np.ones(pad, dtype=np.float64)
        scale[:n_out] = np.exp2(-layer.shift.astype(np.float64))
        parts += [wt.ravel(), bias, scale]
    packed = (dims, np.ascontiguousarray(np.concatenate(parts)))
    net.__dict__["_native_pack"] = packed
    return packed


def _context_args(spec: ContextSpec) -> tuple[int, np.ndarray, np.ndarray]:
    if spec.name not in _CONTEXTS:
        raise ValueError(f"the native core has no context {spec.name!r}")
    nb = np.ascontiguousarray(np.asarray(spec.neighbours, dtype=np.int32))
    return _CONTEXTS[spec.name], nb, np.ascontiguousarray(ACTIVITY_THRESHOLDS, dtype=np.int64)


def pack_tables(tables: CodingTables | AdaptiveTables) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities uint32 (N_KEYS, N_TOKENS), used uint8 (N_KEYS)) exactly as constriction
    quantises the reference's Categorical(perfect=False) models (codec.coder_model)."""
    cached = tables.__dict__.get("_native_pack")
    if cached is not None:
        return cached
    from codec.coder_model import table_probabilities

    probs = np.ascontiguousarray(table_probabilities(tables), dtype=np.uint32)
    used = (probs.sum(axis=1) > 0).astype(np.uint8)
    packed = (probs, used)
    tables.__dict__["_native_pack"] = packed
    return packed


# --------------------------------------------------------------------------- entry points
def forward(net: IntMLP, inputs: np.ndarray) -> np.ndarray:
    """The exact network on (n, n_inputs) integer inputs with the current kernel: int64 (n, 2)."""
    dims, params = pack_net(net)
    x = np.ascontiguousarray(inputs, dtype=np.float64)
    raw = _nvcore.forward(dims, params, x, len(x))
    return np.frombuffer(raw, dtype=np.int64).reshape(len(x), 2)


def decode(net: IntMLP, spec: ContextSpec, tables, payloads, shapes, vmin: int, vmax: int,
           threads: int | None = None) -> list[np.ndarray]:
    """Decode slabs (each its own thread) into int32 (depth, H, W) arrays. ValueError when corrupt."""
    dims, params = pack_net(net)
    ctx, nb, thr = _context_args(spec)
    a, b = wavefront_constants(spec.neighbours)
    probs, used = pack_tables(tables)
    H, W = shapes[0][1], shapes[0][2]
    outs = [np.empty(s, dtype=np.int32) for s in shapes]
    words = [p if len(p) % 4 == 0 else p[: len(p) - len(p) % 4] for p in payloads]
    _nvcore.decode(dims, params, ctx, nb, thr, a, b, int(vmin), int(vmax), probs, used, list(words), outs,
                   [int(s[0]) for s in shapes], int(H), int(W), slab_threads(threads, len(shapes)))
    return outs


def predict(net: IntMLP, spec: ContextSpec, volume: np.ndarray, slabs: list[tuple[int, int]], vmin: int, vmax: int,
            threads: int | None = None, out: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Encoder prediction pass: packed symbols uint32 (Z, Y, X) (key | token << 11 | extra << 18)
    and the (N_KEYS, N_TOKENS) token counts.

    `out` (uint32, the volume's shape, C-contiguous) receives the symbols; it may be the
    volume's own memory (`volume.view(np.uint32)`): each slab is copied into its padded buffer
    before any of its symbols is written, and slabs are disjoint, so the symbols can replace
    the voxels in place (the encoder's largest saving of memory)."""
    dims, params = pack_net(net)
    ctx, nb, thr = _context_args(spec)
    vol = np.ascontiguousarray(volume, dtype=np.int32)
    Z, H, W = vol.shape
    if out is not None and (out.dtype != np.uint32 or out.shape != vol.shape or not out.flags.c_contiguous):
        raise ValueError("out must be a C-contiguous uint32 array of the volume's shape")
    symbols = out if out is not None else np.empty(vol.shape, dtype=np.uint32)
    counts = np.zeros((N_KEYS, N_TOKENS), dtype=np.int64)
    _nvcore.predict(dims, params, ctx, nb, thr, int(vmin), int(vmax), vol, Z, H, W, [tuple(s) for s in slabs], symbols,
                    counts, slab_threads(threads, len(slabs)))
    return symbols, counts


def emit(spec: ContextSpec, tables, symbols: np.ndarray, slabs: list[tuple[int, int]],
         threads: int | None = None) -> list[bytes]:
    """Encoder emission pass: the payload of each slab (symbols in the decoder's order)."""
    a, b = wavefront_constants(spec.neighbours)
    probs, used = pack_tables(tables)
    Z, H, W = symbols.shape
    return _nvcore.emit(a, b, probs, used, np.ascontiguousarray(symbols), Z, H, W, [tuple(s) for s in slabs],
                        slab_threads(threads, len(slabs)))


def unpack_symbols(symbols: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(key, token, extra) of packed symbols (tests; the reference emitter behind the device path)."""
    s = symbols.astype(np.int64)
    return s & 0x7FF, (s >> 11) & 0x7F, s >> 18
