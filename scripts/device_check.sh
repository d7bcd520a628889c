#!/usr/bin/env bash
# The checks that need a GPU (CI has none), as one run on a machine with CUDA and the project's wheels in .whl/
# (Python 3.12 wheels of the packages that machine lacks; see docs/benchmarks.md "cuda"). Writes logs and the
# updated docs/benchmarks.md under $OUT (or ./device-out).
set -uo pipefail
out=${OUT:-device-out}
mkdir -p "$out"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD/.whl/site  # .whl/site: packages carried as folders (a trimmed MNIST)
fi
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu.txt"
python3 -c "import torch, api.main, worker.runner, cli.main, mnist, onnx2torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
timeout "${ENGINE_S:-300}" python3 benchmarks/engine_cuda.py --steps "${STEPS:-20}" 2>&1 | tee "$out/engine.log"
timeout "${SAMPLING_S:-240}" python3 benchmarks/sampling.py --device cuda --section sampling_cuda --reps "${REPS:-100}" 2>&1 | tee "$out/sampling.log"
cp docs/benchmarks.md "$out/"
