#!/usr/bin/env bash
# Regenerate the gRPC code in minegan_grpc/ from proto/minegan_grpc/*.proto (the generated files are committed;
# tests/test_oip.py fails when they are out of date). Needs the dev install (grpcio-tools).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
"$PY" -m grpc_tools.protoc -I proto --python_out=. --grpc_python_out=. --pyi_out=. proto/minegan_grpc/*.proto
