"""Where the files of a DICOM archive come from, and where they go back to.

A DICOM archive holds a *set of files* with their relative names: a folder (walked
recursively), a ``.zip`` or ``.tar`` (any compression tarfile reads) of one, or a single file.
Names are always relative, ``/``-separated and free of ``.``/``..`` components, so an archive
can never write outside the folder it is restored into - :func:`safe_name` is checked both
when files are gathered and, for hostile archives, when they are restored.
"""

from __future__ import annotations

import io
import os
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from codec.errors import UnsupportedInputError
from codec.format import ARCHIVE_MAX_FILES, ARCHIVE_MAX_FILE_BYTES, ARCHIVE_MAX_NAME_BYTES

ZIP_MAGIC = b"PK\x03\x04"
ZIP_EMPTY_MAGIC = b"PK\x05\x06"


@dataclass(frozen=True)
class InputFile:
    """One file of an archive: its relative name (``a/b.dcm``) and its bytes."""

    name: str
    data: bytes


def safe_name(name: str) -> str:
    """`name` as a relative POSIX path that stays inside its folder, or UnsupportedInputError."""
    if not isinstance(name, str) or not name:
        raise UnsupportedInputError("an archive member has an empty name")
    if "\x00" in name:
        raise UnsupportedInputError(f"file name {name!r} contains a NUL byte")
    if len(name.encode("utf-8", "surrogatepass")) > ARCHIVE_MAX_NAME_BYTES:
        raise UnsupportedInputError(f"file name {name[:80]!r}... is longer than {ARCHIVE_MAX_NAME_BYTES} bytes")
    path = PurePosixPath(name)
    if path.is_absolute() or name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise UnsupportedInputError(f"file name {name!r} is absolute: only relative names can be archived")
    parts = name.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise UnsupportedInputError(f"file name {name!r} has an empty, '.' or '..' component")
    return name


def _check_count(files: list[InputFile]) -> None:
    if len(files) > ARCHIVE_MAX_FILES:
        raise UnsupportedInputError(f"more than {ARCHIVE_MAX_FILES} files in one archive")


def _check_size(name: str, size: int) -> None:
    if size > ARCHIVE_MAX_FILE_BYTES:
        raise UnsupportedInputError(f"{name} is {size} bytes, more than the limit of {ARCHIVE_MAX_FILE_BYTES} per file")


def _check_unique(files: list[InputFile]) -> list[InputFile]:
    seen: set[str] = set()
    dirs: set[str] = set()
    for f in files:
        if f.name in seen:
            raise UnsupportedInputError(f"the input holds two files named {f.name!r}")
        seen.add(f.name)
        parts = f.name.split("/")
        dirs.update("/".join(parts[:i]) for i in range(1, len(parts)))
    clash = seen & dirs
    if clash:
        raise UnsupportedInputError(f"{sorted(clash)[0]!r} is both a file and a folder in the input")
    return files


def from_directory(root: str | os.PathLike) -> list[InputFile]:
    """Every regular file under `root` (recursively, sorted by name; links to files are read,
    links to folders are not followed, so a loop cannot make the walk endless)."""
    root = Path(root)
    files: list[InputFile] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        for fname in sorted(filenames):
            path = Path(dirpath) / fname
            if not path.is_file():  # sockets, fifos, dangling links
                continue
            name = path.relative_to(root).as_posix()
            _check_size(name, path.stat().st_size)
            files.append(InputFile(safe_name(name), path.read_bytes()))
            _check_count(files)
    if not files:
        raise UnsupportedInputError(f"{root} holds no files")
    return _check_unique(files)


def from_zip(data: bytes) -> list[InputFile]:
    """The regular members of a zip (folders skipped; declared sizes checked before inflating)."""
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError) as exc:
        raise UnsupportedInputError(f"broken zip archive: {exc}") from None
    files: list[InputFile] = []
    with zf:
        for member in zf.infolist():
            if member.is_dir():
                continue
            name = member.filename.replace("\\", "/")
            _check_size(name, member.file_size)
            try:
                content = zf.read(member)
            except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, RuntimeError, OSError, EOFError,
                    ValueError) as exc:
                raise UnsupportedInputError(f"zip member {name!r} cannot be read: {exc}") from None
            files.append(InputFile(safe_name(name), content))
            _check_count(files)
    if not files:
        raise UnsupportedInputError("the zip archive holds no files")
    return _check_unique(files)


def from_tar(data: bytes) -> list[InputFile]:
    """The regular-file members of a tar (plain, gzip, bzip2 or xz); links and devices are refused."""
    try:
        tf = tarfile.open(fileobj=io.BytesIO(data), mode="r:*")
    except (tarfile.TarError, OSError, EOFError, ValueError) as exc:
        raise UnsupportedInputError(f"broken tar archive: {exc}") from None
    files: list[InputFile] = []
    with tf:
        try:
            for member in tf:
                if member.isdir():
                    continue
                if not member.isfile():
                    raise UnsupportedInputError(f"tar member {member.name!r} is a link or a device: only regular files are archived")
                name = member.name[2:] if member.name.startswith("./") else member.name
                _check_size(name, member.size)
                reader = tf.extractfile(member)
                content = reader.read() if reader is not None else b""
                if len(content) != member.size:
                    raise UnsupportedInputError(f"tar member {name!r} is truncated")
                files.append(InputFile(safe_name(name), content))
                _check_count(files)
        except (tarfile.TarError, OSError, EOFError, ValueError) as exc:
            raise UnsupportedInputError(f"broken tar archive: {exc}") from None
    if not files:
        raise UnsupportedInputError("the tar archive holds no files")
    return _check_unique(files)


def looks_like_tar(data: bytes) -> bool:
    """A POSIX/GNU tar header at the start, or a compressed stream that tarfile opens as tar."""
    if len(data) >= 263 and data[257:262] == b"ustar":
        return True
    if data[:2] in (b"\x1f\x8b", b"BZ") or data[:6] == b"\xfd7zXZ\x00":
        try:
            with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tf:
                return tf.next() is not None
        except (tarfile.TarError, OSError, EOFError, ValueError):
            return False
    return False


def from_bytes(data: bytes, name: str = "input.dcm") -> list[InputFile]:
    """A zip, a tar, or else one file called `name`."""
    if data[:4] in (ZIP_MAGIC, ZIP_EMPTY_MAGIC):
        return from_zip(data)
    if looks_like_tar(data):
        return from_tar(data)
    return [InputFile(safe_name(name), data)]


def gather(src: str | os.PathLike) -> list[InputFile]:
    """The files of `src`: a folder, a .zip/.tar of one, or a single (DICOM) file."""
    path = Path(src)
    if path.is_dir():
        return from_directory(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    _check_size(path.name, path.stat().st_size)
    return from_bytes(path.read_bytes(), path.name)


def restore_path(root: Path, name: str) -> Path:
    """Where file `name` of an archive goes under `root` (checked again: archives may be hostile)."""
    return root.joinpath(*safe_name(name).split("/"))
