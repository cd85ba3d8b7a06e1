"""``nvc remote compress|decompress``: push whole archives through an NVC server.

    nvc remote compress /archive --server http://host:8000 -j 4 -o /archive-nvc
    nvc remote decompress /archive-nvc --server http://host:8000 -j 4 -o /restored --format nii.gz

Directories are walked (their layout is kept under ``-o``). Up to ``-j`` files are in flight
at once: while one uploads another's result downloads. Every result is verified before it
counts (decoded locally and compared voxel for voxel when the codec is installed, else
checked against the SHA-256 the job recorded). A manifest (``.nvc-remote.json``) in each
output folder remembers what was done, so a rerun skips files whose input hash, options and
verified output are unchanged. Exit status 1 when any file failed, naming each and why.

Only ``nvc.sdk`` (httpx, pydantic) is imported: this works with ``pip install "nvc[client]"``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

MANIFEST = ".nvc-remote.json"
COMPRESS_SUFFIXES = (".nii.gz", ".nii", ".npy")
DECOMPRESS_SUFFIXES = (".nvc",)


# -- command line ----------------------------------------------------------------------------


def register(subparsers: argparse._SubParsersAction) -> None:
    remote = subparsers.add_parser(
        "remote",
        help="compress/decompress many files through an NVC server (batch client)",
        description="Batch client for an NVC server: walks directories, runs -j files at once, verifies "
        "every result, skips files already done, and prints a summary.",
    )
    sub = remote.add_subparsers(dest="remote_command", metavar="ACTION")
    sub.required = True
    for action in ("compress", "decompress"):
        what = "NIfTI (.nii/.nii.gz) or .npy volumes" if action == "compress" else ".nvc files"
        parser = sub.add_parser(
            action,
            help=f"{action} {what} on the server",
            description=f"{action.capitalize()} {what} (files or directories) on an NVC server.",
        )
        parser.add_argument("paths", nargs="+", metavar="PATH", help="files or directories (walked recursively)")
        parser.add_argument(
            "--server",
            default=os.environ.get("NVC_SERVER", "http://127.0.0.1:8000"),
            help="server URL (default: $NVC_SERVER or http://127.0.0.1:8000)",
        )
        parser.add_argument(
            "-j", "--jobs", type=int, default=4, metavar="N", help="files in flight at once (default 4)"
        )
        parser.add_argument(
            "-o",
            "--output-dir",
            type=Path,
            metavar="DIR",
            help="write results here, keeping the layout of walked directories (default: next to each input)",
        )
        parser.add_argument("--api-key", default=None, help="API key (default: $NVC_API_KEY)")
        parser.add_argument(
            "--verify",
            choices=("auto", "decode", "sha256", "none"),
            default="auto",
            help="how to check each result: auto = decode locally when the codec is installed, "
            "else the job's SHA-256 (default auto)",
        )
        parser.add_argument("--force", action="store_true", help="redo files even when the manifest says they are done")
        parser.add_argument("--timeout", type=float, default=None, metavar="S", help="give up on a job after S seconds")
        parser.add_argument(
            "--retries",
            type=int,
            default=5,
            metavar="N",
            help="retries of a request after connection errors, 429 and 503 (default 5)",
        )
        parser.add_argument(
            "--direct-upload-mib",
            type=float,
            default=64.0,
            metavar="MIB",
            help="files of at least this many MiB go straight to the server's S3 store in presigned parts, when it "
            "has one (default 64; 0: every file; a server with local storage always gets the file streamed)",
        )
        parser.add_argument("--no-progress", action="store_true", help="no progress bars (one line per finished file)")
        parser.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
        if action == "compress":
            parser.add_argument("--profile", default=None, help="codec profile (default: the server's)")
        else:
            parser.add_argument(
                "--format",
                dest="fmt",
                choices=("nii.gz", "nii", "npy"),
                default="nii.gz",
                help="output format (default nii.gz)",
            )
        parser.set_defaults(handler=run, action=action)


# -- planning ---------------------------------------------------------------------------------


@dataclass
class Item:
    source: Path
    output: Path
    size: int
    sha256: str = ""
    skipped: bool = False
    record: dict[str, Any] = field(default_factory=dict)


def _matches(path: Path, suffixes: tuple[str, ...]) -> bool:
    return path.name.lower().endswith(suffixes) and not path.name.startswith(".")


def _out_name(name: str, action: str, fmt: str, path: Path | None = None) -> str:
    from nvc.sdk._base import compressed_name, decompressed_name, is_dicom_archive

    if action == "compress":
        return compressed_name(name)
    if path is not None and is_dicom_archive(path):  # a DICOM series archive comes back as a zip of its files
        return decompressed_name(name, "zip")
    return decompressed_name(name, fmt)


def _is_dicom_file(path: Path) -> bool:
    try:
        with path.open("rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def dicom_series_zip(root: Path) -> Path | None:
    """A folder of DICOM files (no volumes in it) as one deterministic zip in a temporary folder,
    to be archived as one job (every file kept, names relative to `root`); None when it holds no
    DICOM file. Deterministic (sorted names, fixed times), so a rerun finds it in the manifest."""
    import tempfile
    import zipfile

    files = sorted(p for p in root.rglob("*") if p.is_file())
    if any(_matches(p, COMPRESS_SUFFIXES) for p in files) or not any(_is_dicom_file(p) for p in files):
        return None
    target = Path(tempfile.mkdtemp(prefix="nvc-remote-")) / f"{root.name or 'series'}.zip"
    with zipfile.ZipFile(target, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        for path in files:
            info = zipfile.ZipInfo(path.relative_to(root).as_posix(), date_time=(1980, 1, 1, 0, 0, 0))
            with path.open("rb") as src, zf.open(info, "w", force_zip64=True) as dst:
                while block := src.read(1 << 20):
                    dst.write(block)
    return target


def plan(paths: list[str], action: str, output_dir: Path | None, fmt: str) -> list[Item]:
    """Every input file with its output path; raises CLIError for missing paths or clashing outputs.

    compress: a folder that holds DICOM files and no volume is one DICOM series archive
    (``DIR`` -> ``DIR.nvc``); a .zip of one, or one .dcm file, is one archive too."""
    from nvc.cli import CLIError

    suffixes = COMPRESS_SUFFIXES if action == "compress" else DECOMPRESS_SUFFIXES
    items: list[Item] = []
    for raw in paths:
        root = Path(raw)
        series = dicom_series_zip(root) if action == "compress" and root.is_dir() else None
        if series is not None:
            folder = output_dir if output_dir is not None else root.resolve().parent
            items.append(Item(series, folder / f"{root.resolve().name}.nvc", series.stat().st_size))
            continue
        if action == "compress" and root.is_file() and (root.name.lower().endswith((".zip", ".dcm"))
                                                        or _is_dicom_file(root)):
            folder = output_dir if output_dir is not None else root.parent
            stem = root.name[:-4] if root.name.lower().endswith((".zip", ".dcm")) else root.name
            items.append(Item(root, folder / f"{stem}.nvc", root.stat().st_size))
            continue
        if root.is_dir():
            found = sorted(p for p in root.rglob("*") if p.is_file() and _matches(p, suffixes))
            if not found:
                print(f"nvc remote: no {'/'.join(suffixes)} files under {root}", file=sys.stderr)
            for path in found:
                rel = path.relative_to(root).parent
                folder = (output_dir / rel) if output_dir is not None else path.parent  # the layout under ROOT
                items.append(Item(path, folder / _out_name(path.name, action, fmt, path), path.stat().st_size))
        elif root.is_file():
            if not _matches(root, suffixes):
                raise CLIError(f"{root}: not a {' / '.join(suffixes)} file")
            folder = output_dir if output_dir is not None else root.parent
            items.append(Item(root, folder / _out_name(root.name, action, fmt, root), root.stat().st_size))
        else:
            raise CLIError(f"{root}: no such file or directory")
    seen: dict[Path, Path] = {}
    for item in items:
        key = item.output.resolve()
        if key in seen:
            raise CLIError(f"{seen[key]} and {item.source} would both be written to {item.output}")
        seen[key] = item.source
    return items


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


# -- manifest (what is already done) -----------------------------------------------------------


class Manifest:
    """``.nvc-remote.json`` per output folder: output name -> input hash, options, output hash."""

    def __init__(self) -> None:
        self._cache: dict[Path, dict[str, Any]] = {}

    def _load(self, folder: Path) -> dict[str, Any]:
        if folder not in self._cache:
            try:
                data = json.loads((folder / MANIFEST).read_text())
                entries = data.get("entries", {}) if isinstance(data, dict) else {}
            except (OSError, ValueError):
                entries = {}
            self._cache[folder] = entries
        return self._cache[folder]

    def done(self, item: Item, options: dict[str, Any]) -> dict[str, Any] | None:
        entry = self._load(item.output.parent).get(item.output.name)
        if not entry or entry.get("input_sha256") != item.sha256 or entry.get("options") != options:
            return None
        try:
            if item.output.stat().st_size != entry.get("output_size"):
                return None
        except OSError:
            return None
        if sha256_of(item.output) != entry.get("output_sha256"):
            return None
        return entry

    def record(self, item: Item, entry: dict[str, Any]) -> None:
        folder = item.output.parent
        entries = self._load(folder)
        entries[item.output.name] = entry
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / (MANIFEST + ".tmp")
        tmp.write_text(json.dumps({"version": 1, "entries": entries}, indent=1, sort_keys=True))
        os.replace(tmp, folder / MANIFEST)


# -- progress display --------------------------------------------------------------------------

WEIGHTS = {
    "upload": (0.0, 0.15),
    "queued": (0.15, 0.0),
    "running": (0.15, 0.65),
    "download": (0.8, 0.12),
    "verify": (0.92, 0.0),
    "done": (1.0, 0.0),
    "failed": (1.0, 0.0),
}


def _mb(n: float) -> str:
    return f"{n / 1e6:.1f} MB"


def _bar(fraction: float, width: int) -> str:
    fraction = min(max(fraction, 0.0), 1.0)
    full = int(round(fraction * width))
    return "[" + "#" * full + "." * (width - full) + "]"


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class Progress:
    """A bar per file in flight and one overall (terminal), or one line per finished file (pipes).

    ``event`` is called from worker threads; everything here holds ``lock``.
    """

    def __init__(self, items: list[Item], stream: TextIO, bars: bool):
        self.stream = stream
        self.bars = bars
        self.lock = threading.Lock()
        self.sizes = {str(i.source): max(i.size, 1) for i in items}
        self.total = sum(self.sizes.values()) or 1
        self.state: dict[str, tuple[str, float, str]] = {}
        self.finished = 0
        self.count = len(items)
        self.start = time.monotonic()
        self.drawn = 0
        self.last = 0.0

    def _fraction(self, stage: str, fraction: float | None) -> float:
        base, span = WEIGHTS.get(stage, (0.0, 0.0))
        return base + span * (fraction or 0.0)

    def event(self, event: Any) -> None:
        with self.lock:
            detail = ""
            if event.stage in ("upload", "download") and event.done is not None:
                detail = (
                    f"{event.done / 1e6:.1f}/{event.total / 1e6:.1f} MB"
                    if event.total
                    else f"{event.done / 1e6:.1f} MB"
                )
            elif event.stage == "running" and event.fraction is not None:
                detail = f"job {event.fraction * 100:3.0f}%"
            self.state[event.source] = (event.stage, self._fraction(event.stage, event.fraction), detail)
            now = time.monotonic()
            if self.bars and now - self.last > 0.1:
                self.last = now
                self._draw()

    def line(self, text: str) -> None:
        """A permanent line (a finished file), printed above the bars."""
        with self.lock:
            self.finished += 1
            if self.bars:
                self._clear()
            print(text, file=self.stream, flush=True)
            if self.bars:
                self._draw()

    def close(self) -> None:
        with self.lock:
            if self.bars:
                self._clear()

    def _clear(self) -> None:
        if self.drawn:
            self.stream.write(f"\x1b[{self.drawn}F\x1b[J")
            self.drawn = 0

    def _draw(self) -> None:
        self._clear()
        width = shutil.get_terminal_size((100, 20)).columns
        name_width = max(12, min(40, width - 50))
        lines = []
        for source, (stage, frac, detail) in self.state.items():
            if stage in ("done", "failed"):
                continue
            name = Path(source).name
            name = name if len(name) <= name_width else "..." + name[-(name_width - 3) :]
            lines.append(f"  {name:<{name_width}} {stage:<8} {_bar(frac, 20)} {frac * 100:3.0f}% {detail}"[: width - 1])
        overall = sum(self.sizes.get(s, 0) * st[1] for s, st in self.state.items()) / self.total
        lines.append(
            f"overall {_bar(overall, 30)} {overall * 100:3.0f}%  {self.finished}/{self.count} files  "
            f"{_clock(time.monotonic() - self.start)}"[: width - 1]
        )
        self.stream.write("\n".join(lines) + "\n")
        self.stream.flush()
        self.drawn = len(lines)


# -- summary -------------------------------------------------------------------------------------


def summarize(action: str, results: list[Any], skipped: list[Item], wall: float) -> dict[str, Any]:
    ok = [r for r in results if r.ok]
    failed = [r for r in results if not r.ok]
    bytes_in = sum(r.input_bytes for r in ok)
    bytes_out = sum(r.output_bytes for r in ok)
    voxels = raw = 0
    coded_bits = 0.0
    for r in ok:
        job = r.job
        if job is None or job.voxels is None or job.raw_bytes is None:
            continue
        voxels += job.voxels
        raw += job.raw_bytes
        nvc_bytes = r.output_bytes if action == "compress" else r.input_bytes
        coded_bits += (job.bits_per_voxel * job.voxels) if job.bits_per_voxel is not None else nvc_bytes * 8
    nvc_total = bytes_out if action == "compress" else bytes_in
    summary: dict[str, Any] = {
        "action": action,
        "files": len(results) + len(skipped),
        "ok": len(ok),
        "failed": len(failed),
        "skipped": len(skipped),
        "bytes_in": bytes_in,
        "bytes_out": bytes_out,
        # one meaning of "ratio" everywhere: raw voxel bytes / .nvc bytes (as `nvc info`)
        "ratio": (raw / nvc_total) if raw and nvc_total else None,
        "raw_voxel_bytes": raw,
        # compress: the input files' bytes / the .nvc bytes
        "upload_ratio": (bytes_in / bytes_out) if bytes_out and action == "compress" else None,
        "bits_per_voxel": (coded_bits / voxels) if voxels else None,
        "wall_seconds": wall,
        "throughput_mb_s": (bytes_in / 1e6 / wall) if wall > 0 else None,
        "raw_throughput_mb_s": (raw / 1e6 / wall) if wall > 0 and raw else None,
        "verified": {},
        "failures": [{"path": str(r.source), "error": r.error} for r in failed],
        "results": [
            {
                "path": str(r.source),
                "output": str(r.output) if r.output else None,
                "ok": r.ok,
                "error": r.error,
                "job_id": r.job.id if r.job else None,
                "input_bytes": r.input_bytes,
                "output_bytes": r.output_bytes,
                "bits_per_voxel": r.job.bits_per_voxel if r.job else None,
                "verified": r.verified,
                "seconds": round(r.seconds, 3),
            }
            for r in results
        ],
    }
    for r in ok:
        summary["verified"][r.verified or "none"] = summary["verified"].get(r.verified or "none", 0) + 1
    return summary


def print_summary(summary: dict[str, Any], stream: TextIO) -> None:
    s = summary
    head = f"nvc remote {s['action']}: {s['ok']} ok, {s['failed']} failed, {s['skipped']} skipped (already done)"
    print(head + f"; {s['files']} files in {s['wall_seconds']:.1f} s", file=stream)
    if s["ok"]:
        ratio = (f"ratio {s['ratio']:.3f} (raw voxels {_mb(s['raw_voxel_bytes'])} / .nvc)" if s["ratio"]
                 else "ratio n/a")
        raw = f", {s['upload_ratio']:.3f} input files / .nvc" if s["upload_ratio"] else ""
        bpv = f"{s['bits_per_voxel']:.3f}" if s["bits_per_voxel"] is not None else "n/a"
        print(f"  in {_mb(s['bytes_in'])} -> out {_mb(s['bytes_out'])}; {ratio}{raw}; bits/voxel {bpv}", file=stream)
        speed = f"{s['throughput_mb_s']:.2f} MB/s of input files"
        if s["raw_throughput_mb_s"]:
            speed += f", {s['raw_throughput_mb_s']:.2f} MB/s of raw voxels"
        print(f"  throughput {speed}", file=stream)
        checks = ", ".join(f"{n} {how}" for how, n in sorted(s["verified"].items()))
        print(f"  verified: {checks}", file=stream)
    for failure in s["failures"]:
        print(f"  FAILED {failure['path']}: {failure['error']}", file=stream)


# -- the command ---------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    from nvc.cli import CLIError
    from nvc.sdk import Client, RetryPolicy

    if args.jobs < 1:
        raise CLIError("-j must be at least 1")
    if args.retries < 0:
        raise CLIError("--retries must not be negative")
    action = args.action
    fmt = getattr(args, "fmt", "nii.gz")
    options = {"profile": args.profile} if action == "compress" else {"format": fmt}
    err = sys.stderr
    started = time.monotonic()

    items = plan(args.paths, action, args.output_dir, fmt)
    if not items:
        raise CLIError("nothing to do: no input files found")
    manifest = Manifest()
    todo: list[Item] = []
    skipped: list[Item] = []
    for item in items:
        item.sha256 = sha256_of(item.source)
        if not args.force and manifest.done(item, options):
            item.skipped = True
            skipped.append(item)
        else:
            todo.append(item)
    for item in skipped:
        print(f"skip {item.source} (already done: {item.output})", file=err)

    bars = not args.no_progress and err.isatty()
    progress = Progress(todo, err, bars)
    by_source = {str(i.source): i for i in todo}
    results = []
    client = Client(args.server, api_key=args.api_key, retry=RetryPolicy(max_attempts=args.retries + 1),
                    direct_upload_bytes=int(args.direct_upload_mib * 1024 * 1024))
    try:
        outputs = {i.source: i.output for i in todo}
        kwargs = dict(
            concurrency=args.jobs,
            output_for=outputs.__getitem__,
            verify=args.verify,
            timeout=args.timeout,
            on_progress=progress.event,
        )
        batch = (
            client.compress_many([i.source for i in todo], profile=args.profile, **kwargs)
            if action == "compress"
            else client.decompress_many([i.source for i in todo], format=fmt, **kwargs)
        )
        for result in batch:
            results.append(result)
            item = by_source[str(result.source)]
            if result.ok:
                job = result.job
                manifest.record(
                    item,
                    {
                        "input_sha256": item.sha256,
                        "input_size": result.input_bytes,
                        "options": options,
                        "output_sha256": result.output_sha256,
                        "output_size": result.output_bytes,
                        "job_id": job.id if job else None,
                        "verified": result.verified,
                        "bits_per_voxel": job.bits_per_voxel if job else None,
                        "finished": time.time(),
                    },
                )
                ratio = f"ratio {job.ratio:.2f}" if job is not None and job.ratio else ""  # raw voxels / .nvc
                bpv = f"{job.bits_per_voxel:.3f} bpv" if job and job.bits_per_voxel is not None else ""
                progress.line(
                    f"ok   {result.source} -> {result.output}  {_mb(result.input_bytes)} -> "
                    f"{_mb(result.output_bytes)} {ratio} {bpv} [{result.verified}] {result.seconds:.1f}s"
                )
            else:
                progress.line(f"FAIL {result.source}: {result.error}")
    finally:
        progress.close()
        client.close()
        for item in items:  # the zips made of DICOM folders (dicom_series_zip)
            if item.source.parent.name.startswith("nvc-remote-"):
                shutil.rmtree(item.source.parent, ignore_errors=True)

    summary = summarize(action, results, skipped, time.monotonic() - started)
    print_summary(summary, err)
    if args.json:
        print(json.dumps(summary, indent=1))
    return 1 if summary["failed"] else 0
