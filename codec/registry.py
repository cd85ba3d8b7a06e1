"""Shipped models and coding tables in `codec/models/`, named by content hash.

A `.nvc` file names the model it was coded with by id (`<profile>-<sha16>`), so every model
id that was ever shipped must stay in the package for old files to stay decodable.
`manifest.json` says which model each profile uses for *new* files.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING
from pathlib import Path

import numpy as np

from codec.blob import MODELS_DIR, check_shipped, model_path
from codec.entropy import CodingTables
from codec.errors import FormatError
from codec.network import IntMLP

if TYPE_CHECKING:  # torch is imported only where fitting or training runs
    from codec.fit import FloatMLP


@dataclass
class ShippedModel:
    model_id: str
    profile: str
    net: IntMLP
    float_state: dict[str, np.ndarray]
    tables_file: str
    meta: dict

    @property
    def spec(self):
        """The context model this network was trained for (from its profile)."""
        from codec.context import context_spec
        from codec.profiles import PROFILES

        if self.profile not in PROFILES:
            raise FormatError(f"model {self.model_id} belongs to unknown profile {self.profile!r}")
        return context_spec(PROFILES[self.profile].context)

    def float_model(self) -> "FloatMLP":
        import torch

        from codec.fit import FloatMLP

        model = FloatMLP(self.net.widths, self.net.n_inputs)
        model.load_state_dict({k: torch.as_tensor(v) for k, v in self.float_state.items()})
        return model


def model_id_for(profile: str, int_blob: bytes, tables_digest: str) -> str:
    return f"{profile}-{hashlib.sha256(int_blob + tables_digest.encode()).hexdigest()[:16]}"


def save_model(
    directory: Path, profile: str, net: IntMLP, model: "FloatMLP | None", tables: CodingTables, tables_file: str, meta: dict
) -> str:
    blob = net.to_bytes()
    model_id = model_id_for(profile, blob, tables.digest)
    arrays = {f"float.{k}": v.detach().cpu().numpy() for k, v in model.state_dict().items()} if model is not None else {}
    meta = dict(meta, model_id=model_id, profile=profile, tables=tables_file, widths=list(net.widths))
    buf = io.BytesIO()
    np.savez_compressed(buf, int_blob=np.frombuffer(blob, np.uint8), meta=np.frombuffer(json.dumps(meta).encode(), np.uint8), **arrays)
    (directory / f"{model_id}.npz").write_bytes(buf.getvalue())
    return model_id


def manifest(directory: Path = MODELS_DIR) -> dict:
    path = directory / "manifest.json"
    return json.loads(path.read_text()) if path.exists() else {"profiles": {}}


@lru_cache(maxsize=8)
def load_tables(tables_file: str) -> CodingTables:
    path = MODELS_DIR / Path(tables_file).name
    if not path.exists():
        raise FormatError(f"coding tables {tables_file} are not shipped with this version of nvc")
    return CodingTables.load(path)


@lru_cache(maxsize=16)
def load_model(model_id: str) -> ShippedModel:
    path = model_path(model_id)
    check_shipped(model_id)
    with np.load(path) as z:
        blob = z["int_blob"].tobytes()
        meta = json.loads(z["meta"].tobytes().decode())
        state = {k[len("float.") :]: z[k] for k in z.files if k.startswith("float.")}
    return ShippedModel(model_id, meta["profile"], IntMLP.from_bytes(blob), state, meta["tables"], meta)


def current_model(profile: str) -> ShippedModel:
    from codec.profiles import PROFILES, canonical_name

    if canonical_name(profile) in PROFILES:
        profile = PROFILES[canonical_name(profile)].model_profile
    ids = manifest().get("profiles", {})
    if profile not in ids:
        raise FormatError(f"no shipped model for profile {profile!r}: run `nvc train`")
    return load_model(ids[profile])
