"""Training objective and per-volume fitting.

The loss is the code length in bits the coder will actually spend on a voxel: a
discretised Laplace around the *rounded* mean (straight-through rounding), with the
scale of the rounded class, folded onto the volume's minimum or maximum where the
coder folds it (the mean clamped onto an end value). Minimising it is minimising the file.
The paper's MAE + lambda(1 - |PCC|) loss is used only by the `paper` profile.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from codec.context import SlabGeometry, compute_features
from codec.entropy import BASE_SCALE, N_CLASSES
from codec.network import FloatMLP

LN2 = math.log(2.0)


@dataclass
class Samples:
    """Training samples: integer features and what the loss needs, as torch tensors."""

    inputs: torch.Tensor  # float32 (n, N_INPUTS), integer valued
    ref: torch.Tensor  # float64
    divisor: torch.Tensor
    bucket: torch.Tensor
    x: torch.Tensor
    vmin: torch.Tensor
    vmax: torch.Tensor

    def __len__(self) -> int:
        return len(self.x)

    def subset(self, idx: torch.Tensor) -> "Samples":
        return Samples(*(getattr(self, f)[idx] for f in self.__dataclass_fields__))

    @staticmethod
    def concat(parts: list["Samples"]) -> "Samples":
        return Samples(*(torch.cat([getattr(p, f) for p in parts]) for f in Samples.__dataclass_fields__))


def slab_bounds(depth: int, slab_depth: int) -> list[tuple[int, int]]:
    return [(z0, min(depth, z0 + slab_depth)) for z0 in range(0, depth, slab_depth)]


def load_into_buffer(volume: np.ndarray, slabs: list[tuple[int, int]], vmin: int) -> tuple[SlabGeometry, np.ndarray]:
    """Lay the slabs of a (Z, Y, X) volume into a padded flat buffer."""
    geometry = SlabGeometry(tuple(b - a for a, b in slabs), volume.shape[1], volume.shape[2])
    buffer = geometry.new_buffer(vmin)
    for s, (a, b) in enumerate(slabs):
        geometry.interior(buffer, s)[...] = volume[a:b]
    return geometry, buffer


def sample_volume(
    volume: np.ndarray, vmin: int, vmax: int, slab_depth: int, n: int, rng: np.random.Generator
) -> Samples:
    """Features of `n` voxels drawn uniformly from the volume, as coded with slabs of slab_depth."""
    Z, Y, X = volume.shape
    slabs = slab_bounds(Z, slab_depth)
    geometry, buffer = load_into_buffer(volume, slabs, vmin)
    n = min(n, volume.size)
    flat = rng.choice(volume.size, size=n, replace=False) if n < volume.size else np.arange(volume.size)
    z, rem = np.divmod(flat, Y * X)
    y, x = np.divmod(rem, X)
    slab = z // slab_depth
    zl = z - slab * slab_depth
    index = geometry.bases[slab] + geometry.voxel_index(0, zl, y, x) - geometry.bases[0]
    feats = compute_features(buffer, index, geometry.offsets, zl == 0, vmin, vmax)
    t = lambda a: torch.as_tensor(np.asarray(a, dtype=np.float64))  # noqa: E731
    return Samples(
        inputs=torch.as_tensor(feats.inputs, dtype=torch.float32),
        ref=t(feats.ref),
        divisor=t(feats.divisor),
        bucket=t(feats.bucket),
        x=t(volume.reshape(-1)[flat]),
        vmin=torch.full((n,), float(vmin), dtype=torch.float64),
        vmax=torch.full((n,), float(vmax), dtype=torch.float64),
    )


def _round_st(v: torch.Tensor) -> torch.Tensor:
    return v + (torch.round(v) - v).detach()


def code_length_bits(out: torch.Tensor, s: Samples) -> torch.Tensor:
    """Bits per voxel the coder spends, as a differentiable function of the network output."""
    out = out.double()
    mu = s.ref + out[:, 0] * s.divisor / 64.0
    mu = _round_st(mu)
    mu = torch.maximum(torch.minimum(mu, s.vmax), s.vmin)
    cls = torch.clamp(_round_st(s.bucket + out[:, 1]), 0, N_CLASSES - 1)
    b = BASE_SCALE * torch.exp2(cls / 4.0)
    r = s.x - mu
    a = r.abs()
    log_zero = torch.log(-torch.expm1(-0.5 / b))
    log_tail = math.log(0.5) - (a - 0.5) / b + torch.log(-torch.expm1(-1.0 / b))
    at_end = (mu <= s.vmin) | (mu >= s.vmax)
    log_zero_folded = torch.log1p(-0.5 * torch.exp(-0.5 / b))
    logp = torch.where(a < 0.5, torch.where(at_end, log_zero_folded, log_zero), log_tail)
    return -logp / LN2


def fit(
    model: FloatMLP,
    samples: Samples,
    steps: int,
    *,
    batch: int = 4096,
    lr: float = 2e-3,
    seed: int = 0,
    time_budget: float | None = None,
    progress=None,
) -> FloatMLP:
    """Adam on the code length; cosine learning-rate decay; deterministic given the seed."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, steps))
    n = len(samples)
    start = time.perf_counter()
    model.train()
    for step in range(steps):
        idx = torch.randint(0, n, (min(batch, n),), generator=gen)
        sb = samples.subset(idx)
        loss = code_length_bits(model(sb.inputs), sb).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if progress is not None and step % 20 == 0:
            progress((step + 1) / steps)
        if time_budget is not None and time.perf_counter() - start > time_budget:
            break
    model.eval()
    return model


@torch.no_grad()
def mean_bits(model: FloatMLP, samples: Samples) -> float:
    return float(code_length_bits(model(samples.inputs), samples).mean())
