# kdflow: `make run` and `make test` work on a fresh machine; each installs what is missing first.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
KDFLOW := $(VENV)/bin/kdflow
STAMP := $(VENV)/.installed
# The CPU wheel of this version is on these machines' disks; elsewhere pip fetches it from PyPI.
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help install run test test-unit test-component test-pipeline test-e2e compile clean

help: ## Show this help
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z0-9_-]+:.*## / {printf "  \033[36m%-15s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)
	@echo "  variables: DATA=folder TEACHER=uri CONFIG=file.yaml (for run), PYTEST_ARGS=... (for test*)"

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
	$(PY) -m pip install --quiet "$(TORCH_SPEC)" 2>&1 | grep -v "^WARNING: Location" || true
	$(PY) -m pip install --quiet -e ".[test]" 2>&1 | grep -v "^WARNING: Location" || true
	$(PY) -c "import torch, kfp, mlflow, kdflow, moto" || { echo "install failed: see pip's output above"; exit 1; }
	@touch $(STAMP)

install: $(STAMP) ## Create .venv and install kdflow and its test tools (only what is missing)

run: install ## Run the pipeline end to end locally (embedded default: scikit-learn digits, a trained teacher)
	$(KDFLOW) run $(if $(DATA),--data "$(DATA)") $(if $(TEACHER),--teacher "$(TEACHER)") $(if $(CONFIG),--config "$(CONFIG)")

test: install ## Run every test tier: unit, component (kfp.local), pipeline (spec), end-to-end
	$(PY) -m pytest $(PYTEST_ARGS)

test-unit: install ## Unit tests only (fast)
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

test-component: install ## Components through kfp.local
	$(PY) -m pytest tests/component $(PYTEST_ARGS)

test-pipeline: install ## Compile the pipeline and check the spec
	$(PY) -m pytest tests/pipeline $(PYTEST_ARGS)

test-e2e: install ## Whole pipeline against real MLflow and S3 servers on loopback
	$(PY) -m pytest tests/e2e $(PYTEST_ARGS)

compile: install ## Write the pipeline spec for a cluster to pipeline.yaml
	$(KDFLOW) compile --output pipeline.yaml

clean: ## Remove local run state (.kdflow: data, teachers, cache, MLflow store) and build leftovers
	rm -rf .kdflow pipeline.yaml .pytest_cache build *.egg-info
