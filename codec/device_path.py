"""The device-resident coding path (a torch device; a CUDA GPU in production).

Torch twins of the reference path's per-voxel steps, so that a whole wavefront step (neighbour
gather, features, the exact network, mean and table key) runs on the device with the slab
buffer resident there. Per decoder step only the table keys go to the host, where the range
decoder reads the slabs' independent streams (one per slab; the format has no finer streams,
so this one transfer and its synchronisation per step are what the design cannot avoid), and
only the decoded residuals come back; the range check is accumulated on the device and read
once at the end. The encoder's prediction pass has no wavefront (every value is known): it
runs slice by slice on the device and returns the packed symbols and token counts of the
native core, so the emission is the native core's (or the reference coder's).

Exactness (why a GPU gives the reference's integers):
- gather, MED predictor, activity, bucket (``searchsorted``), position and the coding
  parameters are integer tensor operations: exact on any device;
- the features are one IEEE float32 division ``64 / d`` and one multiplication
  ``float32(v - r) * inv`` per value, each a separate eager torch operation (nothing fused,
  no fast-math in torch's kernels), then ``floor`` and a clip: correctly rounded, hence the
  same float32 values as numpy's and the native core's;
- the network is float64 ``addmm`` whose every partial sum is an integer below 2^53
  (codec/network.py), exact in any order, with or without FMA or tensor cores; scaling by a
  power of two, the slope 1/8 (``leaky_relu``) and ``floor`` are exact.
Tests run this module on the CPU device against the reference path byte for byte
(tests/codec/test_device_path.py); on a machine with CUDA the same tests run on the GPU too.
"""

from __future__ import annotations

import numpy as np
import torch

from codec.context import (
    ACTIVITY_BIAS,
    ACTIVITY_THRESHOLDS,
    FEATURE_CLIP,
    FEATURE_SCALE,
    FEATURE_SHIFT,
    MEAN_FRAC_BITS,
    NN,
    NW,
    PREV_FIRST,
    WW,
    ContextSpec,
    N,
    NE,
    SlabGeometry,
    W,
    load_into_buffer,
)
from codec.entropy import MANTISSA_BITS, N_CLASSES, N_DIRECT, N_KEYS, N_LEVELS, N_SHAPES, N_TOKENS
from codec.errors import FormatError
from codec.network import ACT_MAX, LEAKY_SHIFT, OUTPUT_LIMIT, IntMLP
from codec.schedule import Wavefront

#: voxels per network call in the encoder's pass (bounds the device's working memory)
PREDICT_CHUNK = 1 << 16


class DeviceNet:
    """IntMLP's float64 layers resident on the device."""

    def __init__(self, net: IntMLP, device: torch.device) -> None:
        self.layers = [tuple(torch.as_tensor(a, device=device) for a in t) for t in net._float64_layers]

    @torch.no_grad()
    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """(n, n_inputs) integer-valued float64 -> (n, 2) int64, the reference's integers."""
        h = inputs
        last = len(self.layers) - 1
        for i, (w, bias, scale) in enumerate(self.layers):
            h = torch.addmm(bias, h, w).mul_(scale)
            if i < last:
                torch.nn.functional.leaky_relu_(h, 1.0 / (1 << LEAKY_SHIFT))
                h.floor_().clamp_(-ACT_MAX, ACT_MAX)
            else:
                h.floor_()
        return h.clamp_(-OUTPUT_LIMIT, OUTPUT_LIMIT).to(torch.int64)


