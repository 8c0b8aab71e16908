# One command per job: `make test` and (with the training engine) `make demo` do all the set-up
# on a fresh machine: a .venv, torch (CPU build where nvidia-smi is absent, CUDA build where it is
# present), the project and its extras, and the Debian packages the tests need.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
CONSTRAINTS := constraints/cpu.txt
TORCH_VERSION := 2.13.0
# Extra pip arguments for torch, e.g. TORCH_PIP_ARGS="--index-url <your CPU wheel index>" on a
# CPU machine that has no local torch wheel.
TORCH_PIP_ARGS ?=
HAS_GPU := $(shell nvidia-smi -L >/dev/null 2>&1 && echo 1)
PYTEST_ARGS ?=
GPUS := $(shell nvidia-smi -L 2>/dev/null | grep -c GPU)
# the demo's ranks: 2 (on a GPU machine, at most one per GPU)
NPROC ?= $(if $(HAS_GPU),$(shell echo $$(( $(GPUS) < 2 ? $(GPUS) : 2 ))),2)
UI_PORT ?= 5000
MLFLOW_TRACKING_URI ?= sqlite:///$(CURDIR)/mlflow.db
export MLFLOW_TRACKING_URI
export DS_ACCELERATOR ?= $(if $(HAS_GPU),cuda,cpu)
export DS_BUILD_OPS ?= 0
export MLFLOW_DISABLE_TELEMETRY ?= true
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: help venv install test test-fast lint format clean demo ui

help:
	@echo "make test       set up everything the tests need, then run the whole suite"
	@echo "make test-fast  the unit tests only (no services, no training)"
	@echo "make demo       set up training, then train a LieRE ViT on embedded digits (2 DeepSpeed ranks)"
	@echo "make ui         the MLflow UI for this checkout's runs on http://127.0.0.1:$(UI_PORT)"
	@echo "make lint       ruff check and ruff format --check"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# torch first and pinned: every later install runs under the same constraints file.
$(VENV)/.torch: | $(BIN)/python
ifeq ($(HAS_GPU),1)
	@echo "nvidia-smi found: installing the CUDA build of torch $(TORCH_VERSION)"
else
	@echo "no GPU: installing the CPU build of torch $(TORCH_VERSION)"
endif
	$(PIP) install -q -c $(CONSTRAINTS) torch==$(TORCH_VERSION) $(TORCH_PIP_ARGS)
	touch $@

venv: $(VENV)/.torch

# Debian packages FFCV compiles against (its extension links OpenCV and libjpeg-turbo); once per
# machine, skipped with a message where we are not root or there is no apt-get.
FFCV_DEBS := pkg-config libopencv-dev libturbojpeg0-dev
$(VENV)/.system: | $(BIN)/python
	@if dpkg -s $(FFCV_DEBS) >/dev/null 2>&1; then \
		touch $@; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $(FFCV_DEBS) && touch $@; \
	else \
		echo "not root or no apt-get: install $(FFCV_DEBS) yourself, or the ffcv extra will not build"; \
	fi

# Debian packages of the cluster tests (tests/cluster start a real two-node Slurm cluster with munge
# on this machine); once per machine, skipped with a message where we are not root or there is no
# apt-get (the cluster tests then skip, except under CI=true, where they fail).
SLURM_DEBS := slurm-wlm slurmctld slurmd slurm-client munge
$(VENV)/.slurm: | $(BIN)/python
	@if dpkg -s $(SLURM_DEBS) >/dev/null 2>&1; then \
		touch $@; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $(SLURM_DEBS) && touch $@; \
	else \
		echo "not root or no apt-get: install $(SLURM_DEBS) yourself, or the cluster tests skip"; \
	fi

# The data extras: webdataset/wids, FFCV (built from source against the Debian packages above) and
# DALI (nvidia-dali-cuda130: its CPU pipelines run without a driver).
$(VENV)/.test: $(VENV)/.torch pyproject.toml | $(VENV)/.system
	$(PIP) install -q --no-build-isolation -c $(CONSTRAINTS) -e ".[test,train,data,ffcv,dali]"
	touch $@

# What the demo needs: training (DeepSpeed, MLflow) and the webdataset pipeline.
$(VENV)/.demo: $(VENV)/.torch pyproject.toml
	$(PIP) install -q --no-build-isolation -c $(CONSTRAINTS) -e ".[train,data]"
	touch $@

demo: $(VENV)/.demo
	OMP_NUM_THREADS=$(if $(HAS_GPU),4,1) $(BIN)/torchrun --standalone --nproc_per_node $(NPROC) \
		launch/train.py configs/demo.yaml tracking.run_name=demo-$$(date +%Y%m%d-%H%M%S)
	@echo "every run of this checkout: make ui, then http://127.0.0.1:$(UI_PORT)/#/?workflowType=machine_learning"

ui: $(VENV)/.demo
	@echo "MLflow UI on http://127.0.0.1:$(UI_PORT) for $(MLFLOW_TRACKING_URI) (Ctrl-C stops it)"
	$(BIN)/mlflow server --backend-store-uri $(MLFLOW_TRACKING_URI) --host 127.0.0.1 --port $(UI_PORT) --workers 1

install: $(VENV)/.test

test: $(VENV)/.test $(VENV)/.slurm
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: $(VENV)/.test
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

lint: $(VENV)/.test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(VENV)/.test
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
