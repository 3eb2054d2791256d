# Voice-conversion service image. CPU by default (torch's +cpu builds, ONNX Runtime backend); for GPUs build with
#   --build-arg TORCH_INDEX=https://pypi.org/simple
# which installs the same torch/torchaudio versions as PyPI's CUDA builds. Both images use the matching pair in
# services/rvc_service/requirements-torch.txt, so torchaudio's extension loads and nothing is renamed.
FROM python:3.11-slim
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
WORKDIR /app
RUN apt-get update && apt-get install -y --no-install-recommends gcc g++ && rm -rf /var/lib/apt/lists/*
COPY services/common/requirements.txt services/common/requirements.txt
COPY services/rvc_service/requirements-base.txt services/rvc_service/requirements-torch.txt services/rvc_service/
# The pair first, from its index; the rest then resolves against the torch already installed.
RUN pip install --no-cache-dir --index-url ${TORCH_INDEX} -r services/rvc_service/requirements-torch.txt
RUN pip install --no-cache-dir -r services/rvc_service/requirements-base.txt \
        -c services/rvc_service/requirements-torch.txt grpcio-tools==1.81.1
COPY proto proto
RUN python proto/gen_python.py --out /app/gen/python && pip uninstall -y grpcio-tools
COPY services/__init__.py services/__init__.py
COPY services/common services/common
COPY services/rvc_service services/rvc_service
ENV PYTHONPATH=/app:/app/gen/python PYTHONUNBUFFERED=1 RVC_HOST=0.0.0.0 RVC_METRICS_HOST=0.0.0.0 \
    RVC_MODELS_DIR=/models RVC_ONNX_CACHE_DIR=/tmp/rvc-onnx
VOLUME /models
EXPOSE 50052 9102
USER 65532
ENTRYPOINT ["python", "-m", "services.rvc_service"]
