"""Train the shipped models and measure how they generalise (leave-one-out); `nvc train`
(nvc/commands/codec_cmds.py) is its command line.

Reproducible: fixed seeds, a fixed sample of voxels from each volume, single-threaded
determinism is not required because the *shipped* artefact is the quantised network
(its hash names it), not the training run.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from codec import registry
from codec.entropy import CodingTables, build_tables, save_tables
from codec.context import LOCAL, ContextSpec, context_spec
from codec.fit import FloatMLP, Samples, fit, mean_bits, quantize, sample_volume
from codec.profiles import get_profile

def load_engine_volume(path: Path) -> tuple[np.ndarray, int, int]:
    """The first volume of a .nii/.nii.gz/.npy file as the encoder codes it: int32 (slices,
    rows, columns) and its value range, read by the codec's own reader (`codec.files`), so
    training sees exactly the stored integers the encoder sees."""
    from codec import volume as vol
    from codec.files import read_volume

    first = vol.volume_view(read_volume(path).array, 0)
    rng = vol.volume_range(first)
    return vol.to_engine(first, rng), rng.vmin, rng.vmax


def volume_files(data_dir: Path) -> list[Path]:
    return sorted(p for p in data_dir.iterdir() if p.name.endswith((".nii", ".nii.gz")))


def collect_samples(files: list[Path], slab_depth: int, per_volume: int, seed: int, spec: ContextSpec = LOCAL) -> Samples:
    parts = []
    for i, path in enumerate(files):
        vol, vmin, vmax = load_engine_volume(path)
        rng = np.random.default_rng(seed + i)
        parts.append(sample_volume(vol, vmin, vmax, slab_depth, per_volume, rng, spec=spec))
    return Samples.concat(parts)


def _loss_curve(model: FloatMLP, samples: Samples, steps: int, every: int, spec: ContextSpec, loss: str, log):
    """A progress callback for `fit` that logs the training loss on a fixed 16k-voxel subset of
    the sample every `every` steps (the loss curve shows whether more steps would still pay)."""
    from codec.fit import code_length_bits, paper_loss

    probe = samples.subset(torch.randperm(len(samples), generator=torch.Generator().manual_seed(1))[:16384])
    t0 = time.perf_counter()
    last = [-1]

    def progress(fraction: float) -> None:
        step = round(fraction * steps)
        if step // every == last[0] // every and step != steps:
            return
        last[0] = step
        with torch.no_grad():
            out = model(probe.inputs)
            value = paper_loss(out, probe, spec) if loss == "paper" else code_length_bits(out, probe, spec).mean()
            bits = code_length_bits(out, probe, spec).mean()
        log(f"step {step}: loss {float(value):.5f}, {float(bits):.3f} bits/voxel (float), {time.perf_counter() - t0:.0f}s")

    return progress


def train_model(
    profile_name: str, files: list[Path], *, steps: int, per_volume: int, seed: int, log=print, log_every: int = 0
) -> tuple[FloatMLP, Samples]:
    profile = get_profile(profile_name)
    spec = context_spec(profile.context)
    torch.manual_seed(seed)
    samples = collect_samples(files, profile.slab_depth, per_volume, seed, spec)
    model = FloatMLP(profile.widths, spec.n_inputs)
    t0 = time.perf_counter()
    wide = max(profile.widths) > 64
    progress = _loss_curve(model, samples, steps, log_every, spec, profile.loss, log) if log_every > 0 else None
    fit(model, samples, steps, batch=1024 if wide else 8192, lr=1e-3 if wide else 3e-3, seed=seed, spec=spec,
        loss=profile.loss, progress=progress)
    log(f"trained {profile_name} on {len(files)} volumes, {len(samples)} samples, {steps} steps "
        f"in {time.perf_counter() - t0:.1f}s: {mean_bits(model, samples, spec):.3f} bits/voxel (train sample, float)")
    return model, samples


def ensure_tables(directory: Path) -> tuple[CodingTables, str]:
    freqs = build_tables()
    existing = sorted(directory.glob("tables-*.npz"))
    for path in existing:
        tables = CodingTables.load(path)
        if np.array_equal(tables.freqs, freqs):
            return tables, path.name
    path = save_tables(freqs, directory)
    return CodingTables.load(path), path.name


def train_and_ship(profile_name: str, data_dir: Path, *, steps: int, per_volume: int, seed: int, log=print,
                   log_every: int = 0) -> str:
    files = volume_files(data_dir)
    if not files:
        raise SystemExit(f"no .nii/.nii.gz volumes in {data_dir}")
    directory = registry.MODELS_DIR
    tables, tables_file = ensure_tables(directory)
    model, samples = train_model(profile_name, files, steps=steps, per_volume=per_volume, seed=seed, log=log,
                                 log_every=log_every)
    calib = samples.inputs[torch.randperm(len(samples), generator=torch.Generator().manual_seed(seed))[:65536]]
    net = quantize(model, calib.numpy())
    meta = {
        "trained_on": [p.name for p in files],
        "steps": steps,
        "samples_per_volume": per_volume,
        "seed": seed,
        "torch": torch.__version__,
    }
    keep_float = get_profile(profile_name).fit_max_steps > 0  # float weights only serve fine-tuning
    model_id = registry.save_model(directory, profile_name, net, model if keep_float else None, tables, tables_file, meta)
    man = registry.manifest(directory)
    man.setdefault("profiles", {})[profile_name] = model_id
    (directory / "manifest.json").write_text(json.dumps(man, indent=2, sort_keys=True) + "\n")
    registry.load_model.cache_clear()
    log(f"shipped {model_id} ({net.n_params} parameters, {len(net.to_bytes())} bytes)")
    return model_id


def leave_one_out(profile_name: str, data_dir: Path, *, steps: int, per_volume: int, seed: int, log=print) -> list[dict]:
    """For each volume: train without it, then code it (real encoder, fitting included).

    Reports bits/voxel of the file the encoder writes with the held-out model, and the
    estimated cost of the held-out model before per-volume fitting (exact integer network and
    shipped tables on a 262k-voxel sample), so the effect of fitting is visible.
    """
    from codec import engine
    from codec.fit import sample_volume

    files = volume_files(data_dir)
    tables, tables_file = ensure_tables(registry.MODELS_DIR)
    profile = get_profile(profile_name)
    rows = []
    for held_out in files:
        train_files = [f for f in files if f != held_out]
        model, samples = train_model(profile_name, train_files, steps=steps, per_volume=per_volume, seed=seed, log=log)
        calib = samples.inputs[torch.randperm(len(samples), generator=torch.Generator().manual_seed(seed))[:65536]]
        net = quantize(model, calib.numpy())
        shipped = registry.ShippedModel(
            f"{profile_name}-loo", profile_name, net, {k: v.detach().numpy() for k, v in model.state_dict().items()},
            tables_file, {},
        )
        vol, vmin, vmax = load_engine_volume(held_out)
        sample = sample_volume(vol, vmin, vmax, profile.slab_depth, 262_144, np.random.default_rng(seed))
        pred = engine.Predictor(net, tables, shipped.model_id, False, spec=shipped.spec)
        before_fit = engine.estimate_bits(pred, sample) / len(sample)
        t0 = time.perf_counter()
        enc = engine.encode_volume(vol, vmin=vmin, vmax=vmax, profile=profile_name, base_model=shipped)
        seconds = time.perf_counter() - t0
        size = len(enc.model_blob) + sum(len(p) for p in enc.payloads)
        row = {
            "volume": held_out.name.removesuffix(".nii.gz"),
            "bits_per_voxel_file": 8 * size / vol.size,
            "bits_per_voxel_before_fitting_estimate": before_fit,
            "encode_seconds": seconds,
        }
        log(json.dumps(row))
        rows.append(row)
    mean = float(np.mean([r["bits_per_voxel_file"] for r in rows]))
    log(f"leave-one-out mean: {mean:.3f} bits/voxel (file), "
        f"{float(np.mean([r['bits_per_voxel_before_fitting_estimate'] for r in rows])):.3f} before fitting (estimate)")
    return rows


def run(*, profile: str, data_dir: Path, steps: int, per_volume: int, seed: int, leave_one_out_json: Path | None,
        leave_one_out_only: bool) -> int:
    """What `nvc train` does (its options: nvc/commands/codec_cmds.py): ship a model, or measure
    leave-one-out without shipping."""
    from codec.engine import torch_threads

    with torch_threads(None):  # NVC_THREADS, default 1: spinning OpenMP threads on a busy machine cost 30x
        if leave_one_out_only:
            rows = leave_one_out(profile, data_dir, steps=steps, per_volume=per_volume, seed=seed)
            if leave_one_out_json:
                leave_one_out_json.write_text(json.dumps(rows, indent=2) + "\n")
            return 0
        # the loss curve, 20 points, says whether more steps would still pay
        train_and_ship(profile, data_dir, steps=steps, per_volume=per_volume, seed=seed, log_every=max(1, steps // 20))
    return 0
