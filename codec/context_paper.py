"""The seed paper's contexts (Nagoor et al., ICIP 2020), for the `paper` and `paper-pyramid` profiles.

Causal 11x11x11 cube: the five previous slices' 11x11 windows (605 voxels) plus the already
coded part of the current slice's window (five rows of 11 and five voxels to the left): 665
inputs. Values are normalised to [-1, 1] by the volume's range (here as integers in
[-1023, 1023]) and the volume is padded with its minimum. The network predicts the voxel's
normalised value; we add a second output, the scale class, because our coder needs a
per-voxel distribution (the paper coded the residual with one adaptive histogram).

The paper's second sampling, the pyramid (`PYRAMID`): a 13x13 window centred on the voxel in
slice z-1, 9x9 in z-2 and 5x5 in z-3, plus "the current voxel's position". We read the latter
as the voxel's place in its own slice given by its causal in-slice neighbours W, N, NW, NE (the
values the decoder already has there; docs/decisions/0115-paper-pyramid-context.md says why not
the voxel's coordinates): 169 + 81 + 25 + 4 = 279 inputs, normalised like the cube's.
"""

from __future__ import annotations

import numpy as np

from codec.context import FEATURE_CLIP, FEATURE_SCALE, MEAN_FRAC_BITS, ContextSpec, Features, table_keys

RADIUS = 5
CUBE: tuple[tuple[int, int, int], ...] = (
    tuple((dz, dy, dx) for dz in range(-RADIUS, 0) for dy in range(-RADIUS, RADIUS + 1) for dx in range(-RADIUS, RADIUS + 1))
    + tuple((0, dy, dx) for dy in range(-RADIUS, 0) for dx in range(-RADIUS, RADIUS + 1))
    + tuple((0, 0, dx) for dx in range(-RADIUS, 0))
)
N_PAPER_INPUTS = len(CUBE)  # 665
#: Half-widths of the pyramid's windows on slices z-1, z-2, z-3 (13x13, 9x9, 5x5).
PYRAMID_RADII = (6, 4, 2)
PYRAMID: tuple[tuple[int, int, int], ...] = tuple(
    (-(i + 1), dy, dx) for i, r in enumerate(PYRAMID_RADII) for dy in range(-r, r + 1) for dx in range(-r, r + 1)
) + ((0, 0, -1), (0, -1, 0), (0, -1, -1), (0, -1, 1))  # W, N, NW, NE
N_PYRAMID_INPUTS = len(PYRAMID)  # 279
_SPAN_UNITS = 2 * FEATURE_CLIP  # normalised values span [-1023, 1023]


def paper_features(nb: np.ndarray, first_slice: np.ndarray, vmin: int, vmax: int) -> Features:
    """Voxel values mapped linearly onto integers in [-1023, 1023] (the paper's [-1, 1])."""
    span = max(1, vmax - vmin)
    n = len(nb)
    feats = np.empty((nb.shape[1], n), dtype=np.float32).T
    feats[:] = ((nb.astype(np.int64) - vmin) * _SPAN_UNITS) // span - FEATURE_CLIP
    zeros = np.zeros(n, dtype=np.int64)
    return Features(inputs=feats, ref=zeros + vmin, divisor=zeros + span, bucket=np.zeros(n, dtype=np.int32))


def paper_coding_params(out: np.ndarray, feats: Features, vmin: int, vmax: int) -> tuple[np.ndarray, np.ndarray]:
    """mu = vmin + (normalised prediction + 1023) * span / 2046, rounded; class straight from the net."""
    span = max(1, vmax - vmin)
    # out0 has MEAN_FRAC_BITS fractional bits of the float output, which is value / FEATURE_SCALE
    unit = (1 << MEAN_FRAC_BITS) // FEATURE_SCALE  # integer output per normalised unit
    denom = _SPAN_UNITS * unit
    num = (np.clip(out[:, 0], -(1 << 30), 1 << 30) + FEATURE_CLIP * unit) * span
    mu = np.clip(vmin + (num + denom // 2) // denom, vmin, vmax)
    return mu, table_keys(mu, np.clip(out[:, 1], -100, 100), vmin, vmax)


def paper_float_params(out, aux):
    """Training twin of paper_coding_params (torch)."""
    vmin, vmax = aux[:, 4], aux[:, 5]
    span = (vmax - vmin).clamp(min=1)
    mu = vmin + (out[:, 0] * FEATURE_SCALE + FEATURE_CLIP) * span / _SPAN_UNITS
    return mu, out[:, 1]


PAPER = ContextSpec("paper", CUBE, N_PAPER_INPUTS, paper_features, paper_coding_params, paper_float_params)
#: Same features and coding parameters as the cube (the native core's CTX_PAPER and the device
#: twin are generic over the neighbour list), only the neighbours differ.
PAPER_PYRAMID = ContextSpec("pyramid", PYRAMID, N_PYRAMID_INPUTS, paper_features, paper_coding_params, paper_float_params)
