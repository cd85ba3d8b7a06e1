"""The predictor: a small MLP trained in float, run in exact integer arithmetic.

Training uses `FloatMLP` (torch, float32, in `codec.fit`). For coding, the weights are quantised into an
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

from functools import cached_property

import numpy as np

from codec.context import FEATURE_SHIFT
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
#: Integer outputs are clipped to +-2^62 before the conversion to int64 (a float64 beyond int64 has
#: no defined conversion); the coding parameters clip them far tighter (+-2^30, +-100) anyway.
OUTPUT_LIMIT = float(1 << 62)
#: The native kernels pad each layer's outputs to blocks of this many channels (codec/native/core.h).
OUT_BLOCK = 8


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
    @cached_property
    def _float64_layers(self) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Per layer: weights (in, out), bias and the per-channel factor 2^-shift, as float64."""
        return [
            (np.ascontiguousarray(l.weight.T, dtype=np.float64), l.bias.astype(np.float64), np.exp2(-l.shift.astype(np.float64)))
            for l in self.layers
        ]

    def forward(self, inputs: np.ndarray) -> np.ndarray:
        """Exact integer forward pass: (n, n_inputs) int -> (n, 2) int64 (the reference; numpy).

        Each layer computes floor(leaky((h @ W + bias) * 2^-shift)) and clamps hidden
        activations to [-ACT_MAX, ACT_MAX]. |h| <= 32767, |W| <= 32767, fan-in <= 4096 and
        |bias| <= 2^40 (checked when weights are loaded), so h @ W + bias is an integer below
        2^53 for every partial sum in any order: exact in float64 BLAS, in the native kernels
        (any blocking, with or without FMA) and on a GPU. Multiplying by a power of two, the
        leaky slope 1/8 and floor are exact too. The same arithmetic runs in torch on a device
        in `codec.device_path.DeviceNet`.
        """
        h = np.asarray(inputs, dtype=np.float64)
        last = len(self.layers) - 1
        for i, (w, bias, scale) in enumerate(self._float64_layers):
            h = h @ w
            h += bias
            h *= scale
            if i < last:
                np.multiply(h, 1.0 / (1 << LEAKY_SHIFT), out=h, where=h < 0)
                np.floor(h, out=h)
                np.clip(h, -ACT_MAX, ACT_MAX, out=h)
            else:
                np.floor(h, out=h)
        return np.clip(h, -OUTPUT_LIMIT, OUTPUT_LIMIT).astype(np.int64)
