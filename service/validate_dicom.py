"""Upload checks for DICOM: a series to compress (zip, tar, tar.gz or one .dcm) and an archive to restore.

Like service/validate.py, every byte is fed in as it streams and `finish()` says what the upload
is, or raises a `Problem`; the rules are the codec's own (`codec.dicom_inputs` for member names
and sizes, `codec.dicom_pixels.is_dicom` for "is this DICOM", `codec.dicom.open_archive` for
archives), so the API never accepts what the worker refuses. A zip or tar can only be read
whole, so the bytes are spooled to a temporary file (memory up to SPOOL_MEMORY_BYTES, disk
beyond) and read member by member at the end: one member in memory at a time.

A gzip upload is a .nii.gz or a .tar.gz: the two are told apart by inflating its first bytes
(a tar header has "ustar" at byte 257), so a gzip upload is held back until that is known.

Refusals: 415 when nothing in the upload is DICOM; 422 for a broken container, unsafe or
duplicate member names, links, truncated members, members declaring more bytes than the
limit (a zip or tar.gz bomb), or a damaged archive - each with the reason.
Details name files and counts, never a header value.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field

from service.problems import Problem

SPOOL_MEMORY_BYTES = 1024 * 1024
#: First bytes needed to tell a zip, a tar or a DICOM file from a NIfTI/.npy.
SNIFF_BYTES = 264
#: First bytes that tell a DICOM archive (version-2 preamble) from a single-volume .nvc.
PREAMBLE_BYTES = 12
GZIP_MAGIC = b"\x1f\x8b"
#: Most compressed bytes held back to tell a .tar.gz from a .nii.gz (a gzip header may carry
#: a long file name or comment before the data); a gzip that says nothing by then is a volume.
GZIP_SNIFF_MAX_BYTES = 64 * 1024
TAR_MAGIC_AT = 257


@dataclass(frozen=True)
class DicomInfo:
    """What a valid DICOM upload holds (the record's `shape`/`dtype` stay empty for it)."""

    format: str  # "dicom" (a series to compress) or "nvc-dicom" (an archive to restore)
    files: int
    dicom_files: int
    container: str  # "zip", "tar", "tar.gz", "dcm" or "archive"
    shape: tuple[int, ...] | None = None
    dtype: str | None = None
    voxel_bytes: int = 0
    series: list[dict] = field(default_factory=list)


def _tar_header(data: bytes) -> bool:
    return len(data) >= TAR_MAGIC_AT + 6 and data[TAR_MAGIC_AT : TAR_MAGIC_AT + 5] == b"ustar"


def gzip_holds_tar(head: bytes) -> bool | None:
    """For a gzip stream's first bytes: True when it inflates to a tar header, False when it
    does not (or is not gzip), None when these bytes do not tell yet."""
    import zlib

    if head[:2] != GZIP_MAGIC:
        return False
    inflater = zlib.decompressobj(wbits=31)
    try:
        out = inflater.decompress(head, TAR_MAGIC_AT + 6)
    except zlib.error:
        return False
    if len(out) >= TAR_MAGIC_AT + 6:
        return _tar_header(out)
    return False if inflater.eof else None


def looks_like_dicom_upload(head: bytes) -> bool:
    """Whether the first bytes of a compress upload start a zip, a tar (plain or gzip) or a DICOM file."""
    from codec.dicom_inputs import ZIP_EMPTY_MAGIC, ZIP_MAGIC

    if head[:4] in (ZIP_MAGIC, ZIP_EMPTY_MAGIC):
        return True
    if len(head) >= 132 and head[128:132] == b"DICM":
        return True
    return _tar_header(head) or gzip_holds_tar(head) is True


def _invalid(detail: str) -> Problem:
    return Problem(422, detail, slug="invalid-input")


class _Spool:
    def __init__(self) -> None:
        self.file = tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY_BYTES)
        self.size = 0

    def feed(self, data: bytes) -> None:
        self.file.write(data)
        self.size += len(data)

    def rewind(self):
        self.file.seek(0)
        return self.file


