"""The packages depend on each other in one direction only.

    codec  <-  service  <-  app (FastAPI)
                        <-  worker (Celery)

The API and the workers share the service core and never import each other; the core imports
neither of them nor the web framework; the codec imports nothing of the service or the CLI.
Imports are read from the source with `ast` (every `import` and `from ... import`, also the
ones inside functions), so a lazy import cannot hide a dependency.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
WEB = ("fastapi", "starlette")


def imported_modules(package: str) -> dict[str, set[str]]:
    """For each module file of `package`: the top-level names of the modules it imports."""
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        names: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
        found[str(path.relative_to(ROOT))] = names
    return found


def offenders(package: str, forbidden: tuple[str, ...]) -> dict[str, list[str]]:
    return {
        module: sorted(names & set(forbidden))
        for module, names in imported_modules(package).items()
        if names & set(forbidden)
    }


def test_the_scanner_sees_lazy_imports(tmp_path, monkeypatch):
    """The check must be able to fail: an import inside a function counts."""
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "m.py").write_text("def f():\n    from worker.tasks import run\n    import fastapi.responses\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert offenders("pkg", ("worker", "fastapi")) == {"pkg/m.py": ["fastapi", "worker"]}


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        ("app", ("worker",)),
        ("worker", ("app", *WEB)),
        ("service", ("app", "worker", *WEB)),
        ("codec", ("app", "worker", "service", "nvc", *WEB)),
    ],
)
def test_package_does_not_import(package, forbidden):
    assert offenders(package, forbidden) == {}


def test_importing_the_worker_loads_no_web_framework():
    code = (
        "import json, sys; import worker.tasks; "
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('fastapi', 'starlette', 'app'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
