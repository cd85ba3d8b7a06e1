"""Causal 3-D neighbourhoods and the integer features the predictor sees.

Every voxel (z, y, x) of a slab is predicted from already-coded voxels only: twelve
neighbours in its own slice (rows above and the part of its row to the left) and a 5x5
window in the previous slice. Both the encoder and the decoder compute the features with
the same integer numpy code, so they agree bit for bit on any machine.

Features are the neighbours relative to a reference prediction (the LOCO-I median edge
detector) divided by a local activity measure: the network then sees the *shape* of the
neighbourhood, not its absolute contrast, which is what lets one small model serve CT and
MR alike.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from codec.entropy import N_CLASSES, N_LEVELS, N_SHAPES

#: Fixed-point bits of the network's mean output.
MEAN_FRAC_BITS = 8

#: (dz, dy, dx) of every context voxel. Index 0..11: current slice; 12..36: previous slice.
NEIGHBOURS: tuple[tuple[int, int, int], ...] = (
    (0, 0, -1),  # W
    (0, 0, -2),  # WW
    (0, 0, -3),  # WWW
    (0, -1, -2),  # NWW
    (0, -1, -1),  # NW
    (0, -1, 0),  # N
    (0, -1, 1),  # NE
    (0, -1, 2),  # NEE
    (0, -2, -1),  # NNW
    (0, -2, 0),  # NN
    (0, -2, 1),  # NNE
    (0, -3, 0),  # NNN
) + tuple((-1, dy, dx) for dy in range(-2, 3) for dx in range(-2, 3))

W, WW, WWW, NWW, NW, N, NE, NEE, NNW, NN, NNE, NNN = range(12)
PREV_FIRST = 12
N_NEIGHBOURS = len(NEIGHBOURS)

#: Extra inputs after the neighbour features: log-activity bucket, relative level, no-previous-slice flag.
N_EXTRA = 3
N_INPUTS = N_NEIGHBOURS + N_EXTRA

#: Fixed-point scale of features: feature ~= (neighbour - ref) * FEATURE_SCALE / divisor.
FEATURE_SHIFT = 6
FEATURE_SCALE = 1 << FEATURE_SHIFT
#: Features are clipped to this magnitude so the first layer's sums stay exact in float32.
FEATURE_CLIP = 1023
#: Added to the activity so the divisor is never zero (and flat areas are not over-amplified).
ACTIVITY_BIAS = 2
#: Number of quarter-octave activity buckets (divisors up to 5 * 65535 + 2 < 2^19).
N_ACTIVITY_BUCKETS = 77


def _quarter_octave_thresholds(count: int) -> np.ndarray:
    """Smallest integers t_j with t_j >= 2^(j/4), j = 1..count, computed with integers only."""
    out = []
    for j in range(1, count + 1):
        # smallest t with t^4 >= 2^j
        t = max(1, int(round(2 ** (j / 4))) - 2)
        while t**4 < (1 << j):
            t += 1
        while t > 1 and (t - 1) ** 4 >= (1 << j):
            t -= 1
        out.append(t)
    return np.asarray(out, dtype=np.int64)


#: bucket(d) = number of thresholds <= d: floor(4 * log2(d)) for d >= 1, exact.
ACTIVITY_THRESHOLDS = _quarter_octave_thresholds(N_ACTIVITY_BUCKETS - 1)


def activity_bucket(divisor: np.ndarray) -> np.ndarray:
    """Quarter-octave bucket of the divisor: an integer close to 4 * log2(divisor)."""
    return np.searchsorted(ACTIVITY_THRESHOLDS, divisor, side="right").astype(np.int32)


@dataclass(frozen=True)
class Padding:
    """Voxels of padding around a slab: slices before, rows and columns before/after."""

    z: int
    y0: int
    y1: int
    x0: int
    x1: int

    @classmethod
    def for_neighbours(cls, neighbours: tuple[tuple[int, int, int], ...]) -> "Padding":
        dz = [n[0] for n in neighbours]
        dy = [n[1] for n in neighbours]
        dx = [n[2] for n in neighbours]
        return cls(-min(dz), max(0, -min(dy)), max(0, max(dy)), max(0, -min(dx)), max(0, max(dx)))


@dataclass(frozen=True)
class SlabGeometry:
    """Index arithmetic for a stack of equally sized padded slabs laid out in one flat buffer."""

    depths: tuple[int, ...]
    height: int
    width: int
    neighbours: tuple[tuple[int, int, int], ...] = NEIGHBOURS

    @property
    def pad(self) -> Padding:
        return Padding.for_neighbours(self.neighbours)

    @property
    def row_stride(self) -> int:
        return self.width + self.pad.x0 + self.pad.x1

    @property
    def slice_stride(self) -> int:
        return (self.height + self.pad.y0 + self.pad.y1) * self.row_stride

    def slab_size(self, depth: int) -> int:
        return (depth + self.pad.z) * self.slice_stride

    @property
    def bases(self) -> np.ndarray:
        sizes = [self.slab_size(d) for d in self.depths]
        return np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)

    @property
    def total_size(self) -> int:
        return int(sum(self.slab_size(d) for d in self.depths))

    @property
    def offsets(self) -> np.ndarray:
        """Flat offsets of the neighbours relative to a voxel."""
        ss, rs = self.slice_stride, self.row_stride  # once: each derives the padding from all neighbours
        return np.asarray([dz * ss + dy * rs + dx for dz, dy, dx in self.neighbours], dtype=np.int64)

    def voxel_index(self, slab: int, z: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        pad = self.pad
        return (
            self.bases[slab]
            + (z + pad.z) * self.slice_stride
            + (y + pad.y0) * self.row_stride
            + (x + pad.x0)
        )

    def new_buffer(self, fill: int) -> np.ndarray:
        return np.full(self.total_size, fill, dtype=np.int32)

    def block(self, buffer: np.ndarray, slab: int) -> np.ndarray:
        """One padded slab (depth + pad.z, padded rows, padded columns) inside the flat buffer."""
        depth = self.depths[slab]
        base = int(self.bases[slab])
        return buffer[base : base + self.slab_size(depth)].reshape(depth + self.pad.z, -1, self.row_stride)

    def interior(self, buffer: np.ndarray, slab: int) -> np.ndarray:
        """View of one slab's voxels (depth, height, width) inside the flat buffer."""
        pad = self.pad
        return self.block(buffer, slab)[pad.z :, pad.y0 : pad.y0 + self.height, pad.x0 : pad.x0 + self.width]

    def slice_neighbours(self, buffer: np.ndarray, slab: int, z: int, y0: int = 0, y1: int | None = None) -> np.ndarray:
        """((y1 - y0) * width, n_neighbours) context values of rows y0..y1 of slice z (encoder path).

        Same values as `gather_neighbours` for the same voxels, built from shifted views;
        feature-major in memory (a transposed view): every column is contiguous.
        """
        y1 = self.height if y1 is None else y1
        rows = y1 - y0
        block = self.block(buffer, slab)
        pad = self.pad
        out = np.empty((len(self.neighbours), rows, self.width), dtype=np.int32)
        for k, (dz, dy, dx) in enumerate(self.neighbours):
            zz, ys, xs = z + pad.z + dz, pad.y0 + dy + y0, pad.x0 + dx
            out[k] = block[zz, ys : ys + rows, xs : xs + self.width]
        return out.reshape(len(self.neighbours), rows * self.width).T


