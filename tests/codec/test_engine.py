"""The prediction/entropy engine: tokens, exact integer inference, wavefront round trips."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from codec import engine, registry
from codec.context import N_INPUTS, NEIGHBOURS, SlabGeometry, compute_features, gather_neighbours
from codec.context_paper import CUBE
from codec.schedule import wavefront_constants
from codec.entropy import N_CLASSES, N_DIRECT, N_SIDES, N_TOKENS, FREQ_BITS, detokenize, token_extra_bits, tokenize
from codec.errors import FormatError
from codec.context import load_into_buffer, slab_bounds
from codec.network import ACT_MAX, LEAKY_SHIFT, MAX_BIAS, MAX_FAN_IN, MAX_WIDE_FAN_IN, WEIGHT_MAX, IntMLP
from codec.schedule import A, B, Wavefront

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"


def smooth_volume(shape: tuple[int, int, int], lo: int, hi: int, seed: int) -> np.ndarray:
    """A volume with structure (smooth field + noise + a flat background), values in [lo, hi]."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*(np.linspace(0, 3, n) for n in shape), indexing="ij")
    field = np.sin(x * 2 + z) * np.cos(y * 3) * 0.4 + 0.5
    vol = lo + (hi - lo) * field + rng.normal(0, (hi - lo) * 0.02 + 0.5, shape)
    vol[:, : shape[1] // 4] = lo  # clipped background
    return np.clip(np.rint(vol), lo, hi).astype(np.int32)


def roundtrip(vol: np.ndarray, **decode_kw) -> tuple[engine.EncodedVolume, np.ndarray]:
    vmin, vmax = int(vol.min()), int(vol.max())
    enc = engine.encode_volume(vol, vmin=vmin, vmax=vmax)
    shapes = [(b - a, *vol.shape[1:]) for a, b in enc.slabs]
    out = engine.decode_slabs(enc.model_blob, enc.payloads, shapes, vmin=vmin, vmax=vmax, **decode_kw)
    return enc, np.concatenate(out)


# ---------------------------------------------------------------------------- tokens and tables
@given(st.lists(st.integers(-65535, 65535), min_size=1, max_size=200))
def test_tokens_round_trip(values: list[int]) -> None:
    r = np.asarray(values, dtype=np.int64)
    tok, nb, extra = tokenize(r)
    assert tok.min() >= 0 and tok.max() < N_TOKENS
    assert np.array_equal(token_extra_bits(tok), nb)
    assert (extra >= 0).all() and (extra < (1 << nb.astype(np.int64))).all()
    assert np.array_equal(detokenize(tok, extra), r)


def test_small_residuals_have_their_own_tokens() -> None:
    tok, nb, _ = tokenize(np.arange(-N_DIRECT, N_DIRECT + 1))
    assert len(set(tok.tolist())) == 2 * N_DIRECT + 1 and not nb.any()


def test_shipped_tables_are_valid() -> None:
    shipped = registry.current_model("default")
    tables = registry.load_tables(shipped.tables_file)
    f = tables.freqs
    assert f.shape == (N_SIDES, N_CLASSES, N_TOKENS)
    assert tables.digest.startswith(Path(shipped.tables_file).stem.split("-", 1)[1])
    assert (f[0] > 0).all(), "interior tables must allow every token"
    assert (f[1][:, :N_DIRECT] == 0).all() and (f[1][:, N_DIRECT] > 0).all()
    assert (f.max(axis=-1) <= (1 << FREQ_BITS)).all()
    # larger classes are flatter: the probability of r = 0 decreases with the class
    p0 = f[0, :, N_DIRECT] / f[0].sum(axis=-1)
    assert (np.diff(p0) <= 0).all()


# ---------------------------------------------------------------------------- exact inference
def reference_forward(net: IntMLP, inputs: np.ndarray) -> np.ndarray:
    """Independent pure-integer implementation of IntMLP.forward (int64 numpy, shifts only)."""
    h = inputs.astype(np.int64)
    for i, layer in enumerate(net.layers):
        acc = h @ layer.weight.T + layer.bias
        s = layer.shift[None, :]
        acc = np.where(s < 0, acc << np.maximum(-s, 0), acc)  # a negative shift is a left shift
        s = np.maximum(s, 0)
        if i < len(net.layers) - 1:
            acc = np.where(acc < 0, acc >> (s + LEAKY_SHIFT), acc >> s)
            h = np.clip(acc, -ACT_MAX, ACT_MAX)
        else:
            h = acc >> s
    return h


@pytest.fixture(scope="module")
def shipped_net() -> IntMLP:
    return registry.current_model("default").net


def random_inputs(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.integers(-1023, 1024, (n, N_INPUTS)).astype(np.float32)
    x[: n // 2] = np.clip(np.rint(rng.normal(0, 40, (n // 2, N_INPUTS))), -1023, 1023)
    return x


def test_float_inference_equals_integer_reference(shipped_net: IntMLP) -> None:
    x = random_inputs(20000, 1)
    assert np.array_equal(shipped_net.forward(x), reference_forward(shipped_net, x))


def test_inference_is_independent_of_batch_split_and_threads(shipped_net: IntMLP) -> None:
    x = random_inputs(30011, 2)
    whole = shipped_net.forward(x)
    before = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            for chunk in (1, 7, 4096, 30011):
                parts = [shipped_net.forward(x[i : i + chunk]) for i in range(0, len(x), chunk)] if chunk > 1 else [
                    shipped_net.forward(x[:50])
                ]
                got = np.concatenate(parts)
                assert np.array_equal(got, whole[: len(got)]), (threads, chunk)
    finally:
        torch.set_num_threads(before)


def test_weight_and_activation_bounds_keep_float64_sums_exact(shipped_net: IntMLP) -> None:
    for layer in shipped_net.layers:
        assert layer.weight.shape[1] <= MAX_FAN_IN
        assert np.abs(layer.weight).max() <= WEIGHT_MAX
        assert np.abs(layer.bias).max() <= MAX_BIAS
    worst = MAX_WIDE_FAN_IN * WEIGHT_MAX * ACT_MAX + MAX_BIAS
    assert worst < 1 << 53


def test_weights_serialisation_round_trip(shipped_net: IntMLP) -> None:
    again = IntMLP.from_bytes(shipped_net.to_bytes())
    x = random_inputs(1000, 3)
    assert np.array_equal(again.forward(x), shipped_net.forward(x))


@pytest.mark.parametrize("blob", [b"", b"\x00", b"x" * 50, b"\x78\x9c" + b"\x00" * 20])
def test_garbage_weights_are_format_errors(blob: bytes) -> None:
    with pytest.raises(FormatError):
        IntMLP.from_bytes(blob)


# ---------------------------------------------------------------------------- contexts and schedule
@pytest.mark.parametrize("neighbours", [NEIGHBOURS, CUBE], ids=["local", "paper-cube"])
def test_wavefront_is_causal_and_complete(neighbours) -> None:
    geometry = SlabGeometry((3, 2), 5, 7, neighbours)
    seen = np.zeros(geometry.total_size, dtype=np.int64) - 1
    for t, step in enumerate(Wavefront(geometry).steps()):
        # every context voxel of every voxel in this step was coded in an earlier step (or is padding)
        ctx = step.index[:, None] + geometry.offsets[None, :]
        assert (seen[ctx] < t).all()
        assert (seen[step.index] == -1).all()
        seen[step.index] = t
    for s in range(2):
        assert (geometry.interior(seen, s) >= 0).all()
    a, b = wavefront_constants(neighbours)
    assert all(dx + a * dy + b * dz < 0 for dz, dy, dx in neighbours)
    assert (A, B) == (3, 9)


def test_encoder_and_decoder_contexts_agree() -> None:
    vol = smooth_volume((4, 9, 11), 0, 900, 0)
    geometry, buffer = load_into_buffer(vol, slab_bounds(4, 3), 0)
    for s, depth in enumerate(geometry.depths):
        for z in range(depth):
            yy, xx = np.meshgrid(np.arange(9), np.arange(11), indexing="ij")
            idx = geometry.voxel_index(s, np.full(yy.size, z), yy.ravel(), xx.ravel())
            a = compute_features(geometry.slice_neighbours(buffer, s, z), np.full(yy.size, z == 0), 0, 900)
            b = compute_features(gather_neighbours(buffer, idx, geometry.offsets), np.full(yy.size, z == 0), 0, 900)
            assert np.array_equal(a.inputs, b.inputs) and np.array_equal(a.ref, b.ref)


# ---------------------------------------------------------------------------- round trips
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    shape=st.tuples(st.integers(1, 5), st.integers(1, 12), st.integers(1, 12)),
    lo=st.integers(-40000, 40000),
    span=st.integers(0, 65535),
    seed=st.integers(0, 2**31),
)
def test_round_trip_random_volumes(shape, lo, span, seed) -> None:
    rng = np.random.default_rng(seed)
    vol = rng.integers(lo, lo + span + 1, shape).astype(np.int32)
    if seed % 3 == 0:
        vol[:] = lo  # constant volume
    _, out = roundtrip(vol)
    assert np.array_equal(out, vol)


def test_round_trip_structured_volume_with_several_slabs() -> None:
    vol = smooth_volume((70, 24, 31), -1024, 3071, 5)  # 3 slabs of depth 32 -> 4 balanced ones (plan_slabs)
    enc, out = roundtrip(vol)
    assert enc.slabs == [(0, 18), (18, 36), (36, 53), (53, 70)]
    assert np.array_equal(out, vol)
    bits = 8 * (len(enc.model_blob) + sum(map(len, enc.payloads))) / vol.size
    assert bits < 16, "a smooth volume must compress"


def test_decode_is_identical_with_one_and_two_threads() -> None:
    vol = smooth_volume((6, 40, 40), 0, 4000, 9)
    enc, one = roundtrip(vol, threads=1)
    shapes = [(b - a, 40, 40) for a, b in enc.slabs]
    two = np.concatenate(
        engine.decode_slabs(enc.model_blob, enc.payloads, shapes, vmin=int(vol.min()), vmax=int(vol.max()), threads=2)
    )
    assert np.array_equal(one, vol) and np.array_equal(two, vol)


def test_each_slab_decodes_on_its_own() -> None:
    vol = smooth_volume((40, 16, 16), 0, 2000, 3)
    enc = engine.encode_volume(vol, vmin=int(vol.min()), vmax=int(vol.max()))
    a, b = enc.slabs[1]
    (only,) = engine.decode_slabs(
        enc.model_blob, [enc.payloads[1]], [(b - a, 16, 16)], vmin=int(vol.min()), vmax=int(vol.max())
    )
    assert np.array_equal(only, vol[a:b])


def test_payload_too_small_for_its_voxels_is_refused_before_work() -> None:
    vol = smooth_volume((2, 8, 8), 0, 100, 1)
    enc = engine.encode_volume(vol, vmin=0, vmax=100)
    with pytest.raises(FormatError, match="claims"):
        engine.decode_slabs(enc.model_blob, [b"\x00" * 4], [(4096, 4096, 4096)], vmin=0, vmax=100)


def test_corrupt_payload_never_passes_silently() -> None:
    vol = smooth_volume((4, 30, 30), 0, 3000, 4)
    enc = engine.encode_volume(vol, vmin=0, vmax=3000)
    rng = np.random.default_rng(0)
    for trial in range(5):
        p = bytearray(enc.payloads[0])
        p[rng.integers(0, len(p))] ^= 1 << int(rng.integers(0, 8))
        try:
            (out,) = engine.decode_slabs(enc.model_blob, [bytes(p)], [vol.shape], vmin=0, vmax=3000)
        except FormatError:
            continue
        # the range coder may decode a damaged stream into other values: the container's SHA-256 catches it
        assert out.shape == vol.shape


@pytest.mark.parametrize(
    "blob",
    [b"", b"\x01", b"\x02\x00\x00", b"\x01\x00\x05abc", b"\x01\x00\x03../", b"\x01\x07\x00", b"\x01\x00\x03zzz"],
)
def test_hostile_model_blobs_are_format_errors(blob: bytes) -> None:
    with pytest.raises(FormatError):
        engine.Predictor.from_blob(blob)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")
@pytest.mark.gpu
def test_encode_on_gpu_decode_on_cpu() -> None:
    vol = smooth_volume((8, 64, 64), 0, 4000, 11)
    enc = engine.encode_volume(vol, vmin=0, vmax=4000, device=torch.device("cuda"))
    shapes = [(b - a, 64, 64) for a, b in enc.slabs]
    cpu = engine.decode_slabs(enc.model_blob, enc.payloads, shapes, vmin=0, vmax=4000, device=torch.device("cpu"))
    gpu = engine.decode_slabs(enc.model_blob, enc.payloads, shapes, vmin=0, vmax=4000, device=torch.device("cuda"))
    assert np.array_equal(np.concatenate(cpu), vol) and np.array_equal(np.concatenate(gpu), vol)


@pytest.mark.slow
@pytest.mark.skipif(not (DATA / "mr_phantom_t1_3d_lowres.nii.gz").exists(), reason="../shared/data not present")
def test_real_volume_round_trip_and_thread_independence() -> None:
    from codec.train import load_engine_volume

    vol, vmin, vmax = load_engine_volume(DATA / "mr_phantom_t1_3d_lowres.nii.gz")
    vol = np.ascontiguousarray(vol[:40])
    enc = engine.encode_volume(vol, vmin=vmin, vmax=vmax, threads=2)
    shapes = [(b - a, *vol.shape[1:]) for a, b in enc.slabs]
    for threads in (1, 2):
        out = engine.decode_slabs(enc.model_blob, enc.payloads, shapes, vmin=vmin, vmax=vmax, threads=threads)
        assert np.array_equal(np.concatenate(out), vol)
    bits = 8 * (len(enc.model_blob) + sum(map(len, enc.payloads))) / vol.size
    assert bits < 2.9  # JPEG-LS needs 2.896 bits/voxel on the whole volume
