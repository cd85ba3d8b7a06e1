"""`nvc bench`: NVC against the classical and learned lossless codecs, on the same data, in one run.

Methodology (the one behind docs' anchor figures, /work/shared/ANCHORS.md, so numbers compare):

* bits/voxel = 8 * compressed bytes / voxels, everything counted (NVC: the whole .nvc file,
  container, embedded weights and index included);
* MB/s = MB (10^6 bytes) of raw voxels (voxels * itemsize, 2 bytes/voxel for 16-bit data) per
  second of wall time, for encode and for decode separately; data preparation (offsetting,
  transposing) is not timed; NVC codes a tiny volume once per profile before any timing (the
  process's one-time start-up, as a running worker has already paid it);
* per-slice codecs (JPEG-LS, JPEG 2000 reversible level 0, HTJ2K level 0, JPEG XL lossless
  effort 7/9, all from imagecodecs) code each slice of the last NIfTI axis on its own as a
  (rows = y, columns = x) image, values offset to unsigned (minus the volume minimum when it is
  negative);
* tomoz 0.2.0 (3-D learned codec) codes the whole volume as (slices, rows, columns) with its
  defaults; zstd -19 and xz -9 code the raw (z, y, x) bytes;
* every round trip is verified bit-exactly; a mismatch is reported and makes the command fail;
* the table's mean is the arithmetic mean of the per-volume bits/voxel;
* "best other" is, per volume, the lowest bits/voxel among the verified reference codecs of the
  run (every column but NVC's); an NVC profile's ratio to it is nvc / best-other per volume, and
  for the corpus the mean of NVC's bits/voxel over the mean of the per-volume best (the figure
  the ratio targets are stated in), with the largest per-volume ratio beside it.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

DEFAULT_CODECS = ("jpegls", "j2k", "htj2k", "jxl_e7", "jxl_e9", "tomoz")
ALL_CODECS = ("jpegls", "j2k", "htj2k", "jxl_e7", "jxl_e9", "tomoz", "zstd19", "xz9")


@dataclass
class Result:
    codec: str
    nbytes: int
    encode_s: float
    decode_s: float
    verified: bool
    error: str | None = None
    extra: dict | None = None

    def as_dict(self, voxels: int, raw_bytes: int) -> dict:
        d = {
            "bytes": self.nbytes,
            "bits_per_voxel": 8 * self.nbytes / voxels if self.nbytes else None,
            "encode_s": self.encode_s,
            "decode_s": self.decode_s,
            "encode_MBps": raw_bytes / 1e6 / self.encode_s if self.encode_s else None,
            "decode_MBps": raw_bytes / 1e6 / self.decode_s if self.decode_s else None,
            "verified": self.verified,
        }
        if self.error:
            d["error"] = self.error
        if self.extra:
            d.update(self.extra)
        return d


# --------------------------------------------------------------------------- reference codecs


def unsigned_slices(array: np.ndarray) -> list[np.ndarray]:
    """Each slice of the last axis as a C-contiguous (y, x) unsigned image (offset when negative)."""
    lo, hi = int(array.min()), int(array.max())
    offset = lo if lo < 0 else 0
    if hi - offset > 65535:  # wide dtype with a 16-bit span: shift to zero
        offset = lo
    out_dtype = np.uint8 if array.dtype.itemsize == 1 and hi - offset <= 255 else np.uint16
    zyx = array.transpose(2, 1, 0)
    slices = []
    for k in range(zyx.shape[0]):
        s = zyx[k].astype(np.int64) - offset if offset else zyx[k]
        slices.append(np.ascontiguousarray(s, dtype=out_dtype))
    return slices


def _per_slice(encode: Callable, decode: Callable):
    def run(array: np.ndarray, name: str) -> Result:
        slices = unsigned_slices(array)
        t0 = time.perf_counter()
        coded = [encode(s) for s in slices]
        t1 = time.perf_counter()
        decoded = [decode(c) for c in coded]
        t2 = time.perf_counter()
        ok = all(d.dtype == s.dtype and np.array_equal(np.asarray(d).reshape(s.shape), s) and d.shape == s.shape
                 for d, s in zip(decoded, slices))
        return Result(name, sum(len(c) for c in coded), t1 - t0, t2 - t1, ok, None if ok else "round trip differs")

    return run


def _whole(encode: Callable, decode: Callable):
    def run(array: np.ndarray, name: str) -> Result:
        zyx = np.ascontiguousarray(array.transpose(2, 1, 0))
        raw = zyx.tobytes()
        t0 = time.perf_counter()
        coded = encode(raw)
        t1 = time.perf_counter()
        back = decode(coded)
        t2 = time.perf_counter()
        ok = bytes(back) == raw
        return Result(name, len(coded), t1 - t0, t2 - t1, ok, None if ok else "round trip differs")

    return run


def _tomoz(array: np.ndarray, name: str) -> Result:
    import tomoz

    if array.dtype.name not in ("uint8", "int8", "uint16", "int16"):
        return Result(name, 0, 0.0, 0.0, False, f"tomoz does not take {array.dtype}")
    zyx = np.ascontiguousarray(array.transpose(2, 1, 0), dtype=array.dtype.newbyteorder("="))
    t0 = time.perf_counter()
    coded = tomoz.encode(zyx)
    t1 = time.perf_counter()
    back = tomoz.decode(coded)
    t2 = time.perf_counter()
    ok = back.dtype == zyx.dtype and np.array_equal(back, zyx)
    return Result(name, len(coded), t1 - t0, t2 - t1, ok, None if ok else "round trip differs")


def reference_codec(name: str) -> Callable[[np.ndarray, str], Result]:
    """The runner for a reference codec name (see ALL_CODECS)."""
    if name == "tomoz":
        return _tomoz
    if name in ("zstd19", "xz9"):
        if name == "zstd19":
            import imagecodecs

            return _whole(lambda b: imagecodecs.zstd_encode(b, level=19), imagecodecs.zstd_decode)
        import lzma

        return _whole(lambda b: lzma.compress(b, preset=9), lzma.decompress)
    import imagecodecs

    table = {
        "jpegls": (imagecodecs.jpegls_encode, imagecodecs.jpegls_decode),
        "j2k": (lambda s: imagecodecs.jpeg2k_encode(s, level=0, reversible=True), imagecodecs.jpeg2k_decode),
        "htj2k": (lambda s: imagecodecs.htj2k_encode(s, level=0), imagecodecs.htj2k_decode),
        "jxl_e7": (lambda s: imagecodecs.jpegxl_encode(s, lossless=True, effort=7), imagecodecs.jpegxl_decode),
        "jxl_e9": (lambda s: imagecodecs.jpegxl_encode(s, lossless=True, effort=9), imagecodecs.jpegxl_decode),
    }
    if name not in table:
        raise KeyError(name)
    return _per_slice(*table[name])


def warm_up(profiles: list[str]) -> None:
    """Code a tiny volume once per profile before timing anything: the first encode of a
    process pays one-time start-up (loading the model, torch's optimizer machinery, about
    1.2 s here) that a long-running worker pays once, not per volume."""
    import codec

    rng = np.random.default_rng(0)
    tiny = rng.integers(0, 1000, (48, 48, 6)).astype(np.uint16)
    for profile in profiles:
        codec.decode(codec.encode(tiny, profile=profile))


def run_nvc(array: np.ndarray, profile: str, spacing=None) -> Result:
    import codec

    t0 = time.perf_counter()
    data = codec.encode(array, spacing=spacing, profile=profile)
    t1 = time.perf_counter()
    back = codec.decode(data)
    t2 = time.perf_counter()
    ok = back.dtype == array.dtype and np.array_equal(back, array)
    d = codec.info(data)
    extra = {
        "model_bytes": d["model_bytes"],
        "fine_tuned": any(m.get("fine_tuned") for m in d["models"]),
        "slabs": d["slab_count"],
    }
    return Result(f"nvc_{profile}", len(data), t1 - t0, t2 - t1, ok, None if ok else "round trip differs", extra)


# --------------------------------------------------------------------------- driver


def _volume_name(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".nii", ".npy"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _git_commit() -> str | None:
    """The checkout's commit (with '+dirty' when the codec has local changes), so results name their code."""
    import subprocess

    repo = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "codec"], cwd=repo, capture_output=True, text=True,
                               timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if head.returncode != 0:
        return None
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def environment() -> dict:
    import importlib.metadata as md

    versions = {}
    for pkg in ("nvc", "torch", "numpy", "imagecodecs", "tomoz", "constriction"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = None
    try:
        import torch

        threads = torch.get_num_threads()
        cuda = torch.cuda.is_available()
    except ImportError:  # pragma: no cover
        threads, cuda = None, False
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": threads,
        "cuda": cuda,
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "git_commit": _git_commit(),
        "versions": versions,
    }