class DeviceContext:
    """Twins of a ContextSpec's `features` and `coding_params` (local and the paper's cube and pyramid contexts)."""

    def __init__(self, spec: ContextSpec, device: torch.device, vmin: int, vmax: int) -> None:
        if spec.name not in ("local", "paper", "pyramid"):  # pyramid: the paper's features, other neighbours
            raise ValueError(f"no device twin for context {spec.name!r}")
        self.spec, self.vmin, self.vmax = spec, vmin, vmax
        self.thresholds = torch.as_tensor(ACTIVITY_THRESHOLDS, dtype=torch.int64, device=device)

    def params(self, nb: torch.Tensor, first: torch.Tensor, net: DeviceNet) -> tuple[torch.Tensor, torch.Tensor]:
        """Context values (n, k) int64 and first-slice flags -> mean and table key (int64)."""
        if self.spec.name == "local":
            return self._local(nb, first, net)
        return self._paper(nb, net)

    def _local(self, nb: torch.Tensor, first: torch.Tensor, net: DeviceNet) -> tuple[torch.Tensor, torch.Tensor]:
        vmin, vmax = self.vmin, self.vmax
        w, nw, n, ne = nb[:, W], nb[:, NW], nb[:, N], nb[:, NE]
        lo, hi = torch.minimum(w, n), torch.maximum(w, n)
        ref = torch.where(nw >= hi, lo, torch.where(nw <= lo, hi, w + n - nw))
        activity = (w - nw).abs() + (nw - n).abs() + (n - ne).abs() + (w - nb[:, WW]).abs() + (n - nb[:, NN]).abs()
        divisor = activity + ACTIVITY_BIAS
        inv = torch.full_like(divisor, FEATURE_SCALE, dtype=torch.float32) / divisor.to(torch.float32)
        rel = (nb - ref[:, None]).to(torch.float32) * inv[:, None]
        rel = rel.floor_().clamp_(-FEATURE_CLIP, FEATURE_CLIP)
        rel[:, PREV_FIRST:].masked_fill_(first[:, None], 0.0)
        bucket = torch.searchsorted(self.thresholds, divisor, right=True)
        span = vmax - vmin + 1
        extra = torch.stack([bucket * 8, torch.div((ref - vmin) * 512, span, rounding_mode="floor"), first.to(torch.int64) * 256], 1)
        out = net.forward(torch.cat([rel.to(torch.float64), extra.to(torch.float64)], 1))
        frac = MEAN_FRAC_BITS + FEATURE_SHIFT
        offset = (out[:, 0].clamp(-(1 << 30), 1 << 30) * divisor + (1 << (frac - 1))) >> frac
        mu = (ref + offset).clamp(vmin, vmax)
        return mu, self._keys(mu, bucket + out[:, 1].clamp(-N_CLASSES, N_CLASSES))

    def _paper(self, nb: torch.Tensor, net: DeviceNet) -> tuple[torch.Tensor, torch.Tensor]:
        vmin, vmax = self.vmin, self.vmax
        span = max(1, vmax - vmin)
        units = 2 * FEATURE_CLIP
        feats = torch.div((nb - vmin) * units, span, rounding_mode="floor") - FEATURE_CLIP
        out = net.forward(feats.to(torch.float64))
        unit = (1 << MEAN_FRAC_BITS) // FEATURE_SCALE
        denom = units * unit
        num = (out[:, 0].clamp(-(1 << 30), 1 << 30) + FEATURE_CLIP * unit) * span
        mu = (vmin + torch.div(num + denom // 2, denom, rounding_mode="floor")).clamp(vmin, vmax)
        return mu, self._keys(mu, out[:, 1].clamp(-100, 100))

    def _keys(self, mu: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
        """Twin of context.table_keys."""
        vmin, vmax = self.vmin, self.vmax
        cls = cls.clamp(0, N_CLASSES - 1)
        side = torch.where(mu == vmin, 1, torch.where(mu == vmax, 2, 0))
        if vmin == vmax:
            side = torch.ones_like(side)
        level = torch.clamp(torch.div((mu - vmin) * N_LEVELS, vmax - vmin + 1, rounding_mode="floor"), max=N_LEVELS - 1)
        return level * N_SHAPES + side * N_CLASSES + cls


def _tokenize(r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Twin of entropy.tokenize: (token, extra bits value) of int64 residuals."""
    a = r.abs()
    small = a <= N_DIRECT
    _, exp = torch.frexp(torch.clamp(a, min=1).to(torch.float64))  # floor(log2(a)) + 1, exact
    e = exp.to(torch.int64) - 1
    nb = torch.where(small, 0, e - MANTISSA_BITS)
    m = torch.where(small, 0, (a >> nb.clamp(min=0)) & ((1 << MANTISSA_BITS) - 1))
    big = 2 * N_DIRECT + 1 + 2 * ((e - 4) * (1 << MANTISSA_BITS) + m) + (r < 0).to(torch.int64)
    token = torch.where(small, r + N_DIRECT, big)
    extra = torch.where(small, 0, a & ((torch.ones_like(nb) << nb) - 1))
    return token, extra


@torch.no_grad()
def predict(net: IntMLP, spec: ContextSpec, volume: np.ndarray, slabs: list[tuple[int, int]], vmin: int, vmax: int,
            device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """The encoder's prediction pass on the device: packed symbols uint32 (Z, Y, X)
    (key | token << 11 | extra << 18, as codec.native_core.predict) and token counts."""
    geometry, buffer = load_into_buffer(volume, slabs, vmin, spec)
    buf = torch.as_tensor(buffer, device=device).to(torch.int64)
    offsets = torch.as_tensor(geometry.offsets, device=device)
    dnet, ctx = DeviceNet(net, device), DeviceContext(spec, device, vmin, vmax)
    Z, H, X = volume.shape
    symbols = torch.empty(Z * H * X, dtype=torch.int64, device=device)
    counts = torch.zeros(N_KEYS * N_TOKENS, dtype=torch.int64, device=device)
    yy, xx = np.meshgrid(np.arange(H), np.arange(X), indexing="ij")
    for s, (z0, z1) in enumerate(slabs):
        for z in range(z1 - z0):
            plane = torch.as_tensor(geometry.voxel_index(s, np.full(H * X, z), yy.ravel(), xx.ravel()), device=device)
            first = torch.full((H * X,), z == 0, dtype=torch.bool, device=device)
            for c0 in range(0, H * X, PREDICT_CHUNK):
                idx = plane[c0 : c0 + PREDICT_CHUNK]
                mu, keys = ctx.params(buf[idx[:, None] + offsets[None, :]], first[c0 : c0 + PREDICT_CHUNK], dnet)
                token, extra = _tokenize(buf[idx] - mu)
                at = (z0 + z) * H * X + c0
                symbols[at : at + len(idx)] = keys | (token << 11) | (extra << 18)
                counts += torch.bincount(keys * N_TOKENS + token, minlength=N_KEYS * N_TOKENS)
    return (symbols.cpu().numpy().astype(np.uint32).reshape(Z, H, X),
            counts.cpu().numpy().reshape(N_KEYS, N_TOKENS))


@torch.no_grad()
def decode(net: IntMLP, spec: ContextSpec, tables, payloads, shapes, vmin: int, vmax: int, device: torch.device,
           progress=None) -> list[np.ndarray]:
    """Decode slabs with the buffer and every step's arithmetic on the device (module docstring)."""
    import constriction

    from codec.engine import decode_residuals  # engine imports this module lazily: no cycle at import time

    geometry = SlabGeometry(tuple(s[0] for s in shapes), shapes[0][1], shapes[0][2], spec.neighbours)
    buf = torch.full((geometry.total_size,), vmin, dtype=torch.int64, device=device)
    offsets = torch.as_tensor(geometry.offsets, device=device)
    dnet, ctx = DeviceNet(net, device), DeviceContext(spec, device, vmin, vmax)
    decoders = [constriction.stream.queue.RangeDecoder(np.frombuffer(p, dtype=np.uint32).copy()) for p in payloads]
    bad = torch.zeros((), dtype=torch.bool, device=device)
    wave = Wavefront(geometry)
    for i, step in enumerate(wave.steps()):
        idx = torch.as_tensor(step.index, device=device)
        mu, keys = ctx.params(buf[idx[:, None] + offsets[None, :]], torch.as_tensor(step.first_slice, device=device), dnet)
        host_keys = keys.cpu().numpy()  # the one synchronisation per step: the coder runs on the host
        residual = decode_residuals(decoders, tables, host_keys, step.slab)
        values = mu + torch.as_tensor(residual, device=device)
        bad |= ((values < vmin) | (values > vmax)).any()
        buf[idx] = values
        if progress and i % 256 == 0:
            progress(i / max(1, wave.n_steps))
    if bool(bad):
        raise FormatError("decoded values leave the declared range: corrupt payload")
    flat = buf.to(torch.int32).cpu().numpy()
    if progress:
        progress(1.0)
    return [np.ascontiguousarray(geometry.interior(flat, s)) for s in range(len(shapes))]
