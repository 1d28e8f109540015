# The commands: `make demo`, `make test`, `make shell`. Each sets up .venv first.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CHECKOV := .venv-checkov/bin/checkov
DEMO_DIR ?= loadbench-data/demo

.PHONY: demo test test-gpu lint setup shell clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch first, pinned: an unpinned torch would pull gigabytes of CUDA packages here.
$(VENV)/.installed: requirements.txt requirements-dev.txt pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -r requirements.txt -r requirements-dev.txt
	$(BIN)/pip install -q --no-deps -e .
	touch $@

# checkov pins many packages of its own, so it lives in a separate environment.
$(CHECKOV):
	$(PY) -m venv .venv-checkov
	.venv-checkov/bin/pip install -q checkov

setup: $(VENV)/.installed $(CHECKOV)

demo: $(VENV)/.installed
	rm -rf $(DEMO_DIR)
	MODEL_ID=random/opt-tiny MODEL_PATH=$(DEMO_DIR)/model DEVICE=$${DEVICE:-auto} \
	  $(BIN)/loadbench save
	MODEL_ID=random/opt-tiny MODEL_PATH=$(DEMO_DIR)/model RES_PATH=$(DEMO_DIR)/results \
	  CACHE_MODE=cold NUM_TRIALS=1 CEILINGS=0 RESULT_LINES=0 DEVICE=$${DEVICE:-auto} $(BIN)/loadbench bench

# A shell with the venv first on PATH: `loadbench`, `python` and the scripts work as the README shows.
# The venv is activated after ~/.bashrc, so a pyenv or conda PATH set there cannot shadow it.
shell: $(VENV)/.installed
	@printf '[ -f ~/.bashrc ] && . ~/.bashrc\n. %s/activate\necho "loadbench shell: .venv is active (python is %s/python); exit to leave"\n' \
	  "$(abspath $(BIN))" "$(abspath $(BIN))" > $(VENV)/shellrc
	@bash --rcfile $(VENV)/shellrc -i

test: setup
	$(BIN)/ruff check .
	PATH=$(abspath $(BIN)):$$PATH:$(abspath .venv-checkov/bin) $(BIN)/python -m pytest -q tests/unit tests/e2e

# On a GPU machine: the tier CI cannot run (real CUDA loads with every peer).
test-gpu: $(VENV)/.installed
	$(BIN)/python -m pytest -q tests/gpu

clean:
	rm -rf loadbench-data results report pvc .pytest_cache
