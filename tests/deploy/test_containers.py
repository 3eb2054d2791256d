"""The built images run: each container as its image defines it (uid 65532, read-only root, /tmp a tmpfs, all
capabilities dropped) serves speech together with the real services of the test fixtures.

Needs a container engine and the images, built beforehand (minutes each, so not inside the test):

    docker buildx bake -f deploy/docker/docker-bake.hcl tts-gateway triton-cpu

Skipped, with the reason, when either is missing. Settings (environment):

- ``VOICE_CONTAINER_ENGINE``: the engine command, default the first of ``docker`` and ``podman`` that answers; it may
  carry flags, e.g. ``podman --storage-driver vfs --runtime runc`` on machines without overlayfs or cgroup v2.
- ``VOICE_IMAGE_TTS_GATEWAY``, ``VOICE_IMAGE_TRITON``: the images, default the bake tags
  (``ghcr.io/voice-serving/tts-gateway:0.1.0``, ``ghcr.io/voice-serving/triton:0.1.0``).

Containers use the host's network so they reach the fixtures on loopback; every port is a free one passed through the
images' own environment variables (GATEWAY_PORT, TRITON_HTTP_PORT, ...), which is also what this checks.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.conftest import free_port
from tests.fixtures.gateway import start_gateway
from tests.waiting import wait_until
from voice.v1 import audio_pb2, tts_gateway_pb2, tts_gateway_pb2_grpc

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

REGISTRY = "ghcr.io/voice-serving"
VERSION = "0.1.0"
GATEWAY_IMAGE = os.environ.get("VOICE_IMAGE_TTS_GATEWAY", f"{REGISTRY}/tts-gateway:{VERSION}")
TRITON_IMAGE = os.environ.get("VOICE_IMAGE_TRITON", f"{REGISTRY}/triton:{VERSION}")
HARDENING = ("--read-only", "--tmpfs", "/tmp:rw,mode=1777", "--cap-drop", "ALL", "--security-opt", "no-new-privileges")
PIPER_RATE = 22050
GATEWAY_SERVICE = tts_gateway_pb2.DESCRIPTOR.services_by_name["TtsGatewayService"].full_name


def find_engine() -> list[str] | None:
    configured = os.environ.get("VOICE_CONTAINER_ENGINE")
    candidates = [shlex.split(configured)] if configured else [["docker"], ["podman"]]
    for command in candidates:
        if shutil.which(command[0]) is None:
            continue
        done = subprocess.run([*command, "info"], capture_output=True, timeout=60)
        if done.returncode == 0:
            return command
    return None


ENGINE = find_engine()


def engine(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    assert ENGINE is not None
    return subprocess.run([*ENGINE, *args], capture_output=True, text=True, timeout=timeout)


def need_image(image: str) -> None:
    if ENGINE is None:
        pytest.skip("no container engine answers (docker or podman; VOICE_CONTAINER_ENGINE to name one)")
    if engine("image", "inspect", image).returncode != 0:
        pytest.skip(f"image {image} is not built: docker buildx bake -f deploy/docker/docker-bake.hcl cpu")


@dataclass
class Container:
    name: str

    def logs(self) -> str:
        done = engine("logs", self.name)
        return (done.stdout + done.stderr)[-4000:]

    def running(self) -> bool:
        done = engine("inspect", "--format", "{{.State.Running}}", self.name)
        return done.stdout.strip() == "true"

    def exec(self, *command: str) -> subprocess.CompletedProcess[str]:
        return engine("exec", self.name, *command)

    def stop(self, grace_s: int = 30) -> int:
        """SIGTERM, then the exit code once the process ended (a SIGKILL after `grace_s` would show as 137)."""
        engine("stop", "--time", str(grace_s), self.name, timeout=grace_s + 60)
        done = engine("inspect", "--format", "{{.State.ExitCode}}", self.name)
        return int(done.stdout.strip())


def run_container(image: str, env: dict[str, str], *extra: str) -> Container:
    name = f"voice-test-{uuid.uuid4().hex[:10]}"
    env_args = [arg for key, value in env.items() for arg in ("--env", f"{key}={value}")]
    done = engine("run", "--detach", "--name", name, "--network", "host", *HARDENING, *env_args, *extra, image)
    assert done.returncode == 0, done.stderr
    return Container(name)


@pytest.fixture
def containers() -> Iterator[list[Container]]:
    started: list[Container] = []
    yield started
    for container in started:
        engine("rm", "--force", container.name, timeout=120)


def serving(address: str, service: str = "") -> bool:
    try:
        with grpc.insecure_channel(address) as channel:
            request = health_pb2.HealthCheckRequest(service=service)
            reply = health_pb2_grpc.HealthStub(channel).Check(request, timeout=2)
    except grpc.RpcError:
        return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def synthesize(address: str, text: str) -> bytes:
    with grpc.insecure_channel(address) as channel:
        stub = tts_gateway_pb2_grpc.TtsGatewayServiceStub(channel)
        request = tts_gateway_pb2.SynthesizeRequest(
            text=text, voice="joe", output_format=audio_pb2.AudioFormat(encoding=audio_pb2.AUDIO_ENCODING_PCM16)
        )
        return b"".join(chunk.audio for chunk in stub.Synthesize(request, timeout=120))


@pytest.fixture(scope="session")
def gateway_image() -> str:
    need_image(GATEWAY_IMAGE)
    return GATEWAY_IMAGE


@pytest.fixture(scope="session")
def triton_image() -> str:
    need_image(TRITON_IMAGE)
    return TRITON_IMAGE


# The image fixtures come first, so a missing image skips before the upstream fixtures start their servers.
def test_gateway_image_serves_speech_read_only_and_stops_cleanly(
    gateway_image: str, triton_server: Any, rvc_service: Any, containers: list[Container]
) -> None:
    port, metrics_port = free_port(), free_port()
    gateway = run_container(
        gateway_image,
        {
            "GATEWAY_HOST": "127.0.0.1",
            "GATEWAY_PORT": str(port),
            "GATEWAY_METRICS_HOST": "127.0.0.1",
            "GATEWAY_METRICS_PORT": str(metrics_port),
            "GATEWAY_TRITON_URL": triton_server.grpc_url,
            "GATEWAY_RVC_URL": rvc_service.address,
            # The image's saved-voices folder is a volume; without one mounted it must live on the tmpfs.
            "GATEWAY_SAVED_VOICES_DIR": "/tmp/saved-voices",
        },
    )
    containers.append(gateway)
    address = f"127.0.0.1:{port}"
    wait_until(
        lambda: serving(address, GATEWAY_SERVICE),
        within=120,
        what=lambda: f"gateway container SERVING\n{gateway.logs()}",
    )

    pcm = synthesize(address, "The gateway runs in its container.")
    assert len(pcm) // 2 > PIPER_RATE // 2, "under half a second of audio"

    # The image's own health check, run inside the container, agrees.
    check = gateway.exec("python", "/usr/local/lib/voice/healthcheck.py", "grpc", "GATEWAY_PORT", "1", GATEWAY_SERVICE)
    assert check.returncode == 0, check.stderr
    # It runs as 65532 and cannot write outside /tmp.
    who = gateway.exec("python", "-c", "import os; print(os.getuid(), os.getgid())")
    assert who.stdout.split() == ["65532", "65532"]
    write = gateway.exec("python", "-c", "open('/etc/voice/probe', 'w')")
    assert write.returncode != 0 and "Read-only file system" in write.stderr
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as response:
        metrics = response.read().decode()
    assert 'version="0.1.0"' in metrics and "voice_build_info" in metrics

    # SIGTERM from the engine reaches the service itself (exec-form entrypoint): it drains and exits 0.
    started = time.monotonic()
    assert gateway.stop(grace_s=40) == 0, gateway.logs()
    assert time.monotonic() - started < 40


def test_triton_image_serves_piper_read_only(
    triton_image: str, rvc_service: Any, containers: list[Container], tmp_path: Any
) -> None:
    http_port, grpc_port, metrics_port = free_port(), free_port(), free_port()
    triton = run_container(
        triton_image,
        {
            "TRITON_ADDRESS": "127.0.0.1",
            "TRITON_HTTP_PORT": str(http_port),
            "TRITON_GRPC_PORT": str(grpc_port),
            "TRITON_METRICS_PORT": str(metrics_port),
            "TRITON_INSTANCE_COUNT": "1",
        },
        "--shm-size",
        "256m",
    )
    containers.append(triton)
    wait_until(
        lambda: http_ok(f"http://127.0.0.1:{http_port}/v2/health/ready"),
        within=240,
        what=lambda: f"Triton container ready\n{triton.logs()}",
    )
    # The image's health check names port 8000; here the server listens on a free port instead.
    check = triton.exec(
        "python", "-c", f"import urllib.request as u; u.urlopen('http://127.0.0.1:{http_port}/v2/health/ready')"
    )
    assert check.returncode == 0, check.stderr
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as response:
        assert "nv_inference_request_success" in response.read().decode()

    gateway = start_gateway(f"127.0.0.1:{grpc_port}", rvc_service.address, log_dir=tmp_path)
    try:
        pcm = synthesize(gateway.address, "Triton runs in its container.")
        assert len(pcm) // 2 > PIPER_RATE // 2, gateway.log_text()[-2000:]
    finally:
        gateway.stop()
    # launch.py forwards SIGTERM, the server drains and the launcher exits with the server's code.
    assert triton.stop(grace_s=40) == 0, triton.logs()
