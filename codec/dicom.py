"""DICOM series in and out of one ``.nvc`` archive, every original file back byte for byte.

``compress_dicom(folder_or_zip)`` reads every file (:mod:`codec.dicom_inputs`), decides for each
whether its pixel data can be coded (:mod:`codec.dicom_pixels`), stacks the coded instances of
each consistent series into volumes - slices ordered by ImagePositionPatient along the slice
normal, then InstanceNumber, then name; a multi-frame object by its frames - and codes each
volume with :func:`codec.encode` (a complete version-1 file inside the archive). Every coded
file's other bytes (preamble, file meta, all other elements, padding, trailing bytes, junk bits
above BitsStored) are kept in a zstd frame, the first of each series serving as dictionary for
the others, so near-identical headers cost only their differences. Everything else -
compressed transfer syntaxes, non-image objects, files that are not DICOM - is stored verbatim
(zstd). The container is :mod:`codec.dicom_archive` (docs/format.md section 8).

A series that is not consistent (sizes, types or orientations differ) is split into consistent
volumes; a volume the codec refuses (a 32-bit value span above 16 bits) is coded instance by
instance, and an instance it still refuses is stored verbatim: an input is never refused for
being irregular.

Restoring (:func:`iter_restored`) checks each file against the SHA-256 recorded for it at
compression; a damaged chunk costs only the files that need it, the others are restored, and
the failures are named (:class:`RestoreReport`).
"""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from codec import dicom_archive as arch
from codec import format as fmt
from codec.dicom_inputs import InputFile, gather, restore_path, safe_name
from codec.dicom_pixels import Analysed, PixelLayout, Verbatim, analyse, check_layout, pixel_bytes
from codec.errors import CodecError, FormatError, IntegrityError, UnsupportedInputError
from codec.progress import Progress
#: A volume is cut into several when its slices would exceed this many voxels (bounds memory).
VOLUME_MAX_VOXELS = 2**28
HEADER_LEVEL = 19
VERBATIM_SMALL_LEVEL = 19
VERBATIM_LARGE_LEVEL = 9  # above 1 MiB: mostly already-compressed pixel data, level 19 buys nothing
DEFAULT_SUFFIX = ".nvc"


# --------------------------------------------------------------------------- compress


@dataclass
class _Coded:
    index: int  # position in the input
    file: InputFile
    a: Analysed


def _sort_key(c: _Coded):
    normal = c.a.geometry.along_normal()
    inst = c.a.geometry.instance
    return (normal is None, normal or 0.0, inst is None, inst or 0, c.file.name)


def _volume_groups(coded: list[_Coded], series_of: dict[int, int]) -> list[list[_Coded]]:
    """Consistent stacks: same series, size, value type, samples and orientation; multi-frame
    objects alone. Each stack is sorted and cut below VOLUME_MAX_VOXELS."""
    groups: "OrderedDict[tuple, list[_Coded]]" = OrderedDict()
    for c in coded:
        p = c.a.layout
        own = c.index if p.frames > 1 else None
        key = (series_of[c.index], p.rows, p.columns, p.samples, p.value_dtype.str, p.bits_allocated == 1,
               c.a.geometry.orientation, own)
        groups.setdefault(key, []).append(c)
    out = []
    for members in groups.values():
        members.sort(key=_sort_key)
        cur: list[_Coded] = []
        voxels = 0
        for c in members:
            n = c.a.values.size
            if cur and voxels + n > VOLUME_MAX_VOXELS:
                out.append(cur)
                cur, voxels = [], 0
            cur.append(c)
            voxels += n
        out.append(cur)
    return out


def split16(zyx: np.ndarray) -> np.ndarray:
    """32-bit planes whose values span more than 16 bits -> twice as many uint16 planes (low, high)."""
    u = np.ascontiguousarray(zyx).view(np.uint32)
    out = np.empty((2 * u.shape[0],) + u.shape[1:], dtype=np.uint16)
    out[0::2] = u & 0xFFFF
    out[1::2] = u >> 16
    return out


