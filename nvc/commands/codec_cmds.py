"""`nvc compress`, `nvc decompress`, `nvc info`, `nvc slice`, `nvc bench`: the codec on the command line.

Conventions follow zstd: `-` is stdin/stdout; `compress IN` writes `IN.nvc`, `decompress IN.nvc`
writes IN without `.nvc`; an existing output is only replaced with `-f`. Progress bars go to
stderr and only when it is a terminal (never with `-q`). Errors end the command with one line
on stderr and a non-zero status (see nvc/cli.py). Heavy imports (numpy, torch) happen inside
the handlers so `nvc --help` stays instant.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import contextmanager
from pathlib import Path

#: Where `nvc train` finds volumes by default: the shared corpus next to the repository.
DEFAULT_TRAINING_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "compress",
        help="compress a .nii/.nii.gz/.npy volume or a DICOM folder/zip/tar to .nvc",
        description="Compress a NIfTI (.nii, .nii.gz) or .npy volume losslessly to .nvc. "
        "IN may be '-' (stdin; the format is detected from its bytes). A folder, a .zip or .tar, or a DICOM "
        "file becomes one DICOM archive: every series' pixels coded, every file restorable byte for byte.",
    )
    p.add_argument("input", metavar="IN", help="input file or DICOM folder, or - for stdin")
    p.add_argument("-o", "--output", metavar="OUT", help="output file (default: IN.nvc, DIR.nvc for a folder, "
                   "x.nvc for x.zip; stdout when IN is -); - for stdout")
    p.add_argument("--profile", default="default", help="coding profile (default: %(default)s)")
    _common(p)
    p.set_defaults(handler=cmd_compress)

    p = subparsers.add_parser(
        "decompress",
        help="decompress a .nvc file to .nii/.nii.gz/.npy (a DICOM archive to a folder)",
        description="Decompress an .nvc file. The output format follows OUT's extension (.nii.gz, .nii, .npy), "
        "or --format; NIfTI input is restored with its original header. A DICOM archive is restored into the "
        "folder OUT, every file byte for byte under its original name (or exported with --transfer-syntax).",
    )
    p.add_argument("input", metavar="IN", help=".nvc file, or - for stdin")
    p.add_argument("-o", "--output", metavar="OUT", help="output file or folder (default: IN without .nvc; stdout when IN "
                   "is -); - for stdout")
    p.add_argument("--format", choices=["nii.gz", "nii", "npy"], help="output format (default: from OUT's extension; "
                   "for stdout: nii when the file came from NIfTI, else npy)")
    p.add_argument("--transfer-syntax", choices=["jpegls", "jpeg2000", "htj2k", "explicit-little"],
                   help="DICOM archives: write the coded series as standard DICOM in this lossless transfer syntax "
                   "(same pixels; headers re-encoded) instead of the original bytes")
    _common(p)
    p.set_defaults(handler=cmd_decompress)

    p = subparsers.add_parser("info", help="describe a .nvc file", description="Describe an .nvc file without decoding it.")
    p.add_argument("input", metavar="FILE", help=".nvc file, or - for stdin")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(handler=cmd_info)

    p = subparsers.add_parser(
        "bench",
        help="compare NVC with JPEG-LS, JPEG 2000, HTJ2K, JPEG XL and tomoz",
        description="Code each volume with NVC (each profile) and the reference codecs, verify every round trip "
        "bit-exactly, and report bits/voxel and encode/decode MB/s (MB of raw voxels), the best other codec per "
        "volume and NVC's ratio to it.",
    )
    p.add_argument("files", nargs="+", metavar="FILE", help=".nii/.nii.gz/.npy volumes")
    p.add_argument("--profiles", default="default", help="comma-separated NVC profiles (default: %(default)s)")
    p.add_argument("--codecs", default=None, help="comma-separated reference codecs (default: jpegls,j2k,htj2k,jxl_e7,"
                   "jxl_e9,tomoz; also zstd19, xz9; 'none' for NVC only)")
    p.add_argument("--json", dest="json_out", metavar="OUT", help="write the results as JSON")
    p.add_argument("--md", dest="md_out", metavar="OUT", help="write the table as Markdown")
    p.add_argument("--plot", dest="plot_out", metavar="OUT.png",
                   help="write a chart: bits/voxel per volume for every codec, and encode/decode speeds (matplotlib)")
    p.add_argument("--crop", metavar="X,Y,Z", default=None,
                   help="bench every codec on the centred sub-volume of this size (NIfTI axis order): "
                   "for slow profiles such as `paper` on the CPU")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    p.set_defaults(handler=cmd_bench)

    p = subparsers.add_parser(
        "slice",
        help="render one slice of a .nvc file as PNG (or save it as .npy)",
        description="Decode only the slab holding slice Z (the last axis of a 3-D volume) and write it as an 8-bit "
        "PNG with a window (--window PRESET, or --center and --width in the volume's units, Hounsfield for CT), "
        "or with --npy the exact stored values as .npy. The rendering is specified in codec/render.py.",
    )
    p.add_argument("input", metavar="FILE", help=".nvc file")
    p.add_argument("z", metavar="Z", type=int, help="slice index, 0-based (negative counts from the end)")
    p.add_argument("-o", "--output", metavar="OUT", help="output file (default: FILE without .nvc + _zZ.png/.npy)")
    p.add_argument("--window", default=None, help="window preset: auto (percentiles; MR), lung, soft_tissue, bone, brain "
                   "(default: auto)")
    p.add_argument("--center", type=float, default=None, help="window center (with --width)")
    p.add_argument("--width", type=float, default=None, help="window width (with --center)")
    p.add_argument("--intercept", type=float, default=None,
                   help="physical value = stored * slope + INTERCEPT (default: the file's NIfTI scaling)")
    p.add_argument("--slope", type=float, default=None, help="rescale slope (default: the file's NIfTI scaling, else 1)")
    p.add_argument("--volume", type=int, default=0, help="volume of a 4-D series (default: 0)")
    p.add_argument("--npy", action="store_true", help="write the raw slice as .npy (x, y; exact dtype) instead of PNG")
    _common(p)
    p.set_defaults(handler=cmd_slice)

    p = subparsers.add_parser(
        "train", help="train and ship the coding models (or measure them leave-one-out)",
        description="Train a profile's model on a folder of volumes with fixed seeds and ship it into codec/models "
        "(reproducible: the quantised network's hash names it), or with --leave-one-out train without each volume in "
        "turn and code it with the real encoder.",
    )
    p.add_argument("--data", type=Path, default=DEFAULT_TRAINING_DATA,
                   help="folder of training volumes (.nii, .nii.gz; default: %(default)s)")
    p.add_argument("--profile", default="default", help="coding profile (default: %(default)s)")
    p.add_argument("--steps", type=int, default=6000, help="optimiser steps (default: %(default)s)")
    p.add_argument("--samples-per-volume", type=int, default=300_000, help="voxels sampled per volume")
    p.add_argument("--seed", type=int, default=20201025)
    p.add_argument("--leave-one-out", action="store_true",
                   help="do not ship: train without each volume in turn and code it; prints bits/voxel")
    p.add_argument("--json", type=Path, help="with --leave-one-out: write the rows here")
    p.set_defaults(handler=cmd_train)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--force", action="store_true", help="overwrite an existing output file")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar and no summary line")


# --------------------------------------------------------------------------- helpers


@contextmanager
def progress_bar(quiet: bool, label: str):
    """A tqdm bar on stderr fed with fractions; None when quiet or stderr is not a terminal."""
    if quiet or not sys.stderr.isatty():
        yield None
        return
    from tqdm import tqdm

    bar = tqdm(total=1000, desc=label, file=sys.stderr, leave=False, bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}<{remaining}")

    def update(fraction: float) -> None:
        target = int(1000 * min(max(fraction, 0.0), 1.0))
        if target > bar.n:
            bar.update(target - bar.n)

    try:
        yield update
    finally:
        bar.close()


def _read_input(name: str) -> bytes:
    if name == "-":
        return sys.stdin.buffer.read()
    path = Path(name)
    if path.is_dir():
        raise IsADirectoryError(f"{name} is a directory")
    return path.read_bytes()


def _check_output(out: Path, force: bool, src: str) -> None:
    from nvc.cli import CLIError

    if src != "-" and out.resolve() == Path(src).resolve():
        raise CLIError(f"output {out} would overwrite the input")
    if out.exists() and not force:
        raise CLIError(f"{out} already exists (use -f to overwrite)")


def _write_output(name: str, data: bytes) -> None:
    if name == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    else:
        from codec.files import write_bytes

        write_bytes(name, data)


def summary_line(src: str, dst: str, size_in: int, size_out: int, nvc_info: dict, seconds: float) -> str:
    """The one line printed on stderr after compress/decompress (zstd-style).

    `ratio` is always raw voxel bytes / .nvc bytes (what `nvc info` reports), whichever way the
    data went; the file sizes are shown as they are."""
    name_in = "stdin" if src == "-" else src
    name_out = "stdout" if dst == "-" else dst
    return (f"{name_in} -> {name_out}: {_human_bytes(size_in)} -> {_human_bytes(size_out)}, "
            f"ratio {nvc_info['compression_ratio']:.2f} (raw voxels {_human_bytes(nvc_info['raw_bytes'])} / .nvc), "
            f"{nvc_info['bits_per_voxel']:.3f} bits/voxel, {seconds:.2f} s")


# --------------------------------------------------------------------------- handlers


def _is_dicom_input(name: str) -> bool:
    """A folder, a zip/tar, or a file with the DICOM preamble goes to the DICOM archive."""
    path = Path(name)
    if path.is_dir():
        return True
    if not path.is_file():
        return False
    with open(path, "rb") as f:
        head = f.read(512)
    from codec.dicom_inputs import ZIP_EMPTY_MAGIC, ZIP_MAGIC, looks_like_tar

    if head[:4] in (ZIP_MAGIC, ZIP_EMPTY_MAGIC) or head[128:132] == b"DICM":
        return True
    return len(head) >= 263 and looks_like_tar(head)


def _say(args, text: str) -> None:
    if not getattr(args, "quiet", False):
        print(text, file=sys.stderr)


def cmd_compress_dicom(args) -> int:
    from codec import dicom
    from codec.dicom_inputs import gather
    from nvc.cli import CLIError

    out = args.output or str(dicom.default_archive_name(Path(args.input)))
    if out != "-":
        _check_output(Path(out), args.force, args.input)
    elif sys.stdout.isatty():
        raise CLIError("refusing to write compressed data to a terminal (use -o FILE)")
    files = gather(args.input)
    with progress_bar(args.quiet, "compress") as progress:
        data = dicom.compress_files(files, profile=args.profile, progress=progress)
    n_in = sum(len(f.data) for f in files)
    del files
    _write_output(out, data)
    d = dicom.archive_info(data)
    _say(args, f"{args.input}: {d['files']} files, {len(d['series'])} series; {d['instances_coded']} instances coded "
               f"in {d['volumes']} volumes, {d['files_verbatim']} files stored verbatim; {n_in} -> {len(data)} bytes "
               f"(files / .nvc: {n_in / len(data):.3f})")  # not "ratio": that is raw voxels / .nvc
    return 0


def cmd_compress(args) -> int:
    from codec.files import compress_bytes
    from codec.naming import compressed_name
    from nvc.cli import CLIError

    if args.input != "-" and _is_dicom_input(args.input):
        return cmd_compress_dicom(args)
    out = args.output
    if out is None:
        out = "-" if args.input == "-" else str(Path(args.input).with_name(compressed_name(args.input)))
    if out != "-":
        _check_output(Path(out), args.force, args.input)
    elif sys.stdout.isatty():
        raise CLIError("refusing to write compressed data to a terminal (use -o FILE)")
    start = time.perf_counter()
    data = _read_input(args.input)
    if data[:4] == b"PK\x03\x04" or data[128:132] == b"DICM":  # a zip or a DICOM file on stdin
        from codec import dicom
        from codec.dicom_inputs import from_bytes

        with progress_bar(args.quiet, "compress") as progress:
            nvc = dicom.compress_files(from_bytes(data, "stdin.dcm"), profile=args.profile, progress=progress)
        _write_output(out, nvc)
        return 0
    size_in = len(data)
    with progress_bar(args.quiet, "compress") as progress:
        nvc = compress_bytes(data, profile=args.profile, progress=progress)
    del data
    _write_output(out, nvc)
    if not args.quiet:
        from codec.api import info

        print(summary_line(args.input, out, size_in, len(nvc), info(nvc), time.perf_counter() - start), file=sys.stderr)
    return 0


def cmd_decompress(args) -> int:
    import io

    from codec.api import info
    from codec.files import decompress_to_bytes, default_output, output_format
    from nvc.cli import CLIError

    start = time.perf_counter()
    if args.input == "-":
        source = io.BytesIO(sys.stdin.buffer.read())
    else:
        if Path(args.input).is_dir():
            raise IsADirectoryError(f"{args.input} is a directory")
        source = open(args.input, "rb")
    try:
        from codec import format as fmt
        from codec.dicom_archive import is_archive

        if is_archive(source.read(fmt.PREAMBLE.size)):
            source.seek(0)
            return cmd_decompress_dicom(args, source)
        source.seek(0)
        if args.transfer_syntax:
            raise CLIError("--transfer-syntax applies to DICOM archives only; this file holds one volume")
        container, _ = fmt.parse(source)  # fail fast, before any output decision or decoding
        out = args.output
        if out is None:
            out = "-" if args.input == "-" else str(default_output(Path(args.input), container.source_kind))
        if out != "-":
            _check_output(Path(out), args.force, args.input)
        elif sys.stdout.isatty():
            raise CLIError("refusing to write volume data to a terminal (use -o FILE)")
        from_nifti = container.source_kind in ("nifti1", "nifti2")
        fmt_name = args.format or (output_format(out) if out != "-" else ("nii" if from_nifti else "npy"))
        source.seek(0)
        with progress_bar(args.quiet, "decompress") as progress:
            # the codec's own serialiser: headers, .npy headers and trailing bytes come back as stored
            data, _ = decompress_to_bytes(source, fmt_name, progress=progress)
        size_in = source.seek(0, io.SEEK_END)
        source.seek(0)
        meta = None if args.quiet else info(source)
    finally:
        source.close()
    _write_output(out, data)
    if meta is not None:
        print(summary_line(args.input, out, size_in, len(data), meta, time.perf_counter() - start), file=sys.stderr)
    return 0


def cmd_decompress_dicom(args, source) -> int:
    from codec import dicom
    from nvc.cli import CLIError

    if args.format:
        raise CLIError("--format does not apply to a DICOM archive: it restores the original files (see --transfer-syntax)")
    out = args.output
    if out is None:
        if args.input == "-":
            raise CLIError("a DICOM archive restores to a folder: give -o DIR")
        name = Path(args.input).name
        out = str(Path(args.input).with_name(name[: -len(".nvc")] if name.lower().endswith(".nvc") and len(name) > 4
                                             else name + ".out"))
    if out == "-":
        raise CLIError("a DICOM archive restores to a folder, not to stdout: give -o DIR")
    if Path(out).exists() and not Path(out).is_dir():
        raise CLIError(f"{out} exists and is not a folder")
    with progress_bar(args.quiet, "decompress") as progress:
        report = dicom.decompress_dicom(source, out, overwrite=args.force, transfer_syntax=args.transfer_syntax,
                                        progress=progress)
    for problem in report.problems:
        print(f"nvc: warning: {problem}", file=sys.stderr)
    for name, reason in sorted(report.failed.items()):
        print(f"nvc: cannot restore {name}: {reason}", file=sys.stderr)
    how = f"exported as {args.transfer_syntax}" if args.transfer_syntax else "byte-identical (SHA-256 checked)"
    _say(args, f"{out}: {len(report.restored)} files restored, {how}" + (f"; {len(report.failed)} failed" if report.failed else ""))
    return 1 if report.failed else 0


def format_dicom_info(d: dict) -> str:
    """The human table printed by `nvc info` for a DICOM archive."""
    lines = [
        f"format         nvc version {d['format_version']} (DICOM archive)",
        f"files          {d['files']}: {d['instances_coded']} instances coded in {d['volumes']} volumes, "
        f"{d['files_verbatim']} stored verbatim ({d['dicom_verbatim']} DICOM)",
        f"size           {_human_bytes(d['file_bytes'])} ({d['file_bytes']} B) of {_human_bytes(d['input_bytes'])} input, "
        f"ratio {d['compression_ratio']:.3f}",
        f"  volumes      {d['volume_bytes']} B ({d['voxels']} voxels)",
        f"  headers      {d['header_bytes']} B",
        f"  verbatim     {d['verbatim_bytes']} B",
        f"  index        {d['index_bytes']} B",
        "series:",
    ]
    for s in d["series"]:
        dims = ", ".join(f"{v['shape'][0]}x{v['shape'][1]}x{v['shape'][2]} {v['dtype']}" for v in s["volumes"]) or "-"
        desc = f" \"{s['description']}\"" if s["description"] else ""
        lines.append(f"  {s['modality'] or '-':<4} {s['series_uid'] or '(no SeriesInstanceUID)'}{desc}")
        lines.append(f"       {s['instances']} instances ({s['coded']} coded, {s['verbatim']} verbatim); volumes: {dims}")
    if d["verbatim_reasons"]:
        lines.append("stored verbatim:")
        for reason, n in sorted(d["verbatim_reasons"].items(), key=lambda kv: -kv[1]):
            lines.append(f"  {n:>5}  {reason}")
    for p in d["problems"]:
        lines.append(f"problem: {p}")
    return "\n".join(lines)


def _human_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return str(n)


def format_info(d: dict) -> str:
    """The human table printed by `nvc info`."""
    models = d["models"]
    if models:
        model_txt = "; ".join(
            f"{m.get('model_id', '?')}{' fine-tuned' if m.get('fine_tuned') else ''} ({m['bytes']} B)" for m in models
        )
    else:
        model_txt = "none (constant volume)"
    rows = [
        ("format", f"nvc version {d['format_version']}"),
        ("dtype", d["dtype"] + (" (big-endian)" if d["byte_order"] == "big" else "")),
        ("shape", " x ".join(str(n) for n in d["shape"]) + f"  ({d['voxels']} voxels, {d['volumes']} volume(s))"),
        ("spacing", " x ".join(f"{s:g}" for s in d["spacing"]) if d["spacing"] else "-"),
        ("value range", f"{d['value_range'][0]} .. {d['value_range'][1]}"),
        ("profile", str(d["profile"] or "-")),
        ("model", model_txt),
        ("slabs", f"{d['slab_count']} (slices per slab: " + ", ".join(sorted({str(s[1] - s[0]) for v in d['slabs'] for s in v})) + ")"
         if d["slab_count"] else "0"),
        ("source header", f"{d['source_header']} ({d['source_header_bytes']} B)" if d["source_header"] else "-"),
        ("metadata", f"{d['metadata_bytes']} B"),
        ("size", f"{_human_bytes(d['file_bytes'])} ({d['file_bytes']} B) of {_human_bytes(d['raw_bytes'])} raw, "
                 f"ratio {d['compression_ratio']:.3f}"),
        ("  payload", f"{d['payload_bytes']} B"),
        ("  models", f"{d['model_bytes']} B"),
        ("  headers, index", f"{d['overhead_bytes']} B"),
        ("bits/voxel", f"{d['bits_per_voxel']:.4f}"),
        ("sha256", d["sha256"]),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def cmd_info(args) -> int:
    import io

    from codec.api import info

    from codec import format as fmt
    from codec.dicom_archive import is_archive

    if args.input == "-":
        source = io.BytesIO(sys.stdin.buffer.read())
    else:
        if Path(args.input).is_dir():
            raise IsADirectoryError(f"{args.input} is a directory")
        source = open(args.input, "rb")
    with source:
        if is_archive(source.read(fmt.PREAMBLE.size)):
            from codec.dicom import archive_info

            source.seek(0)
            d = archive_info(source)
            text = format_dicom_info
        else:
            source.seek(0)
            d = info(source)
            text = format_info
    if args.json:
        print(json.dumps(d, indent=2))
    else:
        print(text(d))
    return 0


def cmd_slice(args) -> int:
    from codec import render
    from codec.api import info, read
    from nvc.cli import CLIError

    if Path(args.input).is_dir():
        raise IsADirectoryError(f"{args.input} is a directory")
    with open(args.input, "rb") as f:  # read in place: only the header, index and one slab
        d = info(f)
        try:
            z, t = render.slice_index(d["shape"], args.z, args.volume)
        except ValueError as exc:
            raise CLIError(str(exc)) from None
        out = args.output
        if out is None:
            stem = args.input[: -len(".nvc")] if args.input.endswith(".nvc") else args.input
            out = f"{stem}_z{z}.{'npy' if args.npy else 'png'}"
        _check_output(Path(out), args.force, args.input)
        f.seek(0)
        dec = read(f, slices=(z, z + 1))
    slice_xy = render.first_slice(dec.array, t)
    if args.npy:
        payload = render.npy_bytes(slice_xy)
        note = f"slice {z} of {d['shape'][2] if len(d['shape']) > 2 else 1} as .npy ({slice_xy.dtype})"
    else:
        rescale = render.rescale_of(dec.nifti_header)
        if args.slope is not None or args.intercept is not None:
            rescale = render.Rescale(args.slope if args.slope is not None else rescale.slope,
                                     args.intercept if args.intercept is not None else rescale.intercept, True)
        try:
            window, rescale = render.choose_window(slice_xy, rescale, args.window, args.center, args.width)
        except ValueError as exc:
            raise CLIError(str(exc)) from None
        payload = render.png_bytes(render.render(slice_xy, window, rescale))
        note = (f"slice {z} as PNG, window center {window.center:g} width {window.width:g} "
                f"(value = stored * {rescale.slope:g} + {rescale.intercept:g})")
    _write_output(out, payload)
    if not args.quiet:
        print(f"{out}: {note}", file=sys.stderr)
    return 0


def cmd_bench(args) -> int:
    from nvc import bench

    return bench.main(args)


def cmd_train(args) -> int:
    from codec import train
    from codec.profiles import get_profile

    get_profile(args.profile)  # an unknown profile is one line, before torch is loaded
    return train.run(profile=args.profile, data_dir=args.data, steps=args.steps, per_volume=args.samples_per_volume,
                     seed=args.seed, leave_one_out_json=args.json, leave_one_out_only=args.leave_one_out)
