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
PREV_CENTRE = PREV_FIRST + 12  # (dz, dy, dx) = (-1, 0, 0)
N_NEIGHBOURS = len(NEIGHBOURS)

#: Padding around each slab: one slice before, rows/columns before and after.
PAD_Z = 1
PAD_Y0, PAD_Y1 = 3, 2
PAD_X0, PAD_X1 = 3, 2

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
class SlabGeometry:
    """Index arithmetic for a stack of equally sized padded slabs laid out in one flat buffer."""

    depths: tuple[int, ...]
    height: int
    width: int

    @property
    def row_stride(self) -> int:
        return self.width + PAD_X0 + PAD_X1

    @property
    def slice_stride(self) -> int:
        return (self.height + PAD_Y0 + PAD_Y1) * self.row_stride

    def slab_size(self, depth: int) -> int:
        return (depth + PAD_Z) * self.slice_stride

    @property
    def bases(self) -> np.ndarray:
        sizes = [self.slab_size(d) for d in self.depths]
        return np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)

    @property
    def total_size(self) -> int:
        return int(sum(self.slab_size(d) for d in self.depths))

    @property
    def offsets(self) -> np.ndarray:
        """Flat offsets of NEIGHBOURS relative to a voxel."""
        return np.asarray(
            [dz * self.slice_stride + dy * self.row_stride + dx for dz, dy, dx in NEIGHBOURS],
            dtype=np.int64,
        )

    def voxel_index(self, slab: int, z: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        return (
            self.bases[slab]
            + (z + PAD_Z) * self.slice_stride
            + (y + PAD_Y0) * self.row_stride
            + (x + PAD_X0)
        )

    def new_buffer(self, fill: int) -> np.ndarray:
        return np.full(self.total_size, fill, dtype=np.int32)

    def interior(self, buffer: np.ndarray, slab: int) -> np.ndarray:
        """View of one slab's voxels (depth, height, width) inside the flat buffer."""
        depth = self.depths[slab]
        base = int(self.bases[slab])
        block = buffer[base : base + self.slab_size(depth)].reshape(
            depth + PAD_Z, self.height + PAD_Y0 + PAD_Y1, self.row_stride
        )
        return block[PAD_Z:, PAD_Y0 : PAD_Y0 + self.height, PAD_X0 : PAD_X0 + self.width]


@dataclass
class Features:
    """Network inputs and what is needed to turn outputs into a coding distribution."""

    inputs: np.ndarray  # (n, N_INPUTS) float32 holding integers, |value| <= FEATURE_CLIP
    ref: np.ndarray  # (n,) int64 reference prediction
    divisor: np.ndarray  # (n,) int64 activity + ACTIVITY_BIAS
    bucket: np.ndarray  # (n,) int32 quarter-octave bucket of divisor


def gather_neighbours(buffer: np.ndarray, index: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """(n, N_NEIGHBOURS) int32 context values of the voxels at flat `index` (decoder path).

    Feature-major in memory (a transposed view): every column is contiguous.
    """
    return buffer[offsets[:, None] + index[None, :]].T


def slice_neighbours(block: np.ndarray, z: int, height: int, width: int) -> np.ndarray:
    """(height * width, N_NEIGHBOURS) context values of slice z of a padded slab block (encoder path).

    Same values as `gather_neighbours` for the same voxels, built from shifted views.
    """
    out = np.empty((N_NEIGHBOURS, height, width), dtype=np.int32)
    for k, (dz, dy, dx) in enumerate(NEIGHBOURS):
        zz, y0, x0 = z + PAD_Z + dz, PAD_Y0 + dy, PAD_X0 + dx
        out[k] = block[zz, y0 : y0 + height, x0 : x0 + width]
    return out.reshape(N_NEIGHBOURS, height * width).T


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
