"""NVC client side: the HTTP SDK (`nvc.sdk`) and the `nvc` command line.

Importing this package is cheap: nothing here imports torch, FastAPI or Celery at module
load, so `pip install "nvc[client]"` is enough to use the SDK.
"""

__version__ = "0.1.0"
