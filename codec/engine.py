"""Encode and decode volumes: slabs, exact prediction, wavefront order, range coding.

The container (`codec.format`) treats what this module produces as opaque: a model blob
(which network and tables decide the coding distributions) and one payload per slab.

Model blob, version 1 (all integers little-endian):

    u8  blob version (1)
    u8  kind: 0 = shipped model, 1 = shipped model fine-tuned on this volume (weights embedded)
    u8  n, then n bytes: ASCII id of the shipped model (its tables are the coding tables)
    if kind == 1: u32 m, then m bytes: `IntMLP.to_bytes()` of the fine-tuned network
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import constriction
import numpy as np
import torch

from codec import registry
from codec.context import PAD_Z, SlabGeometry, compute_features, gather_neighbours, slice_neighbours
from codec.entropy import (
    CodingTables,
    decode_step,
    detokenize,
    encode_step,
    tokenize,
)
from codec.errors import FormatError, UnsupportedInputError
from codec.fit import Samples, fit, load_into_buffer, sample_volume, slab_bounds
from codec.network import IntMLP, coding_params, quantize
from codec.profiles import PROFILES as _PROFILES
from codec.profiles import get_profile
from codec.schedule import Wavefront

PROFILES: tuple[str, ...] = tuple(_PROFILES)
BLOB_VERSION = 1
#: A coded voxel costs at least ~3.5e-4 bits (table cap), so a payload of B bytes can hold at
#: most ~23k * B voxels; anything claiming far more is hostile or corrupt and is refused
#: before any work is done.
MAX_VOXELS_PER_PAYLOAD_BYTE = 65536

Progress = Callable[[float], None] | None


@dataclass(frozen=True)
class EncodedVolume:
    model_blob: bytes
    slabs: list[tuple[int, int]]
    payloads: list[bytes]


@dataclass
class Predictor:
    """What decides the coding distributions: an exact network plus coding tables."""

    net: IntMLP
    tables: CodingTables
    shipped_id: str
    embedded: bool

    def blob(self) -> bytes:
        ident = self.shipped_id.encode("ascii")
        out = struct.pack("<BBB", BLOB_VERSION, 1 if self.embedded else 0, len(ident)) + ident
        if self.embedded:
            weights = self.net.to_bytes()
            out += struct.pack("<I", len(weights)) + weights
        return out

    @classmethod
    def from_blob(cls, blob: bytes) -> "Predictor":
        try:
            version, kind, n = struct.unpack_from("<BBB", blob, 0)
        except struct.error:
            raise FormatError("model blob is truncated") from None
        if version != BLOB_VERSION:
            raise FormatError(f"model blob version {version} is not supported (this nvc reads version {BLOB_VERSION})")
        if kind not in (0, 1):
            raise FormatError(f"unknown model kind {kind}")
        if 3 + n > len(blob):
            raise FormatError("model blob is truncated")
        try:
            shipped_id = blob[3 : 3 + n].decode("ascii")
        except UnicodeDecodeError:
            raise FormatError("model id is not ASCII") from None
        shipped = registry.load_model(shipped_id)
        tables = registry.load_tables(shipped.tables_file)
        pos = 3 + n
        if kind == 0:
            if pos != len(blob):
                raise FormatError("model blob has trailing bytes")
            return cls(shipped.net, tables, shipped_id, False)
        try:
            (m,) = struct.unpack_from("<I", blob, pos)
        except struct.error:
            raise FormatError("model blob is truncated") from None
        if pos + 4 + m != len(blob):
            raise FormatError("embedded weights length does not match the model blob")
        net = IntMLP.from_bytes(blob[pos + 4 :])
        return cls(net, tables, shipped_id, True)


def describe_model(model_blob: bytes) -> dict:
    p = Predictor.from_blob(model_blob)
    shipped = registry.load_model(p.shipped_id)
    return {
        "profile": shipped.profile,
        "model_id": p.shipped_id,
        "fine_tuned": p.embedded,
        "embedded_weights_bytes": len(p.net.to_bytes()) if p.embedded else 0,
        "parameters": p.net.n_params,
        "widths": list(p.net.widths),
    }


@contextmanager
def torch_threads(threads: int | None):
    """Run torch with `threads` intra-op threads (default NVC_THREADS or 1), then restore.

    One thread is the default: the decoder's per-step batches are small, and OpenMP
    threads spinning against other busy processes (API, other workers) made a decode 20x
    slower in measurements on a loaded 2-core machine. The result does not depend on it.
    """
    want = threads if threads is not None else int(os.environ.get("NVC_THREADS", "1"))
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, want))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def default_device() -> torch.device:
    """CUDA when available (NVC_DEVICE=cpu forces the CPU); results are identical either way."""
    want = os.environ.get("NVC_DEVICE", "auto")
    if want != "cpu" and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


# --------------------------------------------------------------------------- encode
def _choose_predictor(
    volume: np.ndarray,
    vmin: int,
    vmax: int,
    profile_name: str,
    progress: Progress,
    laid_out: tuple[SlabGeometry, np.ndarray],
) -> Predictor:
    """The shipped model, or a copy fine-tuned on this volume when that pays for its weights."""
    profile = get_profile(profile_name)
    shipped = registry.current_model(profile_name)
    tables = registry.load_tables(shipped.tables_file)
    base = Predictor(shipped.net, tables, shipped.model_id, False)
    mvox = volume.size / 1e6
    steps = int(min(profile.fit_max_steps, max(profile.fit_min_steps, profile.fit_steps_per_mvoxel * mvox)))
    if steps <= 0 or volume.size < 4096:
        return base
    rng = np.random.default_rng(12345)
    n_held = min(65536, volume.size // 4)
    n_fit = int(min(profile.fit_samples, volume.size - n_held))
    drawn = sample_volume(volume, vmin, vmax, profile.slab_depth, n_fit + n_held, rng, laid_out)
    samples = drawn.subset(slice(0, n_fit))
    held = drawn.subset(slice(n_fit, None))
    model = shipped.float_model()
    torch.manual_seed(0)
    fit(model, samples, steps, batch=profile.fit_batch, lr=1e-3,
        progress=(lambda f: progress(0.4 * f)) if progress else None)
    tuned = Predictor(quantize(model, samples.inputs[:65536].numpy()), tables, shipped.model_id, True)
    bits_base = estimate_bits(base, held) * volume.size / len(held)
    bits_tuned = estimate_bits(tuned, held) * volume.size / len(held) + 8 * len(tuned.blob())
    return tuned if bits_tuned < bits_base else base


def estimate_bits(pred: Predictor, samples: Samples) -> float:
    """Total bits the coder would spend on these sample voxels (table cost + extra bits)."""
    feats = samples.features()
    vmin, vmax = int(samples.aux[0, 4]), int(samples.aux[0, 5])
    out = pred.net.forward(feats.inputs)
    mu, keys = coding_params(out, feats, vmin, vmax)
    tokens, nbits, _ = tokenize(samples.x - mu)
    return float(pred.tables.cost_bits[keys, tokens].sum() + nbits.sum())


def encode_volume(
    volume: np.ndarray,
    *,
    vmin: int,
    vmax: int,
    profile: str = "default",
    progress: Progress = None,
    threads: int | None = None,
    device: torch.device | None = None,
) -> EncodedVolume:
    """Code a (Z, Y, X) int32 volume with values in [vmin, vmax]."""
    with torch_threads(threads):
        return _encode_volume(volume, vmin, vmax, profile, progress, device)


def _encode_volume(
    volume: np.ndarray, vmin: int, vmax: int, profile: str, progress: Progress, device: torch.device | None
) -> EncodedVolume:
    if volume.ndim != 3 or volume.size == 0:
        raise UnsupportedInputError(f"engine expects a non-empty (Z, Y, X) volume, got shape {volume.shape}")
    if not 0 <= vmax - vmin <= 65535:
        raise UnsupportedInputError(f"value range [{vmin}, {vmax}] spans more than 16 bits")
    volume = np.ascontiguousarray(volume, dtype=np.int32)
    prof = get_profile(profile)
    slabs = slab_bounds(volume.shape[0], prof.slab_depth)
    geometry, buffer = load_into_buffer(volume, slabs, vmin)
    pred = _choose_predictor(volume, vmin, vmax, profile, progress, (geometry, buffer))
    device = device or default_device()

    # 1. every voxel's coding parameters at once (the encoder knows all values)
    keys = np.zeros(geometry.total_size, dtype=np.int32)
    tokens = np.zeros(geometry.total_size, dtype=np.int32)
    nbits = np.zeros(geometry.total_size, dtype=np.int32)
    extra = np.zeros(geometry.total_size, dtype=np.int32)
    cache: dict = {}
    Y, X = geometry.height, geometry.width
    n_slices = sum(geometry.depths)
    done = 0
    for s, depth in enumerate(geometry.depths):
        base = int(geometry.bases[s])
        block = buffer[base : base + geometry.slab_size(depth)].reshape(depth + PAD_Z, -1, geometry.row_stride)
        x0 = np.arange(X)
        for z in range(depth):
            index = (geometry.voxel_index(s, np.full((Y, 1), z), np.arange(Y)[:, None], x0[None, :])).ravel()
            nb = slice_neighbours(block, z, Y, X)
            feats = compute_features(nb, np.full(len(index), z == 0), vmin, vmax)
            out = pred.net.forward(feats.inputs, device, cache)
            mu, k = coding_params(out, feats, vmin, vmax)
            t, nb_, ex = tokenize(buffer[index].astype(np.int64) - mu)
            keys[index], tokens[index], nbits[index], extra[index] = k, t, nb_, ex
            done += 1
            if progress:
                progress(0.4 + 0.4 * done / n_slices)

    # 2. emit symbols in the decoder's order
    encoders = [constriction.stream.queue.RangeEncoder() for _ in slabs]
    wave = Wavefront(geometry)
    for i, step in enumerate(wave.steps()):
        idx = step.index
        for s in np.unique(step.slab).tolist():
            sel = idx[step.slab == s]
            encode_step(encoders[s], pred.tables, keys[sel], tokens[sel], nbits[sel], extra[sel])
        if progress and i % 256 == 0:
            progress(0.8 + 0.2 * i / max(1, wave.n_steps))
    payloads = [e.get_compressed().tobytes() for e in encoders]
    if progress:
        progress(1.0)
    return EncodedVolume(pred.blob(), slabs, payloads)


# --------------------------------------------------------------------------- decode
def decode_slabs(
    model_blob: bytes,
    payloads: Sequence[bytes],
    shapes: Sequence[tuple[int, int, int]],
    *,
    vmin: int,
    vmax: int,
    progress: Progress = None,
    threads: int | None = None,
    device: torch.device | None = None,
) -> list[np.ndarray]:
    """Decode independently coded slabs (all at once, one wavefront) into int32 (z, y, x) arrays."""
    with torch_threads(threads):
        return _decode_slabs(model_blob, payloads, shapes, vmin, vmax, progress, device)


def _decode_slabs(
    model_blob: bytes,
    payloads: Sequence[bytes],
    shapes: Sequence[tuple[int, int, int]],
    vmin: int,
    vmax: int,
    progress: Progress,
    device: torch.device | None,
) -> list[np.ndarray]:
    if len(payloads) != len(shapes):
        raise FormatError("number of slab payloads and shapes differ")
    if not payloads:
        return []
    if not 0 <= vmax - vmin <= 65535:
        raise FormatError(f"value range [{vmin}, {vmax}] spans more than 16 bits")
    heights = {s[1] for s in shapes}
    widths = {s[2] for s in shapes}
    if len(heights) != 1 or len(widths) != 1:
        raise FormatError("slabs of one volume must share their row and column counts")
    for payload, shape in zip(payloads, shapes):
        if min(shape) <= 0:
            raise FormatError(f"slab shape {shape} is empty")
        voxels = int(np.prod(shape, dtype=np.int64))
        if voxels > MAX_VOXELS_PER_PAYLOAD_BYTE * (len(payload) + 16):
            raise FormatError(
                f"slab claims {voxels} voxels but its payload has only {len(payload)} bytes: corrupt or hostile file"
            )
        if len(payload) % 4:
            raise FormatError("slab payload length is not a multiple of 4 bytes")
    pred = Predictor.from_blob(model_blob)
    geometry = SlabGeometry(tuple(s[0] for s in shapes), shapes[0][1], shapes[0][2])
    buffer = geometry.new_buffer(vmin)
    decoders = [constriction.stream.queue.RangeDecoder(np.frombuffer(p, dtype=np.uint32).copy()) for p in payloads]
    offsets = geometry.offsets
    device = device or default_device()
    cache: dict = {}
    wave = Wavefront(geometry)
    for i, step in enumerate(wave.steps()):
        idx = step.index
        feats = compute_features(gather_neighbours(buffer, idx, offsets), step.first_slice, vmin, vmax)
        out = pred.net.forward(feats.inputs, device, cache)
        mu, keys = coding_params(out, feats, vmin, vmax)
        values = np.empty(len(idx), dtype=np.int64)
        for s in np.unique(step.slab).tolist():
            sel = step.slab == s
            try:
                tokens, extra = decode_step(decoders[s], pred.tables, keys[sel])
            except Exception as exc:  # constriction reports corrupt data as ValueError/RuntimeError
                raise FormatError(f"slab {s} payload is corrupt: {exc}") from None
            values[sel] = mu[sel] + detokenize(tokens, extra)
        if values.min() < vmin or values.max() > vmax:
            raise FormatError("decoded values leave the declared range: corrupt payload")
        buffer[idx] = values
        if progress and i % 256 == 0:
            progress(i / max(1, wave.n_steps))
    if progress:
        progress(1.0)
    return [np.ascontiguousarray(geometry.interior(buffer, s)) for s in range(len(shapes))]


