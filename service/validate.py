"""Validate an upload while it streams in, before a job is queued for it: a thin mapping of the
codec's incremental check (:mod:`codec.check`) to HTTP problems.

Why at upload and not only in the worker: a bad upload should be a 4xx problem that says what
is wrong while the client is still connected, not a job that fails minutes later; and a header
that declares a huge volume, or gzip data that inflates far beyond what its header declares,
must be refused before a worker allocates anything for it. Every rule (magic numbers, header
limits, parsers, model blobs, the decode limit) is the codec's, so the API accepts exactly what
the worker's codec will accept, for everything knowable without decoding.

The mapping: :class:`codec.UnrecognisedInputError` (not this kind of file) is 415,
:class:`codec.TooLargeError` 413, every other :class:`codec.CodecError` 422.
"""

from __future__ import annotations

from service.problems import Problem
from codec.check import UploadInfo as VolumeInfo  # noqa: F401 - what `finish()` returns
from codec.check import checker_for
from codec.errors import CodecError, TooLargeError, UnrecognisedInputError
from codec.format import MAGIC as NVC_MAGIC  # noqa: F401 - the routes sniff a misdirected .nvc
from codec.headers import MAX_NIFTI_HEADER_BYTES  # noqa: F401 - the most header bytes a check reads
from codec.headers import MAX_TRAILING_BYTES as TRAILING_SLACK  # noqa: F401 - bytes accepted after the voxels


def problem_for(exc: CodecError, kind: str) -> Problem:
    """The HTTP problem of a codec refusal of an upload to `kind` ("compress" or "decompress")."""
    if isinstance(exc, UnrecognisedInputError):
        expected = "a NIfTI (.nii, .nii.gz) or NumPy (.npy) file" if kind == "compress" else "an .nvc file"
        return Problem(415, f"the upload is not {expected}: {exc}", slug="unsupported-input")
    if isinstance(exc, TooLargeError):
        return Problem(413, str(exc), slug="volume-too-large")
    prefix = "not a valid .nvc file: " if kind == "decompress" else ""
    return Problem(422, f"{prefix}{exc}", slug="invalid-input")


class UploadValidator:
    """Feed the upload's bytes in order; `finish()` returns the VolumeInfo. Raises a Problem."""

    def __init__(self, kind: str, max_volume_bytes: int):
        self.kind = kind
        self._check = checker_for(kind, max_volume_bytes)

    def feed(self, data: bytes) -> None:
        try:
            self._check.feed(data)
        except CodecError as exc:
            raise problem_for(exc, self.kind) from None

    def header_info(self) -> tuple[VolumeInfo, int | None] | None:
        """What the header fed so far declares, once it is complete: (info, the file size it
        implies, or None when the header does not give it). For checking the head of an object
        already stored (direct uploads) without reading all of it."""
        return self._check.header_info()

    def finish(self) -> VolumeInfo:
        try:
            return self._check.finish()
        except CodecError as exc:
            raise problem_for(exc, self.kind) from None


def VolumeUploadValidator(max_volume_bytes: int) -> UploadValidator:  # noqa: N802 - the former class name
    """The validator of a .nii / .nii.gz / .npy upload (POST /compress)."""
    return UploadValidator("compress", max_volume_bytes)


def NvcUploadValidator(max_volume_bytes: int) -> UploadValidator:  # noqa: N802 - the former class name
    """The validator of a .nvc upload (POST /decompress)."""
    return UploadValidator("decompress", max_volume_bytes)


def validator_for(kind: str, max_volume_bytes: int):
    """The validator of a `compress` or `decompress` upload (DICOM series and archives are told
    apart from volumes and .nvc files by their first bytes: service/validate_dicom.py)."""
    from service.validate_dicom import CompressUploadValidator, DecompressUploadValidator

    if kind == "compress":
        return CompressUploadValidator(max_volume_bytes)
    return DecompressUploadValidator(max_volume_bytes)
