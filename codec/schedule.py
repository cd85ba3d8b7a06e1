"""Decode order: a 3-D wavefront over all slabs at once.

Voxel (z, y, x) of a slab is coded at step t = x + A*y + B*z (A, B from the context's reach). Every context voxel of
`context.NEIGHBOURS` has a strictly smaller step (A > max dx over the row above, B > max
(dx + A*dy) over the previous-slice window), so all voxels of one step can be predicted
together in one network batch. A volume takes X + A*Y + B*D steps for slabs of depth D,
whatever its number of slices: sequential work grows with slices per slab, not voxels.

Within a step the canonical voxel order is: rows sorted by their first step (stable over
slab, z, y), then x. Encoder and decoder both iterate `Wavefront.steps()`, so the order of
coded symbols is the same by construction.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from codec.context import NEIGHBOURS, SlabGeometry


def wavefront_constants(neighbours: tuple[tuple[int, int, int], ...]) -> tuple[int, int]:
    """Smallest (A, B) such that every neighbour has a smaller step x + A*y + B*z."""
    a = 1 + max([dx for dz, dy, dx in neighbours if dz == 0 and dy < 0] + [0])
    a = max([a] + [-(-(dx + 1) // -dy) for dz, dy, dx in neighbours if dz == 0 and dy < 0])
    b = 1 + max([dx + a * dy for dz, dy, dx in neighbours if dz == -1] + [0])
    b = max([b] + [-(-(dx + a * dy + 1) // -dz) for dz, dy, dx in neighbours if dz < 0])
    if not all(dx + a * dy + b * dz < 0 for dz, dy, dx in neighbours):
        raise ValueError("context is not causal for a wavefront")
    return a, b


A, B = wavefront_constants(NEIGHBOURS)


@dataclass
class Step:
    """The voxels coded at one wavefront step."""

    index: np.ndarray  # flat buffer indices (n,)
    slab: np.ndarray  # slab number of each voxel (n,)
    first_slice: np.ndarray  # bool (n,): voxel lies in the first slice of its slab


class Wavefront:
    """Iterates the wavefront steps of a stack of slabs."""

    def __init__(self, geometry: SlabGeometry) -> None:
        self.geometry = geometry
        slabs, zs, ys = [], [], []
        for s, depth in enumerate(geometry.depths):
            z, y = np.meshgrid(np.arange(depth), np.arange(geometry.height), indexing="ij")
            slabs.append(np.full(z.size, s, dtype=np.int64))
            zs.append(z.ravel())
            ys.append(y.ravel())
        slab = np.concatenate(slabs)
        z = np.concatenate(zs)
        y = np.concatenate(ys)
        a, b = wavefront_constants(geometry.neighbours)
        start = a * y + b * z
        order = np.argsort(start, kind="stable")
        self.row_start = start[order]
        self.row_slab = slab[order]
        self.row_first = z[order] == 0
        x0 = np.zeros_like(z)
        self.row_base = (
            geometry.bases[slab] + (geometry.voxel_index(0, z, y, x0) - geometry.bases[0])
        )[order]
        width = geometry.width
        self.n_steps = int(self.row_start[-1]) + width if len(self.row_start) else 0
        self._width = width

    def steps(self) -> Iterator[Step]:
        starts = self.row_start
        width = self._width
        for t in range(self.n_steps):
            lo = int(np.searchsorted(starts, t - width, side="right"))
            hi = int(np.searchsorted(starts, t, side="right"))
            if lo == hi:
                continue
            x = t - starts[lo:hi]
            yield Step(
                index=self.row_base[lo:hi] + x,
                slab=self.row_slab[lo:hi],
                first_slice=self.row_first[lo:hi],
            )
