# make demo: install into .venv and run the main job (SimCLR on Fashion-MNIST, ~10 CPU-minutes of training).
# make test: install into .venv and run the test suite.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch/torchvision pinned for the install step only (the package itself accepts a range, see pyproject.toml)
TORCH ?= torch==2.14.1 torchvision==0.29.1

.PHONY: install demo test bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q --no-cache-dir $(TORCH)
	$(BIN)/pip install -q --no-cache-dir -e ".[dev]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/selfsup demo --minutes $${DEMO_MINUTES:-10}

test: install
	$(BIN)/python -m pytest

bench: install
	$(BIN)/python benchmarks/augment_speed.py
	$(BIN)/python benchmarks/train_speed.py
	$(BIN)/python benchmarks/simclr_fashion_mnist.py

clean:
	rm -rf $(VENV) .pytest_cache