def centre_crop(array: np.ndarray, size: tuple[int, ...] | None) -> np.ndarray:
    """The centred sub-volume of at most `size` voxels per axis (the whole array when None)."""
    if size is None:
        return array
    box = tuple(slice((n - min(n, s)) // 2, (n - min(n, s)) // 2 + min(n, s)) for n, s in zip(array.shape, size))
    return np.ascontiguousarray(array[box])


def run_benchmark(
    paths: list[Path],
    profiles: list[str],
    codecs: list[str],
    log: Callable[[str], None] | None = None,
    crop: tuple[int, ...] | None = None,
) -> dict:
    """Bench every file with every NVC profile and reference codec; returns the JSON-able report."""
    from codec.files import read_volume

    runners = {c: reference_codec(c) for c in codecs}
    columns = [f"nvc_{p}" for p in profiles] + list(codecs)
    env = environment()  # at the start: the date and load average the speeds were measured under
    warm_up(profiles)
    volumes = []
    for path in paths:
        vf = read_volume(path)
        array = vf.array
        if array.ndim == 2:
            array = array[:, :, None]
        if array.ndim != 3:
            raise ValueError(f"{path}: bench takes 2-D or 3-D volumes, got shape {array.shape}")
        array = centre_crop(array, crop)
        voxels, raw_bytes = array.size, array.size * array.dtype.itemsize
        entry = {
            "name": _volume_name(path),
            "file": str(path),
            "shape": list(array.shape),
            "dtype": array.dtype.name,
            "voxels": voxels,
            "raw_bytes": raw_bytes,
            "value_range": [int(array.min()), int(array.max())],
            "results": {},
        }
        for col in columns:
            if col.startswith("nvc_") and col[4:] in profiles:
                res = run_nvc(array, col[4:], vf.spacing)
            else:
                res = runners[col](array, col)
            entry["results"][col] = res.as_dict(voxels, raw_bytes)
            if log:
                r = entry["results"][col]
                status = "ok" if res.verified else f"FAILED: {res.error}"
                bpv = f"{r['bits_per_voxel']:.3f} bpv" if r["bits_per_voxel"] else "-"
                enc = f"{r['encode_MBps']:.2f}" if r["encode_MBps"] else "-"
                dec = f"{r['decode_MBps']:.2f}" if r["decode_MBps"] else "-"
                log(f"{entry['name']}: {col} {bpv} (encode {enc} MB/s, decode {dec} MB/s) {status}")
        volumes.append(entry)
    mean = {}
    for col in columns:
        vals = [v["results"][col]["bits_per_voxel"] for v in volumes if v["results"][col]["verified"]]
        mean[col] = sum(vals) / len(vals) if len(vals) == len(volumes) and vals else None
    nvc_columns = [f"nvc_{p}" for p in profiles]
    for entry in volumes:
        entry.update(best_other(entry, nvc_columns))
    return {
        "methodology": __doc__.split("Methodology", 1)[1].strip(),
        "environment": {**env, "finished": time.strftime("%Y-%m-%d %H:%M:%S %z"),
                        "load_average_end": list(os.getloadavg()) if hasattr(os, "getloadavg") else None},
        "columns": columns,
        "volumes": volumes,
        "mean_bits_per_voxel": mean,
        **versus_best_other(volumes, nvc_columns),
        "crop": list(crop) if crop else None,
        "all_verified": all(r["verified"] for v in volumes for r in v["results"].values()),
    }


def best_other(entry: dict, nvc_columns: list[str]) -> dict:
    """The volume's best reference codec (lowest verified bits/voxel outside NVC) and each NVC
    profile's ratio to it; None where there is no verified reference codec or NVC run."""
    others = [(r["bits_per_voxel"], c) for c, r in entry["results"].items()
              if c not in nvc_columns and r["verified"] and r["bits_per_voxel"]]
    best = min(others) if others else None
    ratios = {}
    for col in nvc_columns:
        r = entry["results"].get(col)
        ratios[col] = r["bits_per_voxel"] / best[0] if best and r and r["verified"] and r["bits_per_voxel"] else None
    return {
        "best_other": {"codec": best[1], "bits_per_voxel": best[0]} if best else None,
        "ratio_to_best_other": ratios,
    }


def versus_best_other(volumes: list[dict], nvc_columns: list[str]) -> dict:
    """Corpus figures against the per-volume best other codec: its mean, and per NVC profile the
    ratio of means and the largest per-volume ratio (None unless every volume has both)."""
    bests = [v["best_other"]["bits_per_voxel"] for v in volumes if v.get("best_other")]
    best_mean = sum(bests) / len(bests) if bests and len(bests) == len(volumes) else None
    mean_ratio, max_ratio = {}, {}
    for col in nvc_columns:
        ratios = [v["ratio_to_best_other"][col] for v in volumes]
        ok = best_mean is not None and all(r is not None for r in ratios)
        nvc_mean = sum(v["results"][col]["bits_per_voxel"] for v in volumes) / len(volumes) if ok else None
        mean_ratio[col] = nvc_mean / best_mean if ok else None
        max_ratio[col] = max(ratios) if ok else None
    return {
        "best_other_mean_bits_per_voxel": best_mean,
        "ratio_to_best_other_mean": mean_ratio,
        "ratio_to_best_other_max": max_ratio,
    }


def markdown(report: dict) -> str:
    """The table: bits/voxel (encode/decode MB/s) per volume and codec, the mean, the best codec."""
    cols = report["columns"]
    nvc_cols = [c for c in cols if c.startswith("nvc_")]
    vs_best = "best_other_mean_bits_per_voxel" in report and len(nvc_cols) < len(cols)
    extra = (["best other"] + [f"{c} / best other" for c in nvc_cols]) if vs_best else []
    lines = [
        "| volume | shape | " + " | ".join(cols + ["best"] + extra) + " |",
        "|---|---|" + "---|" * (len(cols) + 1 + len(extra)),
    ]
    for v in report["volumes"]:
        cells = []
        best, best_bpv = None, None
        for c in cols:
            r = v["results"][c]
            if not r["verified"]:
                cells.append(f"FAILED ({r.get('error', '')})")
                continue
            cells.append(f"{r['bits_per_voxel']:.3f} (e{r['encode_MBps']:.1f}/d{r['decode_MBps']:.1f} MB/s)")
            if best_bpv is None or r["bits_per_voxel"] < best_bpv:
                best, best_bpv = c, r["bits_per_voxel"]
        cells.append(str(best))
        if vs_best:
            other = v.get("best_other")
            cells.append(f"{other['codec']} {other['bits_per_voxel']:.3f}" if other else "-")
            cells += [_ratio(v["ratio_to_best_other"].get(c)) for c in nvc_cols]
        lines.append(f"| {v['name']} | ({','.join(map(str, v['shape']))}) | " + " | ".join(cells) + " |")
    means = report["mean_bits_per_voxel"]
    mean_cells = [f"**{means[c]:.3f}**" if means[c] is not None else "-" for c in cols] + [""]
    if vs_best:
        best_mean = report["best_other_mean_bits_per_voxel"]
        mean_cells.append(f"**{best_mean:.3f}**" if best_mean is not None else "-")
        for c in nvc_cols:
            r, worst = report["ratio_to_best_other_mean"].get(c), report["ratio_to_best_other_max"].get(c)
            mean_cells.append(f"**{_ratio(r)}** (max {_ratio(worst)})" if r is not None else "-")
    lines.append(f"| **mean** | {len(report['volumes'])} vols | " + " | ".join(mean_cells) + " |")
    env = report["environment"]
    crop = report.get("crop")
    where = f" on the centred {'x'.join(map(str, crop))} sub-volume of each volume" if crop else ""
    head = (
        f"Bits per voxel (lower is better){where}, every round trip verified bit-exactly; in brackets encode/decode speed in "
        f"MB/s of raw voxels. Measured {env['date']} on {env['platform']}, {env['cpu_count']} CPUs "
        f"(torch threads {env['torch_threads']}, CUDA {env['cuda']}, load average at start "
        f"{', '.join(f'{x:.1f}' for x in env.get('load_average') or [])}"
        + (f", at the end {', '.join(f'{x:.1f}' for x in env['load_average_end'])}" if env.get("load_average_end") else "")
        + f"); versions {env['versions']}.\n\n"
    )
    return head + "\n".join(lines) + "\n"


def _ratio(r: float | None) -> str:
    return f"{r:.3f}x" if r is not None else "-"


def main(args) -> int:
    """Entry point of `nvc bench` (arguments parsed by nvc/commands/codec_cmds.py)."""
    from nvc.cli import CLIError

    paths = [Path(f) for f in args.files]
    for p in paths:
        if not p.is_file():
            raise FileNotFoundError(f"{p}: no such file")
    profiles = [p for p in args.profiles.split(",") if p] if args.profiles not in (None, "", "none") else []
    if args.codecs is None:
        codecs = list(DEFAULT_CODECS)
    elif args.codecs in ("", "none"):
        codecs = []
    else:
        codecs = [c for c in args.codecs.split(",") if c]
    unknown = [c for c in codecs if c not in ALL_CODECS]
    if unknown:
        raise CLIError(f"unknown codec(s) {', '.join(unknown)}: choose from {', '.join(ALL_CODECS)}")
    if profiles:
        from codec.profiles import get_profile

        for name in profiles:
            get_profile(name)  # UnsupportedInputError: "unknown profile ...; choose one of ..."
    if not profiles and not codecs:
        raise CLIError("nothing to bench: give --profiles and/or --codecs")
    log = None if args.quiet else (lambda line: print(line, file=sys.stderr, flush=True))
    crop = None
    if getattr(args, "crop", None):
        try:
            crop = tuple(int(v) for v in args.crop.split(","))
        except ValueError:
            crop = ()
        if len(crop) != 3 or min(crop) < 1:
            raise CLIError(f"--crop wants three positive sizes X,Y,Z, got {args.crop!r}")
    report = run_benchmark(paths, profiles, codecs, log, crop)
    table = markdown(report)
    print(table)
    if args.json_out:
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_out).write_text(json.dumps(report, indent=2) + "\n")
    if args.md_out:
        Path(args.md_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.md_out).write_text(table)
    if getattr(args, "plot_out", None):
        from nvc.bench_plot import plot

        plot(report, args.plot_out)
    if not report["all_verified"]:
        raise CLIError("a round trip was not bit-exact (see the table)")
    return 0
