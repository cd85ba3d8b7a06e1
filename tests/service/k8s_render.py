"""Render deploy/ kustomizations for the tests: `kubectl kustomize` when kubectl is installed,
else a small Python renderer.

Why a hand-written fallback: kubectl (which embeds kustomize) comes from Debian's apt, not from
PyPI, and CI installs only the repo's Python extras. The fallback implements just the parts of
kustomize that deploy/ uses: `resources` (files and kustomization folders, recursively),
`labels` with `pairs` (added to every object's metadata.labels, not to selectors, as kustomize
does without `includeSelectors`), and `patches` with a `path` to a strategic-merge patch that
names its target by kind and metadata.name. Strategic merge is simplified to: maps merge
recursively, lists of maps that all carry `name` merge item by item on `name` (containers, env,
ports, volumes), every other list is replaced. That is what kustomize does for the built-in
kinds deploy/ patches and for the CRD (ScaledObject, whose lists have no merge keys and are
replaced). When kubectl is present, a test checks that both renderings agree.
"""

from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

KUSTOMIZATION = "kustomization.yaml"


def kubectl() -> str | None:
    return shutil.which("kubectl")


def render_with_kubectl(folder: Path) -> list[dict[str, Any]]:
    out = subprocess.run([kubectl(), "kustomize", str(folder)], check=True, capture_output=True, text=True,
                         timeout=60).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def _merge(base: Any, patch: Any) -> Any:
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for key, value in patch.items():
            out[key] = _merge(base[key], value) if key in base else copy.deepcopy(value)
        return out
    if (isinstance(base, list) and isinstance(patch, list) and base and patch
            and all(isinstance(i, dict) and "name" in i for i in base + patch)):
        out = [copy.deepcopy(i) for i in base]
        index = {item["name"]: n for n, item in enumerate(out)}
        for item in patch:
            if item["name"] in index:
                out[index[item["name"]]] = _merge(out[index[item["name"]]], item)
            else:
                out.append(copy.deepcopy(item))
        return out
    return copy.deepcopy(patch)


def render_in_python(folder: Path) -> list[dict[str, Any]]:
    spec = yaml.safe_load((folder / KUSTOMIZATION).read_text())
    unknown = set(spec) - {"apiVersion", "kind", "resources", "labels", "patches"}
    if unknown:
        raise NotImplementedError(f"{folder}: the fallback renderer does not implement {sorted(unknown)}")
    docs: list[dict[str, Any]] = []
    for entry in spec.get("resources", []):
        path = (folder / entry).resolve()
        if path.is_dir():
            docs += render_in_python(path)
        else:
            docs += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    for patch_entry in spec.get("patches", []):
        if set(patch_entry) != {"path"}:
            raise NotImplementedError(f"{folder}: only `patches: - path: FILE` is implemented")
        patch = yaml.safe_load((folder / patch_entry["path"]).read_text())
        targets = [n for n, doc in enumerate(docs)
                   if doc["kind"] == patch["kind"] and doc["metadata"]["name"] == patch["metadata"]["name"]]
        if len(targets) != 1:
            raise ValueError(f"patch {patch_entry['path']} matches {len(targets)} objects")
        docs[targets[0]] = _merge(docs[targets[0]], patch)
    for label_entry in spec.get("labels", []):
        if set(label_entry) != {"pairs"}:
            raise NotImplementedError(f"{folder}: only `labels: - pairs:` is implemented")
        for doc in docs:
            doc.setdefault("metadata", {}).setdefault("labels", {}).update(label_entry["pairs"])
    return docs


def render(folder: Path) -> list[dict[str, Any]]:
    """The objects of a kustomization folder (kubectl when installed, else the fallback)."""
    return render_with_kubectl(folder) if kubectl() else render_in_python(folder)
