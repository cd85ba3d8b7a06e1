"""Per-volume fitting budget of the default profile: bits/voxel against encode time.

    PYTHONPATH=. python benchmarks/fit_budget.py [--data ../shared/data] [--variants none,default,lr1e-3]

Encodes every volume with each fitting variant (native core, 2 threads) and prints bits/voxel
(whole file: payloads + model blob) and encode seconds; fitting time is included. Used for
docs/decisions/0111-native-core.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import os
import time

import numpy as np

from codec import engine, profiles
from codec.train import load_engine_volume

VARIANTS = {
    "none": dict(fit_steps_per_mvoxel=0.0, fit_min_steps=0, fit_max_steps=0),
    "default": {},
    "lr1e-3": dict(fit_lr=1e-3),
    "s20_lr1e-3": dict(fit_steps_per_mvoxel=20.0, fit_min_steps=60, fit_max_steps=600, fit_lr=1e-3),
    "s40_lr1e-3_b512": dict(fit_lr=1e-3, fit_batch=512),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"))
    ap.add_argument("--variants", default="none,default,lr1e-3")
    ap.add_argument("--only", default="")
    args = ap.parse_args()
    base = profiles.PROFILES["default"]
    names = args.variants.split(",")
    print("volume | " + " | ".join(f"{n} bpv / s" for n in names))
    for path in sorted(glob.glob(os.path.join(args.data, "*.nii.gz"))):
        if args.only and args.only not in path:
            continue
        vol, vmin, vmax = load_engine_volume(path)
        cells = []
        for n in names:
            profiles.PROFILES["default"] = dataclasses.replace(base, **VARIANTS[n])
            try:
                t = time.perf_counter()
                enc = engine.encode_volume(vol, vmin=vmin, vmax=vmax, threads=2)
                dt = time.perf_counter() - t
            finally:
                profiles.PROFILES["default"] = base
            bits = 8 * (len(enc.model_blob) + sum(map(len, enc.payloads))) / vol.size
            cells.append(f"{bits:.4f} / {dt:.1f}{' (fit kept)' if enc.model_blob[1] & 1 else ''}")
        print(f"{os.path.basename(path).split('.')[0]} | " + " | ".join(cells), flush=True)


if __name__ == "__main__":
    main()
