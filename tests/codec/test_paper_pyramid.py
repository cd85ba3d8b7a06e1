"""The seed paper's pyramid sampling (profile `paper-pyramid`, context `pyramid`).

Its neighbours are the paper's windows (13x13, 9x9, 5x5 on the three previous slices) plus the
current slice's W, N, NW, NE; the wavefront must stay causal for them, and the reference path,
the native core (generic CTX_PAPER over the neighbour list) and the device twin must code
them to the same bytes and give the voxels back. Volumes are tiny: the network has about
0.97 M multiply-adds per voxel, and the reference runs it in numpy.
"""

from __future__ import annotations

import numpy as np
import pytest

from codec import engine, native_core, registry
from codec.context import SlabGeometry, context_spec, gather_neighbours, load_into_buffer, slab_bounds
from codec.context_paper import PAPER_PYRAMID, PYRAMID, PYRAMID_RADII, paper_features
from codec.profiles import PROFILES
from codec.schedule import Wavefront, wavefront_constants

needs_native = pytest.mark.skipif(not native_core.available(), reason="codec._nvcore is not built (pip install -e .)")


def smooth_volume(shape: tuple[int, int, int], lo: int, hi: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*(np.linspace(0, 3, n) for n in shape), indexing="ij")
    field = np.sin(x * 2 + z) * np.cos(y * 3) * 0.4 + 0.5
    vol = lo + (hi - lo) * field + rng.normal(0, (hi - lo) * 0.02 + 0.5, shape)
    return np.clip(np.rint(vol), lo, hi).astype(np.int32)


@pytest.fixture(autouse=True)
def no_fitting(monkeypatch):
    """The profile fits nothing; keep it so even if its effort changes (fitting is float, tested elsewhere)."""
    monkeypatch.setattr(engine, "fit_steps", lambda profile, voxels: 0)


def test_neighbours_are_the_papers_windows_plus_the_in_slice_causal_four() -> None:
    assert len(PYRAMID) == len(set(PYRAMID)) == 13 * 13 + 9 * 9 + 5 * 5 + 4 == PAPER_PYRAMID.n_inputs
    for i, r in enumerate(PYRAMID_RADII):
        window = {(dy, dx) for dz, dy, dx in PYRAMID if dz == -(i + 1)}
        assert window == {(dy, dx) for dy in range(-r, r + 1) for dx in range(-r, r + 1)}
    assert {n for n in PYRAMID if n[0] == 0} == {(0, 0, -1), (0, -1, 0), (0, -1, -1), (0, -1, 1)}
    assert min(dz for dz, _, _ in PYRAMID) == -3
    assert context_spec(PROFILES["paper-pyramid"].context) is PAPER_PYRAMID
    assert registry.current_model("paper-pyramid").spec is PAPER_PYRAMID
    assert registry.current_model("paper-pyramid").net.n_inputs == PAPER_PYRAMID.n_inputs


def test_wavefront_is_causal_and_complete_for_the_pyramid() -> None:
    geometry = SlabGeometry((4, 2), 5, 7, PYRAMID)
    seen = np.zeros(geometry.total_size, dtype=np.int64) - 1
    offsets = geometry.offsets  # a computed property: once, not per step
    for t, step in enumerate(Wavefront(geometry).steps()):
        ctx = step.index[:, None] + offsets[None, :]
        assert (seen[ctx] < t).all()  # every context voxel was coded earlier (or is padding)
        assert (seen[step.index] == -1).all()
        seen[step.index] = t
    for s in range(2):
        assert (geometry.interior(seen, s) >= 0).all()
    assert wavefront_constants(PYRAMID) == (2, 19)  # NE needs A = 2; the 13x13 window's corner (1, 6, 6) B = 19


def test_encoder_and_decoder_gathers_agree() -> None:
    vol = smooth_volume((5, 9, 11), 0, 900, 0)
    geometry, buffer = load_into_buffer(vol, slab_bounds(5, 3), 0, PAPER_PYRAMID)
    yy, xx = np.meshgrid(np.arange(9), np.arange(11), indexing="ij")
    for s, depth in enumerate(geometry.depths):
        for z in range(depth):
            idx = geometry.voxel_index(s, np.full(yy.size, z), yy.ravel(), xx.ravel())
            first = np.full(yy.size, z == 0)
            a = paper_features(geometry.slice_neighbours(buffer, s, z), first, 0, 900)
            b = paper_features(gather_neighbours(buffer, idx, geometry.offsets), first, 0, 900)
            assert np.array_equal(a.inputs, b.inputs)


def _decode(enc: engine.EncodedVolume, vol: np.ndarray, **kw) -> np.ndarray:
    shapes = [(b - a, *vol.shape[1:]) for a, b in enc.slabs]
    out = engine.decode_slabs(enc.model_blob, enc.payloads, shapes, vmin=int(vol.min()), vmax=int(vol.max()), **kw)
    return np.concatenate(out)


@needs_native
@pytest.mark.parametrize(
    "shape,lo,hi,seed",
    [((5, 6, 7), 0, 900, 1), ((16, 3, 4), -1024, 3071, 2), ((1, 1, 1), 3, 3, 3), ((2, 1, 7), 0, 5, 4),
     ((4, 5, 15), -40000, 25000, 5)],
)
def test_reference_and_native_write_the_same_bytes_and_decode_each_other(shape, lo, hi, seed) -> None:
    vol = smooth_volume(shape, lo, hi, seed)
    vmin, vmax = int(vol.min()), int(vol.max())
    ref = engine.encode_volume(vol, vmin=vmin, vmax=vmax, profile="paper-pyramid", native=False)
    nat = engine.encode_volume(vol, vmin=vmin, vmax=vmax, profile="paper-pyramid", native=True)
    assert nat.slabs == ref.slabs and nat.model_blob == ref.model_blob and nat.payloads == ref.payloads
    assert np.array_equal(_decode(ref, vol, native=True), vol)
    assert np.array_equal(_decode(ref, vol, native=False), vol)


@needs_native
@pytest.mark.parametrize("seed", range(3))
def test_random_volumes_round_trip_bit_exactly(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    shape = tuple(int(n) for n in rng.integers(1, [5, 6, 6], endpoint=True))
    lo = int(rng.integers(-40000, 40000))
    vol = rng.integers(lo, lo + int(rng.integers(0, 65536)), shape, endpoint=True).astype(np.int32)
    vmin, vmax = int(vol.min()), int(vol.max())
    ref = engine.encode_volume(vol, vmin=vmin, vmax=vmax, profile="paper-pyramid", native=False)
    nat = engine.encode_volume(vol, vmin=vmin, vmax=vmax, profile="paper-pyramid", native=True)
    assert nat.payloads == ref.payloads
    assert np.array_equal(_decode(nat, vol, native=True), vol)
    assert np.array_equal(_decode(nat, vol, native=False), vol)

