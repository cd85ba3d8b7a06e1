"""Training objective, the float twin of the network, quantisation and per-volume fitting.

The only codec module (with `codec.train`) that imports torch: decoding and encoding
without fitting never import it.

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

from codec.context import (
    LOCAL,
    MEAN_FRAC_BITS,
    ContextSpec,
    Features,
    SlabGeometry,
    gather_neighbours,
    load_into_buffer,
    slab_bounds,
)
from codec.entropy import BASE_SCALE, N_CLASSES
from codec.network import (
    ACT_MAX,
    INPUT_FRAC_BITS,
    LEAKY_SHIFT,
    MAX_BIAS,
    MAX_FAN_IN,
    WEIGHT_MAX,
    IntLayer,
    IntMLP,
)

LN2 = math.log(2.0)

__all__ = ["FloatMLP", "quantize", "Samples", "sample_volume", "fit", "mean_bits", "code_length_bits",
           "code_length_bits_autograd",
           "slab_bounds", "load_into_buffer"]


class FloatMLP(torch.nn.Module):
    """Float twin of IntMLP used for training and fine-tuning."""

    def __init__(self, widths: tuple[int, ...], n_inputs: int) -> None:
        super().__init__()
        dims = (n_inputs, *widths, 2)
        self.n_inputs = n_inputs
        self.layers = torch.nn.ModuleList(torch.nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.widths = tuple(widths)
        with torch.no_grad():  # start the scale output mid-range (class ~ 32) rather than at its bottom end
            self.layers[-1].bias[1] = 32.0 if n_inputs > MAX_FAN_IN else 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_scaled(x / float(1 << INPUT_FRAC_BITS))

    def forward_scaled(self, h: torch.Tensor) -> torch.Tensor:
        """forward() of inputs already divided by 2^INPUT_FRAC_BITS (exact: a power of two),
        so that fitting scales its samples once instead of every step."""
        for i, layer in enumerate(self.layers):
            h = layer(h)
            if i < len(self.layers) - 1:
                h = torch.nn.functional.leaky_relu(h, 1.0 / (1 << LEAKY_SHIFT))
        return h  # (n, 2): mean offset (feature units / 64), log-scale offset (quarter octaves)


def _channel_shift(max_abs: np.ndarray, limit: int) -> np.ndarray:
    """Largest s with max_abs * 2^s <= limit (per channel)."""
    with np.errstate(divide="ignore"):
        s = np.floor(np.log2(limit / np.maximum(max_abs, 1e-12)))
    return np.clip(s, -20, 30).astype(np.int64)


def _quantile(values: torch.Tensor, q: float) -> float:
    """torch.quantile(values, q) (linear interpolation) of a 1-D tensor, by selection.

    The same arithmetic as torch's quantile (float rank q * (n - 1) in the input's dtype, the
    two order statistics around it, torch.lerp), so the same value; for q near 1 the two order
    statistics are read from torch.topk, which selects in linear time where quantile sorts a
    million values (0.12 s against under 0.01 s per layer).
    """
    n = values.numel()
    rank = torch.tensor(q, dtype=values.dtype) * (n - 1)
    below = int(rank.floor())
    above = min(below + 1, n - 1)
    weight = rank - below
    top = torch.topk(values, n - below).values  # descending: top[n - 1 - i] is the i-th smallest
    return float(torch.lerp(top[n - 1 - below], top[n - 1 - above], weight))


def quantize(model: FloatMLP, calibration: np.ndarray) -> IntMLP:
    """Quantise a float model; activation scales come from `calibration` inputs (n, n_inputs)."""
    with torch.no_grad():
        x = torch.as_tensor(calibration, dtype=torch.float32)
        h = x / float(1 << INPUT_FRAC_BITS)
        act_frac = [INPUT_FRAC_BITS]  # fractional bits of each layer's integer input
        for i, layer in enumerate(model.layers[:-1]):
            h = torch.nn.functional.leaky_relu(layer(h), 1.0 / (1 << LEAKY_SHIFT))
            peak = _quantile(h.abs().flatten()[:1_000_000], 0.9999) if h.numel() else 1.0
            peak = max(peak, 1e-3)
            act_frac.append(int(np.floor(np.log2(ACT_MAX / peak))))
    layers = []
    n = len(model.layers)
    for i, layer in enumerate(model.layers):
        w = layer.weight.detach().double().numpy()
        b = layer.bias.detach().double().numpy()
        ws = _channel_shift(np.abs(w).max(axis=1), WEIGHT_MAX)
        wq = np.clip(np.round(w * np.exp2(ws)[:, None]), -WEIGHT_MAX, WEIGHT_MAX).astype(np.int64)
        acc_frac = ws + act_frac[i]  # accumulator fixed point per output channel
        # a bias too large for MAX_BIAS at this precision costs the channel weight bits instead
        over = np.ceil(np.log2(np.maximum(np.abs(b) * np.exp2(acc_frac), 1.0) / (MAX_BIAS // 2)))
        over = np.maximum(over, 0).astype(np.int64)
        if over.any():
            ws = ws - over
            wq = np.clip(np.round(w * np.exp2(ws)[:, None]), -WEIGHT_MAX, WEIGHT_MAX).astype(np.int64)
            acc_frac = ws + act_frac[i]
        bq = np.round(b * np.exp2(acc_frac)).astype(np.int64)
        if i < n - 1:
            out_frac = np.full_like(acc_frac, act_frac[i + 1])
        else:
            out_frac = np.asarray([MEAN_FRAC_BITS, 0], dtype=np.int64)
        # shift < 0 (a left shift) keeps every weight bit when the accumulator has fewer
        # fractional bits than the output wants; multiplying by 2^-shift is exact either way.
        shift = acc_frac - out_frac
        # round to nearest rather than down: add half of the shift's unit to the bias
        bq = bq + np.where(shift > 0, np.int64(1) << np.maximum(shift - 1, 0), 0)
        bq = np.clip(bq, -MAX_BIAS, MAX_BIAS)
        layers.append(IntLayer(wq, bq, shift))
    return IntMLP(model.n_inputs, model.widths, layers)


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


def sample_volume(
    volume: np.ndarray,
    vmin: int,
    vmax: int,
    slab_depth: int,
    n: int,
    rng: np.random.Generator,
    laid_out: tuple[SlabGeometry, np.ndarray] | None = None,
    spec: ContextSpec = LOCAL,
    slabs: list[tuple[int, int]] | None = None,
) -> Samples:
    """Features of `n` voxels drawn uniformly from the volume, as coded with these slabs
    (default: fixed slabs of slab_depth).

    `laid_out` is the volume already in its padded slab buffer (saves a copy of the volume);
    without it one slab at a time is laid out (slabs are coded independently, so a slab's
    padded buffer alone gives its voxels' features): the encoder's memory then grows by one
    slab, not by a second copy of the volume.
    """
    Z, Y, X = volume.shape
    slabs = list(slabs) if slabs is not None else slab_bounds(Z, slab_depth)
    n = min(n, volume.size)
    flat = rng.choice(volume.size, size=n, replace=False) if n < volume.size else np.arange(volume.size)
    z, rem = np.divmod(flat, Y * X)
    y, x = np.divmod(rem, X)
    starts = np.asarray([a for a, _ in slabs], dtype=np.int64)
    slab = np.searchsorted(starts, z, side="right") - 1
    zl = z - starts[slab]
    if laid_out is not None:
        geometry, buffer = laid_out
        index = geometry.bases[slab] + geometry.voxel_index(0, zl, y, x) - geometry.bases[0]
        feats = spec.features(gather_neighbours(buffer, index, geometry.offsets), zl == 0, vmin, vmax)
        inputs, ref, divisor, bucket = feats.inputs, feats.ref, feats.divisor, feats.bucket
    else:
        inputs = np.empty((n, spec.n_inputs), dtype=np.float32)
        ref, divisor = np.empty(n, dtype=np.int64), np.empty(n, dtype=np.int64)
        bucket = np.empty(n, dtype=np.int32)
        for s, (a, b) in enumerate(slabs):
            sel = np.flatnonzero(slab == s)
            if not len(sel):
                continue
            geometry, buffer = load_into_buffer(volume[a:b], [(0, b - a)], vmin, spec)
            index = geometry.voxel_index(0, zl[sel], y[sel], x[sel])
            feats = spec.features(gather_neighbours(buffer, index, geometry.offsets), zl[sel] == 0, vmin, vmax)
            del buffer
            inputs[sel], ref[sel], divisor[sel], bucket[sel] = feats.inputs, feats.ref, feats.divisor, feats.bucket
    aux = np.stack([ref, divisor, bucket, volume.reshape(-1)[flat], np.full(n, vmin), np.full(n, vmax)], axis=1)
    return Samples(torch.from_numpy(np.ascontiguousarray(inputs)), torch.as_tensor(aux, dtype=torch.float32))


def _round_st(v: torch.Tensor) -> torch.Tensor:
    return v + (torch.round(v) - v).detach()


def code_length_bits(out: torch.Tensor, s: Samples, spec: ContextSpec = LOCAL, detach_mean: bool = False) -> torch.Tensor:
    """Bits per voxel the coder spends, as a differentiable function of the network output.

    Straight-through rounding of the mean and the scale class, the mean clamped to the value
    range (no gradient past it), the class clamped straight-through. The value and gradient
    are those of `code_length_bits_autograd`, computed by `_CodeLength` in one pass with a
    closed-form backward: the autograd graph of that expression was 40 tensor operations a
    step, and their backward the largest part of a fitting step after the matrix products.
    """
    x, vmin, vmax = s.aux[:, 3], s.aux[:, 4], s.aux[:, 5]
    mu, cls = spec.float_params(out, s.aux)
    if detach_mean:
        mu = mu.detach()
    return _CodeLength.apply(mu, cls, x, vmin, vmax)


def _class_table() -> torch.Tensor:
    """Per scale class c (the only thing b depends on), in float64 then float32: 1/b and the
    constants of the log-probability and of its class gradient (see `_CodeLength`)."""
    c = torch.arange(N_CLASSES, dtype=torch.float64)
    inv_b = torch.exp2(-c / 4.0) / BASE_SCALE
    half = 0.5 * inv_b
    return torch.stack([
        inv_b,
        math.log(0.5) + 0.5 * inv_b + torch.log(-torch.expm1(-inv_b)),  # log p(tail) = this - a / b
        torch.log(-torch.expm1(-half)),  # log p(zero)
        torch.log1p(-0.5 * torch.exp(-half)),  # log p(zero), folded at an end value
        (inv_b / torch.expm1(inv_b) + 0.5 * inv_b) * 0.25,  # d bits / d class (tail) = this - a / (4b)
        half / torch.expm1(half) * 0.25,  # d bits / d class (zero)
        0.5 * half / (torch.exp(half) - 0.5) * 0.25,  # d bits / d class (zero, folded)
    ], dim=1).to(torch.float32)


_CLASS_TABLE = _class_table()


class _CodeLength(torch.autograd.Function):
    """Code length in bits of x under the coder's discretised Laplace at (round(mu), round(cls)).

    With m, c the rounded, clamped mean and class, b = BASE_SCALE * 2^(c / 4), a = |x - m|:
      tail (a >= 1): bits = -(log(1/2) - (a - 1/2) / b + log(1 - e^(-1/b))) / ln 2,
                     d/dmu = -sign(x - m) / (b ln 2),  d/dcls = (1/b / expm1(1/b) - (a - 1/2) / b) / 4
      zero (a = 0):  bits = -log(1 - e^(-1/(2b))) / ln 2,  d/dmu = 0,  d/dcls = (1/(2b)) / expm1(1/(2b)) / 4;
                     folded at an end value: bits = -log(1 - e^(-1/(2b)) / 2) / ln 2,
                     d/dcls = (1/(4b)) / (e^(1/(2b)) - 1/2) / 4
    Everything that depends on c alone comes from a 72-row table (`_class_table`): no
    transcendental function per voxel. The mean's gradient is halved where round(mu) sits on
    vmin or vmax and zero past them (as torch.minimum/maximum give it); the class clamp passes
    its gradient through (straight-through), as in `code_length_bits_autograd`.
    """

    @staticmethod
    def forward(ctx, mu, cls, x, vmin, vmax):  # type: ignore[override]
        m = torch.round(mu)
        w_mu = (torch.sign(vmax - m) + 1.0) * (torch.sign(m - vmin) + 1.0) * 0.25  # 1 inside, 1/2 on an end
        w_mu.clamp_(min=0.0)
        m = torch.maximum(torch.minimum(m, vmax), vmin)
        c = torch.clamp(torch.round(cls), 0, N_CLASSES - 1).to(torch.int64)
        table = _CLASS_TABLE if _CLASS_TABLE.device == mu.device else _CLASS_TABLE.to(mu.device)
        t = table.index_select(0, c)
        inv_b = t[:, 0]
        d = x - m
        a = d.abs()
        zero = a < 0.5
        at_end = (m <= vmin) | (m >= vmax)
        logp = torch.where(zero, torch.where(at_end, t[:, 3], t[:, 2]), t[:, 1] - a * inv_b)
        ctx.save_for_backward(d, a, t, zero, at_end, w_mu)
        return logp * (-1.0 / LN2)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        d, a, t, zero, at_end, w_mu = ctx.saved_tensors
        inv_b = t[:, 0]
        g_mu = torch.where(zero, 0.0, torch.sign(d) * inv_b) * w_mu * (-1.0 / LN2)
        g_cls = torch.where(zero, torch.where(at_end, t[:, 6], t[:, 5]), t[:, 4] - a * inv_b * 0.25)
        return grad * g_mu, grad * g_cls, None, None, None


def code_length_bits_autograd(out: torch.Tensor, s: Samples, spec: ContextSpec = LOCAL,
                              detach_mean: bool = False) -> torch.Tensor:
    """`code_length_bits` written as plain tensor operations (autograd differentiates it): the
    reference its closed-form gradient is tested against."""
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


def _take(packed: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """packed[idx] (rows): numpy's take on the CPU (7x faster than torch indexing there)."""
    if packed.device.type == "cpu":
        return torch.from_numpy(np.take(packed.numpy(), idx.numpy(), axis=0))
    return torch.index_select(packed, 0, idx.to(packed.device))


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
    device: "str | torch.device" = "cpu",
    order: str = "epochs",
    warmup: int = 0,
    layer_lr: tuple[float, ...] = (),
) -> FloatMLP:
    """Adam on the code length (or the paper's loss); cosine decay; deterministic given the
    seed, the device and the torch thread count.

    `device`: where the model, the samples and the loss live while fitting ("cpu", "cuda", a
    torch.device); the model is returned on the CPU, where `quantize` reads it. The batches do
    not depend on the device: their order is drawn on the CPU from `seed`.

    `order`: "epochs" shuffles the samples once per pass and takes contiguous batches of the
    shuffled copy (each sample seen once per pass, one gather per pass); "random" draws every
    batch with replacement (the procedure before decision 0112, kept for comparisons).

    `warmup`: steps of linear learning-rate warm-up before the cosine decay. Warm-up lets a
    fit use a learning rate several times higher without the first, large Adam steps (taken
    with still-empty moment estimates) throwing the shipped weights off.

    `layer_lr`: learning-rate multipliers per layer, first layer first (missing ones: 1).
    Adam moves every weight by about the learning rate per step whatever its gradient, so a
    first-layer weight moves the output by the rate times its input: the first layer wants a
    smaller rate than the rest (one volume's fit diverged at a rate that suited the others).
    """
    device = torch.device(device)
    gen = torch.Generator().manual_seed(seed)
    model.to(device)
    rates = [lr * (layer_lr[i] if i < len(layer_lr) else 1.0) for i in range(len(model.layers))]
    groups = [{"params": [p for layer, r in zip(model.layers, rates) if r == rate for p in layer.parameters()],
               "lr": rate} for rate in dict.fromkeys(rates)]  # one group per distinct rate
    # fused: one kernel per group for all its tensors (half the time of the per-tensor loop)
    opt = torch.optim.Adam(groups, lr=lr, fused=True)
    if warmup > 0:
        w, total = warmup, max(steps, warmup + 1)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: (s + 1) / w if s < w else 0.5 * (1.0 + math.cos(math.pi * (s - w) / (total - w))))
    else:
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, steps))
    n = len(samples)
    b = min(batch, n)
    per_pass = max(1, n // b)
    width = samples.inputs.shape[1]
    # inputs pre-scaled (exactly: a power of two) and aux together: one gather per pass
    packed = torch.cat([samples.inputs / float(1 << INPUT_FRAC_BITS), samples.aux], dim=1)
    if device.type != "cpu":
        packed = packed.to(device)

    def split(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # contiguous inputs, and aux stored column by column (each column a contiguous vector)
        return rows[:, :width].contiguous(), rows[:, width:].t().contiguous()

    start = time.perf_counter()
    model.train()
    for step in range(steps):
        if order == "random":
            inputs, aux_t = split(_take(packed, torch.randint(0, n, (b,), generator=gen)))
        else:
            k = step % per_pass
            if k == 0:
                pass_inputs, pass_aux_t = split(_take(packed, torch.randperm(n, generator=gen)))
            inputs, aux_t = pass_inputs[k * b : (k + 1) * b], pass_aux_t[:, k * b : (k + 1) * b]
        sb = Samples(inputs, aux_t.t())
        out = model.forward_scaled(sb.inputs)
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
    return model.to("cpu")


@torch.no_grad()
def mean_bits(model: FloatMLP, samples: Samples, spec: ContextSpec = LOCAL) -> float:
    out = torch.cat([model(samples.inputs[i : i + 65536]) for i in range(0, len(samples), 65536)])
    return float(code_length_bits(out, samples, spec).mean())
