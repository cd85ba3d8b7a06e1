"""Mutation fuzz of `.nvc` files (issue 8): bit flips, truncations, and forged HEAD, INDX and MODL
fields with every CRC recomputed, so the mutations reach the parser, the decode planner and the
engine instead of stopping at a checksum.

Every case must end in a decoded array or a `codec.CodecError` (nothing else escapes), within
10 s and with a peak of traced allocations under 1 GB. The decode limits are set to 256 MiB of
decoded voxels and 512 MiB of engine working memory for the run (what a service would set), so
the bound on memory is the codec's own planning, not luck. The upload check (`codec.check`) must
agree with the decoder: a file it accepts decodes, or fails only in the payload (a corrupt slab
or a checksum), never for a reason it could have known.

Cases: NVC_MUTATION_CASES (default 300, the bounded CI run); by hand, e.g.
`NVC_MUTATION_CASES=10000 pytest -q tests/codec/test_fuzz_nvc_mutations.py -s` (prints a summary).
"""

from __future__ import annotations

import os
import random
import struct
import time
import tracemalloc

import numpy as np
import pytest

import codec
from codec import api, check, files
from codec import format as fmt
from codec.errors import CodecError, FormatError, IntegrityError

CASES = int(os.environ.get("NVC_MUTATION_CASES", "300"))
SEED = int(os.environ.get("NVC_MUTATION_SEED", "8"))
MAX_SECONDS = 10.0
MAX_PEAK = 2**30
INTERESTING = [0, 1, 2, 3, 7, 8, 31, 32, 33, 255, 256, 4095, 4096, 65535, 65536, 174762, 2**20, 2**24, 2**31 - 1,
               2**31, 2**32 - 1, 2**32, 2**40, 2**63 - 1, 2**64 - 1]


def _seeds() -> dict[str, bytes]:
    import nibabel as nib

    rng = np.random.default_rng(3)
    small = (rng.integers(0, 50, size=(7, 5, 6)) + np.arange(6) * 3).astype(np.int16)
    series = np.zeros((4, 3, 5, 3), np.uint8)
    series[..., 0] = np.arange(60).reshape(4, 3, 5)
    series[..., 1] = 9  # a constant volume: no model, no slab
    series[..., 2] = np.arange(60).reshape(4, 3, 5)[::-1]
    slabs = np.cumsum(rng.integers(-2, 3, size=(12, 10, 70)), axis=2).astype(np.int16)  # three slabs
    nifti = nib.Nifti1Image((np.arange(6 * 5 * 4) % 37).astype(np.int16).reshape(6, 5, 4), np.eye(4)).to_bytes()
    return {
        "small": codec.encode(small, spacing=(1.0, 1.0, 2.5), metadata=b'{"k": 1}'),
        "series": codec.encode(series, metadata=b"m"),
        "slabs": codec.encode(slabs),
        "nifti+tail": files.compress_bytes(nifti + b"trailing bytes"),
    }


# --------------------------------------------------------------------------- mutations


def chunks(data: bytes) -> list[tuple[bytes, int, int]]:
    """(tag, offset of the chunk, body length) of every chunk up to END."""
    out, pos = [], fmt.PREAMBLE.size
    while pos + fmt.CHUNK_HEAD.size <= len(data):
        tag, length = fmt.CHUNK_HEAD.unpack_from(data, pos)
        out.append((tag, pos, length))
        pos += fmt.CHUNK_OVERHEAD + length
        if tag == fmt.TAG_END or pos > len(data):
            break
    return out


def recrc(data: bytearray, offset: int, length: int) -> None:
    body_end = offset + fmt.CHUNK_HEAD.size + length
    crc = fmt.crc32c(bytes(data[offset + fmt.CHUNK_HEAD.size : body_end]), fmt.crc32c(bytes(data[offset : offset + 12])))
    struct.pack_into("<I", data, body_end, crc)


def forge_field(rng: random.Random, data: bytes, tag: bytes, fields) -> bytes:
    """Overwrite one field (`fields`: [(offset in body, struct format)]) of a `tag` chunk, CRC recomputed."""
    found = [(off, length) for t, off, length in chunks(data) if t == tag]
    if not found:
        return data
    off, length = rng.choice(found)
    candidates = [(o, f) for o, f in fields(length) if o + struct.calcsize(f) <= length]
    if not candidates:
        return data
    where, form = rng.choice(candidates)
    size = struct.calcsize(form)
    out = bytearray(data)
    if form == "<d":
        value = rng.choice([0.0, -1.0, 5e-324, 1e-40, float("nan"), float("inf"), 1e39, 2.5])
    else:
        bits = 8 * size
        value = rng.choice(INTERESTING + [rng.getrandbits(bits), -1, -1024]) % (1 << bits)
        if form[1].islower() and value >= 1 << (bits - 1):  # a signed field: the same bits
            value -= 1 << bits
    struct.pack_into(form, out, off + 12 + where, value)
    recrc(out, off, length)
    return bytes(out)


def head_fields(length: int):
    yield from [(0, "<B"), (1, "<B"), (2, "<B"), (3, "<B"), (4, "<I")]
    for i in range(8, min(length - 32, 8 + 8 * 8), 8):  # shape entries, then spacings
        yield (i, "<Q")
        yield (i, "<d")


