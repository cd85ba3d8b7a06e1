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
    fit_order: str = "epochs"  # codec.fit.fit `order`: shuffled passes ("epochs") or random draws
    fit_warmup: int = 0  # steps of linear learning-rate warm-up (codec.fit.fit)
    fit_layer_lr: tuple[float, ...] = ()  # learning-rate multipliers per layer (codec.fit.fit)
    fit_threads: int = 1  # torch threads while fitting: fixed, because the fitted weights depend on it
    context: str = "local"  # codec.context.context_spec name
    loss: str = "bits"  # "bits": the code length; "paper": MAE + lambda (1 - |PCC|) for the mean
    base_model: str | None = None  # start from another profile's shipped model (default: its own)

    @property
    def model_profile(self) -> str:
        return self.base_model or self.name


PROFILES: dict[str, Profile] = {
    # CPU default: fitting must stay a small part of an encode that has to keep up with tomoz
    # (issue 9): 10 steps per million voxels of batch 2048 (120..250) on a 65k-voxel sample,
    # a short warm-up to a high learning rate (half of it on the first layer), one torch
    # thread (decision 0112).
    "default": Profile("default", widths=(48, 48), slab_depth=32, fit_steps_per_mvoxel=10.0, fit_min_steps=120,
                       fit_max_steps=250, fit_batch=2048, fit_lr=1.4e-2, fit_samples=65_536, fit_warmup=20,
                       fit_layer_lr=(0.5,)),
    # Maximum ratio for archives written once and read often (issue 11): heavy fitting, on the
    # GPU when one is present (engine.fit_device), else on the CPU (minutes for a large volume).
    # The same network as default, so it decodes as fast; the files store default's model id.
    # Called `gpu` before decision 0114, a name still accepted (ALIASES).
    # 50 warm-up steps to lr 6e-3, the first layer at half of it (as default, decision 0113):
    # -0.34% / -0.74% estimated bits/voxel on the MR phantom / 5 mm head CT against lr 3e-3
    # without warm-up, at the same cost.
    "archive": Profile("archive", widths=(48, 48), slab_depth=32, fit_steps_per_mvoxel=1000.0, fit_min_steps=2000,
                       fit_max_steps=20000, fit_batch=4096, fit_lr=6e-3, fit_warmup=50, fit_layer_lr=(0.5,),
                       base_model="default"),
    # The seed paper's configuration (causal 11x11x11 cube, FC 1024-512-256-128, MAE + PCC loss),
    # kept so its claims can be checked on our data: about 1.4 M multiply-adds per voxel.
    "paper": Profile("paper", widths=(1024, 512, 256, 128), slab_depth=32, fit_steps_per_mvoxel=0.0,
                     fit_min_steps=0, fit_max_steps=0, context="paper", loss="paper"),
    # The paper's other sampling: 13x13, 9x9, 5x5 windows on slices z-1..z-3 plus W, N, NW, NE (279 inputs).
    "paper-pyramid": Profile("paper-pyramid", widths=(1024, 512, 256, 128), slab_depth=32, fit_steps_per_mvoxel=0.0,
                             fit_min_steps=0, fit_max_steps=0, context="pyramid", loss="paper"),
}


#: Deprecated profile names, still accepted wherever a profile is named (old job records, clients
#: and scripts say `gpu`). The name of a profile is not stored in .nvc files (they name the
#: shipped model, `default-...` for both), so files need no alias: this is for callers only.
ALIASES: dict[str, str] = {"gpu": "archive"}


def canonical_name(name: str) -> str:
    """The profile a (possibly deprecated) name stands for; unknown names are returned as given."""
    return ALIASES.get(name, name)


def get_profile(name: str) -> Profile:
    """The profile called `name` (a deprecated alias gives the profile it stands for)."""
    from codec.errors import UnsupportedInputError

    try:
        return PROFILES[canonical_name(name)]
    except KeyError:
        raise UnsupportedInputError(f"unknown profile {name!r}; choose one of {', '.join(PROFILES)}") from None
