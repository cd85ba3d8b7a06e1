"""Helpers for batches: where each output goes, and how a failure is told."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import httpx

from nvc.sdk._base import compressed_name, decompressed_name

#: Maps an input file to the path its result is written to.
OutputFor = Callable[[Path], Path]


def _plan(
    paths: Iterable[str | os.PathLike[str]],
    name_for: Callable[[str], str],
    dest_dir: str | os.PathLike[str] | None,
    output_for: OutputFor | None,
) -> Iterator[tuple[Path, Path]]:
    for raw in paths:
        source = Path(os.fspath(raw))
        if output_for is not None:
            yield source, Path(output_for(source))
        elif dest_dir is not None:
            yield source, Path(os.fspath(dest_dir)) / name_for(source.name)
        else:
            yield source, source.with_name(name_for(source.name))


def plan_compress(paths, *, dest_dir=None, output_for=None) -> Iterator[tuple[Path, Path]]:
    """(input, output) pairs for ``compress_many``: ``scan.nii.gz`` -> ``scan.nvc``."""
    return _plan(paths, compressed_name, dest_dir, output_for)


def plan_decompress(paths, *, dest_dir=None, output_for=None, fmt: str = "nii.gz") -> Iterator[tuple[Path, Path]]:
    """(input, output) pairs for ``decompress_many``: ``scan.nvc`` -> ``scan.nii.gz``."""
    return _plan(paths, lambda name: decompressed_name(name, fmt), dest_dir, output_for)


def describe_failure(exc: BaseException) -> str:
    """One line saying why a file failed (the server's problem detail when there is one)."""
    from nvc.sdk.errors import NVCError

    if isinstance(exc, (NVCError, OSError)):
        return str(exc) or type(exc).__name__
    if isinstance(exc, httpx.HTTPError):
        return f"{type(exc).__name__}: {exc}"
    return f"{type(exc).__name__}: {exc}"


def discard(path: Path) -> None:
    """Remove an output that did not verify, so that it is never mistaken for a good one."""
    try:
        path.unlink()
    except FileNotFoundError:
        pass
