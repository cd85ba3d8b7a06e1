"""Encode and decode volumes: slabs, exact prediction, wavefront order, range coding.

The container (`codec.format`) treats what this module produces as opaque: a model blob
(which network and tables decide the coding distributions) and one payload per slab.

Model blob, version 1 (all integers little-endian):

    u8  blob version (1)
    u8  flags: bit 0 = fine-tuned weights embedded, bit 1 = token tables embedded
    u8  n, then n bytes: ASCII id of the shipped model (network and tables used unless embedded)
    if bit 0: u32 m, then m bytes: `IntMLP.to_bytes()` of the network fine-tuned on this volume
    if bit 1: u32 m, then m bytes: `AdaptiveTables.to_bytes()`: zlib of a bitmap of the
              3 * 72 table keys used, then 127 uint8 codes q per used key; token frequency
              = 2^(q/4) from the integer constants in entropy.py (0: token absent)
"""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

import constriction
import numpy as np
import torch

from codec import registry
from codec.blob import BLOB_VERSION, FLAG_TABLES, FLAG_WEIGHTS, parse_blob
from codec.context import LOCAL, ContextSpec, SlabGeometry, gather_neighbours
from codec.entropy import (
    AdaptiveTables,
    token_extra_bits,
    CodingTables,
    decode_step,
    detokenize,
    encode_step,
    tokenize,
)
from codec.errors import FormatError, UnsupportedInputError
from codec.fit import Samples, fit, load_into_buffer, sample_volume, slab_bounds
from codec.network import IntMLP, quantize
from codec.profiles import PROFILES as _PROFILES
from codec.profiles import get_profile
from codec.progress import Progress
from codec.schedule import Wavefront

PROFILES: tuple[str, ...] = tuple(_PROFILES)
#: A coded voxel costs at least ~3.5e-4 bits (table cap), so a payload of B bytes can hold at
#: most ~23k * B voxels; anything claiming far more is hostile or corrupt and is refused
#: before any work is done.
MAX_VOXELS_PER_PAYLOAD_BYTE = 65536


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
    adaptive: AdaptiveTables | None = None
    spec: ContextSpec = LOCAL

    @property
    def coding_tables(self) -> CodingTables | AdaptiveTables:
        """The tables symbols are coded with: measured on the volume when stored, else shipped."""
        return self.adaptive if self.adaptive is not None else self.tables

    def blob(self) -> bytes:
        ident = self.shipped_id.encode("ascii")
        flags = (FLAG_WEIGHTS if self.embedded else 0) | (FLAG_TABLES if self.adaptive is not None else 0)
        out = struct.pack("<BBB", BLOB_VERSION, flags, len(ident)) + ident
        if self.embedded:
            weights = self.net.to_bytes()
            out += struct.pack("<I", len(weights)) + weights
        if self.adaptive is not None:
            tables = self.adaptive.to_bytes()
            out += struct.pack("<I", len(tables)) + tables
        return out

    @classmethod
    def from_blob(cls, blob: bytes) -> "Predictor":
        framing = parse_blob(blob)  # version, flags, lengths: the same checks as the upload check
        shipped = registry.load_model(framing.model_id)
        tables = registry.load_tables(shipped.tables_file)
        net = IntMLP.from_bytes(framing.weights) if framing.weights is not None else shipped.net
        adaptive = AdaptiveTables.from_bytes(framing.tables) if framing.tables is not None else None
        if net.n_inputs != shipped.net.n_inputs:
            raise FormatError("embedded network does not match its model's context")
        return cls(net, tables, framing.model_id, framing.weights is not None, adaptive, shipped.spec)


