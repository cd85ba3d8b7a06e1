"""NVC codec: lossless neural compression of integer medical volumes.

A plain library: it imports nothing of the service (FastAPI, Celery, Redis).

Public API::

    data = codec.encode(volume, spacing=None, metadata=b"", profile="default")
    volume = codec.decode(data, slices=None)
    codec.info(data) -> dict
    codec.compress_file(src, dst, profile=...)   # .nii/.nii.gz/.npy -> .nvc
    codec.decompress_file(src, dst)              # .nvc -> .nii/.nii.gz/.npy
    codec.compress_dicom(folder_or_zip, dst)     # DICOM series -> one archive (codec.dicom)
    codec.decompress_dicom(archive, out_dir)     # every original file back, byte for byte
    codec.dicom_info(archive) -> dict            # series, counts, sizes; no voxel decoded

Arrays use NIfTI axis order: the last axis of a 3-D volume is the slice axis
(4-D: (x, y, z, t)); `slices` in `decode` counts along that axis.
"""

from importlib import metadata as _metadata

from codec.errors import (
    CodecError,
    FormatError,
    IntegrityError,
    TooLargeError,
    UnrecognisedInputError,
    UnsupportedInputError,
)

try:  # one home for the version: `version` in pyproject.toml (the `nvc` distribution)
    __version__ = _metadata.version("nvc")
except _metadata.PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "__version__",
    "CodecError",
    "FormatError",
    "IntegrityError",
    "UnsupportedInputError",
    "UnrecognisedInputError",
    "TooLargeError",
    "encode",
    "decode",
    "info",
    "compress_file",
    "decompress_file",
    "compress_dicom",
    "decompress_dicom",
    "dicom_info",
]


def __getattr__(name: str):
    # Lazy: `import codec` stays cheap; torch is imported on first use of the API.
    if name in ("encode", "decode", "info"):
        from codec import api

        return getattr(api, name)
    if name in ("compress_file", "decompress_file", "read_volume", "write_volume"):
        from codec import files

        return getattr(files, name)
    if name in ("compress_dicom", "decompress_dicom", "dicom_info"):
        from codec import dicom

        return dicom.archive_info if name == "dicom_info" else getattr(dicom, name)
    raise AttributeError(f"module 'codec' has no attribute {name!r}")
