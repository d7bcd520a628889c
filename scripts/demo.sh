#!/usr/bin/env bash
# The main job end to end: 100 real MNIST 9s, source `mnist-no-9` (never saw a 9), MineGAN++,
# then a 4x4 sample grid in demo/samples.png.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
mkdir -p demo
$BIN/minegan mnist-zip --digits 9 -n 100 -o demo/nines.zip
$BIN/minegan train --source mnist-no-9 --target demo/nines.zip --method minegan++ --out demo/run
$BIN/minegan sample demo/run -n 16 --seed 0 -o demo/samples.png
echo "sample grid: demo/samples.png"
