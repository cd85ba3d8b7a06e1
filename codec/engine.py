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
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import constriction
import numpy as np

from codec import native_core, registry
from codec.blob import BLOB_VERSION, FLAG_TABLES, FLAG_WEIGHTS, parse_blob
from codec.context import LOCAL, ContextSpec, SlabGeometry, gather_neighbours, load_into_buffer, plan_slabs
from codec.entropy import (
    N_KEYS,
    N_TOKENS,
    AdaptiveTables,
    token_extra_bits,
    CodingTables,
    decode_step,
    detokenize,
    encode_step,
    tokenize,
)
from codec.errors import FormatError, UnsupportedInputError
from codec.network import IntMLP
from codec.profiles import PROFILES as _PROFILES
from codec.profiles import get_profile
from codec.progress import Progress
from codec.schedule import Wavefront

if TYPE_CHECKING:  # torch and the fitting code are imported only where fitting runs
    from codec.fit import Samples

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

    Only where torch is already imported (fitting, training, the GPU path): decoding and
    encoding without fitting never import it. One thread is the default: OpenMP threads
    spinning against other busy processes made a decode 20x slower in measurements on a
    loaded 2-core machine. The result does not depend on it.
    """
    torch = sys.modules.get("torch")
    if torch is None:
        yield
        return
    want = threads if threads is not None else int(os.environ.get("NVC_THREADS", "1"))
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, want))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def encode_workers() -> int:
    """Threads for the reference encoder's per-slice prediction (NVC_ENCODE_WORKERS, default: CPU count, at most 4)."""
    env = os.environ.get("NVC_ENCODE_WORKERS")
    if env:
        return max(1, int(env))
    return max(1, min(4, os.cpu_count() or 1))


def default_device():
    """None (the CPU: native core, else numpy) unless NVC_DEVICE=cuda asks for the GPU.

    A torch device (this, or `device=` of encode_volume/decode_slabs) runs the device-resident
    path (`codec.device_path`): same integers and bytes, every step's arithmetic on the device.
    The GPU stays opt-in: without a GPU measurement here, the native CPU core is the default.
    """
    if os.environ.get("NVC_DEVICE", "cpu") == "cuda":
        import torch

        if torch.cuda.is_available():
            return torch.device("cuda")
    return None


def _use_native(native: bool | None, device) -> bool:
    """The native core runs unless the reference path is asked for (native=False, NVC_NATIVE=0),
    a torch device runs the device path, or the extension is not built."""
    if native is False or device is not None:
        return False
    if native and not native_core.available():
        raise RuntimeError("the native core (codec._nvcore) is not built or NVC_NATIVE=0")
    return native_core.available()


def _groups(n: int, size: int) -> list[range]:
    size = max(1, size)
    return [range(i, min(n, i + size)) for i in range(0, n, size)]


# --------------------------------------------------------------------------- encode
def fit_steps(profile_name: str, voxels: int) -> int:
    """Adam steps of per-volume fitting for a volume of `voxels` (0: no fitting, no torch)."""
    profile = get_profile(profile_name)
    steps = int(min(profile.fit_max_steps, max(profile.fit_min_steps, profile.fit_steps_per_mvoxel * voxels / 1e6)))
    return 0 if voxels < 4096 else max(0, steps)


@dataclass
class FitOutcome:
    """What per-volume fitting found: both candidates, their estimated cost, where time went."""

    base: Predictor
    tuned: Predictor | None
    bits_base: float  # estimated bits for the whole volume (held-out sample, scaled)
    bits_tuned: float  # the same with the tuned network, its stored weights included (inf: no fit)
    seconds: dict[str, float]

    @property
    def chosen(self) -> Predictor:
        return self.tuned if self.tuned is not None and self.bits_tuned < self.bits_base else self.base


