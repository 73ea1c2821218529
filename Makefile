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
# Test processes (pytest-xdist): most tests wait on subprocesses (kfp.local tasks, servers), so two
# share two cores well. A test file runs whole in one process (its module fixtures are built once).
# Files start in collection order, which tests/conftest.py sets slowest tier first, not xdist's default
# (most tests first), which would leave the long end-to-end files for last. Each session gets its own
# base temp folder (tests/conftest.py), so several runs at once do not clean up each other's files.
PYTEST_WORKERS ?= 2
PYTEST := $(PY) -m pytest -n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder

.DEFAULT_GOAL := help
.PHONY: help install run test test-unit test-integration test-component test-pipeline test-e2e test-faults compile clean bench-scale bench-throughput \
        images image-cpu image-gpu push test-docker wheelhouse base-image docker-engine

# Container images (images/README.md). Tags: the package version, under the prefix the pipeline's
# components name (components/images.py), so a built image is exactly what the compiled spec runs.
VERSION := $(shell sed -n 's/^__version__ *= *"\([^"]*\)".*/\1/p' kdflow/__init__.py)
IMAGE_PREFIX := $(shell sed -n 's/^IMAGE_PREFIX *= *"\([^"]*\)".*/\1/p' components/images.py)
CPU_IMAGE := $(IMAGE_PREFIX)/kdflow-cpu:$(VERSION)
GPU_IMAGE := $(IMAGE_PREFIX)/kdflow-gpu:$(VERSION)
# Bases. Here: a Debian bookworm base made from Debian's packages (no registry is reachable), and
# the CPU image as the GPU image's stand-in base (python3 + torch, no CUDA; `make push` refuses it).
# Elsewhere: CPU_BASE=python:3.11-slim-bookworm GPU_BASE=pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime
LOCAL_BASE := kdflow-base:bookworm
CPU_BASE ?= $(LOCAL_BASE)
GPU_BASE ?= $(CPU_IMAGE)
IMAGE_CONTEXT := build/images
DOCKER ?= docker
# The classic builder: BuildKit/buildx is not installed here, and nothing in the Dockerfiles needs it.
DOCKER_BUILD = DOCKER_BUILDKIT=0 $(DOCKER) build --build-arg VERSION=$(VERSION) \
	--build-arg REVISION=$(shell git rev-parse --short HEAD 2>/dev/null || echo unknown) \
	--build-arg PYTHON_VERSION=$(shell $(PY) -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)

help: ## Show this help
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z0-9_-]+:.*## / {printf "  \033[36m%-15s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)
	@echo "  variables: DATA=folder TEACHER=uri CONFIG=file.yaml (for run), PYTEST_ARGS=... PYTEST_WORKERS=n (for test*),"
	@echo "             CPU_BASE=image GPU_BASE=image (for images), REGISTRY=host/prefix (for push)"

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
	$(PY) -m pip install --quiet "$(TORCH_SPEC)" 2>&1 | grep -v "^WARNING: Location" || true
	$(PY) -m pip install --quiet -e ".[test]" 2>&1 | grep -v "^WARNING: Location" || true
	$(PY) -c "import torch, kfp, mlflow, kdflow, moto, xdist" || { echo "install failed: see pip's output above"; exit 1; }
	@touch $(STAMP)

install: $(STAMP) ## Create .venv and install kdflow and its test tools (only what is missing)

run: install ## Run the pipeline end to end locally (embedded default: scikit-learn digits, a trained teacher)
	$(KDFLOW) run $(if $(DATA),--data "$(DATA)") $(if $(TEACHER),--teacher "$(TEACHER)") $(if $(CONFIG),--config "$(CONFIG)")

test: install ## Run every test tier: unit, integration, component (kfp.local), pipeline (spec), end-to-end, faults
	$(PYTEST) $(PYTEST_ARGS)

test-unit: install ## Unit tests only (fast)
	$(PYTEST) tests/unit $(PYTEST_ARGS)

test-integration: install ## Library code against real processes: torchrun ranks, the S3 server, fresh interpreters
	$(PYTEST) tests/integration $(PYTEST_ARGS)

test-component: install ## Components through kfp.local
	$(PYTEST) tests/component $(PYTEST_ARGS)

test-pipeline: install ## Compile the pipeline and check the spec
	$(PYTEST) tests/pipeline $(PYTEST_ARGS)

test-e2e: install ## Whole pipeline against real MLflow and S3 servers on loopback; the benchmarks' commands
	$(PYTEST) tests/e2e $(PYTEST_ARGS)

test-faults: install ## Fault suite: killed steps, S3 behind a fault proxy, races, hostile input (docs/reliability.md)
	$(PYTEST) tests/faults $(PYTEST_ARGS)

bench-scale: install ## Peak RSS of preprocess, teacher inference, training at 10k/40k/160k images (CPU; SIZES=a,b,c)
	$(KDFLOW) bench scale $(if $(SIZES),--sizes $(SIZES))

