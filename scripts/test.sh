#!/usr/bin/env bash
# The whole test suite (slow real-data checks included), as CI runs it; the 25 slowest tests are listed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
exec python -m pytest -q --durations=25 "$@"
