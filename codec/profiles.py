"""Coding profiles: which network, slab depth and per-volume fitting effort to use.

A profile is chosen at encode time; the decoder needs nothing of it but the model blob
(shipped-model id or embedded weights) stored in the file.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Profile:
    name: str
    widths: tuple[int, ...]  # hidden layer widths of the MLP
    slab_depth: int  # slices per independently decodable slab
    fit_steps_per_mvoxel: float  # per-volume fine-tuning effort (Adam steps per million voxels)
    fit_min_steps: int
    fit_max_steps: int
    fit_batch: int = 1024
    fit_lr: float = 3e-3
    fit_samples: int = 262_144  # voxels sampled from the volume for fitting
    context: str = "local"  # codec.context.context_spec name
    loss: str = "bits"  # "bits": the code length; "paper": MAE + lambda (1 - |PCC|) for the mean
    base_model: str | None = None  # start from another profile's shipped model (default: its own)

    @property
    def model_profile(self) -> str:
        return self.base_model or self.name


PROFILES: dict[str, Profile] = {
    # CPU default: the speed target is 2 MB/s of raw voxels on 2 cores.
    "default": Profile("default", widths=(48, 48), slab_depth=32, fit_steps_per_mvoxel=40.0, fit_min_steps=80,
                       fit_max_steps=1500, fit_samples=131_072),
    # More fitting for more ratio (named for GPU workers; the fitting itself still runs in torch
    # on the CPU, codec/fit.py does not move it to a GPU yet).
    "gpu": Profile("gpu", widths=(48, 48), slab_depth=32, fit_steps_per_mvoxel=1000.0, fit_min_steps=2000, fit_max_steps=20000, fit_batch=4096,
                   base_model="default"),
    # The seed paper's configuration (causal 11x11x11 cube, FC 1024-512-256-128, MAE + PCC loss),
    # kept so its claims can be checked on our data: about 1.4 M multiply-adds per voxel.
    "paper": Profile("paper", widths=(1024, 512, 256, 128), slab_depth=32, fit_steps_per_mvoxel=0.0,
                     fit_min_steps=0, fit_max_steps=0, context="paper", loss="paper"),
}


def get_profile(name: str) -> Profile:
    from codec.errors import UnsupportedInputError

    try:
        return PROFILES[name]
    except KeyError:
        raise UnsupportedInputError(f"unknown profile {name!r}; choose one of {', '.join(PROFILES)}") from None
