"""The benchmarks' load client (benchmarks/gateway_bench.py) against a real gRPC server on a loopback port.

The server here is a small TtsGatewayService written for the test (not the gateway): it refuses with the same rich
status the gateway sends (RESOURCE_EXHAUSTED + google.rpc.RetryInfo in `grpc-status-details-bin`), streams chunks
with and without a `duration` field, or fails mid-stream, so the client's parsing of real trailers is what is tested.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import grpc
import pytest

from benchmarks.gateway_bench import (
    RETRY_DEFAULT_S,
    RETRY_MAX_S,
    RETRY_MIN_S,
    Attempt,
    admitted_stream,
    bounded_retry,
    listen,
)
from services.common.durations import duration_from_seconds
from services.common.errors import Internal, ResourceExhausted
from voice.v1 import audio_pb2, tts_gateway_pb2, tts_gateway_pb2_grpc

RATE = 16000
PCM16 = audio_pb2.AudioFormat(encoding=audio_pb2.AUDIO_ENCODING_PCM16, sample_rate_hz=RATE, channels=1)


class ScriptedGateway(tts_gateway_pb2_grpc.TtsGatewayServiceServicer):
    """`text` picks the behaviour: `refuse <delay>`, `refuse-plain`, `refuse-then-ok <n>`, `chunks`, `fail-after`."""

    def __init__(self) -> None:
        self.calls = 0

    async def Synthesize(
        self, request: tts_gateway_pb2.SynthesizeRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[audio_pb2.AudioChunk]:
        self.calls += 1
        command, _, arg = request.text.partition(" ")
        if command == "refuse" or (command == "refuse-then-ok" and self.calls <= int(arg)):
            delay = float(arg) if command == "refuse" else 0.01
            await context.abort_with_status(ResourceExhausted("busy", retry_after_s=delay).to_grpc_status())
        if command == "refuse-plain":
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "busy")
        # 0.1 s with a duration field, 0.05 s without one (PCM16 bytes / rate), then an empty summary-only final.
        yield audio_pb2.AudioChunk(audio=b"\0\0" * (RATE // 10), format=PCM16, duration=duration_from_seconds(0.1))
        if command == "fail-after":
            await context.abort_with_status(Internal("upstream broke").to_grpc_status())
        yield audio_pb2.AudioChunk(audio=b"\0\0" * (RATE // 20), format=PCM16)
        yield audio_pb2.AudioChunk(format=PCM16, is_final=True)


Gateway = tuple[tts_gateway_pb2_grpc.TtsGatewayServiceStub, ScriptedGateway]


@pytest.fixture
async def gateway() -> AsyncIterator[Gateway]:
    server = grpc.aio.server()
    servicer = ScriptedGateway()
    tts_gateway_pb2_grpc.add_TtsGatewayServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield tts_gateway_pb2_grpc.TtsGatewayServiceStub(channel), servicer
    await server.stop(0)


async def test_refusal_carries_the_retry_delay(gateway: Gateway) -> None:
    stub, _ = gateway
    attempt = await listen(stub, "refuse 0.3", "joe")
    assert attempt.refused
    assert attempt.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert attempt.retry_delay_s == pytest.approx(0.3)
    assert attempt.report(0.1) is None


async def test_refusal_without_retry_info_has_no_delay(gateway: Gateway) -> None:
    stub, _ = gateway
    attempt = await listen(stub, "refuse-plain", "joe")
    assert attempt.refused
    assert attempt.retry_delay_s is None
    assert bounded_retry(attempt.retry_delay_s) == RETRY_DEFAULT_S


def test_retry_delay_is_bounded() -> None:
    assert bounded_retry(0.0) == RETRY_MIN_S
    assert bounded_retry(30.0) == RETRY_MAX_S
    assert bounded_retry(0.4) == 0.4


async def test_admitted_stream_records_arrivals_from_duration_or_bytes(gateway: Gateway) -> None:
    stub, _ = gateway
    attempt = await listen(stub, "chunks", "joe")
    assert attempt.code == grpc.StatusCode.OK and not attempt.refused
    assert [a.duration_s for a in attempt.arrivals] == pytest.approx([0.1, 0.05])  # the empty final is not audio
    report = attempt.report(0.1)
    assert report is not None and report.audio_s == pytest.approx(0.15)
    assert report.underruns == 0


async def test_failure_after_audio_counts_as_admitted(gateway: Gateway) -> None:
    stub, _ = gateway
    attempt = await listen(stub, "fail-after", "joe")
    assert attempt.code == grpc.StatusCode.INTERNAL
    assert not attempt.refused  # it got audio: an admitted stream that failed
    assert len(attempt.arrivals) == 1


async def test_refused_requests_are_retried_until_admitted(gateway: Gateway) -> None:
    stub, servicer = gateway
    seen: list[Attempt] = []
    started = time.perf_counter()
    attempt = await admitted_stream(stub, "refuse-then-ok 2", "joe", on_attempt=seen.append)
    elapsed = time.perf_counter() - started
    assert attempt.code == grpc.StatusCode.OK
    assert [a.refused for a in seen] == [True, True, False]
    assert servicer.calls == 3
    # Two waits of the 10 ms RetryInfo delay raised to the 50 ms floor.
    assert elapsed >= 2 * RETRY_MIN_S


async def test_retries_stop_at_the_deadline(gateway: Gateway) -> None:
    stub, servicer = gateway
    attempt = await admitted_stream(stub, "refuse 1.0", "joe", deadline=time.perf_counter() + 0.5)
    assert attempt.refused
    assert servicer.calls == 1  # waiting 1 s would pass the deadline: no second call
