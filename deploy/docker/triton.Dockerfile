# Triton Inference Server with this project's model repository, two targets from one file. Both carry every backend:
# the whole of triton/model_repo, the models' shared code (triton/kit, the voice_triton package, installed), the
# launcher, and the packages of every requirement file the backend registry (voice_triton.registry) names. Which
# backends serve depends only on the checkpoints mounted at /models (TRITON_MODELS_DIR): Piper always, every other
# backend when /models/<its models_dir_name> holds its checkpoint (e.g. /models/Spark-TTS-0.5B,
# /models/orpheus-3b-0.1-ft). A missing or incomplete checkpoint is reported by backend name; the others still serve.
#   cpu   python:3.11-slim plus the Triton server (2.51, python backend) bundled in the nvidia-pytriton wheel, torch
#         from the PyTorch CPU index.
#   cuda  the NGC tritonserver image: its server (/opt/tritonserver, TRITON_SERVER_ROOT) and python backend, with the
#         packages in the image's system Python (3.12) and torch as PyPI's CUDA build.
# Both start triton/launch.py, exactly as `make run` does on a development machine: explicit model control, configs
# staged under /tmp, every flag also an environment variable (TRITON_*; `--help` lists them).
# Build from the repository root:
#   docker buildx bake -f deploy/docker/docker-bake.hcl triton-cpu triton-cuda
#   docker build -f deploy/docker/triton.Dockerfile --target cpu -t ghcr.io/voice-serving/triton:0.1.0 .
# Both run as uid 65532 on a read-only root filesystem; the python backend needs a writable /dev/shm (Docker gives
# 64 MiB by default; compose raises it) and the launcher stages the model repository under /tmp.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm@sha256:65a93d69fa75478d554f4ad27c85c1e69fa184956261b4301ebaf6dbb0a3543d
# No digest: none could be confirmed from a trustworthy source while offline; pin it with
#   docker buildx imagetools inspect nvcr.io/nvidia/tritonserver:25.08-py3
# and pass TRITON_IMAGE=nvcr.io/nvidia/tritonserver:25.08-py3@sha256:<digest> (the bake file has the variable).
ARG TRITON_IMAGE=nvcr.io/nvidia/tritonserver:25.08-py3

FROM ${PYTHON_IMAGE} AS cpu-build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# The requirement files: the server (nvidia-pytriton), then what triton/kit/src/voice_triton/registry.py names for
# the backends (tests/deploy/test_images.py checks that both targets install every one of them).
COPY triton/requirements-server.txt triton/requirements-models.txt triton/requirements-torch.txt \
     triton/requirements-spark.txt requirements/
# The torch/torchaudio pair first, from the PyTorch CPU index (PyPI's Linux torch wheels are CUDA builds; a mirror
# may stand in: --build-arg TORCH_CPU_INDEX=...), then everything else in one pip run with the pair as constraint,
# then the files installed without their dependency lists.
ARG TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu
RUN pip install --index-url "${TORCH_CPU_INDEX}" -r requirements/requirements-torch.txt \
    && pip install -r requirements/requirements-server.txt -r requirements/requirements-models.txt \
       -c requirements/requirements-torch.txt \
    && pip install --no-deps -r requirements/requirements-spark.txt \
    && python -c "import torch, torchaudio, sys; sys.exit(torch.version.cuda is not None)"
# The models' shared code (voice_triton) and the launcher's flag parser (services.common.config, from the
# voice-serving distribution: pyproject.toml reads the services' requirement files for its metadata, so they travel
# too), both installed as wheels without dependencies: what they import is installed above.
COPY triton/kit kit
COPY pyproject.toml ./
COPY services/__init__.py services/__init__.py
COPY services/common services/common
COPY services/tts_gateway/requirements.txt services/tts_gateway/requirements.txt
COPY services/rvc_service/requirements-base.txt services/rvc_service/requirements-base.txt
COPY services/http_edge/requirements.txt services/http_edge/requirements.txt
RUN pip install --no-deps ./kit . \
    && python -P -c "import services.common.config, voice_triton.registry"
COPY triton/launch.py /opt/triton/launch.py
# The stub copy the launcher makes at start-up (server_install with no --server-root), done here while the
# filesystem is writable: at run time it finds the stub in place and writes nothing there.
RUN python -P -c "import sys; sys.path.insert(0, '/opt/triton'); import launch; launch.server_install('')"

