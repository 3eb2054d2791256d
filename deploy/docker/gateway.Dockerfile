# TTS gateway image. Build from the repository root: docker build -f deploy/docker/gateway.Dockerfile -t voice/gateway .
FROM python:3.11-slim
WORKDIR /app
COPY services/common/requirements.txt services/common/requirements.txt
COPY services/tts_gateway/requirements.txt services/tts_gateway/requirements.txt
RUN pip install --no-cache-dir -r services/tts_gateway/requirements.txt grpcio-tools==1.81.1
COPY proto proto
# Stubs are generated at build time, never committed.
RUN python proto/gen_python.py --out /app/gen/python && pip uninstall -y grpcio-tools
COPY services/__init__.py services/__init__.py
COPY services/common services/common
COPY services/tts_gateway services/tts_gateway
ENV PYTHONPATH=/app:/app/gen/python PYTHONUNBUFFERED=1 GATEWAY_HOST=0.0.0.0 GATEWAY_METRICS_HOST=0.0.0.0
EXPOSE 50051 9101
USER 65532
ENTRYPOINT ["python", "-m", "services.tts_gateway"]
