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

from codec.context import LOCAL, ContextSpec, Features, SlabGeometry, gather_neighbours
from codec.entropy import BASE_SCALE, N_CLASSES
from codec.network import FloatMLP

LN2 = math.log(2.0)


@dataclass
class Samples:
    """Training samples: network inputs plus, per voxel, (ref, divisor, bucket, x, vmin, vmax)."""

    inputs: torch.Tensor  # float32 (n, N_INPUTS), integer valued
    aux: torch.Tensor  # float32 (n, 6)

    def __len__(self) -> int:
        return len(self.inputs)

    def subset(self, idx: torch.Tensor) -> "Samples":
        return Samples(self.inputs[idx], self.aux[idx])

    @staticmethod
    def concat(parts: list["Samples"]) -> "Samples":
        return Samples(torch.cat([p.inputs for p in parts]), torch.cat([p.aux for p in parts]))

    def features(self) -> Features:
        aux = self.aux.numpy()
        return Features(
            inputs=self.inputs.numpy(),
            ref=aux[:, 0].astype(np.int64),
            divisor=aux[:, 1].astype(np.int64),
            bucket=aux[:, 2].astype(np.int32),
        )

    @property
    def x(self) -> np.ndarray:
        return self.aux[:, 3].numpy().astype(np.int64)


def slab_bounds(depth: int, slab_depth: int) -> list[tuple[int, int]]:
    return [(z0, min(depth, z0 + slab_depth)) for z0 in range(0, depth, slab_depth)]


def load_into_buffer(
    volume: np.ndarray, slabs: list[tuple[int, int]], vmin: int, spec: ContextSpec = LOCAL
) -> tuple[SlabGeometry, np.ndarray]:
    """Lay the slabs of a (Z, Y, X) volume into a padded flat buffer."""
    geometry = SlabGeometry(tuple(b - a for a, b in slabs), volume.shape[1], volume.shape[2], spec.neighbours)
    buffer = geometry.new_buffer(vmin)
    for s, (a, b) in enumerate(slabs):
        geometry.interior(buffer, s)[...] = volume[a:b]
    return geometry, buffer


def sample_volume(
    volume: np.ndarray,
    vmin: int,
    vmax: int,
    slab_depth: int,
    n: int,
    rng: np.random.Generator,
    laid_out: tuple[SlabGeometry, np.ndarray] | None = None,
    spec: ContextSpec = LOCAL,
) -> Samples:
    """Features of `n` voxels drawn uniformly from the volume, as coded with slabs of slab_depth.

    `laid_out` is the volume already in its padded slab buffer (saves a copy of the volume).
    """
    Z, Y, X = volume.shape
    geometry, buffer = laid_out or load_into_buffer(volume, slab_bounds(Z, slab_depth), vmin, spec)
    n = min(n, volume.size)
    flat = rng.choice(volume.size, size=n, replace=False) if n < volume.size else np.arange(volume.size)
    z, rem = np.divmod(flat, Y * X)
    y, x = np.divmod(rem, X)
    slab = z // slab_depth
    zl = z - slab * slab_depth
    index = geometry.bases[slab] + geometry.voxel_index(0, zl, y, x) - geometry.bases[0]
    feats = spec.features(gather_neighbours(buffer, index, geometry.offsets), zl == 0, vmin, vmax)
    aux = np.stack(
        [feats.ref, feats.divisor, feats.bucket, volume.reshape(-1)[flat], np.full(n, vmin), np.full(n, vmax)], axis=1
    )
    return Samples(torch.from_numpy(feats.inputs), torch.as_tensor(aux, dtype=torch.float32))


def _round_st(v: torch.Tensor) -> torch.Tensor:
    return v + (torch.round(v) - v).detach()


def code_length_bits(out: torch.Tensor, s: Samples, spec: ContextSpec = LOCAL, detach_mean: bool = False) -> torch.Tensor:
    """Bits per voxel the coder spends, as a differentiable function of the network output."""
    x, vmin, vmax = s.aux[:, 3], s.aux[:, 4], s.aux[:, 5]
    mu, cls = spec.float_params(out, s.aux)
    if detach_mean:
        mu = mu.detach()
    mu = _round_st(mu)
    mu = torch.maximum(torch.minimum(mu, vmax), vmin)
    cls = _round_st(cls)
    # straight-through clamp: a class pushed past either end still gets a gradient back
    cls = cls + (torch.clamp(cls, 0, N_CLASSES - 1) - cls).detach()
    b = BASE_SCALE * torch.exp2(cls / 4.0)
    a = (x - mu).abs()
    log_zero = torch.log(-torch.expm1(-0.5 / b))
    log_tail = math.log(0.5) - (a - 0.5) / b + torch.log(-torch.expm1(-1.0 / b))
    at_end = (mu <= vmin) | (mu >= vmax)
    log_zero_folded = torch.log1p(-0.5 * torch.exp(-0.5 / b))
    logp = torch.where(a < 0.5, torch.where(at_end, log_zero_folded, log_zero), log_tail)
    return -logp / LN2


PCC_WEIGHT = 1.0
SCALE_WEIGHT = 0.05  # the scale head learns only from this term (the mean is detached there)


def paper_loss(out: torch.Tensor, s: Samples, spec: ContextSpec) -> torch.Tensor:
    """The paper's MAE + lambda (1 - |PCC|) on normalised values for the mean output, plus
    the code length for the scale output only (the mean is held fixed there)."""
    x, vmin, vmax = s.aux[:, 3], s.aux[:, 4], s.aux[:, 5]
    span = (vmax - vmin).clamp(min=1)
    target = 2 * (x - vmin) / span - 1
    mu, _ = spec.float_params(out, s.aux)
    pred = 2 * (mu - vmin) / span - 1
    mae = (pred - target).abs().mean()
    pc, tc = pred - pred.mean(), target - target.mean()
    pcc = (pc * tc).sum() / (pc.norm() * tc.norm() + 1e-8)
    return mae + PCC_WEIGHT * (1 - pcc.abs()) + SCALE_WEIGHT * code_length_bits(out, s, spec, detach_mean=True).mean()


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
    spec: ContextSpec = LOCAL,
    loss: str = "bits",
) -> FloatMLP:
    """Adam on the code length (or the paper's loss); cosine decay; deterministic given the seed."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, steps))
    n = len(samples)
    start = time.perf_counter()
    model.train()
    for step in range(steps):
        idx = torch.randint(0, n, (min(batch, n),), generator=gen)
        sb = samples.subset(idx)
        out = model(sb.inputs)
        value = paper_loss(out, sb, spec) if loss == "paper" else code_length_bits(out, sb, spec).mean()
        opt.zero_grad(set_to_none=True)
        value.backward()
        opt.step()
        sched.step()
        if progress is not None and step % 20 == 0:
            progress((step + 1) / steps)
        if time_budget is not None and time.perf_counter() - start > time_budget:
            break
    model.eval()
    return model


@torch.no_grad()
def mean_bits(model: FloatMLP, samples: Samples, spec: ContextSpec = LOCAL) -> float:
    out = torch.cat([model(samples.inputs[i : i + 65536]) for i in range(0, len(samples), 65536)])
    return float(code_length_bits(out, samples, spec).mean())
