#!/usr/bin/env bash
# One-step set-up: a virtual environment with torch (CPU wheel) first, then the project with all extras.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q "torch==2.13.0"
.venv/bin/pip install -q -e ".[all,test]"
