#!/usr/bin/env bash
# The whole test suite (slow real-data checks included), as CI runs it.
set -euo pipefail
cd "$(dirname "$0")/.."
exec python -m pytest -q "$@"
