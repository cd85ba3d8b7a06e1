"""The framing of a model blob (the MODL chunk body), readable without the engine.

The layout is specified in :mod:`codec.engine` (version 1): blob version, flags, the id of the
shipped model, then the optional embedded sections. Reading it needs neither torch nor the
network code, so the upload check of the service (:mod:`codec.check`) refuses exactly the blobs
the engine would refuse for their version, flags, framing or an unknown model id, before a
job is queued; the engine parses its blobs with :func:`parse_blob` too.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

from codec.errors import FormatError

BLOB_VERSION = 1
FLAG_WEIGHTS = 1  # fine-tuned weights embedded
FLAG_TABLES = 2  # token tables measured on the volume embedded
#: Where the shipped models live (``<model id>.npz``; see :mod:`codec.registry`).
MODELS_DIR = Path(__file__).parent / "models"


@dataclass(frozen=True)
class BlobFraming:
    """The parts of a model blob, located but not decoded."""

    version: int
    flags: int
    model_id: str
    weights: bytes | None  # `IntMLP.to_bytes()` of embedded fine-tuned weights
    tables: bytes | None  # `AdaptiveTables.to_bytes()` of embedded token tables


def parse_blob(blob: bytes | memoryview) -> BlobFraming:
    """Split a model blob into its parts, checking version, flags and every length."""
    blob = bytes(blob)
    try:
        version, flags, n = struct.unpack_from("<BBB", blob, 0)
    except struct.error:
        raise FormatError("model blob is truncated") from None
    if version != BLOB_VERSION:
        raise FormatError(f"model blob version {version} is not supported (this nvc reads version {BLOB_VERSION})")
    if flags & ~(FLAG_WEIGHTS | FLAG_TABLES):
        raise FormatError(f"unknown model flags {flags:#x}")
    if 3 + n > len(blob):
        raise FormatError("model blob is truncated")
    try:
        model_id = blob[3 : 3 + n].decode("ascii")
    except UnicodeDecodeError:
        raise FormatError("model id is not ASCII") from None
    pos = 3 + n

    def section() -> bytes:
        nonlocal pos
        try:
            (m,) = struct.unpack_from("<I", blob, pos)
        except struct.error:
            raise FormatError("model blob is truncated") from None
        if pos + 4 + m > len(blob):
            raise FormatError("model blob section runs past its end")
        pos += 4 + m
        return blob[pos - m : pos]

    weights = section() if flags & FLAG_WEIGHTS else None
    tables = section() if flags & FLAG_TABLES else None
    if pos != len(blob):
        raise FormatError("model blob has trailing bytes")
    return BlobFraming(version, flags, model_id, weights, tables)


def model_path(model_id: str) -> Path:
    """The file of a shipped model; FormatError for an id that cannot name one."""
    if not model_id or "/" in model_id or "\\" in model_id or model_id.startswith("."):
        raise FormatError(f"invalid model id {model_id!r}")
    return MODELS_DIR / f"{model_id}.npz"


def check_shipped(model_id: str) -> None:
    """FormatError unless `model_id` is a model shipped with this installation."""
    if not model_path(model_id).exists():
        raise FormatError(f"model {model_id} is not shipped with this version of nvc (newer file?)")


def check_blob(blob: bytes | memoryview) -> BlobFraming:
    """Everything about a model blob that is known without loading the network."""
    framing = parse_blob(blob)
    check_shipped(framing.model_id)
    return framing
