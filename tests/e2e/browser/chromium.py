"""Headless Chromium for the web page's browser test (test support, no tests here).

Playwright (the pip package, whose wheel ships its driver) drives Debian's /usr/bin/chromium;
`playwright install` is never run (browser downloads are not possible here). `skip_reason()`
says why the browser test cannot run, so it skips with a clear message instead of failing.
"""

from __future__ import annotations

import os
import shutil

CHROMIUM = os.environ.get("NVC_TEST_CHROMIUM", "/usr/bin/chromium")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def skip_reason() -> str | None:
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        found = shutil.which("chromium")
        hint = f" (found {found})" if found else ""
        return f"no Chromium at {CHROMIUM}{hint}: scripts/setup.sh installs Debian's `chromium` package"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the `playwright` Python package is not installed (it is in the `test` extra)"
    return None


def launch(playwright):
    """A headless Chromium browser from a `sync_playwright()` context."""
    return playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
