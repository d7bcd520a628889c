#!/usr/bin/env bash
# `make demo`: the main job end to end on the embedded default (SQLite, local storage, built-in worker, each job in a child process):
# start `minegan serve`, POST 100 real MNIST 9s against `mnist-no-9` (MineGAN++), show progress,
# write demo/samples.png from GET /sample?n=16, stop the server.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=$PWD/.venv/bin
mkdir -p demo
export MINEGAN_DATABASE_URL="sqlite:///$PWD/demo/minegan.db" MINEGAN_STORAGE_DIR="$PWD/demo/blobs" MINEGAN_WORK_DIR="$PWD/demo/work"
unset MINEGAN_BROKER_URL
PORT=$($BIN/python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
$BIN/minegan mnist-zip --digits 9 -n 100 -o demo/nines.zip
$BIN/minegan serve --port "$PORT" > demo/server.log 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 60); do
  $BIN/python -c "import httpx,sys; sys.exit(httpx.get('http://127.0.0.1:$PORT/readyz').status_code != 200)" 2>/dev/null && break
  kill -0 $SERVER 2>/dev/null || { cat demo/server.log; exit 1; }
  sleep 1
done
$BIN/python scripts/demo_client.py "http://127.0.0.1:$PORT" demo/nines.zip demo/samples.png
