#!/usr/bin/env bash
# The checks that need a GPU (CI has none), run on a machine with CUDA, with the Python 3.12 wheels of the packages
# that machine lacks in .whl/ and a trimmed MNIST (its test split) in .whl/site/ (scripts/device_wheels.sh builds both). Writes logs, the updated
# docs/benchmarks.md and results under $OUT (or ./device-out).
#   bash scripts/device_check.sh [all|engine|sampling|ttq]
#     engine:   benchmarks/engine_cuda.py (every method on CUDA beside the CPU)      -> docs/benchmarks.md "cuda"
#     sampling: benchmarks/sampling.py --device cuda                                  -> "sampling_cuda"
#     ttq:      benchmarks/time_to_quality.py at 10x on CUDA, two runs at a time      -> $OUT/ttq-*.json
set -uo pipefail
what=${1:-all}
out=${OUT:-device-out}
mkdir -p "$out"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD/.whl/site  # .whl/site: packages carried as folders (a trimmed MNIST)
fi
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu.txt"
python3 -c "import torch, api.main, worker.runner, cli.main, mnist, onnx2torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
if [ "$what" = all ] || [ "$what" = engine ]; then
  timeout "${ENGINE_S:-300}" python3 benchmarks/engine_cuda.py --steps "${STEPS:-20}" 2>&1 | tee "$out/engine.log"
fi
if [ "$what" = all ] || [ "$what" = sampling ]; then
  timeout "${SAMPLING_S:-240}" python3 benchmarks/sampling.py --device cuda --section sampling_cuda --reps "${REPS:-100}" 2>&1 | tee "$out/sampling.log"
fi
if [ "$what" = ttq ]; then  # the two pairs of curves side by side, each after its own reference run, like the CPU runs
  for pair in minegan++,minegan++:aug transfergan,transfergan:aug; do
    timeout "${TTQ_S:-420}" python3 benchmarks/time_to_quality.py --device cuda --threads 4 --scale 10 --every 200 --curves "$pair" \
      --out "/tmp/ttq-${pair%%,*}" --section unused > "/tmp/ttq-${pair%%,*}.log" 2>&1 &
  done
  wait
  for d in /tmp/ttq-minegan++ /tmp/ttq-transfergan; do
    tail -3 "$d.log"
    for f in "$d"/*.json; do  # names without '+': the device tool returns only [A-Za-z0-9._-] names
      case $f in *.partial.json) [ -e "${f%.partial.json}.json" ] && continue;; esac
      cp "$f" "$out/$(echo "$(basename "$d")-$(basename "$f")" | sed 's/+/p/g')"
    done
  done
  ls "$out"
fi
[ "$what" = ttq ] || cp docs/benchmarks.md "$out/"
