#!/usr/bin/env bash
# `make test`: start throwaway PostgreSQL, Redis and SeaweedFS (S3) on free ports, run unit + integration
# tests (the integration tests start the API and a real Celery worker process themselves), stop services.
set -euo pipefail
cd "$(dirname "$0")/.."
export MINEGAN_CACHE="${MINEGAN_CACHE:-$PWD/.cache/minegan}"
# headless Chromium + its driver for the gallery test (tests/test_browser.py)
if ! { command -v chromium && command -v chromedriver; } >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
  else
    echo "chromium/chromium-driver missing and not root: the browser test will be skipped (fails under CI)" >&2
  fi
fi
export MINEGAN_TEST_ARTIFACTS="${MINEGAN_TEST_ARTIFACTS:-$PWD/test-artifacts}"
bash scripts/services.sh start >/dev/null
trap 'bash scripts/services.sh stop >/dev/null 2>&1 || true' EXIT
set -a
# shellcheck disable=SC1091
. .services/env
set +a
.venv/bin/python -m pytest -q -p no:cacheprovider "$@" tests
