# syntax=docker/dockerfile:1
# Two images from one file (shared/DESIGN.md #1):
#
#   docker build --target serve -t selftune:0.1.0-serve .   # ONNX Runtime, no torch;
#                                                           # retrains as Kubernetes Jobs
#   docker build --target full  -t selftune:0.1.0-full  .   # + the CPU training stack: in-pod
#                                                           # retraining, and the retrain Job image
#
# Both run as UID 10001 and read every setting from the environment
# (service/settings.py); no secret is baked in. Linted by hadolint and checkov
# in `make test`; the image build itself is not run there (no Docker engine).

# Debian 12, like the machines the tests run on. Pin a digest at release time.
FROM python:3.11-slim-bookworm AS python-base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# ---------------------------------------------------------------- build: serve
FROM python-base AS build-serve
WORKDIR /src
RUN python -m venv /opt/venv
# Dependencies first, from pyproject.toml alone, so a code change reuses this layer.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > requirements.txt \
    && pip install --no-cache-dir -r requirements.txt dumb-init==1.2.5.post1
COPY README.md ./
COPY core ./core
COPY store ./store
COPY service ./service
COPY training ./training
COPY retrain ./retrain
RUN pip install --no-cache-dir --no-deps .

# ----------------------------------------------------------------- build: full
FROM build-serve AS build-full
# torch from PyTorch's CPU wheel index first: the PyPI wheel for Linux is the
# CUDA build (gigabytes of libraries this image never uses). The pinned
# torch==2.13.0 in `.[train]` is then already satisfied by 2.13.0+cpu.
RUN pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu torch==2.13.0 \
    && python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']['train']))" > requirements-train.txt \
    && pip install --no-cache-dir -r requirements-train.txt \
    && python -c "import torch; assert not torch.version.cuda, 'CUDA torch was installed'"

# -------------------------------------------------------------------- runtime
FROM python-base AS runtime
# A numeric, non-root user (Kubernetes runAsNonRoot checks the number) with a
# passwd entry (getpass.getuser() fails without one). The writable paths exist
# and belong to it, so a plain `docker run` works; on Kubernetes the same
# paths are volumes over a read-only root filesystem.
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid 10001 --home-dir /home/app --create-home \
       --shell /usr/sbin/nologin app \
    && install -d -o 10001 -g 10001 -m 0750 /var/lib/bentoml /var/lib/selftune
# DL3064 matches "TOKEN" in TOKENIZERS_PARALLELISM, a thread switch, not a secret.
# hadolint ignore=DL3064
ENV HOME=/home/app \
    BENTOML_HOME=/var/lib/bentoml \
    STATE_DIR=/var/lib/selftune \
    HOST=0.0.0.0 \
    PORT=3000 \
    HF_HUB_OFFLINE=1 \
    TOKENIZERS_PARALLELISM=false \
    BENTOML_DO_NOT_TRACK=true
WORKDIR /home/app
USER 10001:10001
EXPOSE 3000
# BentoML's supervisor drains its workers on SIGTERM; dumb-init as PID 1
# forwards that one signal to it and reaps orphaned children (a local retrain
# runs as a child process).
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:3000/livez', timeout=4)"]
ENTRYPOINT ["dumb-init", "--single-child", "--"]
# Host and port come from HOST and PORT (service/settings.py), like every setting.
CMD ["bentoml", "serve", "service.service:TextClassifier"]

# ---------------------------------------------------------------------- serve
FROM runtime AS serve
COPY --from=build-serve /opt/venv /opt/venv
ENV RETRAIN_BACKEND=kubernetes

# ----------------------------------------------------------------------- full
FROM runtime AS full
COPY --from=build-full /opt/venv /opt/venv
ENV RETRAIN_BACKEND=local
