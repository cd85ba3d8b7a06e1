"""Map expected exceptions to the one-line messages the CLI prints."""

from __future__ import annotations


def describe(exc: BaseException) -> str | None:
    """Return a one-line message for an expected error, or None to let it propagate."""
    from nvc.cli import CLIError

    if isinstance(exc, (CLIError, FileNotFoundError, IsADirectoryError, PermissionError)):
        return str(exc)
    # codec errors, without importing codec (torch) when it is not installed
    for cls in type(exc).__mro__:
        if cls.__module__.startswith(("codec", "nvc.sdk")) and cls.__name__.endswith("Error"):
            return str(exc)
    if isinstance(exc, OSError):
        return str(exc)
    return None
