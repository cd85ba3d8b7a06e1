"""Generate the frozen conformance vectors (run by hand; never by the test suite).

    cd <repo> && PYTHONPATH=. python tests/codec/conformance/make_vectors.py

writes `tests/codec/conformance/vectors/*.nvc` and `vectors.json` (file SHA-256, input SHA-256,
shape, dtype, profile, what the file's model blob holds). `tests/codec/test_conformance.py`
then checks on every machine that each frozen file decodes to exactly its input and that
today's encoder still writes the same bytes.

The vectors are FROZEN: they record what the format-1 encoder wrote when they were made, so
old files stay decodable. Regenerate them only for a deliberate format change, and say so in
a numbered record under docs/decisions/ (the old files should then be kept as well, under a
new name, because they must still decode): rename the old file, give its vectors.json record a
"decode_only" reason, then regenerate the changed vector.

Inputs are built with integer arithmetic only (numpy's PCG64 integer draws, no libm), so
`build_input(name)` gives the same array on every platform and numpy version.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
VECTOR_DIR = HERE / "vectors"
INDEX = HERE / "vectors.json"


def _field(shape_xyz: tuple[int, ...], seed: int) -> np.ndarray:
    """A smooth integer field in [0, 4096) on (x, y, z): sums of integer parabolic bumps."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*(np.arange(n, dtype=np.int64) for n in shape_xyz), indexing="ij")
    out = np.zeros(shape_xyz, dtype=np.int64)
    for _ in range(6):
        centre = [int(rng.integers(0, n)) for n in shape_xyz]
        radius = [int(rng.integers(max(2, n // 3), max(3, n + 1))) for n in shape_xyz]
        amp = int(rng.integers(200, 1200))
        # 1 - sum(((g - c) / r)^2), scaled by 2^12, integer only
        d = sum(((g - c) * 4096 // r) ** 2 // 4096 for g, c, r in zip(grids, centre, radius))
        out += np.maximum(0, 4096 - d) * amp // 4096
    return out


def _noise(shape: tuple[int, ...], amplitude: int, seed: int) -> np.ndarray:
    """Integer noise: a sum of 4 uniform draws (roughly bell-shaped), mean 0."""
    rng = np.random.default_rng(seed)
    return rng.integers(-amplitude, amplitude + 1, size=(4, *shape), dtype=np.int64).sum(axis=0) // 2


def build_input(name: str) -> np.ndarray:
    """The fixed input array of vector `name` (NIfTI axis order)."""
    if name == "u16_structured":
        # uint16 MR-like: smooth anatomy plus noise, dark background band
        x = _field((40, 36, 10), 1) + 300 + _noise((40, 36, 10), 6, 2)
        x[:, :6] = 0
        return np.clip(x, 0, 65535).astype(np.uint16)
    if name == "i16_ct":
        # int16 CT-like: air clipped at -1024, a soft-tissue ellipse, a bony rim
        X, Y, Z = 48, 40, 12
        gx, gy, _ = np.meshgrid(np.arange(X), np.arange(Y), np.arange(Z), indexing="ij")
        r = ((gx - X // 2) * 100 // (X // 2 - 3)) ** 2 + ((gy - Y // 2) * 100 // (Y // 2 - 3)) ** 2
        body = r <= 100 * 100
        rim = body & (r >= 82 * 82)
        x = np.full((X, Y, Z), -1024, dtype=np.int64)
        soft = 40 + _field((X, Y, Z), 3) // 40 + _noise((X, Y, Z), 12, 4)
        x[body] = soft[body]
        x[rim] = 900 + _noise((X, Y, Z), 60, 5)[rim]
        return np.clip(x, -1024, 3071).astype(np.int16)
    if name == "constant":
        return np.full((16, 12, 5), 7, dtype=np.uint8)
    if name == "odd_4d":
        # odd extents, 37 slices (two slabs: 19 + 18; 32 + 5 before decision 0111), 2 time points, int16
        # with negative values
        x = _field((13, 7, 37, 2), 6) // 8 - 200 + _noise((13, 7, 37, 2), 3, 7)
        return x.astype(np.int16)
    if name == "u16_fitted":
        # a periodic diagonal texture the shipped model predicts poorly: fitting pays for its
        # weights, so fine-tuned weights and per-volume tables are both stored
        X, Y, Z = 48, 40, 12
        gx, gy, gz = np.meshgrid(np.arange(X), np.arange(Y), np.arange(Z), indexing="ij")
        levels = np.array([0, 37, 180, 90, 12], dtype=np.int64)
        x = 500 + levels[(gx + 2 * gy + gz) % 5] * 4 + _noise((X, Y, Z), 3, 1)
        return np.clip(x, 0, 65535).astype(np.uint16)
    if name == "u8_tiny":
        x = _field((12, 10, 4), 10) // 20 + _noise((12, 10, 4), 4, 11)
        return np.clip(x, 0, 255).astype(np.uint8)
    raise KeyError(name)


#: (vector name, input name, profile, spacing): every shipped profile that encodes in seconds.
VECTORS: tuple[tuple[str, str, str, tuple[float, ...] | None], ...] = (
    ("default_u16_structured", "u16_structured", "default", (0.9, 0.9, 3.0)),
    ("default_i16_ct", "i16_ct", "default", (0.7, 0.7, 5.0)),
    ("default_constant", "constant", "default", None),
    ("default_odd_4d", "odd_4d", "default", (1.0, 1.0, 1.0, 2.5)),
    ("default_u16_fitted", "u16_fitted", "default", None),
    ("archive_u16_fitted", "u16_fitted", "archive", None),
    ("paper_u8_tiny", "u8_tiny", "paper", None),
    ("paper_pyramid_u8_tiny", "u8_tiny", "paper-pyramid", None),
)

METADATA = b"nvc conformance vector"


def input_sha256(array: np.ndarray) -> str:
    """SHA-256 of the array's shape, dtype and C-order little-endian voxel bytes."""
    a = np.ascontiguousarray(array)
    h = hashlib.sha256(f"{a.dtype.str.lstrip('<>|=')}:{a.shape}".encode())
    h.update(a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes())
    return h.hexdigest()


def encode_vector(name: str) -> bytes:
    """Encode vector `name` with today's code."""
    import codec

    _, input_name, profile, spacing = next(v for v in VECTORS if v[0] == name)
    return codec.encode(build_input(input_name), spacing=spacing, metadata=METADATA, profile=profile)


def main(argv: list[str]) -> int:
    import codec

    VECTOR_DIR.mkdir(exist_ok=True)
    records = {}
    for name, input_name, profile, spacing in VECTORS:
        if argv and name not in argv:
            continue
        array = build_input(input_name)
        t0 = time.perf_counter()
        data = encode_vector(name)
        elapsed = time.perf_counter() - t0
        (VECTOR_DIR / f"{name}.nvc").write_bytes(data)
        info = codec.info(data)
        back = codec.decode(data)
        assert back.dtype == array.dtype and np.array_equal(back, array), name
        records[name] = {
            "file": f"vectors/{name}.nvc",
            "file_sha256": hashlib.sha256(data).hexdigest(),
            "file_bytes": len(data),
            "input": input_name,
            "input_sha256": input_sha256(array),
            "shape": list(array.shape),
            "dtype": str(array.dtype),
            "profile": profile,
            "spacing": list(spacing) if spacing else None,
            "metadata": METADATA.decode(),
            "models": _model_summary(data),
        }
        print(f"{name}: {len(data)} bytes, {elapsed:.1f} s, models {records[name]['models']}", flush=True)
    if INDEX.exists():  # keep the records this run did not write (and every decode-only one)
        old = json.loads(INDEX.read_text())["vectors"]
        records = {**{k: v for k, v in old.items() if not argv or k not in records or v.get("decode_only")}, **records}
    INDEX.write_text(json.dumps({"format_version": 1, "vectors": records}, indent=2, sort_keys=True) + "\n")
    return 0


def _model_summary(data: bytes) -> list[dict]:
    """What each model blob of the file holds (fine-tuned weights, per-volume tables)."""
    from codec import engine
    from codec import format as fmt

    container, _ = fmt.parse(data)
    out = []
    for blob in container.models:
        d = engine.describe_model(blob)
        out.append({k: d[k] for k in ("model_id", "fine_tuned", "volume_tables")})
    return out


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
