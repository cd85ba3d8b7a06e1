"""The predictor: a small MLP trained in float, run in exact integer arithmetic.

Training uses `FloatMLP` (torch, float32). For coding, the weights are quantised into an
`IntMLP`: int16 weights with a power-of-two scale per output channel, integer biases and
activations held as integers of at most 15 bits plus sign. The matrix products run in
float64 (BLAS on CPU, cuBLAS on GPU) but only ever see integers: every |product| is at most
32767 * 32767 and a layer has at most MAX_FAN_IN inputs, so every partial sum in *any*
summation order is an integer below 2^53 and therefore exact. The rescaling after the product
multiplies by a power of two and floors, which is exact too. The result is the same integers on
every CPU and GPU, for any thread count and any batch split. (int8 weights with float32 products
were measured first: a class error of 1.3 on average against the float network, +15% bits.)

The network outputs, per voxel, a mean offset and a log-scale offset; the context model
(`codec.context`) turns them into the integer mean `mu` and the coding table key.
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass

import numpy as np
import torch

from codec.context import FEATURE_SHIFT, MEAN_FRAC_BITS
from codec.errors import FormatError

WEIGHT_MAX = 32767
ACT_MAX = 32767  # hidden activations are clamped to [-ACT_MAX, ACT_MAX]; inputs to FEATURE_CLIP
MAX_FAN_IN = 64  # widths of the default networks (wider ones, e.g. the paper's, up to MAX_WIDE_FAN_IN)
MAX_BIAS = 1 << 40
MAX_LEFT_SHIFT = 16  # a negative shift multiplies by at most 2^16: still an exact power of two
#: Every partial sum of a layer stays an integer below 2^53: exact in float64, in any order.
MAX_WIDE_FAN_IN = 4096
assert MAX_WIDE_FAN_IN * WEIGHT_MAX * ACT_MAX + MAX_BIAS < 1 << 53
LEAKY_SHIFT = 3  # leaky ReLU slope 1/8: h < 0 -> floor(h / 8)
INPUT_FRAC_BITS = FEATURE_SHIFT  # integer inputs are features * 2^6


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
        h = x / float(1 << INPUT_FRAC_BITS)
        for i, layer in enumerate(self.layers):
            h = layer(h)
            if i < len(self.layers) - 1:
                h = torch.nn.functional.leaky_relu(h, 1.0 / (1 << LEAKY_SHIFT))
        return h  # (n, 2): mean offset (feature units / 64), log-scale offset (quarter octaves)


@dataclass
class IntLayer:
    weight: np.ndarray  # (out, in) int16 values
    bias: np.ndarray  # (out,) int64, in the accumulator's fixed point (includes the rounding half)
    shift: np.ndarray  # (out,) int: right shift from the accumulator to the output fixed point (< 0: left)


@dataclass
class IntMLP:
    """Quantised network: what decides every coding distribution."""

    n_inputs: int
    widths: tuple[int, ...]
    layers: list[IntLayer]


    # ---------------------------------------------------------------- serialisation
    def to_bytes(self) -> bytes:
        out = io.BytesIO()
        out.write(struct.pack("<HB", self.n_inputs, len(self.widths)))
        out.write(struct.pack(f"<{len(self.widths)}H", *self.widths))
        for layer in self.layers:
            out.write(layer.weight.astype("<i2").tobytes())
            out.write(layer.bias.astype("<i8").tobytes())
            out.write(layer.shift.astype(np.int8).tobytes())
        return zlib.compress(out.getvalue(), 9)

    @classmethod
    def from_bytes(cls, blob: bytes, *, max_params: int = 1 << 20) -> "IntMLP":
        try:
            raw = zlib.decompressobj().decompress(blob, 16 * max_params)
        except zlib.error as exc:
            raise FormatError(f"embedded network weights are corrupt: {exc}") from None
        try:
            n_inputs, n_hidden = struct.unpack_from("<HB", raw, 0)
            widths = struct.unpack_from(f"<{n_hidden}H", raw, 3)
        except struct.error:
            raise FormatError("embedded network header is truncated") from None
        if not 1 <= n_hidden <= 8 or any(not 1 <= w <= MAX_WIDE_FAN_IN for w in (n_inputs, *widths)):
            raise FormatError(f"embedded network has unsupported widths {(n_inputs, *widths)}")
        dims = (n_inputs, *widths, 2)
        pos = 3 + 2 * n_hidden
        layers = []
        for a, b in zip(dims[:-1], dims[1:]):
            need = 2 * a * b + 8 * b + b
            if pos + need > len(raw):
                raise FormatError("embedded network weights are truncated")
            w = np.frombuffer(raw, "<i2", a * b, pos).reshape(b, a).astype(np.int64)
            pos += 2 * a * b
            bias = np.frombuffer(raw, "<i8", b, pos).astype(np.int64)
            pos += 8 * b
            shift = np.frombuffer(raw, np.int8, b, pos).astype(np.int64)
            pos += b
            if (
                np.abs(w).max(initial=0) > WEIGHT_MAX
                or np.abs(bias).max(initial=0) > MAX_BIAS
                or shift.min(initial=0) < -MAX_LEFT_SHIFT
                or shift.max(initial=0) > 40
                or a > MAX_WIDE_FAN_IN
            ):
                raise FormatError("embedded network parameters are out of range")
            layers.append(IntLayer(w, bias, shift))
        if pos != len(raw):
            raise FormatError("embedded network has trailing bytes")
        return cls(n_inputs, tuple(widths), layers)

    @property
    def n_params(self) -> int:
        return int(sum(l.weight.size + l.bias.size for l in self.layers))

    # ---------------------------------------------------------------- inference
    def torch_layers(self, device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Per layer: bias, weights (in, out) and the per-channel factor 2^-shift, as floats."""
        dtype = torch.float64
        out = []
        for layer in self.layers:
            w = torch.as_tensor(layer.weight.T.copy(), dtype=dtype, device=device)
            bias = torch.as_tensor(layer.bias, dtype=dtype, device=device)
            scale = torch.as_tensor(np.exp2(-layer.shift.astype(np.float64)), dtype=dtype, device=device)
            out.append((bias, w, scale))
        return out

    def forward(self, inputs: np.ndarray, device: torch.device | None = None, cache: dict | None = None) -> np.ndarray:
        """Exact integer forward pass: (n, n_inputs) int -> (n, 2) int64.

        Each layer computes floor(leaky((h @ W + bias) * 2^-shift)) and clamps hidden
        activations to [-ACT_MAX, ACT_MAX]. |h| <= 32767, |W| <= 32767, fan-in <= 4096 and
        |bias| <= 2^40 (checked when weights are loaded), so h @ W + bias is an integer below
        2^53 for every partial sum in any order: exact in float64 on any CPU or GPU.
        Multiplying by a power of two, the leaky slope 1/8 and floor are exact too.
        """
        device = device or torch.device("cpu")
        key = ("layers", str(device))
        if cache is not None and key in cache:
            layers = cache[key]
        else:
            layers = self.torch_layers(device)
            if cache is not None:
                cache[key] = layers
        dtype = layers[0][0].dtype
        with torch.no_grad():
            h = torch.as_tensor(inputs, device=device).to(dtype)
            last = len(layers) - 1
            for i, (bias, w, scale) in enumerate(layers):
                h = torch.addmm(bias, h, w).mul_(scale)
                if i < last:
                    torch.nn.functional.leaky_relu_(h, 1.0 / (1 << LEAKY_SHIFT))
                    h.floor_().clamp_(-ACT_MAX, ACT_MAX)
                else:
                    h.floor_()
            return h.to(torch.int64).cpu().numpy()


def _channel_shift(max_abs: np.ndarray, limit: int) -> np.ndarray:
    """Largest s with max_abs * 2^s <= limit (per channel)."""
    with np.errstate(divide="ignore"):
        s = np.floor(np.log2(limit / np.maximum(max_abs, 1e-12)))
    return np.clip(s, -20, 30).astype(np.int64)


def quantize(model: FloatMLP, calibration: np.ndarray) -> IntMLP:
    """Quantise a float model; activation scales come from `calibration` inputs (n, n_inputs)."""
    with torch.no_grad():
        x = torch.as_tensor(calibration, dtype=torch.float32)
        h = x / float(1 << INPUT_FRAC_BITS)
        act_frac = [INPUT_FRAC_BITS]  # fractional bits of each layer's integer input
        for i, layer in enumerate(model.layers[:-1]):
            h = torch.nn.functional.leaky_relu(layer(h), 1.0 / (1 << LEAKY_SHIFT))
            peak = float(torch.quantile(h.abs().flatten()[:1_000_000], 0.9999)) if h.numel() else 1.0
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
