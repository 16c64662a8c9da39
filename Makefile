# loopline: `make demo` runs the whole lifecycle on embedded defaults; `make test` runs the tests.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
export GX_ANALYTICS_ENABLED ?= false
export MLFLOW_ENABLE_TELEMETRY ?= false
export DO_NOT_TRACK ?= 1

.PHONY: install demo test reliability lint format bench up down image up-compose down-compose clean

install: $(VENV)/.installed

# torch==2.13.0 first: it is a CPU build on this machine's disk (seconds); an unpinned torch would pull a
# 5.5 GB CUDA build. A machine that already has a torch (e.g. a CUDA build on a GPU box) keeps it.
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[dev]'
	touch $@

# The loop twice on embedded defaults: a first batch (trained, promoted, served), then a drifted batch
# (drift detected against the champion, retrained, evaluated against it, promoted, hot-swapped into serving).
DRIFTED := --set synthetic.seed=1 --set synthetic.id_offset=1000000 --set 'synthetic.drift_columns=[f00,f03,f06,f09,f12,segment]' \
	--set synthetic.drift_mean_shift=1.0 --set synthetic.drift_category_mix=0.5
demo: install
	$(VENV)/bin/loopline run --set synthetic.bad_fraction=0.01
	$(VENV)/bin/loopline run --set synthetic.bad_fraction=0.01 $(DRIFTED)

# tests/e2e/test_loop.py runs in its own process: it starts its own Prefect stack, and Prefect's events client is
# process-wide (bound to the first API it met), so after the session server it would emit into the void.
test: install
	$(VENV)/bin/pytest -q -p no:cacheprovider tests --ignore=tests/e2e/test_loop.py
	$(VENV)/bin/pytest -q -p no:cacheprovider tests/e2e/test_loop.py

# the reliability suite's full counts (kill loops x20/x10/x5, 20% S3 faults); `make test` runs a few rounds of each
reliability: install
	LOOPLINE_RELIABILITY_FULL=1 $(VENV)/bin/pytest -q -p no:cacheprovider tests/reliability

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# every benchmark, each side by side with its peer (drift prints how to create its Evidently side venv)
BENCHES := data_plane training promotion serving drift lifecycle
bench: install
	for b in $(BENCHES); do $(PY) -m bench $$b || exit 1; done

up: install
	$(VENV)/bin/loopline up

down: install
	$(VENV)/bin/loopline down

IMAGE ?= ghcr.io/loopline/loopline
IMAGE_VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
VARIANT ?= cpu
ENV_FILE ?=

# the image (needs a Docker engine); VARIANT=cuda builds the -cuda tag for the gpu pool
image:
	docker build --build-arg VARIANT=$(VARIANT) -t $(IMAGE):$(IMAGE_VERSION)$(if $(filter cuda,$(VARIANT)),-cuda) .

# the whole platform in containers (infra/compose.yaml); ENV_FILE: a filled copy of infra/compose/env.example
up-compose: install
	$(VENV)/bin/loopline up --compose $(if $(ENV_FILE),--env-file $(ENV_FILE))

down-compose: install
	$(VENV)/bin/loopline down --compose

clean:
	rm -rf .loopline