FROM ${PYTHON_IMAGE} AS cpu-runtime
COPY --from=cpu-build /opt/venv /opt/venv
COPY --from=cpu-build /opt/triton/launch.py /opt/triton/launch.py
COPY triton/model_repo /opt/triton/model_repo
COPY deploy/docker/healthcheck.py /usr/local/lib/voice/healthcheck.py
# VOICE_TRITON_MODEL_REPO: where the installed voice_triton finds the repository (it looks beside its source
# otherwise). /models: checkpoints, one folder per backend under its registered name, mounted read-only.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    VOICE_TRITON_MODEL_REPO=/opt/triton/model_repo \
    TRITON_MODELS_DIR=/models \
    TRITON_ADDRESS=0.0.0.0
VOLUME ["/models"]
EXPOSE 8000 8001 8002
USER 65532:65532
WORKDIR /tmp
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "/usr/local/lib/voice/healthcheck.py", "http", "http://127.0.0.1:8000/v2/health/ready"]
# The venv's interpreter by path: the launcher puts its own interpreter's folder first on the server's PATH, so the
# python-backend stub runs this environment's python3.
ENTRYPOINT ["/opt/venv/bin/python", "/opt/triton/launch.py"]

FROM ${TRITON_IMAGE} AS cuda
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG SOURCE=unknown
LABEL org.opencontainers.image.title="triton-cuda" \
      org.opencontainers.image.description="NVIDIA Triton Inference Server with the voice-serving model repository, every backend (CUDA)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="${SOURCE}"
# The NGC image's system Python (3.12 in 25.08) is the python backend's interpreter, so every package goes there
# (PIP_BREAK_SYSTEM_PACKAGES: the image's Ubuntu marks that Python externally managed). The same files as the CPU
# target, the torch pair from PyPI (CUDA builds) instead of the CPU index; numpy stays at requirements-models.txt's
# 1.26.4, which has wheels for Python 3.12, replacing whatever numpy the image brings. (An ARG, so the setting stays
# out of the image's environment.)
ARG PIP_BREAK_SYSTEM_PACKAGES=1
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /tmp/build
COPY triton/requirements-models.txt triton/requirements-torch.txt triton/requirements-spark.txt requirements/
COPY triton/kit kit
COPY pyproject.toml ./
COPY services/__init__.py services/__init__.py
COPY services/common services/common
COPY services/tts_gateway/requirements.txt services/tts_gateway/requirements.txt
COPY services/rvc_service/requirements-base.txt services/rvc_service/requirements-base.txt
COPY services/http_edge/requirements.txt services/http_edge/requirements.txt
RUN pip install -r requirements/requirements-torch.txt \
    && pip install -r requirements/requirements-models.txt -c requirements/requirements-torch.txt \
    && pip install --no-deps -r requirements/requirements-spark.txt \
    && pip install --no-deps ./kit . \
    && python3 -P -c "import torch, torchaudio, services.common.config, voice_triton.registry, sys; sys.exit(torch.version.cuda is None)" \
    && rm -rf /tmp/build
COPY triton/launch.py /opt/triton/launch.py
COPY triton/model_repo /opt/triton/model_repo
COPY deploy/docker/healthcheck.py /usr/local/lib/voice/healthcheck.py
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    VOICE_TRITON_MODEL_REPO=/opt/triton/model_repo \
    TRITON_MODELS_DIR=/models \
    TRITON_SERVER_ROOT=/opt/tritonserver \
    TRITON_ADDRESS=0.0.0.0
VOLUME ["/models"]
EXPOSE 8000 8001 8002
USER 65532:65532
WORKDIR /tmp
HEALTHCHECK --interval=10s --timeout=5s --start-period=300s --retries=3 \
    CMD ["python3", "/usr/local/lib/voice/healthcheck.py", "http", "http://127.0.0.1:8000/v2/health/ready"]
ENTRYPOINT ["/usr/bin/python3", "/opt/triton/launch.py"]

# Last, so a plain `docker build` without --target builds the CPU image.
FROM cpu-runtime AS cpu
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG SOURCE=unknown
LABEL org.opencontainers.image.title="triton" \
      org.opencontainers.image.description="Triton Inference Server (nvidia-pytriton build) with the voice-serving model repository, every backend (CPU)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="${SOURCE}"
