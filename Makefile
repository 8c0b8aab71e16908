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
# CPU machine that has no local torch wheel (on a GPU machine: the CUDA build's index, below).
HAS_GPU := $(shell nvidia-smi -L >/dev/null 2>&1 && echo 1)
# On a GPU machine the driver decides the builds: nvidia-smi's "CUDA Version: X.Y" is the newest CUDA
# the driver runs. torch's CUDA build comes from download.pytorch.org (cu130 for CUDA 13 drivers, cu126
# for CUDA 12 ones; TORCH_CUDA=cu128 etc. to choose), DALI's wheel by the major version
# (nvidia-dali-cuda130 or -cuda120; its CPU pipelines run anywhere, so CPU machines take cuda130).
CUDA_DRIVER := $(shell nvidia-smi 2>/dev/null | sed -n 's/.*CUDA Version: *\([0-9][0-9]*\.[0-9]*\).*/\1/p' | head -n 1)
CUDA_MAJOR := $(firstword $(subst ., ,$(CUDA_DRIVER)))
TORCH_CUDA ?= $(if $(filter 12,$(CUDA_MAJOR)),cu126,$(if $(CUDA_MAJOR),cu130,))
DALI_EXTRA := $(if $(filter 12,$(CUDA_MAJOR)),dali-cuda120,dali)
ifeq ($(HAS_GPU),1)
TORCH_PIP_ARGS ?= --index-url https://download.pytorch.org/whl/$(TORCH_CUDA)
else
TORCH_PIP_ARGS ?=
endif
PYTEST_ARGS ?=
# workers for the unit tests: one per core, at most 8 (on one core: none, the tests run in-process)
TEST_WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 1); echo $$(( n > 8 ? 8 : n > 1 ? n : 0 )))
# one pytest pass; exit status 5 (no test selected) counts as passed
pytest_pass = $(BIN)/python -m pytest $(1) $(PYTEST_ARGS) || [ $$? -eq 5 ]
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

.PHONY: help venv install test test-fast lint format clean demo ui gpu-choices

help:
	@echo "make test       set up everything the tests need, then run the whole suite"
	@echo "make test-fast  the unit tests only (no services, no training)"
	@echo "make demo       set up training, then train a LieRE ViT on embedded digits (2 DeepSpeed ranks)"
	@echo "make ui         the MLflow UI for this checkout's runs on http://127.0.0.1:$(UI_PORT)"
	@echo "make lint       ruff check and ruff format --check"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# What this machine gets (no install): `make gpu-choices`.
gpu-choices:
ifeq ($(HAS_GPU),1)
	@if [ -z "$(CUDA_MAJOR)" ] || [ "$(CUDA_MAJOR)" -lt 12 ]; then \
		echo "error: nvidia-smi reports CUDA '$(CUDA_DRIVER)': torch $(TORCH_VERSION) needs a driver for CUDA 12 or newer (525+); update the driver" >&2; exit 2; fi
	@echo "nvidia-smi: driver for CUDA $(CUDA_DRIVER): torch $(TORCH_VERSION) from the $(TORCH_CUDA) build ($(TORCH_PIP_ARGS)), DALI extra '$(DALI_EXTRA)', DS_ACCELERATOR=cuda"
else
	@echo "no nvidia-smi: the CPU build of torch $(TORCH_VERSION), DALI extra '$(DALI_EXTRA)' (CPU pipelines), DS_ACCELERATOR=cpu"
endif

# torch first and pinned: every later install runs under the same constraints file. On a GPU machine
# torch must then see the GPUs, else the install stops here with the reason (not later as a CPU run).
# setuptools/wheel: the --no-build-isolation builds below need them (a Python >= 3.12 venv has none).
$(VENV)/.torch: | $(BIN)/python
	@$(MAKE) -s gpu-choices
	$(PIP) install -q -c $(CONSTRAINTS) torch==$(TORCH_VERSION) $(TORCH_PIP_ARGS)
	$(PIP) install -q -c $(CONSTRAINTS) setuptools wheel
ifeq ($(HAS_GPU),1)
	$(BIN)/python -c "import sys, torch; ok = torch.cuda.is_available(); print(f'torch {torch.__version__} (CUDA {torch.version.cuda}): {torch.cuda.device_count()} GPU(s)'); sys.exit(0 if ok else 'torch cannot use the GPUs nvidia-smi lists: check the driver against the build (TORCH_CUDA=...)')"
endif
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
# DALI (the wheel of the driver's CUDA major version, see above; its CPU pipelines run without a driver).
$(VENV)/.test: $(VENV)/.torch pyproject.toml | $(VENV)/.system
	$(PIP) install -q --no-build-isolation -c $(CONSTRAINTS) -e ".[test,train,data,ffcv,$(DALI_EXTRA)]"
	touch $@

# What the demo needs: training (DeepSpeed, MLflow) and the webdataset pipeline.
$(VENV)/.demo: $(VENV)/.torch pyproject.toml
	$(PIP) install -q --no-build-isolation -c $(CONSTRAINTS) -e ".[train,data]"
	touch $@

# DeepSpeed compiles its CPU shared-memory op (deepspeed_shm_comm) at the first deepspeed.initialize on
# a CPU machine: 1-2 min on 2 cores, into $$TORCH_EXTENSIONS_DIR (default: the venv's torch_extensions).
# Done here, once, after DeepSpeed is installed (by .demo or .test, listed before it), so that neither
# the first training run nor the first test waits for a compiler; a build lock left there by a killed
# process is removed first (liere/engine/extensions.py). GPU machines do not build it.
$(VENV)/.cpu_ops:
ifneq ($(HAS_GPU),1)
	$(BIN)/python -m liere.engine.extensions
endif
	touch $@

demo: $(VENV)/.demo $(VENV)/.cpu_ops
	OMP_NUM_THREADS=$(if $(HAS_GPU),4,1) $(BIN)/torchrun --standalone --nproc_per_node $(NPROC) \
		launch/train.py configs/demo.yaml tracking.run_name=demo-$$(date +%Y%m%d-%H%M%S)
	@echo "every run of this checkout: make ui, then http://127.0.0.1:$(UI_PORT)/#/?workflowType=machine_learning"

ui: $(VENV)/.demo
	@echo "MLflow UI on http://127.0.0.1:$(UI_PORT) for $(MLFLOW_TRACKING_URI) (Ctrl-C stops it)"
	$(BIN)/mlflow server --backend-store-uri $(MLFLOW_TRACKING_URI) --host 127.0.0.1 --port $(UI_PORT) --workers 1

install: $(VENV)/.test $(VENV)/.cpu_ops

# The suite in two passes. The unit tests (not marked slow: no services, no deadlines) run on
# TEST_WORKERS pytest-xdist workers, one torch thread each (tests/conftest.py); the slow ones (trainings
# of several ranks, the Slurm cluster, MLflow servers, timed faults) then run one at a time, as each
# expects the cores to itself. A pass that selects nothing (PYTEST_ARGS naming one file) is not a failure.
test: $(VENV)/.test $(VENV)/.slurm $(VENV)/.cpu_ops
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(call pytest_pass,-m "not slow" -n $(TEST_WORKERS))
	$(call pytest_pass,-m slow)

test-fast: $(VENV)/.test
	$(BIN)/python -m pytest -m "not slow" -n $(TEST_WORKERS) $(PYTEST_ARGS)

lint: $(VENV)/.test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(VENV)/.test
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
