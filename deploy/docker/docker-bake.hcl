// Image builds for the whole stack. From the repository root (the context every target uses):
//   docker buildx bake -f deploy/docker/docker-bake.hcl cpu            # tts-gateway, rvc-service, triton (CPU), http-edge
//   docker buildx bake -f deploy/docker/docker-bake.hcl cuda           # rvc-service and triton, CUDA variants
//   REGISTRY=registry.example.com/voice VERSION=0.2.0 REVISION=$(git rev-parse HEAD) \
//     docker buildx bake -f deploy/docker/docker-bake.hcl --push cpu cuda
// Image names and tags are the ones the Kubernetes manifests and compose use (REGISTRY/NAME:VERSION[-cuda]).

variable "REGISTRY" {
  default = "ghcr.io/voice-serving"
}

// Keep equal to `version` in the root pyproject.toml (tests/deploy/test_images.py checks it).
variable "VERSION" {
  default = "0.1.0"
}

variable "REVISION" {
  default = "unknown"
}

variable "SOURCE" {
  default = "https://github.com/voice-serving/voice-serving"
}

// Base images, pinned by tag and digest (the NGC one by tag only: see triton.Dockerfile).
variable "PYTHON_IMAGE" {
  default = "python:3.11.14-slim-bookworm@sha256:65a93d69fa75478d554f4ad27c85c1e69fa184956261b4301ebaf6dbb0a3543d"
}

variable "TRITON_IMAGE" {
  default = "nvcr.io/nvidia/tritonserver:25.08-py3"
}

group "default" {
  targets = ["cpu"]
}

group "cpu" {
  targets = ["tts-gateway", "rvc-service-cpu", "triton-cpu", "http-edge"]
}

group "cuda" {
  targets = ["rvc-service-cuda", "triton-cuda"]
}

// Shared by every target: the repository root as context, the OCI labels' inputs and the amd64 platform (the
// PyTorch CPU index, the nvidia-pytriton wheel and the NGC image are x86_64 builds).
target "_common" {
  context   = "."
  platforms = ["linux/amd64"]
  args = {
    VERSION      = VERSION
    REVISION     = REVISION
    SOURCE       = SOURCE
    PYTHON_IMAGE = PYTHON_IMAGE
  }
}

target "tts-gateway" {
  inherits   = ["_common"]
  dockerfile = "deploy/docker/gateway.Dockerfile"
  tags       = ["${REGISTRY}/tts-gateway:${VERSION}"]
}

target "rvc-service-cpu" {
  inherits   = ["_common"]
  dockerfile = "deploy/docker/rvc_service.Dockerfile"
  target     = "cpu"
  tags       = ["${REGISTRY}/rvc-service:${VERSION}"]
}

target "rvc-service-cuda" {
  inherits   = ["_common"]
  dockerfile = "deploy/docker/rvc_service.Dockerfile"
  target     = "cuda"
  tags       = ["${REGISTRY}/rvc-service:${VERSION}-cuda"]
}

target "triton-cpu" {
  inherits   = ["_common"]
  dockerfile = "deploy/docker/triton.Dockerfile"
  target     = "cpu"
  tags       = ["${REGISTRY}/triton:${VERSION}"]
}

target "triton-cuda" {
  inherits   = ["_common"]
  dockerfile = "deploy/docker/triton.Dockerfile"
  target     = "cuda"
  tags       = ["${REGISTRY}/triton:${VERSION}-cuda"]
  args = {
    TRITON_IMAGE = TRITON_IMAGE
  }
}

target "http-edge" {
  inherits   = ["_common"]
  dockerfile = "deploy/docker/http_edge.Dockerfile"
  tags       = ["${REGISTRY}/http-edge:${VERSION}"]
}