bench-throughput: install ## Training and labelling images/s vs the models' ceilings (GPU; PROFILE=cpu-reduced on a CPU)
	$(KDFLOW) bench throughput --profile $(or $(PROFILE),gpu)

compile: install ## Write the pipeline spec for a cluster to pipeline.yaml
	$(KDFLOW) compile --output pipeline.yaml

images: image-cpu image-gpu ## Build both images (make images GPU_BASE=pytorch/pytorch:... for a real GPU image)
	@# Drop the untagged images that these builds superseded (the build cache is not among them).
	@$(DOCKER) image prune --force --filter label=org.opencontainers.image.title=kdflow-cpu >/dev/null
	@$(DOCKER) image prune --force --filter label=org.opencontainers.image.title=kdflow-gpu >/dev/null
	@$(DOCKER) image prune --force --filter label=org.opencontainers.image.title=kdflow-cpu-deps >/dev/null
	@$(DOCKER) image ls --format '  {{.Repository}}:{{.Tag}}  {{.Size}}' | grep -E '$(IMAGE_PREFIX)/kdflow-(cpu|gpu):$(VERSION) ' || true

image-cpu: wheelhouse $(if $(filter $(LOCAL_BASE),$(CPU_BASE)),base-image) ## Build the CPU image on CPU_BASE
	@# The dependency stage is tagged too: it is the next build's cache, and `make images` prunes only
	@# the untagged (superseded) ones.
	$(DOCKER_BUILD) --build-arg BASE_IMAGE=$(CPU_BASE) -f images/cpu/Dockerfile --target deps \
	  -t $(IMAGE_PREFIX)/kdflow-cpu-deps:cache $(IMAGE_CONTEXT)
	$(DOCKER_BUILD) --build-arg BASE_IMAGE=$(CPU_BASE) -f images/cpu/Dockerfile -t $(CPU_IMAGE) $(IMAGE_CONTEXT)

image-gpu: wheelhouse $(if $(filter $(CPU_IMAGE),$(GPU_BASE)),image-cpu) ## Build the GPU image on GPU_BASE (default: the CPU image as a stand-in)
	@if [ "$(GPU_BASE)" = "$(CPU_IMAGE)" ]; then echo "note: $(GPU_IMAGE) is built on the CPU image as a stand-in base (no CUDA); make push refuses it"; fi
	$(DOCKER_BUILD) --build-arg BASE_IMAGE=$(GPU_BASE) -f images/gpu/Dockerfile -t $(GPU_IMAGE) $(IMAGE_CONTEXT)

wheelhouse: install ## Build every wheel the images install into build/images (pip's cache makes it fast)
	PY=$(PY) TORCH_SPEC="$(TORCH_SPEC)" images/wheelhouse.sh $(IMAGE_CONTEXT)

base-image: ## Build the local Debian bookworm base from Debian's packages (debootstrap, as root; kept once built)
	images/debian-base.sh $(LOCAL_BASE)

docker-engine: ## Start a Docker engine if none answers (installs Debian's docker.io if missing; as root)
	images/docker-engine.sh

push: ## Tag and push both images: make push REGISTRY=registry.example.com/ml (as kdflow compile --image-prefix names them)
	@test -n "$(REGISTRY)" || { echo "usage: make push REGISTRY=registry.example.com/ml"; exit 2; }
	@base=$$($(DOCKER) image inspect --format '{{index .Config.Labels "org.opencontainers.image.base.name"}}' $(GPU_IMAGE)) && \
	 if [ "$$base" = "$(CPU_IMAGE)" ] && [ -z "$(ALLOW_STANDIN_GPU)" ]; then \
	   echo "$(GPU_IMAGE) was built on the CPU stand-in base (no CUDA): rebuild it with make images GPU_BASE=<a CUDA PyTorch image>" \
	        "(or push it anyway with ALLOW_STANDIN_GPU=1)"; exit 1; fi
	$(DOCKER) tag $(CPU_IMAGE) $(REGISTRY)/kdflow-cpu:$(VERSION)
	$(DOCKER) push $(REGISTRY)/kdflow-cpu:$(VERSION)
	$(DOCKER) tag $(GPU_IMAGE) $(REGISTRY)/kdflow-gpu:$(VERSION)
	$(DOCKER) push $(REGISTRY)/kdflow-gpu:$(VERSION)

test-docker: install docker-engine images ## The whole pipeline in the images (kfp.local.DockerRunner, MLflow + S3 on loopback)
	$(PYTEST) tests/docker $(PYTEST_ARGS)

clean: ## Remove local run state (.kdflow: data, teachers, cache, MLflow store) and build leftovers
	rm -rf .kdflow pipeline.yaml .pytest_cache build *.egg-info
	@echo "(images and the base image stay in Docker: $(DOCKER) rmi $(CPU_IMAGE) $(GPU_IMAGE) $(LOCAL_BASE))"
