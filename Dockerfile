# syntax=docker/dockerfile:1
# Two images from one file (docs/DESIGN.md #1):
#
#   docker build --target serve -t selftune:0.1.0-serve .   # ONNX Runtime, no torch;
#                                                           # retrains as Kubernetes Jobs
#   docker build --target full  -t selftune:0.1.0-full  .   # + the CPU training stack: in-pod
#                                                           # retraining, and the retrain Job image
#
# Both run as UID 10001 and read every setting from the environment
# (service/settings.py); no secret is baked in. `make test` builds both
# targets with buildah and runs them (tests/deploy/test_image.py).

# Debian 12, like the machines the tests run on. Pin a digest at release time.
# The tests build on a Debian 12 base they make locally with debootstrap.
ARG PYTHON_BASE=python:3.11-slim-bookworm

# checkov:skip=CKV_DOCKER_7:the tag is PYTHON_BASE's default above, python:3.11-slim-bookworm
FROM ${PYTHON_BASE} AS python-base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# ------------------------------------------------------------------- runtime
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

# The virtualenv is built in place on the runtime stage (no multi-gigabyte copy
# between stages), as root, so the app user cannot change it. Its dependencies
# come from pyproject.toml alone, and our own packages are installed apart
# (stage `app`): a code change rebuilds only the small `app` layers.

# --------------------------------------------------------- dependencies: serve
FROM runtime AS deps-serve
COPY pyproject.toml /src/
RUN python -m venv /opt/venv \
    && python -c "import tomllib; print('\n'.join(tomllib.load(open('/src/pyproject.toml', 'rb'))['project']['dependencies']))" > /src/requirements.txt \
    && pip install --no-cache-dir -r /src/requirements.txt dumb-init==1.2.5.post1

# ---------------------------------------------------------- dependencies: full
FROM deps-serve AS deps-full
# torch first, CPU-only: the PyPI wheel for Linux is the CUDA build (gigabytes
# of libraries this image never uses). By default it comes from PyTorch's CPU
# wheel index; TORCH_WHEEL names a CPU wheel file the build can see instead
# (buildah/podman: `-v DIR:/wheels:ro --build-arg TORCH_WHEEL=/wheels/torch-….whl`).
# The pinned torch==2.13.0 of `.[train]` is then already satisfied by 2.13.0+cpu.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG TORCH_WHEEL=""
# A wheel file is one exact version already: DL3013's pin is in its name.
# hadolint ignore=DL3013
RUN if [ -n "$TORCH_WHEEL" ]; then pip install --no-cache-dir "$TORCH_WHEEL"; \
    else pip install --no-cache-dir --index-url "$TORCH_INDEX_URL" torch==2.13.0; fi \
    && python -c "import tomllib; print('\n'.join(tomllib.load(open('/src/pyproject.toml', 'rb'))['project']['optional-dependencies']['train']))" > /src/requirements-train.txt \
    && pip install --no-cache-dir -r /src/requirements-train.txt \
    && python -c "import torch; assert not torch.version.cuda, 'CUDA torch was installed'"

# ------------------------------------------------------------ our own packages
FROM deps-serve AS app
WORKDIR /src
# The same list as .dockerignore's allow-list (tests/deploy/test_packaging.py holds them equal).
COPY pyproject.toml README.md ./
COPY core ./core
COPY store ./store
COPY runner ./runner
COPY training ./training
COPY retrain ./retrain
COPY service ./service
# Into a prefix of its own, laid out like the venv, for the final COPY to merge.
RUN pip install --no-cache-dir --no-deps --prefix /opt/app .

# ---------------------------------------------------------------------- serve
FROM deps-serve AS serve
ENV RETRAIN_BACKEND=kubernetes
COPY --from=app /opt/app /opt/venv
USER 10001:10001

# ----------------------------------------------------------------------- full
FROM deps-full AS full
ENV RETRAIN_BACKEND=local
COPY --from=app /opt/app /opt/venv
USER 10001:10001
