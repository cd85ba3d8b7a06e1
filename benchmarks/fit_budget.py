"""Per-volume fitting budget of the default profile: bits/voxel against encode time.

    PYTHONPATH=. python benchmarks/fit_budget.py [--data ../shared/data] [--variants old,default] [--fit-only]

Encodes every volume with each fitting variant (native core, 2 threads; each variant replaces
fields of the default profile, see VARIANTS) and prints bits/voxel (whole file: payloads +
model blob) and encode seconds, fitting included. Variants run interleaved, volume by volume,
in one process, so their timings share the machine's load.

`--fit-only` times only per-volume fitting (`engine.fit_predictor`: sampling, fitting,
quantisation, held-out estimates) and prints the estimated bits/voxel of the predictor the
encoder would choose (held-out sample, stored weights included) instead of a file's size:
seconds per variant instead of minutes; `--eval-samples N` estimates on N other voxels instead
(steadier). Used for docs/decisions/0111-native-core.md, 0113 and 0114.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import os
import time

import numpy as np

from codec import engine, profiles, registry
from codec.context import plan_slabs
from codec.train import load_engine_volume

#: the default profile's schedule before decision 0113 (random batches of 1024, lr 3e-3, 40 steps per Mvoxel),
#: run by today's step code (fused Adam, closed-form loss); the code itself is that of commit d79100b
OLD = dict(fit_steps_per_mvoxel=40.0, fit_min_steps=80, fit_max_steps=1500, fit_batch=1024, fit_lr=3e-3, fit_samples=131_072,
           fit_order="random", fit_warmup=0, fit_layer_lr=(), fit_threads=1)

VARIANTS = {
    "none": dict(fit_steps_per_mvoxel=0.0, fit_min_steps=0, fit_max_steps=0),
    "default": {},
    "old": OLD,
    "old_t2": {**OLD, "fit_threads": 2},
    "old_epochs": {**OLD, "fit_order": "epochs"},
    "old_epochs_t2": {**OLD, "fit_order": "epochs", "fit_threads": 2},
    "lr1e-3": {**OLD, "fit_lr": 1e-3},
    # the archive profile's fitting fields on the default profile (the same network and model)
    "archive": {k: getattr(profiles.PROFILES["archive"], k) for k in (
        "fit_steps_per_mvoxel", "fit_min_steps", "fit_max_steps", "fit_batch", "fit_lr", "fit_samples", "fit_order",
        "fit_warmup", "fit_layer_lr", "fit_threads")},
    "e": {**OLD, "fit_order": "epochs"},
    "w": {**OLD, "fit_order": "epochs", "fit_batch": 4096, "fit_warmup": 10, "fit_lr": 2e-2, "fit_steps_per_mvoxel": 5.0,
          "fit_min_steps": 30, "fit_max_steps": 300},
    "v": {**OLD, "fit_order": "epochs", "fit_batch": 2048, "fit_warmup": 20, "fit_lr": 1e-2, "fit_layer_lr": (0.5,),
          "fit_steps_per_mvoxel": 10.0, "fit_min_steps": 80, "fit_max_steps": 400},
    "v65": {**OLD, "fit_order": "epochs", "fit_batch": 2048, "fit_warmup": 20, "fit_lr": 1e-2, "fit_layer_lr": (0.5,),
            "fit_steps_per_mvoxel": 10.0, "fit_min_steps": 80, "fit_max_steps": 400, "fit_samples": 65536},
    "n": {**OLD, "fit_order": "epochs", "fit_batch": 2048, "fit_warmup": 20, "fit_lr": 1e-2, "fit_layer_lr": (0.5,),
          "fit_steps_per_mvoxel": 7.0, "fit_min_steps": 80, "fit_max_steps": 250, "fit_samples": 65536},  # epochs order, fused Adam: add fields inline (see _variant)
}


def _variant(name: str) -> dict:
    """A named variant, or inline fields: `name:field=value;field=value` on top of `name`."""
    base, _, extra = name.partition(":")
    fields = dict(VARIANTS[base])
    for item in filter(None, extra.split(";")):
        k, v = item.split("=")
        kind = type(getattr(profiles.PROFILES["default"], k))
        fields[k] = tuple(float(x) for x in v.split("/")) if kind is tuple else kind(v)
    return fields


def _warm_up(data: str) -> None:
    """One untimed fit first: the first one imports torch and builds its kernels (a second or
    more), which would otherwise be charged to whichever variant runs first."""
    path = sorted(glob.glob(os.path.join(data, "*.nii.gz")))[0]
    vol, vmin, vmax = load_engine_volume(path)
    vol = np.ascontiguousarray(vol[: min(8, vol.shape[0])])
    engine.fit_predictor(vol, vmin, vmax, "default", None, plan_slabs(vol.shape[0], 32), registry.current_model("default"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"))
    ap.add_argument("--variants", default="old,default", help="comma-separated; `old:fit_lr=1e-3` adds fields")
    ap.add_argument("--only", default="")
    ap.add_argument("--fit-only", action="store_true", help="time only per-volume fitting (estimated bits)")
    ap.add_argument("--eval-samples", type=int, default=0,
                    help="with --fit-only: estimate the chosen predictor on this many other voxels (one draw per "
                         "volume, shared by the variants) instead of the fit's own 65k held-out voxels")
    ap.add_argument("--repeat", type=int, default=1, help="interleaved repeats; the median time is printed")
    args = ap.parse_args()
    base = profiles.PROFILES["default"]
    names = args.variants.split(",")
    print(f"load average at start {os.getloadavg()[0]:.2f}; " + ("fitting only (estimated bits)" if args.fit_only else "whole encode"))
    print("volume | " + " | ".join(f"{n} bpv / s" for n in names))
    totals = {n: [] for n in names}
    _warm_up(args.data)
    for path in sorted(glob.glob(os.path.join(args.data, "*.nii.gz"))):
        if args.only and args.only not in path:
            continue
        vol, vmin, vmax = load_engine_volume(path)
        evaluation = None
        if args.fit_only and args.eval_samples:
            from codec.fit import sample_volume

            evaluation = sample_volume(vol, vmin, vmax, base.slab_depth, args.eval_samples, np.random.default_rng(999),
                                       None, registry.current_model("default").spec,
                                       slabs=plan_slabs(vol.shape[0], base.slab_depth))
        results: dict[str, tuple[float, list[float], bool, dict]] = {}
        for _ in range(args.repeat):
            for n in names:
                profiles.PROFILES["default"] = dataclasses.replace(base, **_variant(n))
                try:
                    t, cpu = time.perf_counter(), time.process_time()
                    if args.fit_only:
                        shipped = registry.current_model("default")
                        out = engine.fit_predictor(vol, vmin, vmax, "default", None,
                                                   plan_slabs(vol.shape[0], base.slab_depth), shipped)
                        dt = time.perf_counter() - t
                        # no fit (0 steps): no held-out sample was drawn, so no estimate without --eval-samples
                        bits = min(out.bits_base, out.bits_tuned) / vol.size if out.tuned is not None else float("nan")
                        if evaluation is not None:
                            chosen = out.chosen
                            stored = 8 * len(chosen.blob()) if chosen.embedded else 0
                            bits = (engine.estimate_bits(chosen, evaluation) * vol.size / len(evaluation) + stored) / vol.size
                        kept, detail = out.chosen is out.tuned, {**out.seconds, "cpu": time.process_time() - cpu}
                    else:
                        enc = engine.encode_volume(vol, vmin=vmin, vmax=vmax, threads=2)
                        dt = time.perf_counter() - t
                        bits = 8 * (len(enc.model_blob) + sum(map(len, enc.payloads))) / vol.size
                        kept, detail = bool(enc.model_blob[1] & 1), {"cpu": time.process_time() - cpu}
                finally:
                    profiles.PROFILES["default"] = base
                prev = results.get(n)
                results[n] = (bits, (prev[1] if prev else []) + [dt], kept, detail)
        cells = []
        for n in names:
            bits, times, kept, detail = results[n]
            totals[n].append((bits, float(np.median(times)), detail.get("cpu", 0.0)))
            parts = ",".join(f"{k} {v:.2f}" for k, v in detail.items())
            cells.append(f"{bits:.4f} / {np.median(times):.2f}{' (fit kept)' if kept else ''}{f' [{parts}]' if parts else ''}")
        print(f"{os.path.basename(path).split('.')[0]} | " + " | ".join(cells), flush=True)
    print("mean | " + " | ".join(f"{np.mean([r[0] for r in totals[n]]):.4f} / {np.mean([r[1] for r in totals[n]]):.2f}"
                                 f" (cpu {np.mean([r[2] for r in totals[n]]):.2f})" for n in names))
    print(f"load average at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