def describe_model(model_blob: bytes) -> dict:
    p = Predictor.from_blob(model_blob)
    shipped = registry.load_model(p.shipped_id)
    return {
        "profile": shipped.profile,
        "model_id": p.shipped_id,
        "fine_tuned": p.embedded,
        "volume_tables": p.adaptive is not None,
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


def encode_workers() -> int:
    """Threads for the encoder's per-slice prediction (NVC_ENCODE_WORKERS, default: CPU count, at most 4)."""
    env = os.environ.get("NVC_ENCODE_WORKERS")
    if env:
        return max(1, int(env))
    return max(1, min(4, os.cpu_count() or 1))


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
    shipped: registry.ShippedModel,
) -> Predictor:
    """The shipped model, or a copy fine-tuned on this volume when that pays for its weights."""
    profile = get_profile(profile_name)
    tables = registry.load_tables(shipped.tables_file)
    spec = shipped.spec
    base = Predictor(shipped.net, tables, shipped.model_id, False, spec=spec)
    mvox = volume.size / 1e6
    steps = int(min(profile.fit_max_steps, max(profile.fit_min_steps, profile.fit_steps_per_mvoxel * mvox)))
    if steps <= 0 or volume.size < 4096:
        return base
    rng = np.random.default_rng(12345)
    n_held = min(65536, volume.size // 4)
    n_fit = int(min(profile.fit_samples, volume.size - n_held))
    drawn = sample_volume(volume, vmin, vmax, profile.slab_depth, n_fit + n_held, rng, laid_out, spec)
    if progress:
        progress(0.02)
    samples = drawn.subset(slice(0, n_fit))
    held = drawn.subset(slice(n_fit, None))
    model = shipped.float_model()
    torch.manual_seed(0)
    fit(model, samples, steps, batch=profile.fit_batch, lr=profile.fit_lr, spec=spec, loss=profile.loss,
        progress=(lambda f: progress(0.4 * f)) if progress else None)
    tuned = Predictor(quantize(model, samples.inputs[:65536].numpy()), tables, shipped.model_id, True, spec=spec)
    bits_base = estimate_bits(base, held) * volume.size / len(held)
    bits_tuned = estimate_bits(tuned, held) * volume.size / len(held) + 8 * len(tuned.blob())
    return tuned if bits_tuned < bits_base else base


def estimate_bits(pred: Predictor, samples: Samples) -> float:
    """Total bits the coder would spend on these sample voxels (table cost + extra bits)."""
    feats = samples.features()
    vmin, vmax = int(samples.aux[0, 4]), int(samples.aux[0, 5])
    out = pred.net.forward(feats.inputs)
    mu, keys = pred.spec.coding_params(out, feats, vmin, vmax)
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
    base_model: registry.ShippedModel | None = None,
) -> EncodedVolume:
    """Code a (Z, Y, X) int32 volume with values in [vmin, vmax].

    `base_model` replaces the profile's shipped model: for evaluation only (leave-one-out
    training measures sizes with models that are not shipped, so their files cannot be decoded).
    """
    with torch_threads(threads):
        shipped = base_model or registry.current_model(profile)
        return _encode_volume(volume, vmin, vmax, profile, progress, device, shipped)


