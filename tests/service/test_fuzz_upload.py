"""Hostile input: fuzz the upload checks (service/validate.py), the codec's NIfTI/.npy readers and
.nvc parser, and the upload route itself.

Every case is a mutation of a valid seed file (bit flips, interesting integers written over
header fields, insertions, deletions, truncation, splices; for .nvc files the chunk CRCs are
often recomputed afterwards and for .nii.gz the inner file is mutated and re-compressed, so
mutations reach the parsers instead of stopping at a checksum). Properties:

- the upload validator answers every input with a VolumeInfo or a 413/415/422 problem, never
  another exception, and the same verdict however the bytes are chunked;
- it agrees with the codec: what the codec's reader (`read_volume_bytes`, or for .nvc
  `format.parse(verify_all=True)`) accepts, the validator accepts with the same shape and
  dtype, and the other way round (the only intended difference: a NIfTI/.npy with more than
  1 MiB after its voxels, refused by the API as damaged or a decompression bomb);
- the codec's readers fail only with CodecError subclasses, and decoding a mutated .nvc
  that still parses allocates at most a small multiple of the voxel bytes its header declares;
- the HTTP route answers 202 or a 4xx problem (never 5xx) and keeps nothing of a refusal.

Case counts: NVC_FUZZ_EXAMPLES (default 2000, what CI runs) is split over the hypothesis
tests; the long run by hand is e.g. `NVC_FUZZ_EXAMPLES=100000 pytest tests/service/test_fuzz_upload.py`.
The same targets also run under atheris (coverage-guided) when it is installed:
`python tests/service/test_fuzz_upload.py -runs=200000` by hand, a short run in CI.
"""

from __future__ import annotations

import functools
import gzip
import io
import os
import random
import struct
import subprocess
import sys
import time
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ (conftest)
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository

from service.problems import Problem  # noqa: E402
from service.validate import TRAILING_SLACK, VolumeUploadValidator, validator_for  # noqa: E402

TOTAL_EXAMPLES = int(os.environ.get("NVC_FUZZ_EXAMPLES", "2000"))
LONG_RUN = "NVC_FUZZ_EXAMPLES" in os.environ
#: share of the examples per test (sums to 1)
SHARES = {"volume": 0.4, "nvc": 0.35, "route": 0.15, "decode": 0.1}
MAX_VOLUME = 8 * 1024**3


def fuzz_settings(share: str):
    return settings(
        max_examples=max(10, int(TOTAL_EXAMPLES * SHARES[share])), deadline=None, database=None,
        derandomize=not LONG_RUN,  # CI: the same cases every run
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
    )


# ----------------------------------------------------------------------------- seeds


@functools.lru_cache(maxsize=1)
def volume_seeds() -> list[tuple[str, bytes]]:
    """Valid .npy / .nii / .nii.gz files: several dtypes, byte orders, header versions."""
    import nibabel as nib

    a = (np.arange(6 * 5 * 4) % 97).reshape(6, 5, 4).astype(np.int16)
    out = []
    for arr in (a.astype(np.uint16), np.asfortranarray(a.astype(np.int8)), a.astype(">i2"), a[:, :, 0].astype(np.uint64)):
        buf = io.BytesIO()
        np.save(buf, arr)
        out.append(("npy", buf.getvalue()))
    buf = io.BytesIO()
    np.lib.format.write_array(buf, a.astype(">u2"), version=(2, 0))
    out.append(("npy", buf.getvalue()))
    plain = nib.Nifti1Image(a, np.eye(4), dtype=np.int16).to_bytes()
    big = nib.Nifti1Image(a, np.eye(4), header=nib.Nifti1Header(endianness=">"))
    big.set_data_dtype(">i2")
    big.header.extensions.append(nib.nifti1.Nifti1Extension(6, b"a comment extension"))
    series = nib.Nifti1Image(np.stack([a, a + 1], axis=-1).astype(np.int32), np.eye(4), dtype=np.int32).to_bytes()
    nifti2 = nib.Nifti2Image(a.astype(np.uint8), np.eye(4), dtype=np.uint8).to_bytes()
    for raw in (plain, big.to_bytes(), series, nifti2):
        out.append(("nii", raw))
    out.append(("nii.gz", gzip.compress(plain, mtime=0)))
    out.append(("nii.gz", gzip.compress(nifti2[:400], mtime=0) + gzip.compress(nifti2[400:], mtime=0) + b"\0" * 4))
    return out


