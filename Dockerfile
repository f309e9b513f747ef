# syntax=docker/dockerfile:1
#
# Images of the emotion platform, one Dockerfile, several targets:
#
#   runtime      (default) capture, detector, classifier, recorder, dashboard — no TensorFlow
#   trainer      the RQ training worker: runtime + the [train] extra (TensorFlow, CPU)
#   trainer-gpu  the same on the official TensorFlow GPU image (CUDA), see docs/containers.md
#
#   docker build -t emotion-platform .                       # runtime
#   docker build --target trainer -t emotion-platform:trainer .
#
# The default model (models/default) is baked into every image and its checksum is verified at
# build time against metadata.json; nothing is downloaded when a container starts.

ARG PYTHON_IMAGE=python:3.11-slim
ARG TF_GPU_IMAGE=tensorflow/tensorflow:2.17.0-gpu

# ---------------------------------------------------------------------------------------------
# base: the OS layer shared by the builders and the final images
# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH
# libglib2.0-0: OpenCV (even headless) links against it on slim Debian.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libglib2.0-0 \
 && rm -rf /var/lib/apt/lists/*

# ---------------------------------------------------------------------------------------------
# builder: a virtualenv with the runtime dependencies, then the project itself
# ---------------------------------------------------------------------------------------------
FROM base AS builder
# A compiler for the few dependencies that may lack a wheel for this platform.
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/venv && pip install --upgrade pip
WORKDIR /src
# Dependencies first, read from pyproject.toml, so editing the code does not reinstall them.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
      > /tmp/requirements.txt \
 && pip install --no-cache-dir -r /tmp/requirements.txt
COPY shared ./shared
COPY services ./services
COPY trainer ./trainer
COPY emotion ./emotion
COPY analysis ./analysis
RUN pip install --no-cache-dir --no-deps . \
 && emotion --help >/dev/null

# builder-train: the same virtualenv plus the [train] extra (TensorFlow)
FROM builder AS builder-train
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']['train']))" \
      > /tmp/requirements-train.txt \
 && pip install --no-cache-dir -r /tmp/requirements-train.txt

# ---------------------------------------------------------------------------------------------
# model: the shipped default model, checksum-verified
# ---------------------------------------------------------------------------------------------
FROM base AS model
WORKDIR /opt/emotion/models/default
COPY models/default/ ./
# metadata.json carries the sha256 of model.tflite: build a sha256sum file from it and check it.
RUN python -c "import json; print(json.load(open('metadata.json'))['sha256'] + '  model.tflite')" > /tmp/model.sha256 \
 && sha256sum --check --strict /tmp/model.sha256

# ---------------------------------------------------------------------------------------------
# app-base: what runtime and trainer have in common (user, directories, model, settings)
# ---------------------------------------------------------------------------------------------
FROM base AS app-base
RUN groupadd --system --gid 10001 emotion \
 && useradd --system --uid 10001 --gid emotion --groups video --home-dir /home/emotion --create-home \
      --shell /usr/sbin/nologin emotion \
 && mkdir -p /var/lib/emotion/registry /var/lib/emotion/runs /var/lib/emotion/data /var/lib/emotion/dashboard \
 && chown -R emotion:emotion /var/lib/emotion
COPY --from=model /opt/emotion/models/default /opt/emotion/models/default
# The package is installed (not editable), so the shipped model's location is set explicitly.
ENV EMOTION_DEFAULT_MODEL_DIR=/opt/emotion/models/default \
    EMOTION_REGISTRY_DIR=/var/lib/emotion/registry
WORKDIR /var/lib/emotion/data
LABEL org.opencontainers.image.title="emotion-platform" \
      org.opencontainers.image.description="Real-time facial emotion recognition over Redis Streams"

# ---------------------------------------------------------------------------------------------
# trainer-gpu: the RQ worker on the TensorFlow GPU image (CUDA + cuDNN); build it explicitly with
#   docker build --target trainer-gpu .   or   docker compose --profile gpu build worker-gpu
# The base image already has TensorFlow, so pip only adds what is missing.
# ---------------------------------------------------------------------------------------------
FROM ${TF_GPU_IMAGE} AS trainer-gpu
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends libglib2.0-0 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 emotion \
 && useradd --system --uid 10001 --gid emotion --home-dir /home/emotion --create-home \
      --shell /usr/sbin/nologin emotion \
 && mkdir -p /var/lib/emotion/registry /var/lib/emotion/runs /var/lib/emotion/data \
 && chown -R emotion:emotion /var/lib/emotion
WORKDIR /src
COPY pyproject.toml ./
COPY shared ./shared
COPY services ./services
COPY trainer ./trainer
COPY emotion ./emotion
COPY analysis ./analysis
RUN python -m pip install --no-cache-dir ".[train]" \
 && python -c "import tensorflow as tf; print('TensorFlow', tf.__version__)" \
 && emotion --help >/dev/null
COPY --from=model /opt/emotion/models/default /opt/emotion/models/default
ENV EMOTION_DEFAULT_MODEL_DIR=/opt/emotion/models/default \
    EMOTION_REGISTRY_DIR=/var/lib/emotion/registry
WORKDIR /var/lib/emotion/data
USER emotion
# Healthy while an RQ worker registered from this container (its hostname) is alive in Redis.
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import socket; from shared.redis_conn import connect; from shared.settings import Settings; s = Settings(); c = connect(s.queue_redis_url or s.redis_url, socket_timeout=5); h = socket.gethostname().encode(); raise SystemExit(0 if any(c.hget(k, 'hostname') == h for k in c.smembers('rq:workers')) else 1)"]
CMD ["emotion", "worker"]

# ---------------------------------------------------------------------------------------------
# trainer: the RQ worker (CPU TensorFlow) on the slim base
# ---------------------------------------------------------------------------------------------
FROM app-base AS trainer
COPY --from=builder-train /opt/venv /opt/venv
USER emotion
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import socket; from shared.redis_conn import connect; from shared.settings import Settings; s = Settings(); c = connect(s.queue_redis_url or s.redis_url, socket_timeout=5); h = socket.gethostname().encode(); raise SystemExit(0 if any(c.hget(k, 'hostname') == h for k in c.smembers('rq:workers')) else 1)"]
CMD ["emotion", "worker"]

# ---------------------------------------------------------------------------------------------
# runtime (default target): the stream services and the dashboard, no TensorFlow
# ---------------------------------------------------------------------------------------------
FROM app-base AS runtime
COPY --from=builder /opt/venv /opt/venv
# Fail the build if TensorFlow slipped into the slim image.
RUN python -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('tensorflow') is not None)"
USER emotion
# Stream services: healthy while a heartbeat written from this container (its hostname) is in
# Redis (a cluster's nodes are all scanned); the heartbeat key expires when the replica stops (a
# standby detector beats too). docker-compose.yml overrides this
# for the dashboard (HTTP) and capture.
HEALTHCHECK --interval=15s --timeout=10s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import json, socket; from shared.redis_conn import connect; from shared.settings import Settings; from shared.streams import Keys; s = Settings(); c = connect(s.redis_url, cluster=s.redis_cluster, socket_timeout=5); h = socket.gethostname(); raise SystemExit(0 if any(json.loads(c.get(k) or b'{}').get('host') == h for k in c.scan_iter(match=Keys(s.prefix).heartbeat_pattern())) else 1)"]
CMD ["emotion", "--help"]
