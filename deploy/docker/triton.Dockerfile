# Triton Inference Server with this project's model repositories, two targets from one file:
#   cpu   python:3.11-slim plus the Triton server (2.51, python backend) bundled in the nvidia-pytriton wheel,
#         started by triton/launch.py exactly as `make setup` / `make run` do on a development machine (it installs
#         the python-backend stub for this interpreter, puts the environment first on PATH and its libpython on
#         LD_LIBRARY_PATH). Piper (CPU, ONNX Runtime) is served by default; Spark-TTS and Orpheus when a checkpoint
#         directory is mounted and named with TRITON_SPARK_CHECKPOINT / TRITON_ORPHEUS_CHECKPOINT.
#   cuda  the NGC tritonserver image (CUDA backends and the python backend) with the same Piper repository.
# Build from the repository root:
#   docker buildx bake -f deploy/docker/docker-bake.hcl triton-cpu triton-cuda
#   docker build -f deploy/docker/triton.Dockerfile --target cpu -t ghcr.io/voice-serving/triton:0.1.0 .
# Both run as uid 65532 on a read-only root filesystem; the python backend needs a writable /dev/shm (Docker gives
# 64 MiB by default; compose raises it) and the launcher stages model repositories under /tmp.
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
COPY triton/requirements.txt triton/requirements-spark.txt requirements/
COPY services/rvc_service/torchaudio_cpu.py torchaudio_cpu.py
# As the Makefile's .venv-triton target: requirements.txt in one pip run, then spark-tts-lib and snac without their
# dependency lists, then torchaudio's CUDA extension set aside beside the CPU torch. torch/torchaudio come first from
# the PyTorch CPU index at the versions requirements.txt pins (PyPI's Linux torch wheels are CUDA builds).
# A mirror of the PyTorch CPU index may stand in for it (--build-arg TORCH_CPU_INDEX=...).
ARG TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu
RUN grep -E '^(torch|torchaudio)==' requirements/requirements.txt > requirements/torch.txt \
    && pip install --index-url "${TORCH_CPU_INDEX}" -r requirements/torch.txt \
    && pip install -r requirements/requirements.txt -c requirements/torch.txt \
    && pip install --no-deps -r requirements/requirements-spark.txt \
    && python torchaudio_cpu.py \
    && python -c "import torch, sys; sys.exit(torch.version.cuda is not None)"
COPY triton/launch.py /opt/triton/launch.py
# The stub copy launch.py makes at start-up, done here while the filesystem is writable: at run time it finds the
# stub in place and writes nothing.
RUN python -c "import sys; sys.path.insert(0, '/opt/triton'); import launch; launch.prepare_stub(launch.pytriton_root() / 'tritonserver')"

FROM ${PYTHON_IMAGE} AS cpu-runtime
COPY --from=cpu-build /opt/venv /opt/venv
COPY --from=cpu-build /opt/triton/launch.py /opt/triton/launch.py
COPY triton/model_repo /opt/triton/model_repo
COPY triton/spark_repo /opt/triton/spark_repo
COPY triton/orpheus_repo /opt/triton/orpheus_repo
COPY deploy/docker/healthcheck.py /usr/local/lib/voice/healthcheck.py
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    TRITON_ADDRESS=0.0.0.0
EXPOSE 8000 8001 8002
USER 65532:65532
WORKDIR /tmp
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "/usr/local/lib/voice/healthcheck.py", "http", "http://127.0.0.1:8000/v2/health/ready"]
# The venv's interpreter by path: launch.py puts its own interpreter's folder first on the server's PATH.
ENTRYPOINT ["/opt/venv/bin/python", "/opt/triton/launch.py"]

FROM ${TRITON_IMAGE} AS cuda
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG SOURCE=unknown
LABEL org.opencontainers.image.title="triton-cuda" \
      org.opencontainers.image.description="NVIDIA Triton Inference Server with the voice-serving model repository (CUDA)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="${SOURCE}"
COPY triton/requirements-models.txt /tmp/requirements-models.txt
# The NGC image's system Python is the python backend's interpreter, so the models' packages go there.
RUN PIP_BREAK_SYSTEM_PACKAGES=1 pip install --no-cache-dir -r /tmp/requirements-models.txt \
    && rm /tmp/requirements-models.txt
COPY triton/model_repo /models
COPY deploy/docker/healthcheck.py /usr/local/lib/voice/healthcheck.py
ENV PYTHONDONTWRITEBYTECODE=1 HOME=/tmp
EXPOSE 8000 8001 8002
USER 65532:65532
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python3", "/usr/local/lib/voice/healthcheck.py", "http", "http://127.0.0.1:8000/v2/health/ready"]
ENTRYPOINT ["tritonserver"]
CMD ["--model-repository=/models", "--http-port=8000", "--grpc-port=8001", "--metrics-port=8002", "--exit-on-error=true"]

# Last, so a plain `docker build` without --target builds the CPU image.
FROM cpu-runtime AS cpu
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG SOURCE=unknown
LABEL org.opencontainers.image.title="triton" \
      org.opencontainers.image.description="Triton Inference Server (nvidia-pytriton build) with the voice-serving model repository (CPU)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="${SOURCE}"
