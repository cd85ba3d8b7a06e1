"""The native coding core (codec._nvcore) against the reference Python path.

The reference (`native=False`: numpy network, numpy features, constriction) is the
readable specification; the native core must give the same integers and the same bytes:
byte-identical payloads for every shipped profile, random and structured volumes, 1 and 2
threads and every network kernel this CPU has; native output decodes with the reference
and reference output with the native core; old (frozen) files decode natively.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from codec import engine, native_core, registry
from codec.context import MIN_SPLIT_SLICES, plan_slabs, slab_bounds

pytestmark = pytest.mark.skipif(not native_core.available(), reason="codec._nvcore is not built (pip install -e .)")

REPO = Path(__file__).resolve().parents[2]
DATA = REPO.parent / "shared" / "data"


def smooth_volume(shape: tuple[int, int, int], lo: int, hi: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*(np.linspace(0, 3, n) for n in shape), indexing="ij")
    field = np.sin(x * 2 + z) * np.cos(y * 3) * 0.4 + 0.5
    vol = lo + (hi - lo) * field + rng.normal(0, (hi - lo) * 0.02 + 0.5, shape)
    vol[:, : shape[1] // 4] = lo
    return np.clip(np.rint(vol), lo, hi).astype(np.int32)


def both(vol: np.ndarray, profile: str = "default", **kw) -> engine.EncodedVolume:
    """Encode with the reference and the native core; assert identical bytes; return the result."""
    vmin, vmax = int(vol.min()), int(vol.max())
    ref = engine.encode_volume(vol, vmin=vmin, vmax=vmax, profile=profile, native=False, **kw)
    nat = engine.encode_volume(vol, vmin=vmin, vmax=vmax, profile=profile, native=True, **kw)
    assert nat.slabs == ref.slabs
    assert nat.model_blob == ref.model_blob
    assert nat.payloads == ref.payloads
    return nat


def decode(enc: engine.EncodedVolume, vol: np.ndarray, **kw) -> np.ndarray:
    shapes = [(b - a, *vol.shape[1:]) for a, b in enc.slabs]
    out = engine.decode_slabs(enc.model_blob, enc.payloads, shapes, vmin=int(vol.min()), vmax=int(vol.max()), **kw)
    return np.concatenate(out)


# ---------------------------------------------------------------------------- network kernels
@pytest.mark.parametrize("profile", ["default", "paper", "paper-pyramid"])
def test_every_kernel_gives_the_reference_integers(profile: str) -> None:
    net = registry.current_model(profile).net
    rng = np.random.default_rng(7)
    x = rng.integers(-1023, 1024, (1001, net.n_inputs)).astype(np.float64)
    x[:500] = np.clip(np.rint(rng.normal(0, 30, (500, net.n_inputs))), -1023, 1023)
    ref = net.forward(x)
    assert "scalar" in native_core.kernels()
    for kernel in native_core.kernels():
        with native_core.use_kernel(kernel):
            for n in (1, 3, 8, 63, 64, 65, len(x)):
                assert np.array_equal(native_core.forward(net, x[:n]), ref[:n]), (kernel, n)


def test_kernel_extremes_are_exact() -> None:
    """Largest weights, activations and biases the format allows: sums reach ~2^41, still exact."""
    from codec.network import ACT_MAX, IntLayer, IntMLP, WEIGHT_MAX

    rng = np.random.default_rng(3)
    layers = []
    dims = (40, 48, 48, 2)
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        w = rng.choice([-WEIGHT_MAX, WEIGHT_MAX, 0, 1, -1], size=(b, a)).astype(np.int64)
        bias = rng.integers(-(1 << 40), 1 << 40, b)
        shift = rng.integers(-3, 20, b) if i < 2 else np.asarray([-2, 30])
        layers.append(IntLayer(w, bias, shift))
    net = IntMLP(40, (48, 48), layers)
    x = rng.choice([-1023.0, 1023.0, 0.0], size=(257, 40))
    ref = net.forward(x)
    assert np.abs(ref).max() > ACT_MAX  # outputs are not clamped
    for kernel in native_core.kernels():
        with native_core.use_kernel(kernel):
            assert np.array_equal(native_core.forward(net, x), ref), kernel


def test_integer_kernel_falls_back_where_its_bounds_do_not_hold() -> None:
    """Inputs beyond +-1023 (never produced by the features, possible through `forward`) and
    weights whose int32 sums could wrap run the float64 twin: still the reference integers."""
    from codec.network import IntLayer, IntMLP, WEIGHT_MAX

    net = registry.current_model("default").net
    rng = np.random.default_rng(11)
    x = rng.integers(-4000, 4001, (130, net.n_inputs)).astype(np.float64)
    wide = IntMLP(80, (48,), [IntLayer(np.full((48, 80), WEIGHT_MAX, np.int64), np.zeros(48, np.int64), np.full(48, 14)),
                              IntLayer(np.full((2, 48), -WEIGHT_MAX, np.int64), np.zeros(2, np.int64), np.asarray([3, 9]))])
    xw = np.full((70, 80), 1023.0)  # 80 * 1023 * 32767 > 2^31: the int32 sums would wrap
    for kernel in native_core.kernels():
        with native_core.use_kernel(kernel):
            assert np.array_equal(native_core.forward(net, x), net.forward(x)), kernel
            assert np.array_equal(native_core.forward(wide, xw), wide.forward(xw)), kernel


def test_forcing_an_unknown_kernel_is_refused() -> None:
    with pytest.raises(ValueError):
        with native_core.use_kernel("vax"):
            pass


# ---------------------------------------------------------------------------- byte identity
@pytest.mark.parametrize("profile", ["default", "paper"])
@pytest.mark.parametrize(
    "shape,lo,hi",
    [((5, 9, 11), 0, 900), ((3, 7, 5), 100, 100), ((1, 1, 1), 3, 3), ((2, 1, 7), 0, 5), ((4, 6, 6), -40000, 25000)],
)
def test_native_writes_the_reference_bytes(profile: str, shape, lo: int, hi: int) -> None:
    vol = smooth_volume(shape, lo, hi, 1)
    enc = both(vol, profile)
    assert np.array_equal(decode(enc, vol, native=True), vol)
    assert np.array_equal(decode(enc, vol, native=False), vol)


def test_native_writes_the_reference_bytes_with_fitting_and_tables() -> None:
    """Fine-tuned weights and per-volume tables embedded: both paths code with them identically."""
    vol = smooth_volume((20, 24, 31), -1024, 3071, 2)
    enc = both(vol)
    assert len(enc.slabs) == 2
    assert np.array_equal(decode(enc, vol, native=True), vol)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    shape=st.tuples(st.integers(1, 4), st.integers(1, 10), st.integers(1, 10)),
    lo=st.integers(-40000, 40000),
    span=st.integers(0, 65535),
    seed=st.integers(0, 2**31),
)
def test_random_volumes_round_trip_identically(shape, lo, span, seed) -> None:
    rng = np.random.default_rng(seed)
    vol = rng.integers(lo, lo + span + 1, shape).astype(np.int32)
    enc = both(vol)
    assert np.array_equal(decode(enc, vol, native=True), vol)
    assert np.array_equal(decode(enc, vol, native=False), vol)


def test_threads_and_kernels_do_not_change_bytes_or_voxels(monkeypatch) -> None:
    monkeypatch.setattr(engine, "fit_steps", lambda profile, voxels: 0)  # fitting is covered above
    vol = smooth_volume((40, 16, 16), 0, 2000, 3)  # 2 slabs
    ref = engine.encode_volume(vol, vmin=0, vmax=int(vol.max()), native=False)
    for kernel in native_core.kernels():
        with native_core.use_kernel(kernel):
            for threads in (1, 2):
                enc = engine.encode_volume(vol, vmin=0, vmax=int(vol.max()), native=True, threads=threads)
                assert enc.payloads == ref.payloads and enc.model_blob == ref.model_blob, (kernel, threads)
                assert np.array_equal(decode(ref, vol, native=True, threads=threads), vol), (kernel, threads)


def test_reference_decodes_native_output_and_native_decodes_reference_output() -> None:
    vol = smooth_volume((6, 20, 22), -500, 1500, 8)
    vmin, vmax = int(vol.min()), int(vol.max())
    nat = engine.encode_volume(vol, vmin=vmin, vmax=vmax, native=True)
    ref = engine.encode_volume(vol, vmin=vmin, vmax=vmax, native=False)
    assert np.array_equal(decode(nat, vol, native=False), vol)
    assert np.array_equal(decode(ref, vol, native=True), vol)


def test_explicit_slab_splits_agree() -> None:
    vol = smooth_volume((9, 12, 13), 0, 700, 4)
    for slabs in ([(0, 9)], [(0, 1), (1, 9)], [(0, 3), (3, 6), (6, 9)]):
        enc = both(vol, slabs=slabs)
        assert enc.slabs == slabs
        assert np.array_equal(decode(enc, vol, native=True), vol)


# ---------------------------------------------------------------------------- hostile payloads
def test_corrupt_payloads_are_format_errors_or_other_voxels() -> None:
    from codec.errors import FormatError

    vol = smooth_volume((4, 30, 30), 0, 3000, 4)
    enc = engine.encode_volume(vol, vmin=0, vmax=3000)
    rng = np.random.default_rng(0)
    outcomes = set()
    for _ in range(20):
        p = bytearray(enc.payloads[0])
        p[int(rng.integers(0, len(p)))] ^= 1 << int(rng.integers(0, 8))
        try:
            (out,) = engine.decode_slabs(enc.model_blob, [bytes(p)], [vol.shape], vmin=0, vmax=3000, native=True)
        except FormatError:
            outcomes.add("error")
            continue
        outcomes.add("decoded")  # the container's CRC and SHA-256 catch other voxels
        assert out.shape == vol.shape
    for payload in (b"", b"\xff" * 4, enc.payloads[0][:8]):
        with pytest.raises(FormatError):
            engine.decode_slabs(enc.model_blob, [payload], [vol.shape], vmin=0, vmax=3000, native=True)


# ---------------------------------------------------------------------------- slab split
def test_slab_plan_is_balanced_and_uses_two_cores_from_16_slices() -> None:
    for z in range(1, 200):
        slabs = plan_slabs(z, 32)
        depths = [b - a for a, b in slabs]
        assert slabs[0][0] == 0 and slabs[-1][1] == z and all(a < b for a, b in slabs)
        assert all(slabs[i][1] == slabs[i + 1][0] for i in range(len(slabs) - 1))
        assert max(depths) - min(depths) <= 1 and max(depths) <= 32
        assert (len(slabs) >= 2) == (z >= MIN_SPLIT_SLICES)
        assert len(slabs) == 1 or len(slabs) % 2 == 0
    assert slab_bounds(37, 32) == [(0, 32), (32, 37)]  # the split of files before the native core


# ---------------------------------------------------------------------------- imports
def _imports(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", code + "\nimport sys; print(' '.join(sorted(sys.modules)))"],
        capture_output=True, text=True, check=True, cwd=REPO, timeout=300,
    )
    return set(out.stdout.split())


def test_engine_imports_nothing_of_fitting_or_training() -> None:
    mods = _imports("import codec.engine")
    assert not {"torch", "codec.fit", "codec.train"} & mods


def test_decoding_and_encoding_without_fitting_never_import_torch() -> None:
    code = """
