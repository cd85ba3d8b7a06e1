"""DICOM jobs: a series upload (zip, tar, tar.gz or .dcm) to one archive, and an archive to a zip of files.

Nothing unverified succeeds, as for volumes:

- compress: the new archive is restored again in the worker (`codec.dicom.iter_restored`, which
  checks every file against the SHA-256 recorded for it) and each restored file must equal the
  uploaded file of that name, byte for byte; the job fails naming any file that does not;
- decompress: every file is restored and checked against its recorded SHA-256 (unless exported);
  the zip written is read back and each member compared with what was restored. A damaged
  archive fails the job with the names of the files it can no longer restore.

The record gets only what identifies the series (modality, UIDs, description, counts and
dimensions); file names and header values never reach a log line.
"""

from __future__ import annotations

import hashlib
import re
import time
import zipfile
from pathlib import Path
from typing import Any

from worker.artifacts import check_upload, fetch_input, store_result
from worker.attempt import Attempt
from worker.runtime import Runtime
from worker.verify import VerificationError

ZIP_MAX_NAMES = 5  # file names quoted in an error


def series_summary(info: dict[str, Any]) -> list[dict[str, Any]]:
    """The `series` of a job record: allowed fields only (modality, UIDs, description, counts, shapes)."""
    return [
        {"modality": s["modality"], "series_uid": s["series_uid"], "description": s["description"],
         "instances": s["instances"], "coded": s["coded"], "verbatim": s["verbatim"],
         "volumes": [list(v["shape"]) for v in s["volumes"]]}
        for s in info["series"]
    ]


def verbatim_reasons(info: dict[str, Any]) -> list[dict[str, Any]]:
    """Why files were stored verbatim, most frequent first: `[{"reason", "files"}]`. The reasons
    are the codec's own wording (transfer syntax names, missing attribute names, counts), never
    a header value."""
    counts = sorted(info["verbatim_reasons"].items(), key=lambda kv: (-kv[1], kv[0]))
    return [{"reason": reason, "files": n} for reason, n in counts]


def _names(names) -> str:
    names = sorted(names)
    return ", ".join(names[:ZIP_MAX_NAMES]) + (f" and {len(names) - ZIP_MAX_NAMES} more" if len(names) > ZIP_MAX_NAMES else "")


def compress(rt: Runtime, record: dict[str, Any], scratch: Path, interval: float, attempt: Attempt) -> dict[str, Any]:
    from codec import dicom
    from codec.dicom_inputs import from_bytes

    job_id = record["id"]
    src = fetch_input(rt, record, scratch)
    check_upload(rt, record, src)
    upload_name = re.split(r"[\\/]", record.get("input_name") or "")[-1].strip() or "upload.dcm"
    files = from_bytes(src.read_bytes(), upload_name if upload_name not in (".", "..") else "upload.dcm")
    progress = attempt.progress(rt.store, job_id, 0.0, 0.7, interval)
    progress.check()
    start = time.perf_counter()
    data = dicom.compress_files(files, profile=record.get("profile") or "default", progress=progress)
    codec_seconds = time.perf_counter() - start
    dst = scratch / "output.nvc"
    dst.write_bytes(data)

    verify = attempt.progress(rt.store, job_id, 0.7, 0.95, interval)
    verify.check()
    start = time.perf_counter()
    expected = {f.name: f.data for f in files}
    del files
    ai = dicom.open_archive(data)
    bad = []
    for item in dicom.iter_restored(ai, progress=verify):
        if item.data is None or expected.get(item.name) != item.data:
            bad.append(item.name)
    if bad or len(ai.files) != len(expected):
        raise VerificationError(f"the archive does not restore {len(bad)} of {len(expected)} files: {_names(bad)}")
    info = dicom.archive_info(data)
    verify_seconds = time.perf_counter() - start
    verify.check(0.95)
    return _store(rt, record, dst, info, codec_seconds, verify_seconds, attempt)


def decompress(rt: Runtime, record: dict[str, Any], scratch: Path, interval: float, attempt: Attempt) -> dict[str, Any]:
    from codec import dicom

    job_id = record["id"]
    src = fetch_input(rt, record, scratch)
    syntax = record.get("transfer_syntax")
    exporter = None
    if syntax:
        from codec.dicom_export import exporter_for

        exporter = exporter_for(syntax)
    progress = attempt.progress(rt.store, job_id, 0.0, 0.9, interval)
    progress.check()
    start = time.perf_counter()
    dst = scratch / "output.zip"
    digests: dict[str, str] = {}
    failed: dict[str, str] = {}
    with open(src, "rb") as handle:
        ai = dicom.open_archive(handle)
        info = dicom.archive_info(ai)
        with zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
            for item in dicom.iter_restored(ai, progress=progress):
                if item.data is None:
                    failed[item.name] = item.error or "unknown error"
                    continue
                content = item.data
                if exporter is not None and item.record["storage"] == "coded":
                    try:
                        content = exporter(content)
                    except Exception as exc:  # a syntax that cannot hold the file: the original is kept
                        from codec.errors import UnsupportedInputError

                        if not isinstance(exc, UnsupportedInputError):
                            failed[item.name] = f"export failed ({type(exc).__name__})"
                            continue
                zf.writestr(zipfile.ZipInfo(item.name, date_time=(1980, 1, 1, 0, 0, 0)), content)
                digests[item.name] = hashlib.sha256(content).hexdigest()
    codec_seconds = time.perf_counter() - start
    if failed:
        reason = next(iter(failed.values()))
        raise VerificationError(f"{len(failed)} of {len(ai.files)} files cannot be restored from the archive: "
                                f"{_names(failed)} (first reason: {reason})")
    progress.check(0.9)
    start = time.perf_counter()
    with zipfile.ZipFile(dst) as zf:  # read the zip back: every member as restored
        members = {m.filename: m for m in zf.infolist()}
        if set(members) != set(digests):
            raise VerificationError("the written zip does not hold exactly the archive's files")
        for name, digest in digests.items():
            if hashlib.sha256(zf.read(members[name])).hexdigest() != digest:
                raise VerificationError(f"the written zip does not read back as restored: {name}")
    verify_seconds = time.perf_counter() - start
    progress.check(0.95)
    return _store(rt, record, dst, info, codec_seconds, verify_seconds, attempt)


def _store(rt: Runtime, record: dict[str, Any], path: Path, info: dict[str, Any], codec_seconds: float,
           verify_seconds: float, attempt: Attempt) -> dict[str, Any]:
    output_key = attempt.output_key(record)
    size, sha, read_back_seconds = store_result(rt, path, output_key)
    voxels = info["voxels"]
    return {
        "output_key": output_key,
        "output_size": size,
        "output_sha256": sha,
        "bits_per_voxel": 8 * info["volume_bytes"] / voxels if voxels else None,
        "files": info["files"],
        "instances_coded": info["instances_coded"],
        "files_verbatim": info["files_verbatim"],
        "verbatim_reasons": verbatim_reasons(info),
        "series": series_summary(info),
        "codec_seconds": round(codec_seconds, 6),
        "verify_seconds": round(verify_seconds + read_back_seconds, 6),
    }