@functools.lru_cache(maxsize=1)
def nvc_seeds() -> list[bytes]:
    import codec
    from codec.files import compress_bytes

    a = ((np.arange(7 * 5 * 6) % 50).reshape(7, 5, 6) + np.arange(6) * 3).astype(np.int16)
    series = np.zeros((4, 3, 5, 3), np.uint8)
    series[..., 0] = np.arange(60).reshape(4, 3, 5)
    series[..., 1] = 9  # constant: no model, no slab
    nifti = dict(volume_seeds())["nii"]
    return [codec.encode(a, spacing=(1.0, 1.0, 2.5), metadata=b'{"k": 1}'), codec.encode(series, metadata=b"m"),
            codec.encode(a[:, :, 0].astype(np.uint16)), compress_bytes(nifti)]


def fix_nvc_crcs(data: bytearray) -> bytearray:
    """Recompute the CRC-32C of every chunk whose framing still fits (mutations reach the parser)."""
    from codec import format as fmt

    pos = fmt.PREAMBLE.size
    while pos + fmt.CHUNK_OVERHEAD <= len(data):
        _, length = fmt.CHUNK_HEAD.unpack_from(data, pos)
        end = pos + fmt.CHUNK_HEAD.size + length
        if end + 4 > len(data):
            break
        struct.pack_into("<I", data, end, fmt.crc32c(bytes(data[pos + 12 : end]), fmt.crc32c(bytes(data[pos : pos + 12]))))
        pos = end + 4
    return data


# ----------------------------------------------------------------------------- mutations

INTERESTING = [0, 1, 2, 3, 7, 8, 127, 128, 255, 256, 348, 352, 540, 1024, 32767, 32768, 65535, 65536, 2**31 - 1,
               2**31, 2**32 - 1, 2**32, 2**62, 2**63 - 1, 2**64 - 1]


def mutate(data: bytes, rnd: random.Random, n: int, others: list[bytes]) -> bytes:
    buf = bytearray(data)
    for _ in range(n):
        if not buf:
            buf += bytes([rnd.randrange(256)])
            continue
        op = rnd.randrange(9)
        # header fields live near the start: bias positions there
        pos = rnd.randrange(min(len(buf), 700)) if rnd.random() < 0.75 else rnd.randrange(len(buf))
        if op == 0:
            buf[pos] ^= 1 << rnd.randrange(8)
        elif op == 1:
            buf[pos] = rnd.randrange(256)
        elif op in (2, 3):
            size, fmtc = rnd.choice([(2, "H"), (4, "I"), (8, "Q")])
            value = rnd.choice(INTERESTING) % (1 << (8 * size))
            if pos + size <= len(buf):
                struct.pack_into(rnd.choice("<>") + fmtc, buf, pos, value)
        elif op == 4:
            buf[pos:pos] = bytes(rnd.randrange(256) for _ in range(rnd.randrange(1, 16)))
        elif op == 5:
            del buf[pos : pos + rnd.randrange(1, 32)]
        elif op == 6:
            del buf[rnd.randrange(len(buf) + 1) :]
        elif op == 7:
            buf += bytes(rnd.randrange(256) for _ in range(rnd.randrange(1, 64)))
        else:
            other = rnd.choice(others)
            start = rnd.randrange(len(other))
            piece = other[start : start + rnd.randrange(1, 64)]
            buf[pos : pos + len(piece)] = piece
    return bytes(buf)


def volume_case(seed: int, n: int) -> bytes:
    rnd = random.Random(seed)
    kind, data = rnd.choice(volume_seeds())
    others = [d for _, d in volume_seeds()]
    if kind == "nii.gz" and rnd.random() < 0.7:  # mutate the inner file, compress again
        return gzip.compress(mutate(gzip.decompress(data), rnd, n, others), mtime=0)
    return mutate(data, rnd, n, others)


def nvc_case(seed: int, n: int) -> bytes:
    rnd = random.Random(seed)
    data = mutate(rnd.choice(nvc_seeds()), rnd, n, nvc_seeds())
    return bytes(fix_nvc_crcs(bytearray(data))) if rnd.random() < 0.7 else data


# ----------------------------------------------------------------------------- verdicts