import numpy as np, codec
vol = (np.arange(6 * 20 * 24).reshape(24, 20, 6) % 97).astype(np.uint16)
data = codec.encode(vol[..., :2])  # 2 slices * 480 voxels < 4096: no fitting
assert np.array_equal(codec.decode(data), vol[..., :2])
codec.info(data)
"""
    assert "torch" not in _imports(code)


# ---------------------------------------------------------------------------- real data
@pytest.mark.slow
@pytest.mark.skipif(not (DATA / "mr_phantom_t1_3d_lowres.nii.gz").exists(), reason="../shared/data not present")
def test_real_volume_native_equals_reference() -> None:
    from codec.train import load_engine_volume

    vol, vmin, vmax = load_engine_volume(DATA / "mr_phantom_t1_3d_lowres.nii.gz")
    vol = np.ascontiguousarray(vol[30:50])
    enc = both(vol)
    assert len(enc.slabs) == 2
    for threads in (1, 2):
        assert np.array_equal(decode(enc, vol, native=True, threads=threads), vol)


# ---------------------------------------------------------------------------- frozen files
CONFORMANCE = Path(__file__).resolve().parent / "conformance"


@pytest.mark.parametrize("name", sorted(p.stem for p in (CONFORMANCE / "vectors").glob("*.nvc")))
def test_frozen_vectors_decode_identically_natively_and_with_the_reference(name: str, monkeypatch) -> None:
    import codec

    data = (CONFORMANCE / "vectors" / f"{name}.nvc").read_bytes()
    native = codec.decode(data)
    monkeypatch.setenv("NVC_NATIVE", "0")
    assert not native_core.available()
    reference = codec.decode(data)
    assert native.dtype == reference.dtype and np.array_equal(native, reference)


def test_symbols_written_over_a_consumed_volume_give_the_same_bytes(monkeypatch) -> None:
    """consume=True: the symbols replace the voxels in place (less memory), same file; without
    it the caller's int32 array is left untouched."""
    monkeypatch.setattr(engine, "fit_steps", lambda profile, voxels: 0)
    vol = smooth_volume((40, 16, 16), -300, 2000, 5)  # 2 slabs
    kept = vol.copy()
    plain = engine.encode_volume(vol, vmin=int(vol.min()), vmax=int(vol.max()), native=True)
    assert np.array_equal(vol, kept)
    handed = vol.copy()
    consumed = engine.encode_volume(handed, vmin=int(vol.min()), vmax=int(vol.max()), native=True, consume=True)
    assert consumed.payloads == plain.payloads and consumed.model_blob == plain.model_blob
    assert not np.array_equal(handed, kept)  # its memory now holds the symbols
