# Voice-conversion service image. CPU by default; for GPUs build with
#   --build-arg TORCH_SPEC="torch==2.11.0 torchaudio==2.11.0" (CUDA wheels; the pair that loads together).
FROM python:3.11-slim
ARG TORCH_SPEC=""
WORKDIR /app
RUN apt-get update && apt-get install -y --no-install-recommends gcc g++ && rm -rf /var/lib/apt/lists/*
COPY services/common/requirements.txt services/common/requirements.txt
COPY services/rvc_service/requirements.txt services/rvc_service/requirements.txt
RUN pip install --no-cache-dir -r services/rvc_service/requirements.txt grpcio-tools==1.81.1 ${TORCH_SPEC}
COPY proto proto
RUN python proto/gen_python.py --out /app/gen/python && pip uninstall -y grpcio-tools
COPY services/__init__.py services/__init__.py
COPY services/common services/common
COPY services/rvc_service services/rvc_service
RUN python services/rvc_service/torchaudio_cpu.py
ENV PYTHONPATH=/app:/app/gen/python PYTHONUNBUFFERED=1 RVC_HOST=0.0.0.0 RVC_METRICS_HOST=0.0.0.0 \
    RVC_MODELS_DIR=/models
VOLUME /models
EXPOSE 50052 9102
USER 65532
ENTRYPOINT ["python", "-m", "services.rvc_service"]
