# Striate service image: FastAPI + onnxruntime + the bundles in exported/. No torch.
#
#   docker build -t striate .                                          # CPU, from python:3.11-slim
#   docker build --build-arg BASE_IMAGE=striate-base:bookworm -t striate .   # local base (scripts/docker_base.sh)
#   docker run -p 8000:8000 striate                                    # serves the baked-in exported/
#   docker run -p 8000:8000 -v "$PWD/models:/models:ro" -e STRIATE_MODEL_DIR=/models striate
#
# GPU variant: the same file on a CUDA + cuDNN runtime base with onnxruntime-gpu instead of onnxruntime
# (the PyPI onnxruntime-gpu wheels are built for CUDA 13 and cuDNN 9; the base needs no Python, it is
# installed from the distribution when missing):
#   docker build --build-arg BASE_IMAGE=nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04 \
#                --build-arg ORT_PACKAGE=onnxruntime-gpu -t striate:gpu .
#   docker run --gpus all -p 8000:8000 -e STRIATE_DEVICE=cuda striate:gpu
#
# Settings are the service's STRIATE_* environment variables (service/settings.py).

ARG BASE_IMAGE=python:3.11-slim

# ---- python: the base, plus Python 3 and venv where the base lacks them (CUDA runtime images)
FROM ${BASE_IMAGE} AS python
SHELL ["/bin/sh", "-eu", "-c"]
# Only on bases without Python; the distribution's current versions are the ones wanted.
# hadolint ignore=DL3008
RUN if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then \
        apt-get update; \
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
            python3 python3-venv ca-certificates; \
        rm -rf /var/lib/apt/lists/*; \
    fi

# ---- builder: a virtualenv with the `service` extra and the striate + service packages only
FROM python AS builder
ARG ORT_PACKAGE=onnxruntime
# Optional package index (a PyPI mirror); pip reads these from the environment when they are passed.
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PATH=/opt/venv/bin:$PATH
RUN python3 -m venv /opt/venv
WORKDIR /src
# Dependencies first (read from pyproject.toml), so that code changes do not reinstall them.
COPY pyproject.toml ./
# ORT_PACKAGE is the pin point for the GPU runtime (e.g. onnxruntime-gpu==1.31.1).
# hadolint ignore=DL3013
RUN python3 -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
print('\n'.join(r for r in p['dependencies'] + p['optional-dependencies']['service'] \
if not r.startswith('striate')))" >/tmp/requirements.txt; \
    pip install -r /tmp/requirements.txt; \
    if [ "$ORT_PACKAGE" != onnxruntime ]; then \
        pip uninstall -y onnxruntime; \
        pip install "$ORT_PACKAGE"; \
    fi
# training/ is not copied: setuptools finds only striate/ and service/, and torch never enters.
COPY README.md ./
COPY striate/ striate/
COPY service/ service/
RUN pip install --no-deps . && \
    find /opt/venv -name __pycache__ -prune -exec rm -rf {} + && \
    python3 -c "import importlib.util as u, sys; sys.exit(u.find_spec('torch') is not None)"

# ---- runtime: the base, the virtualenv, the bundles; runs as an unprivileged user
FROM python AS runtime
LABEL org.opencontainers.image.title="striate" \
      org.opencontainers.image.description="Striate: CNN classification, features and Grad-CAM over HTTP (onnxruntime)" \
      org.opencontainers.image.licenses="Apache-2.0"
# A home of its own: onnxruntime writes a small cache under $HOME/.cache.
RUN useradd --system --uid 10001 --user-group --create-home --home-dir /home/striate \
        --shell /usr/sbin/nologin striate
COPY --from=builder /opt/venv /opt/venv
WORKDIR /app
# The default repository, baked in (read-only for the service user). Mount another one and point
# STRIATE_MODEL_DIR at it to serve other bundles.
COPY exported/ /app/exported/
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    STRIATE_MODEL_DIR=/app/exported \
    STRIATE_HOST=0.0.0.0 \
    STRIATE_PORT=8000
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('STRIATE_PORT', '8000'), timeout=4)"]
ENTRYPOINT ["striate", "serve"]
