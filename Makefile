# The commands: `make demo`, `make test`, `make shell`. Each sets up .venv first.
# `make image` builds the Docker image; `make test-image` builds it from a local base and runs it.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CHECKOV := .venv-checkov/bin/checkov
DEMO_DIR ?= loadbench-data/demo
# The image `make image` tags: set it once, e.g. `make image IMAGE=REGISTRY/loadbench:0.1.0`, and give
# the same name to kustomization.yaml's `images:` (README, "On a cluster", step 1).
IMAGE ?= ghcr.io/loadbench/loadbench:0.1.0
# BASE_IMAGE=... overrides the Dockerfile's FROM (its ARG BASE_IMAGE); ENGINE=docker|podman|buildah
# picks the builder; BUILD_FLAGS go to it (e.g. --isolation chroot where no runtime can run).
BASE_IMAGE ?=
ENGINE ?=
BUILD_FLAGS ?=

.PHONY: demo test test-slow test-gpu test-image image lint setup shell clean

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
	$(BIN)/loadbench report $(DEMO_DIR)/results --out $(DEMO_DIR)/report
	@echo "demo report: $(abspath $(DEMO_DIR))/report/report.html"

# A shell with the venv first on PATH: `loadbench`, `python` and the scripts work as the README shows.
# The venv is activated after ~/.bashrc, so a pyenv or conda PATH set there cannot shadow it.
shell: $(VENV)/.installed
	@printf '[ -f ~/.bashrc ] && . ~/.bashrc\n. %s/activate\necho "loadbench shell: .venv is active (python is %s/python); exit to leave"\n' \
	  "$(abspath $(BIN))" "$(abspath $(BIN))" > $(VENV)/shellrc
	@bash --rcfile $(VENV)/shellrc -i

lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/yamllint -s *.yaml .yamllint
	$(BIN)/hadolint Dockerfile

test: setup
	$(BIN)/ruff check .
	$(BIN)/mypy
	PATH=$(abspath $(BIN)):$$PATH:$(abspath .venv-checkov/bin) $(BIN)/python -m pytest -q -m "not slow" tests/unit tests/e2e

# The slower tier CI runs after `make test` (~5 minutes): benchmarks/gpu_run.sh's rotate and s3
# phases on the CPU (s3 against a real SeaweedFS server), TP=4 on gloo, node ceilings reused,
# the report on real and fuzzed folders.
test-slow: setup
	PATH=$(abspath $(BIN)):$$PATH:$(abspath .venv-checkov/bin) $(BIN)/python -m pytest -q tests/slow
	PATH=$(abspath $(BIN)):$$PATH:$(abspath .venv-checkov/bin) $(BIN)/python -m pytest -q -m slow tests/unit tests/e2e

# On a GPU machine: the tier CI cannot run (real CUDA loads with every peer).
test-gpu: $(VENV)/.installed
	$(BIN)/python -m pytest -q tests/gpu

# Docker where its daemon answers, else podman, else buildah (a docker client alone is not enough).
image:
	@engine="$(ENGINE)"; \
	if [ -z "$$engine" ]; then \
	  if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then engine=docker; \
	  elif command -v podman >/dev/null 2>&1; then engine=podman; \
	  elif command -v buildah >/dev/null 2>&1; then engine=buildah; \
	  else echo "make image: no docker daemon, podman or buildah here (Debian: apt-get install buildah)" >&2; \
	    exit 2; fi; fi; \
	case "$$engine" in buildah) verb=bud;; *) verb=build;; esac; \
	set -x; "$$engine" "$$verb" $(BUILD_FLAGS) $(if $(BASE_IMAGE),--build-arg BASE_IMAGE=$(BASE_IMAGE)) \
	  -t $(IMAGE) -f Dockerfile .

# The image, built for real from a local Debian base with CPU torch and run as the Jobs run it
# (needs root, buildah, podman and debootstrap; .ci/run installs them). See tests/image/README.md.
test-image: $(VENV)/.installed
	LOADBENCH_TEST_IMAGE=1 $(BIN)/python -m pytest -q -p no:cacheprovider tests/image

clean:
	rm -rf loadbench-data results report pvc .pytest_cache
