# Triton with the model repository, for GPU hosts (the NGC image carries the CUDA backends and the python backend).
# docker build -f deploy/docker/triton.Dockerfile -t voice/triton .
ARG TRITON_IMAGE=nvcr.io/nvidia/tritonserver:25.08-py3
FROM ${TRITON_IMAGE}
COPY triton/requirements-models.txt /tmp/requirements-models.txt
RUN pip install --no-cache-dir -r /tmp/requirements-models.txt
COPY triton/model_repo /models
EXPOSE 8000 8001 8002
CMD ["tritonserver", "--model-repository=/models", "--http-port=8000", "--grpc-port=8001", "--metrics-port=8002"]
