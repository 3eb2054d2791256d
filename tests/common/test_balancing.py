"""Client-side balancing without a mesh: an upstream target that resolves to several replicas gets round robin,
and a server-side maximum connection age makes clients reconnect (and so re-resolve) without breaking streams."""

from __future__ import annotations

import asyncio
import signal
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from services.common.channels import UPSTREAM_CHANNEL_OPTIONS, open_channel
from tests.common.test_bootstrap import counter_value
from tests.fixtures.service_process import ServiceProcess, spawn_service
from voice.v1 import audio_pb2, tts_gateway_pb2, tts_gateway_pb2_grpc

GATEWAY = "voice.v1.TtsGatewayService"


def _handled(replica: ServiceProcess) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{replica.metrics_port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return counter_value(text, "grpc_server_handled_total", grpc_method="ListVoices", grpc_code="OK")


@pytest.fixture
def two_replicas(tmp_path: Path) -> Iterator[list[ServiceProcess]]:
    """Two harness servers on the same port of two loopback addresses, like two pods behind one name."""
    first = spawn_service(
        "tests.common.harness_server", ["--port", "0", "--metrics-port", "0"], tmp_path / "a.log", "HARNESS_"
    )
    replicas = [first]
    try:
        second_args = ["--host", "127.0.0.2", "--port", str(first.port), "--metrics-port", "0"]
        try:
            replicas.append(spawn_service("tests.common.harness_server", second_args, tmp_path / "b.log", "HARNESS_"))
        except Exception as exc:  # a kernel without the 127/8 loopback route
            pytest.skip(f"cannot bind 127.0.0.2: {exc}")
        yield replicas
    finally:
        for replica in replicas:
            replica.process.send_signal(signal.SIGTERM)
            replica.process.wait(timeout=15)


@pytest.mark.parametrize("scheme_target", ["ipv4:127.0.0.1:{port},127.0.0.2:{port}"])
async def test_calls_spread_over_every_resolved_replica(two_replicas: list[ServiceProcess], scheme_target: str) -> None:
    target = scheme_target.format(port=two_replicas[0].port)
    before = [await asyncio.to_thread(_handled, r) for r in two_replicas]
    upstream = open_channel("replicas", target, UPSTREAM_CHANNEL_OPTIONS)
    try:
        stub = tts_gateway_pb2_grpc.TtsGatewayServiceStub(upstream.channel)
        for _ in range(20):
            await stub.ListVoices(tts_gateway_pb2.ListVoicesRequest(), wait_for_ready=True)
    finally:
        await upstream.channel.close()
    served = [await asyncio.to_thread(_handled, r) - b for r, b in zip(two_replicas, before, strict=True)]
    assert sum(served) == 20
    assert min(served) >= 8, f"round robin should split 20 calls about evenly, got {served}"


async def test_a_plain_host_port_target_keeps_one_connection(two_replicas: list[ServiceProcess]) -> None:
    """The control: without a resolver scheme the channel is not balanced (one ClusterIP, or a mesh that balances)."""
    before = await asyncio.to_thread(_handled, two_replicas[0])
    upstream = open_channel("one", f"127.0.0.1:{two_replicas[0].port}", UPSTREAM_CHANNEL_OPTIONS)
    try:
        stub = tts_gateway_pb2_grpc.TtsGatewayServiceStub(upstream.channel)
        for _ in range(5):
            await stub.ListVoices(tts_gateway_pb2.ListVoicesRequest())
    finally:
        await upstream.channel.close()
    assert await asyncio.to_thread(_handled, two_replicas[0]) - before == 5


def test_max_connection_age_reconnects_between_calls_but_lets_a_stream_finish(tmp_path: Path) -> None:
    server = spawn_service(
        "tests.common.harness_server",
        ["--port", "0", "--metrics-port", "0", "--max-connection-age", "0.5", "--chunk-delay", "0.05"],
        tmp_path / "aged.log",
        "HARNESS_",
    )
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = tts_gateway_pb2_grpc.TtsGatewayServiceStub(channel)
            pcm = audio_pb2.AudioFormat(encoding=audio_pb2.AUDIO_ENCODING_PCM16)
            # 40 chunks 50 ms apart: a stream of about 2 s, four times the connection age.
            chunks = list(stub.Synthesize(tts_gateway_pb2.SynthesizeRequest(text="x" * 40, output_format=pcm)))
            assert [c.sequence_number for c in chunks] == list(range(40))
            # After GOAWAY the channel reconnects by itself: later calls succeed.
            for _ in range(3):
                stub.ListVoices(tts_gateway_pb2.ListVoicesRequest(), wait_for_ready=True, timeout=10)
    finally:
        server.process.send_signal(signal.SIGTERM)
        server.process.wait(timeout=15)
