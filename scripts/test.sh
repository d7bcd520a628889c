#!/usr/bin/env bash
# `make test`: start throwaway PostgreSQL, Redis and SeaweedFS (S3) on free ports, run unit + integration
# tests (the integration tests start the API and a real Celery worker process themselves), stop services.
set -euo pipefail
cd "$(dirname "$0")/.."
export MINEGAN_CACHE="${MINEGAN_CACHE:-$PWD/.cache/minegan}"
bash scripts/services.sh start >/dev/null
trap 'bash scripts/services.sh stop >/dev/null 2>&1 || true' EXIT
set -a
# shellcheck disable=SC1091
. .services/env
set +a
.venv/bin/python -m pytest -q -p no:cacheprovider "$@" tests
