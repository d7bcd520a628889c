#!/usr/bin/env bash
# Runs the test suite inside the project's virtual environment (created by `make install`).
set -euo pipefail
cd "$(dirname "$0")/.."
export MINEGAN_CACHE="${MINEGAN_CACHE:-$PWD/.cache/minegan}"
.venv/bin/python -m pytest -q -p no:cacheprovider "$@" tests
