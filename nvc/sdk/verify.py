"""Checking downloaded results.

A compressed result is proven by decoding it locally and comparing every voxel with the
source volume when the ``codec`` package (torch, numpy) is installed; otherwise by the SHA-256
the job recorded for its output, which proves the bytes arrived intact. Heavy imports happen
only inside these functions, so ``import nvc.sdk`` stays light.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Literal

from nvc.sdk.errors import VerificationError
from nvc.sdk.models import Job

VerifyMode = Literal["auto", "decode", "sha256", "none"]
VERIFY_MODES: tuple[str, ...] = ("auto", "decode", "sha256", "none")

_codec_cache: list[Any] = []


def local_codec() -> Any | None:
    """The ``codec`` module when it and its engine (torch, numpy) import, else None."""
    if _codec_cache:
        return _codec_cache[0]
    try:
        module = importlib.import_module("codec")
        module.decode  # noqa: B018 - the lazy attribute imports the engine
    except Exception:  # ImportError, or an engine that is not there yet
        module = None
    _codec_cache.append(module)
    return module


def _read_volume(path: Path) -> Any:
    """Voxels of a .nii/.nii.gz/.npy file, stored values (no scaling), NIfTI axis order."""
    import numpy as np

    name = path.name.lower()
    if name.endswith(".npy"):
        return np.load(path, allow_pickle=False)
    codec = local_codec()
    reader = getattr(codec, "read_volume", None) if codec is not None else None
    if reader is not None:
        try:
            volume = reader(path)
        except Exception:
            volume = None
        if volume is not None:
            return volume[0] if isinstance(volume, tuple) else getattr(volume, "array", volume)
    import nibabel as nib

    image = nib.load(str(path))
    return np.asanyarray(image.dataobj.get_unscaled() if hasattr(image.dataobj, "get_unscaled") else image.dataobj)


def _compare(decoded: Any, reference: Any, what: str) -> None:
    import numpy as np

    decoded = np.asarray(decoded)
    reference = np.asarray(reference)
    if decoded.shape != reference.shape:
        raise VerificationError(f"{what}: shape {decoded.shape} differs from the source's {reference.shape}")
    if not np.array_equal(decoded, reference):
        bad = int(np.count_nonzero(decoded != reference))
        raise VerificationError(f"{what}: {bad} voxels differ from the source")


def _check_sha(job: Job, sha256: str | None, what: str) -> bool:
    recorded = job.output_sha256
    if not recorded or not sha256:
        return False
    if recorded.lower() != sha256.lower():
        raise VerificationError(f"{what}: SHA-256 {sha256[:12]}... differs from the job's {recorded[:12]}...")
    return True


def _decoder(mode: str) -> Any | None:
    if mode not in ("auto", "decode"):
        return None
    codec = local_codec()
    if codec is None and mode == "decode":
        raise VerificationError("--verify decode needs the codec installed (pip install 'nvc[codec]')")
    return codec


def verify_compressed(job: Job, nvc_path: Path, *, sha256: str | None, source: Path | None, mode: str = "auto") -> str:
    """Check a downloaded ``.nvc``; returns how it was checked ("sha256", "decoded", ...)."""
    if mode == "none":
        return "none"
    what = nvc_path.name
    checks = []
    if _check_sha(job, sha256, what):
        checks.append("sha256")
    codec = _decoder(mode)
    if codec is not None and _is_dicom_archive(nvc_path):
        checks.append(_verify_archive(nvc_path, source, what))
    elif codec is not None:
        try:
            decoded = codec.decode(nvc_path.read_bytes())
        except Exception as exc:  # CodecError and friends
            raise VerificationError(f"{what} does not decode: {exc}") from exc
        if source is not None and source.name.lower().endswith((".nii", ".nii.gz", ".npy")):
            _compare(decoded, _read_volume(source), what)
            checks.append("decoded=source")
        else:
            checks.append("decoded")
    if not checks:
        raise VerificationError(f"{what}: cannot verify (the job recorded no SHA-256 and the codec is not installed)")
    return "+".join(checks)


def _is_dicom_archive(path: Path) -> bool:
    with path.open("rb") as fh:
        head = fh.read(12)
    return head[:8] == b"\x89NVC\r\n\x1a\n" and head[8:10] == b"\x02\x00"


def _verify_archive(nvc_path: Path, source: Path | None, what: str) -> str:
    """Restore a DICOM archive locally (every file against its recorded SHA-256) and, when the
    source was a zip or a DICOM file, compare every restored file with it byte for byte."""
    import zipfile

    try:
        from codec import dicom

        ai = dicom.open_archive(nvc_path.read_bytes())
        restored = {item.name: item for item in dicom.iter_restored(ai)}
    except Exception as exc:
        raise VerificationError(f"{what} is not a readable DICOM archive: {exc}") from exc
    lost = sorted(name for name, item in restored.items() if item.data is None)
    if lost:
        raise VerificationError(f"{what}: {len(lost)} files do not restore: {', '.join(lost[:5])}")
    if source is None:
        return "restored"
    if zipfile.is_zipfile(source):
        with zipfile.ZipFile(source) as zf:
            original = {m.filename: m for m in zf.infolist() if not m.is_dir()}
            if set(original) != set(restored):
                raise VerificationError(f"{what}: the archive's files differ from the source zip's")
            for name, member in original.items():
                if zf.read(member) != restored[name].data:
                    raise VerificationError(f"{what}: {name} does not restore byte for byte")
    elif len(restored) != 1 or next(iter(restored.values())).data != source.read_bytes():
        raise VerificationError(f"{what}: does not restore {source.name} byte for byte")
    return "restored=source"


def _verify_restored_zip(zip_path: Path, archive: Path, what: str) -> str:
    """The zip a DICOM archive was restored to must hold exactly the files a local restore gives."""
    import zipfile

    try:
        from codec import dicom

        restored = {item.name: item.data for item in dicom.iter_restored(dicom.open_archive(archive.read_bytes()))}
    except Exception as exc:
        raise VerificationError(f"{archive.name} does not restore locally: {exc}") from exc
    try:
        with zipfile.ZipFile(zip_path) as zf:
            got = {m.filename: zf.read(m) for m in zf.infolist() if not m.is_dir()}
    except (zipfile.BadZipFile, OSError) as exc:
        raise VerificationError(f"{what} is not a readable zip: {exc}") from exc
    if got != restored:
        bad = sorted(n for n in set(got) | set(restored) if got.get(n) != restored.get(n))
        raise VerificationError(f"{what}: {len(bad)} files differ from the local restore: {', '.join(bad[:5])}")
    return "restored=result"


def verify_decompressed(
    job: Job, out_path: Path, *, sha256: str | None, source: Path | None, mode: str = "auto"
) -> str:
    """Check a downloaded volume: SHA-256, and (with the codec) voxels equal to decoding the ``.nvc`` locally."""
    if mode == "none":
        return "none"
    what = out_path.name
    checks = []
    if _check_sha(job, sha256, what):
        checks.append("sha256")
    codec = _decoder(mode)
    if codec is not None and source is not None and _is_dicom_archive(source):
        checks.append(_verify_restored_zip(out_path, source, what))
    elif codec is not None and source is not None:
        try:
            reference = codec.decode(source.read_bytes())
        except Exception as exc:
            raise VerificationError(f"{source.name} does not decode locally: {exc}") from exc
        try:
            volume = _read_volume(out_path)
        except Exception as exc:
            raise VerificationError(f"{what} is not a readable volume: {exc}") from exc
        _compare(volume, reference, what)
        checks.append("decoded=result")
    if not checks:
        raise VerificationError(f"{what}: cannot verify (the job recorded no SHA-256 and the codec is not installed)")
    return "+".join(checks)
