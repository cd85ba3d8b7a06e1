"""NVC client side: the HTTP SDK (`nvc.sdk`) and the `nvc` command line.

Importing this package is cheap: nothing here imports torch, FastAPI or Celery at module
load, so `pip install "nvc[client]"` is enough to use the SDK.
"""

from importlib import metadata as _metadata


def _version() -> str:
    """The installed distribution's version: one home, `version` in pyproject.toml."""
    try:
        return _metadata.version("nvc")
    except _metadata.PackageNotFoundError:  # a source tree that was never installed
        return "0+unknown"


__version__ = _version()
