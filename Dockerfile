# Trainboard: one image for the web app and the training worker (see docker-compose.yml).
#
# The default torch wheels from PyPI carry CUDA, for the GPU worker. For a
# smaller CPU-only image:  docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu .
# BASE_IMAGE replaces python:3.11-slim where Docker Hub is out of reach (any Debian-like image whose
# `python`/`pip` on PATH are Python 3.11+).
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ARG TORCH_INDEX_URL=""
ARG TORCH_PINS="torch==2.14.1 torchvision==0.29.1"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DATA_DIR=/data \
    ARTIFACTS_DIR=/data/artifacts \
    DATASETS_DIR=/data/datasets \
    TORCH_HOME=/data/torch

RUN useradd --create-home --uid 1000 trainboard \
    # Named volumes copy the owner of these folders on first use, so the non-root user can write them.
    && mkdir -p /data/artifacts /data/datasets /data/torch \
    && chown -R trainboard:trainboard /data

WORKDIR /srv/trainboard

# torch first and pinned, in its own layer: the resolver never reaches for another multi-GB build,
# and a code change does not reinstall it.
RUN pip install ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} $TORCH_PINS

# The dependencies, from pyproject.toml alone (empty packages stand in for the code), cached until it changes.
COPY pyproject.toml README.md ./
# Editable, so the installed packages are these folders and templates/, static/ sit beside them.
RUN mkdir app worker ml && touch app/__init__.py worker/__init__.py ml/__init__.py \
    && pip install -e . && rm -rf app worker ml

COPY app ./app
COPY worker ./worker
COPY ml ./ml
COPY templates ./templates
COPY static ./static
USER trainboard
EXPOSE 8000

# The web app. The worker's command is in docker-compose.yml:
#   celery -A worker.celery_app worker --pool=solo --concurrency=1
CMD ["uvicorn", "app.main:app", "--host", "0.0.0.0", "--port", "8000", "--no-proxy-headers"]
