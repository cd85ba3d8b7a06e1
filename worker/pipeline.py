"""What a job does between `running` and its final state: fetch the input, run the codec,
verify, store the result and read it back. Returns the fields the record gets on success.

Progress: a compress job spends [0, 0.5] encoding and [0.5, 0.95] verifying; a decompress
job [0, 0.9] decoding and [0.9, 0.95] reading its output back. Codec time
(`codec_seconds`) and verification time (`verify_seconds`) are recorded apart from the
total so the service overhead can be measured.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from worker.artifacts import check_upload, fetch_input, store_result
from worker.attempt import Attempt
from worker.runtime import Runtime
from worker.verify import verify_compressed, verify_decompressed


def compress(rt: Runtime, record: dict[str, Any], scratch: Path, interval: float, attempt: Attempt) -> dict[str, Any]:
    import codec

    if record.get("input_format") == "dicom":  # a DICOM series: worker/dicom_jobs.py
        from worker import dicom_jobs

        return dicom_jobs.compress(rt, record, scratch, interval, attempt)
    job_id = record["id"]
    src = fetch_input(rt, record, scratch)
    check_upload(rt, record, src)
    dst = scratch / "output.nvc"
    encode_progress = attempt.progress(rt.store, job_id, 0.0, 0.5, interval)
    encode_progress.check()
    start = time.perf_counter()
    codec.compress_file(src, dst, profile=record.get("profile") or "default", progress=encode_progress)
    codec_seconds = time.perf_counter() - start

    verify_progress = attempt.progress(rt.store, job_id, 0.5, 0.95, interval)
    verify_progress.check()
    start = time.perf_counter()
    voxel_sha256, meta = verify_compressed(src, dst, scratch, verify_progress)
    verify_seconds = time.perf_counter() - start
    verify_progress.check(0.95)
    return _store(rt, record, dst, meta, codec_seconds, verify_seconds, voxel_sha256, attempt)


def decompress(rt: Runtime, record: dict[str, Any], scratch: Path, interval: float, attempt: Attempt) -> dict[str, Any]:
    import codec

    if record.get("input_format") == "nvc-dicom":  # a DICOM archive: worker/dicom_jobs.py
        from worker import dicom_jobs

        return dicom_jobs.decompress(rt, record, scratch, interval, attempt)
    job_id = record["id"]
    src = fetch_input(rt, record, scratch)
    from codec.check import check_nvc

    with open(src, "rb") as handle:
        # the upload check's own rules (codec.check): a bad upload fails here, before any decoding
        check_nvc(handle, verify_all=False, max_volume_bytes=rt.settings.max_volume_bytes)
        handle.seek(0)
        meta = codec.info(handle)
    dst = scratch / f"output.{record['output_format']}"
    progress = attempt.progress(rt.store, job_id, 0.0, 0.9, interval)
    progress.check()
    start = time.perf_counter()
    codec.decompress_file(src, dst, progress=progress)  # the codec checks the voxel SHA-256 itself
    codec_seconds = time.perf_counter() - start
    progress.check(0.9)
    start = time.perf_counter()
    verify_decompressed(dst, meta, record["output_format"])
    verify_seconds = time.perf_counter() - start
    progress.check(0.95)
    return _store(rt, record, dst, meta, codec_seconds, verify_seconds, meta.get("sha256"), attempt)


BODIES = {"compress": compress, "decompress": decompress}


def _store(
    rt: Runtime, record: dict[str, Any], path: Path, meta: dict[str, Any], codec_seconds: float,
    verify_seconds: float, voxel_sha256: str | None, attempt: Attempt,
) -> dict[str, Any]:
    """Store the verified result (read back included in `verify_seconds`); the record's fields."""
    output_key = attempt.output_key(record)
    size, sha, read_back_seconds = store_result(rt, path, output_key)
    bits = meta.get("bits_per_voxel")
    shape = meta.get("shape")
    return {
        "output_key": output_key,
        "output_size": size,
        "output_sha256": sha,
        "voxel_sha256": voxel_sha256,
        "bits_per_voxel": float(bits) if bits is not None else None,
        "shape": [int(s) for s in shape] if shape is not None else None,
        "dtype": str(meta["dtype"]) if meta.get("dtype") is not None else None,
        "codec_seconds": round(codec_seconds, 6),
        "verify_seconds": round(verify_seconds + read_back_seconds, 6),
    }
