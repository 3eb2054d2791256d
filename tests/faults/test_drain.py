"""SIGTERM drain of the gateway process with streams open: they finish with all their audio, new calls are refused
at once, and the process exits 0 within its grace period."""

from __future__ import annotations

import asyncio
import signal
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.faults.processes import SERVICE, FaultStack, StreamWatch, gauge_value, request, story, synthesize_all
from tests.waiting import async_wait_until
from voice.v1 import tts_gateway_pb2, tts_gateway_pb2_grpc

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

GRACE_S = 60.0
SENTENCES = 6


async def wait_refusing(address: str, within_s: float) -> tuple[float, int]:
    """(seconds until the server refuses a new RPC: ListVoices on a fresh channel gets UNAVAILABLE, calls that gRPC
    cancelled instead). Health checks keep answering during the drain (NOT_SERVING), so they are not the probe."""
    started = time.monotonic()
    cancelled = 0
    while True:
        async with grpc.aio.insecure_channel(address) as channel:
            try:
                await tts_gateway_pb2_grpc.TtsGatewayServiceStub(channel).ListVoices(
                    tts_gateway_pb2.ListVoicesRequest(), timeout=2
                )
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.UNAVAILABLE:
                    health = await health_pb2_grpc.HealthStub(channel).Check(
                        health_pb2.HealthCheckRequest(service=SERVICE), timeout=2
                    )
                    assert health.status == health_pb2.HealthCheckResponse.NOT_SERVING
                    return time.monotonic() - started, cancelled
                if exc.code() != grpc.StatusCode.CANCELLED:
                    raise
                cancelled += 1
        assert time.monotonic() - started < within_s, f"new calls still accepted {within_s:.0f} s after SIGTERM"
        await asyncio.sleep(0.02)  # the poll interval of this wait (it also counts the probes gRPC cancelled)


async def test_sigterm_drains_open_streams_refuses_new_ones_and_exits_zero(
    fault_stack: FaultStack, figures: dict[str, float]
) -> None:
    gateway = await asyncio.to_thread(fault_stack.start_gateway, f"--grace-seconds={GRACE_S:g}")
    try:
        async with grpc.aio.insecure_channel(gateway.address) as channel:
            stub = tts_gateway_pb2_grpc.TtsGatewayServiceStub(channel)
            texts = [story(SENTENCES, "the first stream"), story(SENTENCES, "the second stream")]
            calls = [stub.Synthesize(request(text), timeout=120) for text in texts]
            # One chunk each, then stop reading: the streams stay open in the gateway (flow control holds them).
            firsts = [await call.read() for call in calls]
            assert all(chunk is not grpc.aio.EOF for chunk in firsts)

            signalled = time.monotonic()
            gateway.process.send_signal(signal.SIGTERM)
            refusing, cancelled = await wait_refusing(gateway.address, within_s=5)
            figures["SIGTERM -> new calls refused (s)"] = refusing
            figures["drain: probes cancelled (not UNAVAILABLE) while the server stopped"] = cancelled
            # Both streams are still being served while new calls are refused.
            assert gauge_value(gateway.metrics_url, "tts_gateway_active_streams") == 2
            for target in (stub, None):
                # On the channel that holds the open streams, and on a fresh connection.
                started = time.monotonic()
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    if target is None:
                        async with grpc.aio.insecure_channel(gateway.address) as fresh:
                            await synthesize_all(tts_gateway_pb2_grpc.TtsGatewayServiceStub(fresh), request("Late."))
                    else:
                        await synthesize_all(target, request("Late."))
                assert refused.value.code() == grpc.StatusCode.UNAVAILABLE, refused.value
                assert time.monotonic() - started < 2.0

            watches = [StreamWatch(call).start() for call in calls]
            for watch in watches:
                await watch.finish(within_s=GRACE_S)
            for text, first, watch in zip(texts, firsts, watches, strict=True):
                assert watch.error is None, watch.error
                chunks = [first, *watch.chunks]
                assert [c.sequence_number for c in chunks] == list(range(len(chunks)))
                final = chunks[-1]
                assert final.is_final and final.HasField("summary")
                assert final.summary.segment_count == SENTENCES and final.summary.processed_text == text
                samples = sum(len(c.audio) for c in chunks) // 2  # PCM16
                audio_s = final.summary.audio_duration.ToNanoseconds() / 1e9
                assert abs(samples / final.format.sample_rate_hz - audio_s) < 1e-3
                assert audio_s > SENTENCES * 1.0  # every sentence of speech, not a truncated tail
        code = await asyncio.to_thread(gateway.process.wait, GRACE_S)
        drained = time.monotonic() - signalled
        figures["SIGTERM -> gateway exit, 2 streams drained (s)"] = drained
        assert code == 0
        assert drained < GRACE_S
        print(f"\ndrain: new calls refused {refusing:.2f} s after SIGTERM ({cancelled} probe(s) CANCELLED in the "
              f"switch); exit 0 after {drained:.1f} s")  # fmt: skip
    finally:
        gateway.stop(signal.SIGKILL)


async def test_calls_arriving_as_the_drain_begins_are_refused_with_unavailable(fault_stack: FaultStack) -> None:
    gateway = await asyncio.to_thread(fault_stack.start_gateway, f"--grace-seconds={GRACE_S:g}")
    codes: dict[str, int] = {}
    try:
        async with grpc.aio.insecure_channel(gateway.address) as channel:
            stub = tts_gateway_pb2_grpc.TtsGatewayServiceStub(channel)
            open_call = stub.Synthesize(request(story(SENTENCES, "the stream that keeps the drain going")), timeout=120)
            assert await open_call.read() is not grpc.aio.EOF
            stop = asyncio.Event()

            async def caller() -> None:
                # New calls on fresh connections, back to back, across the moment the server stops listening.
                while not stop.is_set():
                    async with grpc.aio.insecure_channel(gateway.address) as fresh:
                        try:
                            await tts_gateway_pb2_grpc.TtsGatewayServiceStub(fresh).ListVoices(
                                tts_gateway_pb2.ListVoicesRequest(), timeout=2
                            )
                            code = "OK"
                        except grpc.aio.AioRpcError as exc:
                            code = exc.code().name
                    codes[code] = codes.get(code, 0) + 1
                    if code == "UNAVAILABLE":
                        return

            callers = [asyncio.create_task(caller()) for _ in range(8)]
            # Calls are going back to back (as many answered as there are callers) before the drain begins.
            await async_wait_until(lambda: codes.get("OK", 0) >= len(callers), within=10, what="the callers' calls")
            gateway.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(asyncio.gather(*callers), 10)
            finally:
                stop.set()
            while await open_call.read() is not grpc.aio.EOF:
                pass
            assert await open_call.code() == grpc.StatusCode.OK
        print(f"\ncalls across the start of the drain: {codes}")
        assert set(codes) <= {"OK", "UNAVAILABLE"}, codes
    finally:
        gateway.stop(signal.SIGKILL)