def join16(planes: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Inverse of :func:`split16`: (2Z, y, x) uint16 -> (Z, y, x) 32-bit values of `dtype`."""
    u = planes[0::2].astype(np.uint32) | (planes[1::2].astype(np.uint32) << np.uint32(16))
    return u.view(np.dtype(dtype))


def _encode_stack(stack: list[_Coded], profile: str, progress: Progress, *, split: bool = False) -> bytes:
    from codec.api import encode

    zyx = np.concatenate([c.a.values for c in stack], axis=0) if len(stack) > 1 else stack[0].a.values
    if split:
        zyx = split16(zyx)
    return encode(zyx.transpose(2, 1, 0), profile=profile, progress=progress)


def _verbatim_level(n: int) -> int:
    return VERBATIM_SMALL_LEVEL if n <= 2**20 else VERBATIM_LARGE_LEVEL


def compress_files(files: list[InputFile], *, profile: str = "default", progress: Progress = None) -> bytes:
    """Archive `files` (name + bytes); returns the ``.nvc`` archive bytes."""
    if not files:
        raise UnsupportedInputError("nothing to archive: no files")
    for f in files:
        safe_name(f.name)
    if len({f.name for f in files}) != len(files):
        raise UnsupportedInputError("two input files have the same name")
    results: list[Analysed | Verbatim] = []
    for i, f in enumerate(files):
        results.append(analyse(f.data))
        if progress:
            progress(0.05 * (i + 1) / len(files))

    # series: one record per SeriesInstanceUID (DICOM files), in input order
    series: list[dict] = []
    series_index: dict[str, int] = {}
    series_of: dict[int, int] = {}
    for i, r in enumerate(results):
        tags = r.series
        if tags is None:
            continue
        if tags.series_uid not in series_index:
            series_index[tags.series_uid] = len(series)
            series.append({"uid": tags.series_uid, "modality": tags.modality, "description": tags.description,
                           "study_uid": tags.study_uid, "instances": 0, "coded": 0, "verbatim": 0})
        series_of[i] = series_index[tags.series_uid]
        series[series_of[i]]["instances"] += 1

    coded = [_Coded(i, files[i], r) for i, r in enumerate(results) if isinstance(r, Analysed)]
    stacks = _volume_groups(coded, series_of)
    total_voxels = max(1, sum(c.a.values.size for c in coded))
    done = 0
    records: list[dict | None] = [None] * len(files)
    chunks: list[tuple[bytes, bytes]] = []
    volumes: list[dict] = []
    series_dict: dict[int, tuple[int, bytes]] = {}  # series -> (chunk, reference remainder)

    def code(stack: list[_Coded]) -> None:
        nonlocal done
        n = sum(c.a.values.size for c in stack)
        width = 0.9 * n / total_voxels
        start = 0.05 + 0.9 * done / total_voxels

        def sub(fraction: float) -> None:
            if progress:
                progress(min(0.95, start + width * min(max(fraction, 0.0), 1.0)))

        split = False
        try:
            blob = _encode_stack(stack, profile, sub)
        except UnsupportedInputError as exc:
            if stack[0].a.layout.bits_allocated == 32:  # values span more than 16 bits: code 16-bit halves
                split = True
                blob = _encode_stack(stack, profile, sub, split=True)
            elif len(stack) > 1:  # instance by instance
                for c in stack:
                    code([c])
                return
            else:
                c = stack[0]
                results[c.index] = Verbatim(f"pixel values not codable ({exc})", c.a.series, True)
                done += n
                return
        done += n
        s = series_of[stack[0].index]
        vol = len(volumes)
        chunks.append((fmt.TAG_DICOM_VOLUME, blob))
        first = stack[0].a.values.shape
        z = sum(c.a.layout.planes for c in stack)
        volumes.append({"chunk": len(chunks) - 1, "series": s, "shape": [first[2], first[1], z],
                        "dtype": stack[0].a.layout.value_dtype.name, "split16": split, "files": len(stack)})
        z0 = 0
        for c in stack:
            p = c.a.layout
            data = c.file.data
            remainder = data[: p.offset] + data[p.offset + p.length :] + c.a.residual
            ref = series_dict.get(s)
            if ref is None:
                body = arch.zstd_compress(remainder, level=HEADER_LEVEL)
                dict_chunk = None
            else:
                body = arch.zstd_compress(remainder, level=HEADER_LEVEL, dictionary=ref[1])
                dict_chunk = ref[0]
            chunks.append((fmt.TAG_DICOM_HEADER, body))
            if ref is None:
                series_dict[s] = (len(chunks) - 1, remainder)
            records[c.index] = {
                "storage": "coded", "chunk": len(chunks) - 1, "dict": dict_chunk, "remainder": len(remainder),
                "residual": bool(c.a.residual), "volume": vol, "z0": z0, "pixels": p.as_record(),
            }
            z0 += p.planes

    for stack in stacks:
        code(stack)

    for i, r in enumerate(results):
        if records[i] is not None:
            continue
        data = files[i].data
        chunks.append((fmt.TAG_DICOM_FILE, arch.zstd_compress(data, level=_verbatim_level(len(data)))))
        records[i] = {"storage": "verbatim", "chunk": len(chunks) - 1, "reason": r.reason, "dicom": r.is_dicom}
    file_recs = []
    for i, f in enumerate(files):
        rec = {"name": f.name, "size": len(f.data), "sha256": hashlib.sha256(f.data).hexdigest(),
               "series": series_of.get(i), **records[i]}
        if rec["series"] is not None:
            series[rec["series"]]["coded" if rec["storage"] == "coded" else "verbatim"] += 1
        file_recs.append(rec)
    # the lowest index layout that describes every record: 1-bit pixel data needs layout 2
    bits = any(r["storage"] == "coded" and r["pixels"]["bits_allocated"] == 1 for r in file_recs)
    layout = arch.BITS_LAYOUT if bits else 1
    out = arch.build({"layout": layout, "files": file_recs, "series": series, "volumes": volumes}, chunks)
    if progress:
        progress(1.0)
    return out


def default_archive_name(src: Path) -> Path:
    """`DIR` -> `DIR.nvc`; `x.zip` / `x.tar.gz` -> `x.nvc`; `a.dcm` -> `a.dcm.nvc` (`codec.naming`)."""
    from codec.naming import archive_name

    return src.with_name(archive_name(src.name))


def compress_dicom(src, dst=None, *, profile: str = "default", progress: Progress = None) -> Path:
    """Archive a DICOM folder, a .zip/.tar of one, or a single DICOM file; returns the archive path."""
    from codec.files import write_bytes

    src = Path(src)
    data = compress_files(gather(src), profile=profile, progress=progress)
    return write_bytes(Path(dst) if dst is not None else default_archive_name(src), data)


# --------------------------------------------------------------------------- index checks


@dataclass
class ArchiveIndex:
    """A validated index: every reference in it points at something that exists."""

    archive: arch.Archive
    files: list[dict]
    series: list[dict]
    volumes: list[dict]


def _want(cond: bool, message: str) -> None:
    if not cond:
        raise FormatError(f"archive index: {message}")


def _int(v, lo: int = 0, hi: int = 2**63) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi


def _chunk_ok(archive: arch.Archive, ref, tag: bytes) -> bool:
    return _int(ref, 0, len(archive.chunks) - 1) and archive.chunks[ref].tag == tag


def validate(archive: arch.Archive) -> ArchiveIndex:
    """Check the index's files, series and volumes (types, ranges, references) before any use."""
    idx = archive.index
    files, series, volumes = idx.get("files"), idx.get("series"), idx.get("volumes")
    _want(isinstance(files, list) and 0 < len(files) <= fmt.ARCHIVE_MAX_FILES, "bad file list")
    _want(isinstance(series, list) and len(series) <= len(files), "bad series list")
    _want(isinstance(volumes, list) and len(volumes) <= len(files), "bad volume list")
    for i, s in enumerate(series):
        _want(isinstance(s, dict) and all(isinstance(s.get(k), str) for k in ("uid", "modality", "description")),
              f"series {i}: bad record")
        _want(all(_int(s.get(k), 0, len(files)) for k in ("instances", "coded", "verbatim")), f"series {i}: bad counts")
    for v, rec in enumerate(volumes):
        _want(isinstance(rec, dict) and _chunk_ok(archive, rec.get("chunk"), fmt.TAG_DICOM_VOLUME),
              f"volume {v}: bad chunk")
        _want(_int(rec.get("series"), 0, max(0, len(series) - 1)) and len(series) > 0, f"volume {v}: bad series")
        shape = rec.get("shape")
        _want(isinstance(shape, list) and len(shape) == 3 and all(_int(n, 1, 2**31) for n in shape), f"volume {v}: bad shape")
        _want(isinstance(rec.get("split16", False), bool), f"volume {v}: bad split16 flag")
        _want(rec.get("dtype") in ("uint8", "int8", "uint16", "int16", "uint32", "int32"), f"volume {v}: bad dtype")
        _want(not rec.get("split16") or rec["dtype"] in ("uint32", "int32"), f"volume {v}: split16 needs 32-bit values")
    layout_number = idx.get("layout", 1)
    names: set[str] = set()
    planes_used: dict[int, int] = {}
    for i, f in enumerate(files):
        _want(isinstance(f, dict) and isinstance(f.get("name"), str), f"file {i}: bad record")
        try:
            safe_name(f["name"])
        except UnsupportedInputError as exc:
            raise FormatError(f"archive index: file {i}: {exc}") from None
        _want(f["name"] not in names, f"file {i}: duplicate name")
        names.add(f["name"])
        _want(_int(f.get("size"), 0, fmt.ARCHIVE_MAX_FILE_BYTES), f"file {i}: bad size")
        sha = f.get("sha256")
        _want(isinstance(sha, str) and len(sha) == 64 and all(ch in "0123456789abcdef" for ch in sha), f"file {i}: bad SHA-256")
        _want(f.get("series") is None or _int(f.get("series"), 0, len(series) - 1), f"file {i}: bad series")
        storage = f.get("storage")
        if storage == "verbatim":
            _want(_chunk_ok(archive, f.get("chunk"), fmt.TAG_DICOM_FILE), f"file {i}: bad chunk")
            _want(isinstance(f.get("reason"), str), f"file {i}: no reason")
            continue
        _want(storage == "coded", f"file {i}: unknown storage {storage!r}")
        _want(_chunk_ok(archive, f.get("chunk"), fmt.TAG_DICOM_HEADER), f"file {i}: bad chunk")
        _want(f.get("dict") is None or _chunk_ok(archive, f.get("dict"), fmt.TAG_DICOM_HEADER), f"file {i}: bad dictionary")
        _want(f.get("dict") != f.get("chunk"), f"file {i}: its own dictionary")
        px = f.get("pixels")
        try:
            layout = PixelLayout.from_record(px)
        except (TypeError, KeyError):
            raise FormatError(f"archive index: file {i}: bad pixel record") from None
        _want(all(_int(getattr(layout, k), 0, 2**48) for k in ("offset", "length", "frames", "rows", "columns", "samples",
                                                                 "planar", "bits_allocated", "bits_stored", "high_bit")),
              f"file {i}: bad pixel record")
        _want(isinstance(layout.signed, bool) and isinstance(layout.big_endian, bool), f"file {i}: bad pixel record")
        why = check_layout(layout)
        _want(why is None, f"file {i}: {why}")
        _want(layout.bits_allocated != 1 or layout_number >= arch.BITS_LAYOUT,
              f"file {i}: 1-bit pixel data in an index of layout {layout_number} (needs {arch.BITS_LAYOUT})")
        _want(layout.offset + layout.length <= f["size"], f"file {i}: pixel bytes past the end of the file")
        residual = f.get("residual")
        _want(isinstance(residual, bool), f"file {i}: bad residual flag")
        _want(f.get("remainder") == f["size"] - layout.length + (layout.residual_length if residual else 0),
              f"file {i}: bad remainder")
        _want(not residual or layout.residual_length > 0, f"file {i}: residual flag without residual bits")
        vol = f.get("volume")
        _want(_int(vol, 0, len(volumes) - 1), f"file {i}: bad volume")
        shape = volumes[vol]["shape"]
        _want(_int(f.get("z0"), 0) and f["z0"] + layout.planes <= shape[2], f"file {i}: planes outside volume {vol}")
        _want(shape[0] == layout.columns and shape[1] == layout.rows, f"file {i}: size differs from volume {vol}")
        _want(volumes[vol]["dtype"] == layout.value_dtype.name, f"file {i}: value type differs from volume {vol}")
        planes_used[vol] = planes_used.get(vol, 0) + layout.planes
    for v, rec in enumerate(volumes):
        _want(planes_used.get(v, 0) == rec["shape"][2], f"volume {v}: its files do not cover its slices")
    return ArchiveIndex(archive=archive, files=files, series=series, volumes=volumes)


def open_archive(data) -> ArchiveIndex:
    """Parse and validate an archive (bytes or a seekable binary file)."""
    return validate(arch.parse(data))


# --------------------------------------------------------------------------- info


def archive_info(data) -> dict:
    """Describe an archive from its index alone: no voxel is decoded, no header inflated.

    `data`: bytes, a seekable file (read from its current position) or an opened ArchiveIndex."""
    ai = data if isinstance(data, ArchiveIndex) else open_archive(data)
    a = ai.archive
    coded = [f for f in ai.files if f["storage"] == "coded"]
    verbatim = [f for f in ai.files if f["storage"] == "verbatim"]
    series_out = []
    for s_i, s in enumerate(ai.series):
        vols = [v for v in ai.volumes if v["series"] == s_i]
        series_out.append({
            "modality": s["modality"], "series_uid": s["uid"], "description": s["description"],
            "instances": s["instances"], "coded": s["coded"], "verbatim": s["verbatim"],
            "volumes": [{"shape": v["shape"], "dtype": v["dtype"], "files": v.get("files")} for v in vols],
        })
    reasons: dict[str, int] = {}
    for f in verbatim:
        reasons[f["reason"]] = reasons.get(f["reason"], 0) + 1
    voxels = sum(v["shape"][0] * v["shape"][1] * v["shape"][2] for v in ai.volumes)
    vol_bytes = sum(a.chunks[v["chunk"]].length for v in ai.volumes)
    header_bytes = sum(a.chunks[f["chunk"]].length for f in coded)
    verbatim_bytes = sum(a.chunks[f["chunk"]].length for f in verbatim)
    input_bytes = sum(f["size"] for f in ai.files)
    return {
        "format": "nvc",
        "format_version": fmt.ARCHIVE_VERSION,
        "kind": "dicom",
        "files": len(ai.files),
        "instances_coded": len(coded),
        "files_verbatim": len(verbatim),
        "dicom_verbatim": sum(1 for f in verbatim if f.get("dicom")),
        "verbatim_reasons": reasons,
        "series": series_out,
        "volumes": len(ai.volumes),
        "voxels": voxels,
        "input_bytes": input_bytes,
        "file_bytes": a.size,
        "volume_bytes": vol_bytes,
        "header_bytes": header_bytes,
        "verbatim_bytes": verbatim_bytes,
        "index_bytes": a.index_bytes,
        "compression_ratio": input_bytes / a.size if a.size else 0.0,
        "problems": list(a.problems),
    }


# --------------------------------------------------------------------------- restore


@dataclass
class Restored:
    """One file of an archive: its bytes, or why it cannot be restored."""

    name: str
    data: bytes | None
    error: str | None
    record: dict


@dataclass
class RestoreReport:
    restored: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed

    def raise_for_failures(self) -> None:
        if self.failed:
            names = ", ".join(sorted(self.failed)[:10]) + (" ..." if len(self.failed) > 10 else "")
            raise IntegrityError(
                f"{len(self.failed)} of {len(self.failed) + len(self.restored)} files could not be restored "
                f"(the others were): {names}; first reason: {next(iter(self.failed.values()))}"
            )


def _describe(exc: Exception) -> str:
    return str(exc) if isinstance(exc, CodecError) else f"{type(exc).__name__}: {exc}"


class _Remainders:
    """Inflates header remainders, caching the series dictionaries (a damaged one fails its users)."""

    def __init__(self, ai: ArchiveIndex):
        self.ai = ai
        self.cache: dict[int, bytes | Exception] = {}
        self.sizes = {f["chunk"]: f["remainder"] for f in ai.files if f["storage"] == "coded"}

    def get(self, chunk: int, dict_chunk: int | None) -> bytes:
        if chunk in self.cache:
            hit = self.cache[chunk]
            if isinstance(hit, Exception):
                raise hit
            return hit
        try:
            dictionary = None
            if dict_chunk is not None:
                try:
                    dictionary = self.get(dict_chunk, None)
                except Exception as exc:
                    raise FormatError(f"the series header dictionary (chunk {dict_chunk}) is damaged: {_describe(exc)}") from None
            body = self.ai.archive.read(chunk, fmt.TAG_DICOM_HEADER)
            out = arch.zstd_decompress(body, self.sizes[chunk], what=f"header chunk {chunk}", dictionary=dictionary)
        except Exception as exc:
            self.cache[chunk] = exc
            raise
        if chunk in {f["dict"] for f in self.ai.files if f.get("dict") is not None}:
            self.cache[chunk] = out
        return out


def _check(name: str, content: bytes, rec: dict) -> Restored:
    if len(content) != rec["size"] or hashlib.sha256(content).hexdigest() != rec["sha256"]:
        return Restored(name, None, "restored bytes do not match the SHA-256 recorded at compression", rec)
    return Restored(name, content, None, rec)


def iter_restored(ai: ArchiveIndex, *, progress: Progress = None) -> Iterator[Restored]:
    """Every file of the archive, volume by volume (one decoded volume in memory at a time),
    then the verbatim files; a file that cannot be restored comes with its reason."""
    from codec.api import decode

    by_volume: dict[int, list[dict]] = {}
    for f in ai.files:
        if f["storage"] == "coded":
            by_volume.setdefault(f["volume"], []).append(f)
    remainders = _Remainders(ai)
    n_files = len(ai.files)
    done = 0
    for v, vrec in enumerate(ai.volumes):
        members = sorted(by_volume.get(v, []), key=lambda f: f["z0"])
        try:
            blob = ai.archive.read(vrec["chunk"], fmt.TAG_DICOM_VOLUME)
            array = decode(blob)
            zyx = array.transpose(2, 1, 0) if array.ndim == 3 else array.T[None]
            want = (vrec["shape"][2], vrec["shape"][1], vrec["shape"][0])
            if vrec.get("split16"):
                if zyx.dtype != np.uint16 or zyx.shape[0] != 2 * want[0]:
                    raise FormatError(f"volume {v}: split 16-bit planes do not match the index")
                zyx = join16(zyx, vrec["dtype"])
            if zyx.shape != want:
                raise FormatError(f"volume {v} decodes to shape {zyx.shape[::-1]}, the index says {vrec['shape']}")
            error = None
        except Exception as exc:  # the files of this volume are lost, the others are not
            zyx, error = None, f"pixel volume {v} cannot be decoded: {_describe(exc)}"
        for f in members:
            if zyx is None:
                yield Restored(f["name"], None, error, f)
            else:
                yield _restore_coded(f, zyx, remainders)
            done += 1
            if progress:
                progress(done / n_files)
        del zyx
    for f in ai.files:
        if f["storage"] != "verbatim":
            continue
        try:
            body = ai.archive.read(f["chunk"], fmt.TAG_DICOM_FILE)
            content = arch.zstd_decompress(body, f["size"], what=f"file chunk {f['chunk']}")
            yield _check(f["name"], content, f)
        except Exception as exc:
            yield Restored(f["name"], None, _describe(exc), f)
        done += 1
        if progress:
            progress(done / n_files)


def _restore_coded(f: dict, zyx: np.ndarray, remainders: _Remainders) -> Restored:
    p = PixelLayout.from_record(f["pixels"])
    try:
        remainder = remainders.get(f["chunk"], f.get("dict"))
        n_prefix = p.offset
        n_suffix = f["size"] - p.offset - p.length
        prefix, suffix = remainder[:n_prefix], remainder[n_prefix : n_prefix + n_suffix]
        residual = remainder[n_prefix + n_suffix :] if f["residual"] else b""
        planes = zyx[f["z0"] : f["z0"] + p.planes]
        if planes.dtype != p.value_dtype:
            planes = planes.astype(p.value_dtype)
        content = prefix + pixel_bytes(planes, residual, p) + suffix
    except Exception as exc:
        return Restored(f["name"], None, _describe(exc), f)
    return _check(f["name"], content, f)


def _open_source(src):
    """Bytes and seekable file objects are used as they are; a path is opened (and closed by the caller)."""
    if isinstance(src, (bytes, bytearray, memoryview)) or (hasattr(src, "read") and hasattr(src, "seek")):
        return src, None
    fh = open(src, "rb")
    return fh, fh


def planned_outputs(ai: ArchiveIndex, out_dir: Path) -> list[Path]:
    return [restore_path(out_dir, f["name"]) for f in ai.files]


def decompress_dicom(src, out_dir, *, overwrite: bool = False, transfer_syntax: str | None = None,
                     progress: Progress = None) -> RestoreReport:
    """Restore every file of an archive under `out_dir` with its original relative name.

    Without `transfer_syntax` each file is byte-identical to the original (checked against its
    SHA-256); with one (``jpegls``, ``jpeg2000``, ``htj2k``, ``explicit-little``) the coded
    instances are written as standard DICOM in that lossless syntax
    (:mod:`codec.dicom_export`) and the other files as they were. Files that cannot be restored
    are listed in the report's ``failed``; the others are written all the same.
    An existing output file is an error unless `overwrite`.
    """
    from codec.files import write_bytes

    exporter = None
    if transfer_syntax is not None:
        from codec.dicom_export import exporter_for

        exporter = exporter_for(transfer_syntax)
    data, fh = _open_source(src)
    try:
        ai = open_archive(data)
        out_dir = Path(out_dir)
        targets = planned_outputs(ai, out_dir)
        if not overwrite:
            existing = [t for t in targets if t.exists()]
            if existing:
                raise FileExistsError(f"{existing[0]} already exists (use -f to overwrite)")
        report = RestoreReport(problems=list(ai.archive.problems))
        for item in iter_restored(ai, progress=progress):
            if item.data is None:
                report.failed[item.name] = item.error or "unknown error"
                continue
            content = item.data
            if exporter is not None and item.record["storage"] == "coded":
                try:
                    content = exporter(content)
                except UnsupportedInputError as exc:  # the syntax cannot hold it: the original is kept
                    report.problems.append(f"{item.name}: kept in its original transfer syntax ({exc})")
                except Exception as exc:
                    report.failed[item.name] = f"export to {transfer_syntax} failed: {_describe(exc)}"
                    continue
            target = restore_path(out_dir, item.name)
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                write_bytes(target, content)
            except OSError as exc:
                report.failed[item.name] = f"cannot write {target}: {exc}"
                continue
            report.restored.append(item.name)
        return report
    finally:
        if fh is not None:
            fh.close()


def is_archive_file(path: str | os.PathLike) -> bool:
    try:
        with open(path, "rb") as f:
            return arch.is_archive(f.read(fmt.PREAMBLE.size))
    except OSError:
        return False