class DicomUploadValidator:
    """A DICOM series to compress: a zip, a tar or a gzip-compressed tar of files, or one DICOM file."""

    def __init__(self, max_inflated_bytes: int):
        self.spool = _Spool()
        self.max_inflated_bytes = max_inflated_bytes  # all zip or tar members together, as declared
        self.npy_members = 0  # a zip of only .npy members is an .npz, said so

    def feed(self, data: bytes) -> None:
        if data:
            self.spool.feed(data)


    def header_info(self):
        """Direct uploads check only the head of a stored object; a DICOM upload is only known
        whole, so it is refused there with the route that takes it."""
        raise Problem(422, "a DICOM upload is checked whole: send it to POST /compress (streamed), not as a direct "
                      "upload", slug="invalid-input")

    def finish(self) -> DicomInfo:
        import zipfile

        from codec.dicom_inputs import ZIP_EMPTY_MAGIC, ZIP_MAGIC
        from codec.errors import UnsupportedInputError

        fh = self.spool.rewind()
        head = fh.read(SNIFF_BYTES)
        fh.seek(0)
        try:
            if head[:4] in (ZIP_MAGIC, ZIP_EMPTY_MAGIC):
                container, (files, dicom_files) = "zip", self._members_zip(fh, zipfile)
            elif _tar_header(head):
                container, (files, dicom_files) = "tar", self._members_tar(fh, "r:")
            elif head[:2] == GZIP_MAGIC:
                container, (files, dicom_files) = "tar.gz", self._members_tar(fh, "r:gz")
            else:
                container, files = "dcm", 1
                dicom_files = int(_is_dicom(fh.read()))
        except UnsupportedInputError as exc:
            raise _invalid(str(exc)) from None
        finally:
            fh.close()
        if dicom_files == 0:
            if container == "zip" and self.npy_members == files:
                raise Problem(415, ".npz archives are not supported: save one array as .npy", slug="unsupported-input")
            what = "file" if container == "dcm" else f"{container} ({files} files)"
            raise Problem(415, f"the upload is not DICOM: no DICOM file in the {what}", slug="unsupported-input")
        return DicomInfo("dicom", files, dicom_files, container)

    def _members_zip(self, fh, zipfile) -> tuple[int, int]:
        from codec.dicom_inputs import safe_name
        from codec.errors import UnsupportedInputError
        from codec.format import ARCHIVE_MAX_FILE_BYTES, ARCHIVE_MAX_FILES

        try:
            zf = zipfile.ZipFile(fh)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError) as exc:
            raise UnsupportedInputError(f"broken zip archive: {exc}") from None
        names: set[str] = set()
        files = dicom_files = 0
        declared = 0
        with zf:
            members = [m for m in zf.infolist() if not m.is_dir()]
            if len(members) > ARCHIVE_MAX_FILES:
                raise UnsupportedInputError(f"more than {ARCHIVE_MAX_FILES} files in one archive")
            for m in members:
                name = safe_name(m.filename.replace("\\", "/"))
                if name in names:
                    raise UnsupportedInputError(f"the zip holds two files named {name!r}")
                names.add(name)
                if m.file_size > ARCHIVE_MAX_FILE_BYTES:
                    raise UnsupportedInputError(f"zip member {name!r} declares {m.file_size} bytes")
                declared += m.file_size
                if declared > self.max_inflated_bytes:
                    raise UnsupportedInputError(
                        f"the zip declares {declared} bytes once inflated, more than the limit of "
                        f"{self.max_inflated_bytes}: refused (a decompression bomb?)")
                try:
                    with zf.open(m) as member:
                        head = _drain(member)  # CRC checked at the end; only the head is kept
                except UnsupportedInputError:
                    raise
                except Exception as exc:
                    raise UnsupportedInputError(f"zip member {name!r} cannot be read: {type(exc).__name__}") from None
                files += 1
                dicom_files += _is_dicom(head)
                self.npy_members += name.endswith(".npy")
        if files == 0:
            raise UnsupportedInputError("the zip archive holds no files")
        return files, dicom_files

    def _members_tar(self, fh, mode: str) -> tuple[int, int]:
        """Members of a tar (`mode` "r:") or a tar.gz ("r:gz", inflated as it is read: what is
        declared is checked against the limit before a member is read)."""
        import tarfile

        from codec.dicom_inputs import safe_name
        from codec.errors import UnsupportedInputError
        from codec.format import ARCHIVE_MAX_FILE_BYTES, ARCHIVE_MAX_FILES

        names: set[str] = set()
        files = dicom_files = 0
        declared = 0
        try:
            with tarfile.open(fileobj=fh, mode=mode) as tf:
                for m in tf:
                    if m.isdir():
                        continue
                    if not m.isfile():
                        raise UnsupportedInputError(f"tar member {m.name!r} is a link or a device")
                    name = safe_name(m.name[2:] if m.name.startswith("./") else m.name)
                    if name in names:
                        raise UnsupportedInputError(f"the tar holds two files named {name!r}")
                    names.add(name)
                    if files >= ARCHIVE_MAX_FILES:
                        raise UnsupportedInputError(f"more than {ARCHIVE_MAX_FILES} files in one archive")
                    if m.size > ARCHIVE_MAX_FILE_BYTES:
                        raise UnsupportedInputError(f"tar member {name!r} declares {m.size} bytes")
                    declared += m.size
                    if declared > self.max_inflated_bytes:
                        raise UnsupportedInputError(
                            f"the tar declares {declared} bytes of files, more than the limit of "
                            f"{self.max_inflated_bytes}: refused")
                    reader = tf.extractfile(m)
                    head, size = (_drain(reader, with_size=True) if reader is not None else (b"", 0))
                    if size != m.size:
                        raise UnsupportedInputError(f"tar member {name!r} is truncated")
                    files += 1
                    dicom_files += _is_dicom(head)
        except (tarfile.TarError, OSError, EOFError, ValueError) as exc:
            raise UnsupportedInputError(f"broken tar archive: {exc}") from None
        if files == 0:
            raise UnsupportedInputError("the tar archive holds no files")
        return files, dicom_files


