# loopline's image: the `loopline` CLI, Prefect workers, the model server and the metrics exporter, with the
# project checkout at /opt/loopline (prefect.yaml's pull step sets the working directory from
# $LOOPLINE_PROJECT_DIR, so a process worker in this image finds every deployment's entrypoint).
#
#   make image                      # ghcr.io/loopline/loopline:0.1.0       (CPU torch)
#   make image VARIANT=cuda         # ghcr.io/loopline/loopline:0.1.0-cuda  (CUDA torch, for the gpu pool)
#
# Run it (the same commands infra/compose.yaml and infra/k8s use):
#   worker:       prefect worker start --pool cpu --type process --with-healthcheck   (or --pool gpu)
#   model server: python -m loopline.serving --model M --host 0.0.0.0 --port 8080 --home /var/lib/loopline
#   exporter:     python -m loopline.monitoring.exporter --host 0.0.0.0 --port 9101
#   the demo:     make demo          (make takes VENV=/opt/venv from the environment, so it installs nothing)
#
# Base: python:3.11.15-slim-bookworm, pinned by exact tag, not digest: the official image's tags are
# rebuilt with Debian's security updates, and no registry can be reached from the machine this was written
# on to read the current digest. Pin one with `--build-arg BASE_IMAGE=python:3.11.15-slim-bookworm@sha256:...`
# (`docker buildx imagetools inspect python:3.11.15-slim-bookworm` prints it).
ARG BASE_IMAGE=python:3.11.15-slim-bookworm

# ---- builder: a venv with torch first, then the project's dependencies, then the project (editable) ----------
FROM ${BASE_IMAGE} AS builder

# cpu: torch's CPU build from its CPU index (what the Makefile installs first; an unpinned torch from PyPI
#      is a CUDA build of several GB).
# cuda: torch 2.13.0 from PyPI, whose Linux x86_64 wheel is the CUDA 13.0 build (its metadata pins
#      cuda-toolkit 13.0.3, cuDNN 9.20, NCCL 2.29.7 as wheels): the image needs no CUDA base, only an NVIDIA
#      driver >= 580 on the host and the NVIDIA Container Toolkit (compose's device reservation, k8s's
#      nvidia.com/gpu). Another CUDA build: --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128.
ARG VARIANT=cpu
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=""

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/venv/bin:$PATH

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

RUN python -m venv /opt/venv

RUN case "$VARIANT" in \
      cpu) index="${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}" ;; \
      cuda) index="${TORCH_INDEX_URL:-https://pypi.org/simple}" ;; \
      *) echo "VARIANT must be cpu or cuda, not '$VARIANT'" >&2; exit 2 ;; \
    esac; \
    pip install --no-cache-dir --index-url "$index" "torch==${TORCH_VERSION}" \
    && python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"

# The dependencies alone first (read from pyproject.toml), so a change to the code reuses this layer.
WORKDIR /opt/loopline
COPY pyproject.toml README.md ./
# plus the extras of the kubernetes and docker workers (a kubernetes worker runs with --install-policy never)
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
print('\n'.join(p['dependencies'] + p['optional-dependencies']['kubernetes'] + p['optional-dependencies']['docker']))" \
      > /tmp/requirements.txt \
    && pip install --no-cache-dir -r /tmp/requirements.txt

COPY . .
RUN pip install --no-cache-dir --no-deps --editable . \
    && python -m compileall -q loopline flows tasks blocks bench \
    && touch /opt/venv/.installed

# ---- runtime: the venv and the checkout at the same paths, a non-root user, no compilers ----------------------
FROM ${BASE_IMAGE} AS runtime

ARG VARIANT=cpu
LABEL org.opencontainers.image.title="loopline" \
      org.opencontainers.image.description="loopline: an MLOps lifecycle on Prefect 3 (workers, model server, exporter)" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.licenses="Apache-2.0" \
      io.loopline.variant="${VARIANT}"

# VENV: the Makefile's `VENV ?= .venv` reads it, and /opt/venv/.installed is newer than pyproject.toml, so
# `make demo` runs the loop with this venv instead of installing one under the (read-only) checkout.
ENV PATH=/opt/venv/bin:$PATH \
    VIRTUAL_ENV=/opt/venv \
    VENV=/opt/venv \
    LOOPLINE_PROJECT_DIR=/opt/loopline \
    LOOPLINE_HOME=/var/lib/loopline \
    PREFECT_HOME=/var/lib/loopline/prefect \
    LOOPLINE_IMAGE_VARIANT=${VARIANT} \
    LOOPLINE_HEALTH_URL=http://127.0.0.1:8080/health \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    MLFLOW_ENABLE_TELEMETRY=false \
    GX_ANALYTICS_ENABLED=false \
    DO_NOT_TRACK=1

# the data plane's allocator, as `loopline up` gives its workers (loopline/data/allocator.py says why)
ENV ARROW_DEFAULT_MEMORY_POOL=system \
    MALLOC_ARENA_MAX=2

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# make: for `make demo` in the container (bookworm's make, pinned to its version there).
RUN apt-get update \
    && apt-get install -y --no-install-recommends make=4.3-4.1 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 10001 loopline \
    && useradd --uid 10001 --gid 10001 --home-dir /home/loopline --create-home --shell /usr/sbin/nologin loopline \
    && install -d -o 10001 -g 10001 -m 0750 /var/lib/loopline

COPY --from=builder /opt/venv /opt/venv
COPY --from=builder /opt/loopline /opt/loopline

WORKDIR /opt/loopline
USER 10001:10001
EXPOSE 8080 9101

# One check for every role this image runs: a worker started with --with-healthcheck and the model server both
# answer GET :8080/health (200 = polling / a champion loaded); a container with another role sets
# LOOPLINE_HEALTH_URL (the exporter: http://127.0.0.1:9101/health) or its own healthcheck (compose, k8s).
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ['LOOPLINE_HEALTH_URL'], timeout=4)"]

CMD ["loopline", "--help"]