def validate(kind: str, data: bytes, chunk: int | None = None, max_volume: int = MAX_VOLUME):
    """('ok', VolumeInfo) or (status, detail); anything else raised is a bug."""
    v = validator_for(kind, max_volume)
    try:
        if chunk is None:
            v.feed(data)
        else:
            for i in range(0, len(data), chunk):
                v.feed(data[i : i + chunk])
        return "ok", v.finish()
    except Problem as exc:
        assert exc.status in (413, 415, 422), (exc.status, exc.detail)
        assert exc.detail
        return exc.status, exc.detail


def codec_reads_volume(data: bytes):
    from codec import CodecError
    from codec.files import read_volume_bytes

    try:
        vf = read_volume_bytes(data)
    except CodecError as exc:
        return None, str(exc)
    except zlib.error as exc:  # a codec bug found by this fuzzer: see test_codec_gunzip_errors_are_codec_errors
        return None, f"zlib.error escaped the codec: {exc}"
    except (OverflowError, ValueError) as exc:  # codec bug: negative dimensions, see test_codec_refuses_negative_dims
        return None, f"{type(exc).__name__} escaped the codec: {exc}"
    return vf.array, None


def codec_parses_nvc(data: bytes):
    from codec import CodecError
    from codec.check import check_nvc

    try:  # the container, and what the decoder refuses before decoding (model blobs, source header, limits)
        container = check_nvc(data, max_volume_bytes=MAX_VOLUME)
    except CodecError as exc:
        return None, str(exc)
    return container.header, None


def check_volume_case(data: bytes, chunk: int) -> str:
    verdict, detail = validate("compress", data)
    again, _ = validate("compress", data, chunk=chunk)
    # a file with two defects may be refused for either one first, depending on where chunks end
    assert (again == "ok") == (verdict == "ok"), ("chunking changed the verdict", verdict, again)
    array, why = codec_reads_volume(data)
    if verdict == "ok":
        assert array is not None, f"the API accepts what the codec refuses: {why}"
        assert detail.shape == tuple(array.shape) and detail.dtype == array.dtype.name
    elif array is not None:
        # intended: more than TRAILING_SLACK after the voxels; codec bug: negative dimensions (it reshapes them)
        assert verdict == 422 and ("holds more than" in detail or "negative" in detail), \
            f"the API refuses what the codec reads: {detail}"
    return "ok" if verdict == "ok" else "refused"


def check_nvc_case(data: bytes, chunk: int) -> str:
    verdict, detail = validate("decompress", data)
    again, _ = validate("decompress", data, chunk=chunk)
    assert (again == "ok") == (verdict == "ok"), ("chunking changed the verdict", verdict, again)
    header, why = codec_parses_nvc(data)
    if verdict == "ok":
        assert header is not None, f"the API accepts an .nvc the codec refuses: {why}"
        assert detail.shape == tuple(header.shape) and detail.dtype == header.dtype.name
    else:
        assert header is None, f"the API refuses an .nvc the codec accepts: {detail}"
    return "ok" if verdict == "ok" else "refused"


# ----------------------------------------------------------------------------- hypothesis


@pytest.fixture(scope="module", autouse=True)
def _warm_seeds():
    volume_seeds()
    nvc_seeds()


def test_seeds_are_valid():
    for kind, data in volume_seeds():
        verdict, info = validate("compress", data)
        assert verdict == "ok" and info.format == kind
        assert codec_reads_volume(data)[0] is not None
    for data in nvc_seeds():
        assert validate("decompress", data)[0] == "ok"
        assert codec_parses_nvc(data)[0] is not None


@fuzz_settings("volume")
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 6), chunk=st.integers(1, 700))
def test_fuzz_volume_uploads_against_the_codec_reader(seed, n, chunk):
    check_volume_case(volume_case(seed, n), chunk)


@fuzz_settings("nvc")
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 6), chunk=st.integers(1, 300))
def test_fuzz_nvc_uploads_against_the_codec_parser(seed, n, chunk):
    check_nvc_case(nvc_case(seed, n), chunk)