def fit_device(device=None):
    """Where per-volume fitting runs: `device` if given, else NVC_DEVICE (cpu or cuda), else
    CUDA when torch sees a GPU, else the CPU. Only the quantised integer weights leave the
    fit, so a file fitted on a GPU decodes everywhere (the weights may differ from a CPU fit:
    float training is not identical across devices; the file is still exact)."""
    import torch

    if device is not None:
        return torch.device(device)
    want = os.environ.get("NVC_DEVICE", "").strip().lower()
    if want:
        return torch.device(want)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def fit_predictor(
    volume: np.ndarray,
    vmin: int,
    vmax: int,
    profile_name: str,
    progress: Progress,
    slabs: list[tuple[int, int]],
    shipped: registry.ShippedModel,
    device=None,
) -> FitOutcome:
    """Fine-tune the shipped model on a sample of this volume and estimate both on held-out voxels."""
    import time

    profile = get_profile(profile_name)
    tables = registry.load_tables(shipped.tables_file)
    spec = shipped.spec
    base = Predictor(shipped.net, tables, shipped.model_id, False, spec=spec)
    steps = fit_steps(profile_name, volume.size)
    if steps <= 0:
        return FitOutcome(base, None, 0.0, float("inf"), {})
    import torch  # fitting is the only part of encoding that needs torch

    from codec.fit import fit, quantize, sample_volume

    seconds: dict[str, float] = {}
    t = time.perf_counter()
    rng = np.random.default_rng(12345)
    n_held = min(65536, volume.size // 4)
    n_fit = int(min(profile.fit_samples, volume.size - n_held))
    drawn = sample_volume(volume, vmin, vmax, profile.slab_depth, n_fit + n_held, rng, None, spec, slabs=slabs)
    if progress:
        progress(0.02)
    samples = drawn.subset(slice(0, n_fit))
    held = drawn.subset(slice(n_fit, None))
    seconds["sample"] = time.perf_counter() - t
    model = shipped.float_model()
    torch.manual_seed(0)
    with torch_threads(profile.fit_threads):  # fixed, not NVC_THREADS: the weights depend on it
        t = time.perf_counter()
        fit(model, samples, steps, batch=profile.fit_batch, lr=profile.fit_lr, spec=spec, loss=profile.loss,
            progress=(lambda f: progress(0.4 * f)) if progress else None, device=fit_device(device),
            order=profile.fit_order, warmup=profile.fit_warmup, layer_lr=profile.fit_layer_lr)
        seconds["fit"] = time.perf_counter() - t
        t = time.perf_counter()
        tuned = Predictor(quantize(model, samples.inputs[:65536].numpy()), tables, shipped.model_id, True, spec=spec)
        seconds["quantize"] = time.perf_counter() - t
    t = time.perf_counter()
    bits_base = estimate_bits(base, held) * volume.size / len(held)
    bits_tuned = estimate_bits(tuned, held) * volume.size / len(held) + 8 * len(tuned.blob())
    seconds["estimate"] = time.perf_counter() - t
    return FitOutcome(base, tuned, bits_base, bits_tuned, seconds)


def _choose_predictor(
    volume: np.ndarray,
    vmin: int,
    vmax: int,
    profile_name: str,
    progress: Progress,
    slabs: list[tuple[int, int]],
    shipped: registry.ShippedModel,
    device=None,
) -> Predictor:
    """The shipped model, or a copy fine-tuned on this volume when that pays for its weights
    (fitted on `device`, default `fit_device()`)."""
    return fit_predictor(volume, vmin, vmax, profile_name, progress, slabs, shipped, device).chosen


def estimate_bits(pred: Predictor, samples: "Samples") -> float:
    """Total bits the coder would spend on these sample voxels (table cost + extra bits)."""
    feats = samples.features()
    vmin, vmax = int(samples.aux[0, 4]), int(samples.aux[0, 5])
    out = native_core.forward(pred.net, feats.inputs) if native_core.available() else pred.net.forward(feats.inputs)
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
    device=None,
    base_model: registry.ShippedModel | None = None,
    native: bool | None = None,
    slabs: list[tuple[int, int]] | None = None,
    consume: bool = False,
) -> EncodedVolume:
    """Code a (Z, Y, X) int32 volume with values in [vmin, vmax].

    `consume=True`: the caller hands the (int32, C-contiguous) array over and will not read it
    again; the native core then writes its 4-byte symbols over the voxels instead of into a
    second volume-sized array (the encoder's peak memory falls by that much).

    `native`: None = the native core when built, False = the reference Python path, True =
    the native core or an error (both write the same bytes). `threads`: slabs coded at once
    (default NVC_THREADS or the CPU count). `slabs`: the slab split (default `plan_slabs`).
    `base_model` replaces the profile's shipped model: for evaluation only (leave-one-out
    training measures sizes with models that are not shipped, so their files cannot be decoded).
    """
    with torch_threads(threads):
        shipped = base_model or registry.current_model(profile)
        return _encode_volume(volume, vmin, vmax, profile, progress, device, shipped, native, threads, slabs, consume)


