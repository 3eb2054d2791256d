# Voice-conversion service image, two targets from one file:
#   cpu   torch/torchaudio +cpu builds from the PyTorch CPU index (no CUDA libraries), ONNX Runtime backend
#   cuda  the same torch/torchaudio versions from PyPI, whose Linux wheels are the CUDA builds (CUDA runtime libraries
#         come as nvidia-* wheels; the host needs only the driver and the NVIDIA container toolkit)
# Both install the matching pair in services/rvc_service/requirements-torch.txt, so torchaudio's extension loads.
# Build from the repository root:
#   docker buildx bake -f deploy/docker/docker-bake.hcl rvc-service-cpu rvc-service-cuda
#   docker build -f deploy/docker/rvc_service.Dockerfile --target cpu -t ghcr.io/voice-serving/rvc-service:0.1.0 .
# Runs as uid 65532 on a read-only root filesystem: models are read from /models, the ONNX cache goes to /tmp.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm@sha256:65a93d69fa75478d554f4ad27c85c1e69fa184956261b4301ebaf6dbb0a3543d

# Compilers for pyworld's C extension (no wheel for every platform); they stay in the build stages.
FROM ${PYTHON_IMAGE} AS build-base
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc g++ \
    && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY services/common/requirements.txt requirements/common.txt
COPY services/rvc_service/requirements-base.txt services/rvc_service/requirements-torch.txt requirements/
COPY proto proto
COPY pyproject.toml ./
COPY services/__init__.py services/__init__.py
COPY services/common services/common
COPY services/rvc_service services/rvc_service
COPY services/tts_gateway/requirements.txt services/tts_gateway/requirements.txt

# The pair first, from its index; the rest then resolves against the torch already installed (-c keeps it there).
FROM build-base AS venv-cpu
# A mirror of the PyTorch CPU index may stand in for it (--build-arg TORCH_CPU_INDEX=...).
ARG TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu
RUN pip install --index-url "${TORCH_CPU_INDEX}" -r requirements/requirements-torch.txt \
    && pip install -r requirements/common.txt -r requirements/requirements-base.txt -c requirements/requirements-torch.txt \
    && pip install --no-deps ./proto . \
    && python -c "import torch, torchaudio, sys; sys.exit(torch.version.cuda is not None)" \
    && voice-rvc-service --help > /dev/null

FROM build-base AS venv-cuda
RUN pip install -r requirements/requirements-torch.txt \
    && pip install -r requirements/common.txt -r requirements/requirements-base.txt -c requirements/requirements-torch.txt \
    && pip install --no-deps ./proto . \
    && python -c "import torch, torchaudio, sys; sys.exit(torch.version.cuda is None)" \
    && voice-rvc-service --help > /dev/null

FROM ${PYTHON_IMAGE} AS runtime
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG SOURCE=unknown
LABEL org.opencontainers.image.description="Streaming RVC voice-conversion service (gRPC)" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="${SOURCE}"
COPY deploy/docker/healthcheck.py /usr/local/lib/voice/healthcheck.py
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    RVC_HOST=0.0.0.0 \
    RVC_METRICS_HOST=0.0.0.0 \
    RVC_MODELS_DIR=/models \
    RVC_ONNX_CACHE_DIR=/tmp/rvc-onnx
VOLUME ["/models"]
EXPOSE 50052 9102
USER 65532:65532
WORKDIR /tmp
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "/usr/local/lib/voice/healthcheck.py", "grpc", "RVC_PORT", "50052"]
ENTRYPOINT ["voice-rvc-service"]

FROM runtime AS cuda
LABEL org.opencontainers.image.title="rvc-service-cuda"
COPY --from=venv-cuda /opt/venv /opt/venv

# Last, so a plain `docker build` without --target builds the CPU image.
FROM runtime AS cpu
LABEL org.opencontainers.image.title="rvc-service"
COPY --from=venv-cpu /opt/venv /opt/venv
