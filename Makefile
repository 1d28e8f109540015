# The two commands: `make demo` and `make test`. Each sets up .venv first.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CHECKOV := .venv-checkov/bin/checkov
DEMO_DIR ?= loadbench-data/demo

.PHONY: demo test lint setup clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch first, pinned: an unpinned torch would pull gigabytes of CUDA packages here.
$(VENV)/.installed: requirements.txt requirements-dev.txt | $(BIN)/python
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -r requirements.txt -r requirements-dev.txt
	touch $@

# checkov pins many packages of its own, so it lives in a separate environment.
$(CHECKOV):
	$(PY) -m venv .venv-checkov
	.venv-checkov/bin/pip install -q checkov

setup: $(VENV)/.installed $(CHECKOV)

demo: $(VENV)/.installed
	rm -rf $(DEMO_DIR)
	MODEL_ID=random/opt-tiny MODEL_PATH=$(DEMO_DIR)/model DEVICE=$${DEVICE:-auto} \
	  $(BIN)/python save_models.py
	MODEL_ID=random/opt-tiny MODEL_PATH=$(DEMO_DIR)/model RES_PATH=$(DEMO_DIR)/results \
	  CACHE_MODE=cold NUM_TRIALS=1 DEVICE=$${DEVICE:-auto} $(BIN)/python deserialize_benchmark.py >/dev/null

test: setup
	$(BIN)/ruff check .
	PATH=$$PATH:$(abspath .venv-checkov/bin) $(BIN)/python -m pytest -q

clean:
	rm -rf loadbench-data results .pytest_cache