def _encode_volume(
    volume: np.ndarray,
    vmin: int,
    vmax: int,
    profile: str,
    progress: Progress,
    device,
    shipped: registry.ShippedModel,
    native: bool | None,
    threads: int | None,
    slabs: list[tuple[int, int]] | None,
    consume: bool = False,
) -> EncodedVolume:
    if volume.ndim != 3 or volume.size == 0:
        raise UnsupportedInputError(f"engine expects a non-empty (Z, Y, X) volume, got shape {volume.shape}")
    if not 0 <= vmax - vmin <= 65535:
        raise UnsupportedInputError(f"value range [{vmin}, {vmax}] spans more than 16 bits")
    given = volume
    volume = np.ascontiguousarray(volume, dtype=np.int32)
    prof = get_profile(profile)
    spec = shipped.spec
    slabs = list(slabs) if slabs is not None else plan_slabs(volume.shape[0], prof.slab_depth)
    pred = _choose_predictor(volume, vmin, vmax, profile, progress, slabs, shipped, device)
    device = device if device is not None else default_device()
    use_native = _use_native(native, device)
    if progress:
        progress(0.4)

    # 1. every voxel's coding parameters (the encoder knows all values), 2. token counts
    if use_native:
        n_threads = native_core.slab_threads(threads, len(slabs))
        # a volume the caller hands over (consume) or our own int32 copy holds the symbols in place
        in_place = consume or volume is not given
        symbols = volume.view(np.uint32) if in_place else np.empty(volume.shape, dtype=np.uint32)
        counts = np.zeros((N_KEYS, N_TOKENS), dtype=np.int64)
        groups = _groups(len(slabs), n_threads) if progress else [range(len(slabs))]
        for g in groups:
            part = [slabs[i] for i in g]
            z0, z1 = part[0][0], part[-1][1]
            _, c = native_core.predict(pred.net, spec, volume[z0:z1], [(a - z0, b - z0) for a, b in part], vmin, vmax,
                                       n_threads, out=symbols[z0:z1])
            counts += c
            if progress:
                progress(0.4 + 0.4 * (g[-1] + 1) / len(slabs))
    elif device is not None:
        from codec import device_path

        packed, counts = device_path.predict(pred.net, spec, volume, slabs, vmin, vmax, device)
    else:
        counts, reference_symbols = _reference_predict(volume, vmin, vmax, slabs, pred, spec, progress)

    # 3. token tables measured on this volume, when they pay for their bytes
    adaptive = AdaptiveTables.from_counts(counts)
    static_bits = float((counts * pred.tables.cost_bits).sum())
    if adaptive.cost_bits(counts) + 8 * (len(adaptive.to_bytes()) + 4) < static_bits:
        pred.adaptive = adaptive
    tables = pred.coding_tables

    # 4. emit symbols in the decoder's order
    if use_native:
        payloads: list[bytes] = []
        for g in _groups(len(slabs), n_threads) if progress else [range(len(slabs))]:
            part = [slabs[i] for i in g]
            z0 = part[0][0]
            payloads += native_core.emit(spec, tables, symbols[z0 : part[-1][1]], [(a - z0, b - z0) for a, b in part],
                                         n_threads)
            if progress:
                progress(0.8 + 0.2 * (g[-1] + 1) / len(slabs))
        del symbols
    elif device is not None and native is not False and native_core.available():
        payloads = native_core.emit(spec, tables, packed, slabs)
    elif device is not None:
        payloads = _reference_emit(_unpack_symbols(packed, slabs, spec), slabs, tables, progress)
    else:
        payloads = _reference_emit(reference_symbols, slabs, tables, progress)
    if progress:
        progress(1.0)
    return EncodedVolume(pred.blob(), slabs, payloads)