#: Bytes of each member kept to tell whether it is DICOM (its header); the rest is read and dropped.
MEMBER_HEAD_BYTES = 1024 * 1024
READ_PIECE = 1024 * 1024


def _drain(reader, with_size: bool = False):
    """Read a member to its end in bounded pieces (a zip checks its CRC there); keep only its head."""
    head = reader.read(MEMBER_HEAD_BYTES)
    size = len(head)
    while piece := reader.read(READ_PIECE):
        size += len(piece)
    return (head, size) if with_size else head


def _is_dicom(data: bytes) -> bool:
    from codec.dicom_pixels import is_dicom

    return is_dicom(data)


class ArchiveUploadValidator:
    """The rest of a version-2 .nvc (a DICOM archive) after its preamble: spooled, then parsed and
    every chunk CRC-checked as `codec.dicom` will read it."""

    def __init__(self, preamble: bytes):
        self.spool = _Spool()
        self.spool.feed(preamble)

    def feed(self, data: bytes) -> None:
        if data:
            self.spool.feed(data)


    def header_info(self):
        """Direct uploads check only the head of a stored object; a DICOM upload is only known
        whole, so it is refused there with the route that takes it."""
        raise Problem(422, "a DICOM upload is checked whole: send it to POST /decompress (streamed), not as a direct "
                      "upload", slug="invalid-input")

    def finish(self) -> DicomInfo:
        from codec import dicom
        from codec.errors import CodecError

        fh = self.spool.rewind()
        try:
            ai = dicom.open_archive(fh)
            if ai.archive.problems:
                raise _invalid(f"not a valid DICOM archive: {ai.archive.problems[0]}")
            for i, c in enumerate(ai.archive.chunks):
                ai.archive.read(i, c.tag)
            info = dicom.archive_info(ai)
        except CodecError as exc:
            raise _invalid(f"not a valid DICOM archive: {exc}") from None
        finally:
            fh.close()
        return DicomInfo("nvc-dicom", info["files"], info["instances_coded"] + info["dicom_verbatim"], "archive",
                         series=info["series"])


class _SniffingValidator:
    """Holds back the first `sniff_bytes` bytes of an upload, then hands them and every later
    byte to the validator `_pick` chooses from them (one place for the buffering both routes need)."""

    sniff_bytes = 0

    def __init__(self, max_volume_bytes: int):
        self.max_volume_bytes = max_volume_bytes
        self.head = b""
        self.inner = None

    def _pick(self, head: bytes):
        """The validator for an upload starting with `head`, having already been fed `head`."""
        raise NotImplementedError

    def _ready(self, head: bytes) -> bool:
        """Whether `head` is enough to pick the validator (`finish` picks with whatever came)."""
        return len(head) >= self.sniff_bytes

    def _choose(self) -> None:
        head, self.head = self.head, b""
        self.inner = self._pick(head)

    def feed(self, data: bytes) -> None:
        if self.inner is None:
            self.head += data
            if not self._ready(self.head):
                return
            self._choose()
            return
        self.inner.feed(data)

    def header_info(self):
        if self.inner is None:
            if not self._ready(self.head):
                return None
            self._choose()
        return self.inner.header_info()

    def finish(self):
        if self.inner is None:
            self._choose()
        return self.inner.finish()


class CompressUploadValidator(_SniffingValidator):
    """POST /compress: a DICOM upload (zip, tar, tar.gz, .dcm) or a volume (.nii, .nii.gz, .npy),
    told apart by the first SNIFF_BYTES bytes (a gzip: by what its first bytes inflate to, up to
    GZIP_SNIFF_MAX_BYTES); the chosen validator then sees every byte."""

    sniff_bytes = SNIFF_BYTES

    def _ready(self, head: bytes) -> bool:
        if len(head) < self.sniff_bytes:
            return False
        if head[:2] != GZIP_MAGIC or len(head) >= GZIP_SNIFF_MAX_BYTES:
            return True
        return gzip_holds_tar(head) is not None

    def _pick(self, head: bytes):
        from service.validate import VolumeUploadValidator

        if looks_like_dicom_upload(head):
            inner = DicomUploadValidator(self.max_volume_bytes)
        else:
            inner = VolumeUploadValidator(self.max_volume_bytes)
        inner.feed(head)
        return inner


class DecompressUploadValidator(_SniffingValidator):
    """POST /decompress: a DICOM archive (version-2 preamble: `ArchiveUploadValidator`) or a
    single-volume .nvc (the codec's incremental check), told apart by the first 12 bytes."""

    sniff_bytes = PREAMBLE_BYTES

    def _pick(self, head: bytes):
        from codec.dicom_archive import is_archive
        from service.validate import NvcUploadValidator

        if is_archive(head):
            return ArchiveUploadValidator(head)
        inner = NvcUploadValidator(self.max_volume_bytes)
        inner.feed(head)
        return inner