@fuzz_settings("decode")
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 3))
def test_fuzz_decode_is_clean_and_bounded_by_the_declared_size(seed, n):
    """A mutated .nvc that still passes the upload check decodes or fails with a CodecError, and
    never allocates much more than the voxels its header declares."""
    import codec
    from codec import CodecError

    data = nvc_case(seed, n)
    verdict, info = validate("decompress", data)
    if verdict != "ok":
        return
    tracemalloc.start()
    try:
        try:
            out = codec.decode(data)
            assert out.shape == info.shape
        except CodecError:
            pass
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak <= 16 * info.voxel_bytes + 8 * 2**20, f"decode peaked at {peak} bytes for {info.voxel_bytes} declared"


@pytest.fixture(scope="module")
def route_client(tmp_path_factory, redis_server):
    import uuid

    from fastapi.testclient import TestClient

    from app.main import create_app
    from service.settings import Settings

    root = tmp_path_factory.mktemp("fuzz-route")
    tag = uuid.uuid4().hex[:8]
    settings = Settings(_env_file=None, redis_url=f"{redis_server}/1", key_prefix=f"fuzz-{tag}:",
                        gpu_queue=f"fuzz-{tag}.gpu", cpu_queue=f"fuzz-{tag}.cpu", data_dir=root / "data",
                        storage_dir=root / "objects", orphan_sweep_seconds=0, watchdog_seconds=0,
                        rate_limit_per_minute=0, max_active_jobs=0, max_upload_bytes=1 << 20)
    with TestClient(create_app(settings)) as client:
        yield client, settings


NAMES = ["scan.nii.gz", "../../../etc/passwd", "..\\..\\boot.ini", "a\x00b.nii", "/abs/x.npy", "ünïcödé.nvc", "",
         ".", "..", "x" * 250, "CON", "a/b/c.nii.gz.nvc"]


@fuzz_settings("route")
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(0, 4), multipart=st.booleans(), name=st.sampled_from(NAMES),
       decompress=st.booleans())
def test_fuzz_the_upload_route(route_client, seed, n, multipart, name, decompress):
    client, settings = route_client
    data = (nvc_case(seed, n) if decompress else volume_case(seed, n)) if n else (
        random.Random(seed).choice(nvc_seeds()) if decompress else random.Random(seed).choice(volume_seeds())[1])
    route = "/decompress" if decompress else "/compress"
    if multipart:
        answer = client.post(route, files={"file": (name, data)})
    else:
        answer = client.post(route, content=data, params={"filename": name} if name else None)
    assert answer.status_code in (202, 400, 413, 415, 422), (answer.status_code, answer.text)
    if answer.status_code == 202:
        job = answer.json()
        assert all(c.isalnum() or c in "._-" for c in job["output_name"]), job["output_name"]
        stored = settings.resolved_storage_dir / "jobs" / job["id"] / "input"
        assert stored.read_bytes() == data
        assert stored.resolve().is_relative_to(settings.resolved_storage_dir.resolve())
    else:
        assert answer.headers["content-type"] == "application/problem+json" and answer.json()["detail"]


def corrupt_deflate() -> bytes:
    """A .nii.gz whose deflate stream is damaged in a way zlib reports as zlib.error."""
    import nibabel as nib

    good = gzip.compress(nib.Nifti1Image(np.arange(512, dtype=np.int16).reshape(8, 8, 8), np.eye(4),
                                         dtype=np.int16).to_bytes(), mtime=0)
    for pos in range(12, len(good) - 8):
        bad = bytearray(good)
        bad[pos] ^= 0xFF
        try:
            gzip.decompress(bytes(bad))
        except zlib.error:
            return bytes(bad)
        except Exception:
            continue
    raise AssertionError("no corruption found")


def test_the_service_refuses_corrupt_deflate_cleanly():
    verdict, detail = validate("compress", corrupt_deflate())
    assert verdict == 422 and detail.startswith("broken gzip data")


def test_codec_gunzip_errors_are_codec_errors():
    from codec import CodecError
    from codec.files import read_volume_bytes

    with pytest.raises(CodecError):
        read_volume_bytes(corrupt_deflate())


def test_codec_refuses_negative_dims():
    from codec import CodecError
    from codec.files import read_volume_bytes

    for shape in [(-4, 4, 4), (-4, -4, 4)]:
        with pytest.raises(CodecError):
            read_volume_bytes(nifti1_header(shape, 512, 16) + bytes(256))