def _unpack_symbols(packed: np.ndarray, slabs, spec: ContextSpec):
    """Packed symbols (key | token << 11 | extra << 18) -> the reference emitter's arrays."""
    geometry = SlabGeometry(tuple(b - a for a, b in slabs), packed.shape[1], packed.shape[2], spec.neighbours)
    arrays = [np.zeros(geometry.total_size, dtype=np.int32) for _ in range(3)]
    for s, (a, b) in enumerate(slabs):
        for arr, part in zip(arrays, native_core.unpack_symbols(packed[a:b])):
            geometry.interior(arr, s)[...] = part
    return (geometry, *arrays)


def _reference_predict(volume, vmin, vmax, slabs, pred: Predictor, spec: ContextSpec, progress):
    """Reference (numpy) prediction pass: token counts and per-voxel (key, token, extra) arrays."""
    geometry, buffer = load_into_buffer(volume, slabs, vmin, spec)
    keys = np.zeros(geometry.total_size, dtype=np.int32)
    tokens = np.zeros(geometry.total_size, dtype=np.int32)
    extra = np.zeros(geometry.total_size, dtype=np.int32)
    Y, X = geometry.height, geometry.width
    rows_per_task = max(1, min(Y, (1 << 16) // (X * len(geometry.neighbours)) or 1))

    def predict_rows(task: tuple[int, int, int]) -> None:
        s, z, y0 = task
        y1 = min(Y, y0 + rows_per_task)
        n = (y1 - y0) * X
        feats = spec.features(geometry.slice_neighbours(buffer, s, z, y0, y1), np.full(n, z == 0), vmin, vmax)
        mu, k = spec.coding_params(pred.net.forward(feats.inputs), feats, vmin, vmax)
        values = geometry.interior(buffer, s)[z, y0:y1].reshape(n)
        t, _, ex = tokenize(values - mu)
        shape = (y1 - y0, X)
        geometry.interior(keys, s)[z, y0:y1] = k.reshape(shape)
        geometry.interior(tokens, s)[z, y0:y1] = t.reshape(shape)
        geometry.interior(extra, s)[z, y0:y1] = ex.reshape(shape)

    # Slices are independent here; numpy releases the GIL on these arrays, so a few threads
    # use the machine's cores without processes.
    tasks = [(s, z, y0) for s, depth in enumerate(geometry.depths) for z in range(depth) for y0 in range(0, Y, rows_per_task)]
    with ThreadPoolExecutor(max_workers=encode_workers()) as pool:
        for done, _ in enumerate(pool.map(predict_rows, tasks), 1):
            if progress:
                progress(0.4 + 0.4 * done / len(tasks))
    interior_keys = np.concatenate([geometry.interior(keys, s).ravel() for s in range(len(slabs))])
    interior_tokens = np.concatenate([geometry.interior(tokens, s).ravel() for s in range(len(slabs))])
    counts = AdaptiveTables.count(interior_keys, interior_tokens)
    return counts, (geometry, keys, tokens, extra)


def _reference_emit(reference_symbols, slabs, tables, progress) -> list[bytes]:
    """Reference emission: constriction's range coder, symbols in the decoder's order."""
    geometry, keys, tokens, extra = reference_symbols
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
    return [e.get_compressed().tobytes() for e in encoders]


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
    device=None,
    native: bool | None = None,
) -> list[np.ndarray]:
    """Decode independently coded slabs into int32 (z, y, x) arrays.

    Native core: one thread per slab (at most `threads`, default NVC_THREADS or the CPU
    count). Reference path (`native=False`): all slabs in one wavefront, numpy or torch.
    """
    with torch_threads(threads):
        return _decode_slabs(model_blob, payloads, shapes, vmin, vmax, progress, device, native, threads)


def _decode_slabs(
    model_blob: bytes,
    payloads: Sequence[bytes],
    shapes: Sequence[tuple[int, int, int]],
    vmin: int,
    vmax: int,
    progress: Progress,
    device,
    native: bool | None,
    threads: int | None,
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
    device = device if device is not None else default_device()
    if device is not None:
        from codec import device_path

        return device_path.decode(pred.net, pred.spec, pred.coding_tables, payloads, shapes, vmin, vmax, device, progress)
    if _use_native(native, device):
        n_threads = native_core.slab_threads(threads, len(shapes))
        out: list[np.ndarray] = []
        for g in _groups(len(shapes), n_threads) if progress else [range(len(shapes))]:
            try:
                out += native_core.decode(pred.net, pred.spec, pred.coding_tables, [payloads[i] for i in g],
                                          [tuple(shapes[i]) for i in g], vmin, vmax, n_threads)
            except ValueError as exc:
                raise FormatError(f"slab payload is corrupt: {exc}") from None
            if progress:
                progress((g[-1] + 1) / len(shapes))
        return out
    return _reference_decode(pred, payloads, shapes, vmin, vmax, progress)


def decode_residuals(decoders, tables, keys: np.ndarray, slab: np.ndarray) -> np.ndarray:
    """One wavefront step's residuals (int64, the step's voxel order): each slab's voxels read
    from that slab's own range decoder with their table keys. Shared by the reference and the
    device decoders (the latter calls it with keys copied from the device)."""
    residual = np.empty(len(keys), dtype=np.int64)
    for s in np.unique(slab).tolist():
        sel = slab == s
        try:
            tokens, extra = decode_step(decoders[s], tables, keys[sel])
        except Exception as exc:  # constriction reports corrupt data as ValueError/RuntimeError
            raise FormatError(f"slab {s} payload is corrupt: {exc}") from None
        residual[sel] = detokenize(tokens, extra)
    return residual


def _reference_decode(pred: Predictor, payloads, shapes, vmin: int, vmax: int, progress: Progress) -> list[np.ndarray]:
    """Reference decoder: every slab in one wavefront, one network batch per step, constriction."""
    geometry = SlabGeometry(tuple(s[0] for s in shapes), shapes[0][1], shapes[0][2], pred.spec.neighbours)
    buffer = geometry.new_buffer(vmin)
    decoders = [constriction.stream.queue.RangeDecoder(np.frombuffer(p, dtype=np.uint32).copy()) for p in payloads]
    offsets = geometry.offsets
    tables = pred.coding_tables
    wave = Wavefront(geometry)
    for i, step in enumerate(wave.steps()):
        idx = step.index
        feats = pred.spec.features(gather_neighbours(buffer, idx, offsets), step.first_slice, vmin, vmax)
        out = pred.net.forward(feats.inputs)
        mu, keys = pred.spec.coding_params(out, feats, vmin, vmax)
        values = mu + decode_residuals(decoders, tables, keys, step.slab)
        if values.min() < vmin or values.max() > vmax:
            raise FormatError("decoded values leave the declared range: corrupt payload")
        buffer[idx] = values
        if progress and i % 256 == 0:
            progress(i / max(1, wave.n_steps))
    if progress:
        progress(1.0)
    return [np.ascontiguousarray(geometry.interior(buffer, s)) for s in range(len(shapes))]