def indx_fields(length: int):
    yield from [(0, "<Q"), (8, "<I")]
    for rec in range(12, min(length, 12 + 24 * 4), 24):  # volume records
        yield from [(rec, "<i"), (rec + 4, "<i"), (rec + 8, "<q"), (rec + 16, "<I"), (rec + 20, "<I")]
    for rec in range(12 + 24, length, 32):  # possibly slab records (the fields fall where they fall)
        yield from [(rec, "<I"), (rec + 4, "<I"), (rec + 8, "<Q"), (rec + 16, "<Q"), (rec + 24, "<I"), (rec + 28, "<I")]


def modl_fields(length: int):
    yield from [(0, "<B"), (1, "<B"), (2, "<B"), (3, "<B"), (5, "<B")]
    for pos in range(3, min(length, 64)):
        yield (pos, "<I")


def mutate(rng: random.Random, data: bytes) -> tuple[str, bytes]:
    kind = rng.choice(["flip", "flips", "truncate", "head", "head", "indx", "indx", "modl", "modl", "splice"])
    if kind in ("flip", "flips"):
        out = bytearray(data)
        for _ in range(1 if kind == "flip" else rng.randint(2, 8)):
            out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
        if rng.random() < 0.5:  # and recompute every CRC, so the flips reach the parsers
            for _, off, length in chunks(bytes(out)):
                if off + fmt.CHUNK_OVERHEAD + length <= len(out):
                    recrc(out, off, length)
        return kind, bytes(out)
    if kind == "truncate":
        return kind, data[: rng.randrange(len(data))]
    if kind == "splice":
        a, b = sorted(rng.randrange(len(data)) for _ in range(2))
        return kind, data[:a] + data[b:] + data[a:b]
    tag, fields = {"head": (fmt.TAG_HEAD, head_fields), "indx": (fmt.TAG_INDX, indx_fields),
                   "modl": (fmt.TAG_MODL, modl_fields)}[kind]
    return kind, forge_field(rng, data, tag, fields)


# --------------------------------------------------------------------------- the run


def run_case(data: bytes) -> str:
    """Decode, describe and check `data`; the outcome. Raises AssertionError on a property breach."""
    try:
        accepted = check.check_nvc(data, verify_all=True)
    except CodecError:
        accepted = None
    try:
        codec.info(data)
    except CodecError:
        pass
    try:  # what the worker does: decode, and write the source's format back (its kept header, TAIL)
        out, _ = files.decompress_to_bytes(data)
    except CodecError as exc:
        if accepted is not None:  # the check passed: only the payload may still be bad
            assert isinstance(exc, IntegrityError) or "payload" in str(exc) or "decoded values" in str(exc), (
                f"the upload check accepts a file the decoder refuses for a knowable reason: {exc}")
        return f"refused:{type(exc).__name__}"
    assert accepted is not None, "the decoder decodes a file the upload check refuses"
    assert isinstance(out, bytes)
    return "decoded"


@pytest.fixture(scope="module")
def seeds():
    return _seeds()


def test_mutated_files_stay_within_time_and_memory(seeds, monkeypatch):
    monkeypatch.setenv(api.MAX_DECODE_BYTES_ENV, str(256 * 2**20))
    monkeypatch.setenv(api.DECODE_MEMORY_ENV, str(512 * 2**20))
    rng = random.Random(SEED)
    names = sorted(seeds)
    outcomes: dict[str, int] = {}
    worst_time = worst_peak = 0.0
    for i in range(CASES):
        name = names[i % len(names)]
        kind, data = mutate(rng, seeds[name])
        tracemalloc.start()
        start = time.perf_counter()
        try:
            outcome = run_case(data)
        except AssertionError as exc:
            raise AssertionError(f"case {i} ({name}, {kind}, seed {SEED}): {exc}") from None
        except Exception as exc:  # anything but a codec error escaped
            raise AssertionError(f"case {i} ({name}, {kind}, seed {SEED}): {type(exc).__name__} escaped: {exc}") from exc
        finally:
            seconds = time.perf_counter() - start
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
        assert seconds < MAX_SECONDS, f"case {i} ({name}, {kind}) took {seconds:.1f} s"
        assert peak < MAX_PEAK, f"case {i} ({name}, {kind}) peaked at {peak} bytes"
        worst_time, worst_peak = max(worst_time, seconds), max(worst_peak, peak)
        outcomes[f"{kind}:{outcome}"] = outcomes.get(f"{kind}:{outcome}", 0) + 1
    print(f"\n{CASES} cases (seed {SEED}): slowest {worst_time:.2f} s, largest peak {worst_peak / 2**20:.1f} MiB")
    for key in sorted(outcomes):
        print(f"  {key}: {outcomes[key]}")
    assert sum(v for k, v in outcomes.items() if k.endswith("decoded")) < CASES  # the mutations do reach the refusals


def test_seeds_decode(seeds):
    for data in seeds.values():
        assert run_case(data) == "decoded"


def test_the_reported_mutations_are_in_the_fuzz(seeds):
    """Two .nvc cases of issue 8 as the fuzzer makes them, a forged dimension and a model blob
    version of 33: both refused by the upload check already, before any decoding."""
    data = seeds["slabs"]
    (_, off, length), = [c for c in chunks(data) if c[0] == fmt.TAG_HEAD]
    forged = bytearray(data)
    struct.pack_into("<Q", forged, off + 12 + 8, 2**24)  # x: 16M columns, a slab needs 64 GB
    recrc(forged, off, length)
    with pytest.raises(FormatError):
        check.check_nvc(bytes(forged))
    (_, off, length), = [c for c in chunks(data) if c[0] == fmt.TAG_MODL]
    blob = bytearray(data)
    blob[off + 12] = 33
    recrc(blob, off, length)
    with pytest.raises(FormatError, match="version 33"):
        check.check_nvc(bytes(blob))
