"""Nothing unverified succeeds: the checks a result passes before it is stored.

- compress: the new .nvc is decoded again, and the SHA-256 of the decoded voxels must equal
  the SHA-256 of the input's voxels (and the one the .nvc header records);
- decompress: the file written is read back, and its voxels' SHA-256 must equal the one the
  .nvc records (the codec checked the decoded voxels against it already).

Voxel digests are the codec's (`codec.api.voxel_sha256`: NIfTI order, x fastest,
little-endian), so a job's `voxel_sha256` equals `nvc info`'s SHA-256.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any


class VerificationError(Exception):
    """The decoded result does not reproduce the input voxels."""


def voxel_digest(array) -> str:
    """SHA-256 of a volume's voxels as the codec defines it (`codec.api.voxel_sha256`)."""
    from codec.api import voxel_sha256

    return voxel_sha256(array)


def verify_compressed(src: Path, nvc: Path, scratch: Path, progress: Callable[..., None]) -> tuple[str, dict[str, Any]]:
    """Decode `nvc` and compare its voxels with the input `src`'s; returns (voxel SHA-256,
    `codec.info` of the .nvc). Raises VerificationError on any difference."""
    import numpy as np

    import codec

    decoded_path = scratch / "verify.npy"
    codec.decompress_file(nvc, decoded_path, progress=progress)
    decoded = np.load(decoded_path, mmap_mode="r")
    original = codec.read_volume(src)
    original = np.asarray(getattr(original, "array", original))
    if original.shape != decoded.shape or original.dtype != decoded.dtype:
        raise VerificationError(
            f"decoded volume is {decoded.dtype}{decoded.shape}, input was {original.dtype}{original.shape}"
        )
    expected, got = voxel_digest(original), voxel_digest(decoded)
    if expected != got:
        raise VerificationError(f"decoded voxels do not match the input (sha256 {got} != {expected})")
    del decoded, original
    decoded_path.unlink()
    with open(nvc, "rb") as handle:
        meta = codec.info(handle)
    if meta.get("sha256") != expected:
        raise VerificationError(f"the .nvc header records voxel sha256 {meta.get('sha256')}, the input's is {expected}")
    return expected, meta


def verify_decompressed(written: Path, meta: dict[str, Any], output_format: str) -> None:
    """The file written from the decoded voxels must read back to the voxels the .nvc records."""
    import codec

    digest = voxel_digest(codec.read_volume(written).array)
    if digest != meta["sha256"]:
        raise VerificationError(f"the written {output_format} file reads back as voxel sha256 {digest}, "
                                f"the .nvc records {meta['sha256']}")