def _encode_volume(
    volume: np.ndarray,
    vmin: int,
    vmax: int,
    profile: str,
    progress: Progress,
    device: torch.device | None,
    shipped: registry.ShippedModel,
) -> EncodedVolume:
    if volume.ndim != 3 or volume.size == 0:
        raise UnsupportedInputError(f"engine expects a non-empty (Z, Y, X) volume, got shape {volume.shape}")
    if not 0 <= vmax - vmin <= 65535:
        raise UnsupportedInputError(f"value range [{vmin}, {vmax}] spans more than 16 bits")
    volume = np.ascontiguousarray(volume, dtype=np.int32)
    prof = get_profile(profile)
    spec = shipped.spec
    slabs = slab_bounds(volume.shape[0], prof.slab_depth)
    geometry, buffer = load_into_buffer(volume, slabs, vmin, spec)
    pred = _choose_predictor(volume, vmin, vmax, profile, progress, (geometry, buffer), shipped)
    device = device or default_device()

    # 1. every voxel's coding parameters at once (the encoder knows all values)
    keys = np.zeros(geometry.total_size, dtype=np.int32)
    tokens = np.zeros(geometry.total_size, dtype=np.int32)
    extra = np.zeros(geometry.total_size, dtype=np.int32)
    cache: dict = {}
    Y, X = geometry.height, geometry.width
    pred.net.forward(np.zeros((1, pred.net.n_inputs), np.float32), device, cache)  # build the layer cache once
    rows_per_task = max(1, min(Y, (1 << 22) // (X * len(geometry.neighbours))))

    def predict_rows(task: tuple[int, int, int]) -> None:
        s, z, y0 = task
        y1 = min(Y, y0 + rows_per_task)
        n = (y1 - y0) * X
        feats = spec.features(geometry.slice_neighbours(buffer, s, z, y0, y1), np.full(n, z == 0), vmin, vmax)
        mu, k = spec.coding_params(pred.net.forward(feats.inputs, device, cache), feats, vmin, vmax)
        values = geometry.interior(buffer, s)[z, y0:y1].reshape(n)
        t, _, ex = tokenize(values - mu)
        shape = (y1 - y0, X)
        geometry.interior(keys, s)[z, y0:y1] = k.reshape(shape)
        geometry.interior(tokens, s)[z, y0:y1] = t.reshape(shape)
        geometry.interior(extra, s)[z, y0:y1] = ex.reshape(shape)

    # Slices are independent here; numpy and torch release the GIL on these large arrays,
    # so a few threads use the machine's cores without processes.
    tasks = [(s, z, y0) for s, depth in enumerate(geometry.depths) for z in range(depth) for y0 in range(0, Y, rows_per_task)]
    with ThreadPoolExecutor(max_workers=encode_workers()) as pool:
        for done, _ in enumerate(pool.map(predict_rows, tasks), 1):
            if progress:
                progress(0.4 + 0.4 * done / len(tasks))

    # 2. token tables measured on this volume, when they pay for their bytes
    interior_keys = np.concatenate([geometry.interior(keys, s).ravel() for s in range(len(slabs))])
    interior_tokens = np.concatenate([geometry.interior(tokens, s).ravel() for s in range(len(slabs))])
    counts = AdaptiveTables.count(interior_keys, interior_tokens)
    del interior_keys, interior_tokens
    adaptive = AdaptiveTables.from_counts(counts)
    static_bits = float((counts * pred.tables.cost_bits).sum())
    if adaptive.cost_bits(counts) + 8 * (len(adaptive.to_bytes()) + 4) < static_bits:
        pred.adaptive = adaptive
    tables = pred.coding_tables

    # 3. emit symbols in the decoder's order
    encoders = [constriction.stream.queue.RangeEncoder() for _ in slabs]
    wave = Wavefront(geometry)
    for i, step in enumerate(wave.steps()):
        idx = step.index
        for s in np.unique(step.slab).tolist():
            sel = idx[step.slab == s]
            tok = tokens[sel]
            encode_step(encoders[s], tables, keys[sel], tok, token_extra_bits(tok), extra[sel])
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
    geometry = SlabGeometry(tuple(s[0] for s in shapes), shapes[0][1], shapes[0][2], pred.spec.neighbours)
    buffer = geometry.new_buffer(vmin)
    decoders = [constriction.stream.queue.RangeDecoder(np.frombuffer(p, dtype=np.uint32).copy()) for p in payloads]
    offsets = geometry.offsets
    device = device or default_device()
    cache: dict = {}
    tables = pred.coding_tables
    wave = Wavefront(geometry)
    for i, step in enumerate(wave.steps()):
        idx = step.index
        feats = pred.spec.features(gather_neighbours(buffer, idx, offsets), step.first_slice, vmin, vmax)
        out = pred.net.forward(feats.inputs, device, cache)
        mu, keys = pred.spec.coding_params(out, feats, vmin, vmax)
        values = np.empty(len(idx), dtype=np.int64)
        for s in np.unique(step.slab).tolist():
            sel = step.slab == s
            try:
                tokens, extra = decode_step(decoders[s], tables, keys[sel])
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