@dataclass
class Features:
    """Network inputs and what is needed to turn outputs into a coding distribution."""

    inputs: np.ndarray  # (n, N_INPUTS) float32 holding integers, |value| <= FEATURE_CLIP
    ref: np.ndarray  # (n,) int64 reference prediction
    divisor: np.ndarray  # (n,) int64 activity + ACTIVITY_BIAS
    bucket: np.ndarray  # (n,) int32 quarter-octave bucket of divisor


def slab_bounds(depth: int, slab_depth: int) -> list[tuple[int, int]]:
    """Fixed split: slabs of `slab_depth` slices, the last one shorter (files before 2026-12-01)."""
    return [(z0, min(depth, z0 + slab_depth)) for z0 in range(0, depth, slab_depth)]


#: Volumes of at least this many slices are split into at least two slabs, so that both cores of
#: a small machine decode them (docs/decisions/0007-slab-split.md).
MIN_SPLIT_SLICES = 16


def plan_slabs(depth: int, slab_depth: int) -> list[tuple[int, int]]:
    """The encoder's slab split: ceil(depth / slab_depth) slabs, at least 2 from MIN_SPLIT_SLICES
    slices on and an even number when there are several, of balanced depths (differing by at
    most one slice, deeper ones first).

    Slab bounds are stored in the file, so the split is the encoder's choice and needs no format
    change; balanced slabs in even numbers keep both threads of a 2-core machine equally busy
    (32 + 5 slices would leave one idle). It does not depend on the encoding machine, so the
    same input gives the same file everywhere.
    """
    n = -(-depth // slab_depth)
    if depth >= MIN_SPLIT_SLICES:
        n = max(n, 2)
    if n > 1 and n % 2:
        n += 1
    base, extra = divmod(depth, n)
    bounds, z = [], 0
    for i in range(n):
        d = base + (1 if i < extra else 0)
        bounds.append((z, z + d))
        z += d
    return bounds


def load_into_buffer(
    volume: np.ndarray, slabs: list[tuple[int, int]], vmin: int, spec: "ContextSpec | None" = None
) -> tuple[SlabGeometry, np.ndarray]:
    """Lay the slabs of a (Z, Y, X) volume into a padded flat buffer."""
    neighbours = spec.neighbours if spec is not None else NEIGHBOURS
    geometry = SlabGeometry(tuple(b - a for a, b in slabs), volume.shape[1], volume.shape[2], neighbours)
    buffer = geometry.new_buffer(vmin)
    for s, (a, b) in enumerate(slabs):
        geometry.interior(buffer, s)[...] = volume[a:b]
    return geometry, buffer


def gather_neighbours(buffer: np.ndarray, index: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """(n, N_NEIGHBOURS) int32 context values of the voxels at flat `index` (decoder path).

    Feature-major in memory (a transposed view): every column is contiguous.
    """
    return buffer[offsets[:, None] + index[None, :]].T


def compute_features(nb: np.ndarray, first_slice: np.ndarray, vmin: int, vmax: int) -> Features:
    """Features from the context values `nb` (n, N_NEIGHBOURS) of n voxels.

    `first_slice` marks voxels in the first slice of their slab: their previous-slice
    window lies in the padding and is replaced by the reference (features 0) plus a flag.
    Only integer operations and single IEEE float32 divisions/multiplications (correctly
    rounded on every CPU and GPU, no libm, no fused operations) are used, so the result
    is identical everywhere.
    """
    n_vox = len(nb)
    w, nw, n, ne = nb[:, W], nb[:, NW], nb[:, N], nb[:, NE]
    lo = np.minimum(w, n)
    hi = np.maximum(w, n)
    ref = np.where(nw >= hi, lo, np.where(nw <= lo, hi, w + n - nw))
    activity = np.abs(w - nw) + np.abs(nw - n) + np.abs(n - ne) + np.abs(w - nb[:, WW]) + np.abs(n - nb[:, NN])
    divisor = activity + ACTIVITY_BIAS
    inv = np.float32(FEATURE_SCALE) / divisor.astype(np.float32)
    feats = np.empty((N_INPUTS, n_vox), dtype=np.float32).T  # feature-major memory, like nb
    rel = feats[:, :N_NEIGHBOURS]
    np.subtract(nb, ref[:, None], out=rel, casting="unsafe")  # exact: |difference| < 2^17
    rel *= inv[:, None]
    np.floor(rel, out=rel)
    np.clip(rel, -FEATURE_CLIP, FEATURE_CLIP, out=rel)
    if first_slice.any():
        rel[first_slice, PREV_FIRST:] = 0
    bucket = activity_bucket(divisor)
    feats[:, N_NEIGHBOURS] = bucket * 8
    span = vmax - vmin + 1
    feats[:, N_NEIGHBOURS + 1] = ((ref.astype(np.int64) - vmin) * 512) // span
    feats[:, N_NEIGHBOURS + 2] = first_slice * 256
    return Features(inputs=feats, ref=ref.astype(np.int64), divisor=divisor.astype(np.int64), bucket=bucket)


def coding_params(out: np.ndarray, feats: Features, vmin: int, vmax: int) -> tuple[np.ndarray, np.ndarray]:
    """Integer mean and table key (side * N_CLASSES + class) from the network's integer outputs.

    out[:, 0] is the mean offset in feature units with MEAN_FRAC_BITS fractional bits,
    out[:, 1] the scale class relative to the activity bucket.
    """
    frac = MEAN_FRAC_BITS + FEATURE_SHIFT
    mean_out = np.clip(out[:, 0], -(1 << 30), 1 << 30)
    offset = (mean_out * feats.divisor + (1 << (frac - 1))) >> frac
    mu = np.clip(feats.ref + offset, vmin, vmax)
    cls = feats.bucket + np.clip(out[:, 1], -N_CLASSES, N_CLASSES)
    return mu, table_keys(mu, cls, vmin, vmax)


def table_keys(mu: np.ndarray, cls: np.ndarray, vmin: int, vmax: int) -> np.ndarray:
    """Key of the coding table: level of mu in the range, side (interior / on the minimum /
    on the maximum) and scale class."""
    cls = np.clip(cls, 0, N_CLASSES - 1)
    side = np.where(mu == vmin, 1, np.where(mu == vmax, 2, 0))
    if vmin == vmax:
        side[:] = 1
    level = np.minimum(((mu - vmin) * N_LEVELS) // (vmax - vmin + 1), N_LEVELS - 1)
    return (level * N_SHAPES + side * N_CLASSES + cls).astype(np.int32)


def float_params(out, aux):
    """Training twin of coding_params: continuous mean and class (torch tensors)."""
    ref, divisor, bucket = aux[:, 0], aux[:, 1], aux[:, 2]
    return ref + out[:, 0] * divisor / float(FEATURE_SCALE), bucket + out[:, 1]


@dataclass(frozen=True)
class ContextSpec:
    """A context model: which neighbours, how they become inputs, how outputs become coding parameters."""

    name: str
    neighbours: tuple[tuple[int, int, int], ...]
    n_inputs: int
    features: "object"  # (nb, first_slice, vmin, vmax) -> Features
    coding_params: "object"  # (out, feats, vmin, vmax) -> (mu, keys)
    float_params: "object"  # (out, aux) -> (mu, class), torch, for training


LOCAL = ContextSpec("local", NEIGHBOURS, N_INPUTS, compute_features, coding_params, float_params)


def context_spec(name: str) -> ContextSpec:
    """The context model a profile names."""
    if name == "local":
        return LOCAL
    if name == "paper":
        from codec.context_paper import PAPER

        return PAPER
    if name == "pyramid":
        from codec.context_paper import PAPER_PYRAMID

        return PAPER_PYRAMID
    raise ValueError(f"unknown context {name!r}")