def test_the_service_refuses_negative_dims():
    for shape in [(-4, 4, 4), (-4, -4, 4), (-32768, 32767, 3)]:
        verdict, detail = validate("compress", nifti1_header(shape, 512, 16) + bytes(256))
        assert verdict == 422 and "negative" in detail


# ----------------------------------------------------------------------------- explicit hostile claims


def nifti1_header(shape, datatype=4, bitpix=16, vox_offset=352.0) -> bytes:
    hdr = bytearray(352)
    struct.pack_into("<i", hdr, 0, 348)
    struct.pack_into("<8h", hdr, 40, len(shape), *shape, *([1] * (7 - len(shape))))
    struct.pack_into("<hh", hdr, 70, datatype, bitpix)
    struct.pack_into("<8f", hdr, 76, *([1.0] * 8))
    struct.pack_into("<f", hdr, 108, vox_offset)
    hdr[344:348] = b"n+1\x00"
    return bytes(hdr)


def _npz() -> bytes:
    buf = io.BytesIO()
    np.savez(buf, a=np.zeros((4, 4, 4), np.uint16))
    return buf.getvalue()


def _zip_bomb(inflated: int) -> bytes:
    """A zip whose one member inflates to `inflated` zero bytes (what a DICOM upload check must not hold)."""
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf, zf.open("bomb.dcm", "w") as member:
        piece = bytes(1 << 20)
        for _ in range(inflated >> 20):
            member.write(piece)
    return buf.getvalue()


def gzip_bomb(header: bytes, inflated: int) -> bytes:
    """gzip of `header` followed by `inflated` zero bytes, built without holding them."""
    comp = zlib.compressobj(9, zlib.DEFLATED, 31)
    parts = [comp.compress(header)]
    zeros = bytes(1 << 20)
    for _ in range(inflated >> 20):
        parts.append(comp.compress(zeros))
    parts.append(comp.flush())
    return b"".join(parts)


def peak_of(fn) -> tuple[object, int]:
    tracemalloc.start()
    try:
        result = fn()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return result, peak


@pytest.mark.parametrize("name, data, status, words", [
    ("NIfTI claiming 2**31 int16 voxels", nifti1_header((2048, 1024, 1024)), 413, "4294967296 bytes of voxels"),
    ("NIfTI claiming more than 2**31 voxels", nifti1_header((32767, 32767, 32767)), 422, "more than the limit"),
    ("NIfTI float32", nifti1_header((8, 8, 8), 16, 32) + bytes(2048), 422, "not supported"),
    ("NIfTI RGB", nifti1_header((8, 8, 8), 128, 24) + bytes(1536), 422, "not supported"),
    ("NIfTI 5-D", nifti1_header((2, 2, 2, 2, 2)) + bytes(64), 422, "5-D"),
    ("NIfTI vox_offset inside the header", nifti1_header((8, 8, 8), vox_offset=100.0) + bytes(1024), 422, "vox_offset"),
    ("NIfTI vox_offset 2 GB", nifti1_header((8, 8, 8), vox_offset=2e9) + bytes(1024), 422, "vox_offset"),
    ("NIfTI truncated voxels", nifti1_header((64, 64, 64)) + bytes(1000), 422, "truncated"),
    (".npy claiming 2**40 bytes", b"\x93NUMPY\x01\x00" + struct.pack("<H", 118)
     + b"{'descr': '<u8', 'fortran_order': False, 'shape': (65536, 65536, 256), }".ljust(117) + b"\n", 422, "limit"),
    (".npy object array", b"\x93NUMPY\x01\x00" + struct.pack("<H", 118)
     + b"{'descr': '|O', 'fortran_order': False, 'shape': (4, 4, 4), }".ljust(117) + b"\n" + bytes(512), 422, "object"),
    (".npy header 4 GB long", b"\x93NUMPY\x02\x00" + struct.pack("<I", 2**32 - 1) + b"{", 422, "header"),
    ("gzip bomb: 64 MiB of zeros after an 8x8x8 header", None, 422, "decompression bomb"),
    ("gzip .npy", gzip.compress(b"\x93NUMPY\x01\x00" + bytes(400)), 415, "gzip-compressed .npy"),
    ("an .npz", _npz(), 415, ".npz"),
    ("a broken zip (a DICOM series upload)", b"PK\x03\x04" + bytes(400), 422, "broken zip"),
    ("a zip bomb", _zip_bomb(16 << 20), 415, "not DICOM"),  # drained in bounded pieces, found not DICOM
    ("an .nvc sent to /compress", b"\x89NVC\r\n\x1a\n" + bytes(400), 415, "already an .nvc"),
    ("text", b"patient name: somebody\n" * 40, 415, "not a NIfTI"),
])
def test_hostile_claims_are_refused_before_allocating(name, data, status, words):
    if data is None:
        data = gzip_bomb(nifti1_header((8, 8, 8), 2, 8), 64 << 20)
        assert len(data) < 200_000
    start = time.perf_counter()
    (verdict, detail), peak = peak_of(lambda: validate("compress", data, chunk=1 << 20, max_volume=1 << 30))
    assert verdict == status and words in detail, (verdict, detail)
    assert peak < 8 * 2**20, f"{name}: peak allocation {peak} bytes"
    assert time.perf_counter() - start < 10


