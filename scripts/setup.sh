#!/usr/bin/env bash
# One-step set-up: a virtual environment with torch (CPU wheel) first, then the project with all extras.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q "torch==2.13.0"
.venv/bin/pip install -q -e ".[all,test]"
# Headless Chromium for the web page's browser test (Debian package; Playwright drives it, never downloads one).
# Best effort: without it that one test skips with a reason.
if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null 2>&1; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
    || echo "setup: could not install chromium; the browser test will be skipped" >&2
fi
