"""The one output naming rule, used by the CLI, the SDK, `nvc remote` and the service.

As zstd and gzip do: compressing appends the container's suffix to the whole input name, and
decompressing takes it off again, so a round trip gives the original name back.

    scan.nii.gz      -> scan.nii.gz.nvc
    scan.nii.gz.nvc  -> scan.nii.gz          (format nii.gz, or none asked for)
    scan.nii.gz.nvc  -> scan.npy             (format npy asked for)
    scan.nvc         -> scan.nii.gz / scan.npy (format asked for; else NIfTI sources give nii.gz)
    study.zip        -> study.nvc            (a DICOM series archive: `archive_name`)
    study.nvc        -> study.zip            (its files, restored as a zip)

Pure string rules, no I/O and no imports beyond the standard library, so the SDK uses them
without loading the codec's engine.
"""

from __future__ import annotations

import re

NVC_SUFFIX = ".nvc"
#: Volume file formats, by file-name ending (longest first: ".nii.gz" before ".nii").
FORMATS = {".nii.gz": "nii.gz", ".nii": "nii", ".npy": "npy"}
#: Appended to a name that does not end in ".nvc" before a format suffix is added, so that
#: decompressing `scan.npy` (an .nvc under another name) never names its output `scan.npy`.
UNNAMED_SUFFIX = ".out"


def base_name(name: str) -> str:
    """The last component of a path, with either separator."""
    return re.split(r"[\\/]", name)[-1]


def format_of(name: str) -> str | None:
    """"nii.gz", "nii" or "npy" from a file name's ending; None for anything else."""
    lower = name.lower()
    for suffix, fmt_name in FORMATS.items():
        if lower.endswith(suffix):
            return fmt_name
    return None


def compressed_name(name: str) -> str:
    """The .nvc file name for an input named `name` (``scan.nii.gz`` -> ``scan.nii.gz.nvc``)."""
    return base_name(name) + NVC_SUFFIX


#: Containers of DICOM series whose suffix an archive's name replaces (`study.zip` -> `study.nvc`).
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".tar", ".zip")


def archive_name(name: str) -> str:
    """The .nvc name of a DICOM series archive: ``DIR`` -> ``DIR.nvc``, ``x.zip``/``x.tar.gz``
    -> ``x.nvc`` (the container's suffix is replaced), ``a.dcm`` -> ``a.dcm.nvc``."""
    base = base_name(name.rstrip("/\\")) or "series"
    for suffix in ARCHIVE_SUFFIXES:
        if base.lower().endswith(suffix) and len(base) > len(suffix):
            return base[: -len(suffix)] + NVC_SUFFIX
    return base + NVC_SUFFIX


def decompressed_name(name: str, fmt: str | None = None, *, from_nifti: bool = False) -> str:
    """The output file name for an .nvc named `name`, in format `fmt` (None: the format its
    name carries, else ``nii.gz`` when it came from NIfTI (`from_nifti`), else ``npy``)."""
    base = base_name(name)
    if base.lower().endswith(NVC_SUFFIX) and len(base) > len(NVC_SUFFIX):
        base = base[: -len(NVC_SUFFIX)]
    else:
        base += UNNAMED_SUFFIX
    inner = format_of(base)
    if fmt is None:
        fmt = inner or ("nii.gz" if from_nifti else "npy")
    if inner == fmt:
        return base
    if inner is not None:
        base = base[: -len("." + inner)]
    return f"{base}.{fmt}"