def test_gzip_bomb_inflation_stops_at_the_declared_size():
    """The validator inflates at most declared + TRAILING_SLACK bytes of a bomb, in bounded pieces."""
    bomb = gzip_bomb(nifti1_header((8, 8, 8), 2, 8), 512 << 20)
    v = VolumeUploadValidator(MAX_VOLUME)
    fed = 0
    with pytest.raises(Problem) as refused:
        for i in range(0, len(bomb), 1 << 16):
            fed = i + (1 << 16)
            v.feed(bomb[i:fed])
        v.finish()
    assert refused.value.status == 422 and "decompression bomb" in refused.value.detail
    # inflation stopped at most one piece past the declared size + slack, long before the bomb's end
    assert v._check._stream.count <= 352 + 512 + TRAILING_SLACK + (1 << 20)
    assert fed < len(bomb)


def test_nvc_claiming_a_huge_volume_is_refused_from_its_header():
    from codec import format as fmt

    head = struct.pack("<BBBBI", 8, 0, 3, 0, 0) + struct.pack("<3Q", 1024, 1024, 2048) + bytes(32)
    chunk = struct.pack("<4sQ", b"HEAD", len(head)) + head
    data = fmt.PREAMBLE.pack(fmt.MAGIC, 1, 0) + chunk + struct.pack("<I", fmt.crc32c(head, fmt.crc32c(chunk[:12])))
    (verdict, detail), peak = peak_of(lambda: validate("decompress", data, max_volume=1 << 30))
    assert verdict == 413 and "(1024, 1024, 2048)" in detail and peak < 2**20


# ----------------------------------------------------------------------------- atheris


def atheris_target(data: bytes) -> None:
    """One atheris input: the first byte picks the path, the rest is the file."""
    if not data:
        return
    pick, body = data[0], data[1:]
    if pick % 3 == 0:
        check_volume_case(body, 1 + pick)
    elif pick % 3 == 1:
        check_volume_case(gzip.compress(body, mtime=0), 1 + pick)
    else:
        check_nvc_case(bytes(fix_nvc_crcs(bytearray(body))), 1 + pick)


def atheris_corpus(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, (_, data) in enumerate(volume_seeds()):
        (folder / f"v{i}").write_bytes(b"\x00" + data)
    for i, data in enumerate(nvc_seeds()):
        (folder / f"n{i}").write_bytes(b"\x02" + data)


def test_atheris_short_run(tmp_path):
    """Coverage-guided fuzzing of the same targets (a short run here; by hand: -runs=200000)."""
    pytest.importorskip("atheris")
    runs = int(os.environ.get("NVC_ATHERIS_RUNS", "1500"))
    corpus = tmp_path / "corpus"
    atheris_corpus(corpus)
    done = subprocess.run(
        [sys.executable, __file__, f"-runs={runs}", "-max_len=4096", f"-artifact_prefix={tmp_path}/", "-seed=1",
         str(corpus)],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )
    tail = (done.stdout + done.stderr)[-4000:]
    assert done.returncode == 0, tail
    assert f"Done {runs} runs" in tail, tail


if __name__ == "__main__":  # atheris entry point
    import atheris

    with atheris.instrument_imports():
        import service.validate  # noqa: F401
        import codec.files  # noqa: F401
        import codec.format  # noqa: F401
    volume_seeds()
    nvc_seeds()
    atheris.Setup(sys.argv, atheris_target)
    atheris.Fuzz()
