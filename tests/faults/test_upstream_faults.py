"""Upstream faults with real processes (issue 9, items 4 and 6): kill -9 of the conversion service and of Triton in
the middle of a stream, and a conversion service that stops answering (SIGSTOP) under a client deadline and under
the gateway's stream idle timeout. The gateway is never restarted: it must notice, fail the affected streams fast
with the right code, keep serving what it still can, and recover on its own when the upstream is back."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator, Iterator

import grpc
import pytest

from tests.faults.processes import (
    NOT_SERVING,
    SERVING,
    FaultStack,
    StreamWatch,
    gauge_value,
    health,
    request,
    retry_until_ok,
    story,
    synthesize_all,
    triton_counter,
    wait_health,
)
from tests.waiting import assert_steady, async_wait_until
from voice.v1 import tts_gateway_pb2, tts_gateway_pb2_grpc

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]

CONVERTED = "joe-world-high"
# Far more speech than any of these tests lets finish: a stream that ran to the end means the fault came too late.
STORY_SENTENCES = 40
STORY = story(STORY_SENTENCES)
# The requirements.
CONVERSION_KILL_TO_UNAVAILABLE_S = 1.0
CONVERSION_RECOVERY_S = 5.0
# The issue sets no bound for Triton: its death must reach the client within 2 s, service resume within ~10 s.
TRITON_KILL_TO_UNAVAILABLE_S = 2.0
TRITON_RECOVERY_S = 10.0
# After a stream failed, Triton may finish at most the one sentence it was synthesizing.
PIECES_AFTER_FAILURE = 1
SETTLE_S = 2.5  # how long the counter is watched for more pieces (the bug of the issue ran on for 7.5 s)


@pytest.fixture(autouse=True)
def healed(fault_stack: FaultStack) -> Iterator[None]:
    """Each test starts from a whole stack even when the one before failed half-way through its fault."""
    yield
    fault_stack.heal()


@pytest.fixture
async def stub(fault_stack: FaultStack) -> AsyncIterator[tts_gateway_pb2_grpc.TtsGatewayServiceStub]:
    async with grpc.aio.insecure_channel(fault_stack.gateway.address) as channel:
        yield tts_gateway_pb2_grpc.TtsGatewayServiceStub(channel)


async def availability(stub: tts_gateway_pb2_grpc.TtsGatewayServiceStub) -> dict[str, tuple[bool, str]]:
    voices = await stub.ListVoices(tts_gateway_pb2.ListVoicesRequest(), timeout=5)
    return {v.name: (v.available, v.unavailable_reason) for v in voices.voices}


async def wait_availability(
    stub: tts_gateway_pb2_grpc.TtsGatewayServiceStub, voice: str, available: bool, within_s: float
) -> float:
    async def reached() -> bool:
        return (await availability(stub))[voice][0] == available

    started = time.monotonic()
    await async_wait_until(reached, within=within_s, what=f"{voice} to be available={available}")
    return time.monotonic() - started


async def active_streams(stub: tts_gateway_pb2_grpc.TtsGatewayServiceStub) -> int:
    status = await stub.GetStatus(tts_gateway_pb2.TtsGatewayServiceGetStatusRequest(), timeout=5)
    return int(status.active_streams)


async def wait_no_streams(stub: tts_gateway_pb2_grpc.TtsGatewayServiceStub, within_s: float) -> None:
    async def none_open() -> bool:
        return await active_streams(stub) == 0

    await async_wait_until(none_open, within=within_s, what="the gateway's streams to close")


async def settled_pieces(stack: FaultStack) -> tuple[float, float]:
    """Triton's piece counter now and ``SETTLE_S`` later."""
    now = await asyncio.to_thread(triton_counter, stack.triton.metrics_url)
    await asyncio.sleep(SETTLE_S)  # the observation window: how many pieces Triton still makes in it is the result
    return now, await asyncio.to_thread(triton_counter, stack.triton.metrics_url)


async def open_stream(
    stub: tts_gateway_pb2_grpc.TtsGatewayServiceStub, voice: str, chunks: int, *, deadline_s: float | None = 120
) -> StreamWatch:
    """A long stream of ``voice`` (client deadline ``deadline_s``) that has delivered ``chunks`` chunks and is still
    going."""
    watch = StreamWatch(stub.Synthesize(request(STORY, voice), timeout=deadline_s)).start()
    await watch.until_chunks(chunks, within_s=60)
    assert not watch.done, f"the stream ended before the fault: {watch.error}"
    return watch


def sigcont(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGCONT)


async def test_kill9_conversion_service_mid_stream_fails_fast_and_recovers(
    fault_stack: FaultStack, stub: tts_gateway_pb2_grpc.TtsGatewayServiceStub, figures: dict[str, float]
) -> None:
    stack = fault_stack
    gateway_pid = stack.gateway.process.pid
    await wait_availability(stub, CONVERTED, True, within_s=10)
    pieces_at_start = await asyncio.to_thread(triton_counter, stack.triton.metrics_url)
    watch = await open_stream(stub, CONVERTED, chunks=3)
    try:
        killed_at = time.monotonic()
        stack.rvc.process.kill()
        await watch.finish(within_s=30)
        assert watch.ended_at is not None
        to_unavailable = watch.ended_at - killed_at
        pieces_at_failure, pieces_later = await settled_pieces(stack)
    finally:
        watch.cancel()
    figures["conversion kill -9 -> client UNAVAILABLE (s)"] = to_unavailable
    figures["conversion kill -9: Triton pieces after the failure"] = pieces_later - pieces_at_failure
    assert watch.error is not None, "the stream completed although its conversion service was killed"
    assert watch.error.code() == grpc.StatusCode.UNAVAILABLE, watch.error
    assert "voice conversion" in (watch.error.details() or "")
    assert to_unavailable < CONVERSION_KILL_TO_UNAVAILABLE_S, f"UNAVAILABLE {to_unavailable:.2f} s after the kill"
    # Triton stopped synthesizing for the dead stream: at most the sentence in flight completes.
    assert pieces_later - pieces_at_failure <= PIECES_AFTER_FAILURE, (pieces_at_failure, pieces_later)
    assert pieces_later - pieces_at_start < STORY_SENTENCES

    # Degraded, not down: the plain voice serves, health stays SERVING, the converted voice fails fast by name.
    await wait_availability(stub, CONVERTED, False, within_s=5)
    assert await health(stack.gateway.address) == SERVING
    plain = await synthesize_all(stub, request("The plain voice still speaks."))
    assert plain[-1].is_final and plain[-1].summary.segment_count == 1
    voices = await availability(stub)
    assert voices["joe"] == (True, "")
    assert "voice conversion" in voices[CONVERTED][1]
    status = await stub.GetStatus(tts_gateway_pb2.TtsGatewayServiceGetStatusRequest(), timeout=5)
    assert {v.name: v.available for v in status.voices} == {"joe": True, CONVERTED: False}
    started = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await synthesize_all(stub, request("Convert me.", CONVERTED))
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "voice conversion" in (refused.value.details() or "")
    assert time.monotonic() - started < 1.0

    # The service comes back on the same port: converted voices work again without touching the gateway.
    await asyncio.to_thread(stack.rvc.restart)
    recovery, failures, chunks = await retry_until_ok(
        stub, request("Converted again.", CONVERTED), bound_s=CONVERSION_RECOVERY_S
    )
    figures["conversion back -> converted voice audio (s)"] = recovery
    assert recovery < CONVERSION_RECOVERY_S
    assert chunks[-1].summary.conversion_time.ToNanoseconds() > 0
    assert stack.gateway.running and stack.gateway.process.pid == gateway_pid
    print(f"\nconversion kill: UNAVAILABLE after {to_unavailable:.3f} s, {pieces_later - pieces_at_failure:g} "
          f"Triton piece(s) after the failure, converted audio {recovery:.2f} s after the restart "
          f"({failures} refused attempt(s))")  # fmt: skip


async def test_stopped_conversion_service_meets_the_client_deadline_and_cancels_triton(
    fault_stack: FaultStack, stub: tts_gateway_pb2_grpc.TtsGatewayServiceStub, figures: dict[str, float]
) -> None:
    stack = fault_stack
    await wait_availability(stub, CONVERTED, True, within_s=10)
    # Warm the converted path, so the deadline below measures the stall, not a cold first request.
    await synthesize_all(stub, request("Warm up.", CONVERTED))
    pid = stack.rvc.process.pid
    deadline_s = 2.0
    called = time.monotonic()
    watch = StreamWatch(stub.Synthesize(request(STORY, CONVERTED), timeout=deadline_s)).start()
    try:
        # Stop the service once the gateway's conversion stream is open and audio flows (or, on a loaded machine
        # where first audio is slow, 1 s into the call, so the deadline is still ahead).

        async def conversion_open() -> bool:
            assert not watch.done, f"the stream ended before the fault: {watch.error}"
            return bool(await asyncio.to_thread(gauge_value, stack.rvc.metrics_url, "rvc_active_streams"))

        await async_wait_until(
            conversion_open, within=called + deadline_s - time.monotonic(), interval=0.02, what="a conversion stream"
        )
        await watch.until_chunks(1, within_s=called + 1.0 - time.monotonic(), required=False)
        assert not watch.done, f"the stream ended before the fault: {watch.error}"
        os.kill(pid, signal.SIGSTOP)  # alive, connected, answering nothing: a slow upstream
        stopped_at = time.monotonic()
        figures["SIGSTOP conversion, 2 s deadline: chunks before SIGSTOP"] = len(watch.chunks)
        await watch.finish(within_s=10)
        assert watch.ended_at is not None
        elapsed = watch.ended_at - called
        figures["SIGSTOP conversion, 2 s deadline: call ended after (s)"] = elapsed
        assert watch.error is not None, "the stream completed although its conversion service was stopped"
        assert watch.error.code() == grpc.StatusCode.DEADLINE_EXCEEDED, watch.error
        assert elapsed < deadline_s + 1.0, f"DEADLINE_EXCEEDED only {elapsed:.2f} s after the call"
        # The gateway's request ended with the call: no stream left, no Triton work for it.
        await wait_no_streams(stub, within_s=2)
        before, after = await settled_pieces(stack)
        assert after - before <= PIECES_AFTER_FAILURE, (before, after)

        # While the conversion service hangs, the plain voice serves and health stays SERVING.
        await wait_availability(stub, CONVERTED, False, within_s=6)
        assert await health(stack.gateway.address) == SERVING
        plain = await synthesize_all(stub, request("Still speaking plainly."))
        assert plain[-1].is_final
        quiet = await asyncio.to_thread(triton_counter, stack.triton.metrics_url)
    finally:
        sigcont(pid)
    resumed_at = time.monotonic()
    # Once the service runs again, the cancelled request must stay dead: nothing of it reaches Triton.
    await asyncio.to_thread(
        assert_steady,
        lambda: triton_counter(stack.triton.metrics_url),
        period=SETTLE_S,
        what="Triton's piece count (the dead stream resumed)",
    )
    assert await asyncio.to_thread(triton_counter, stack.triton.metrics_url) == quiet, "the dead stream resumed"
    retried_at = time.monotonic()
    recovery, _, chunks = await retry_until_ok(stub, request("Converted after the stall.", CONVERTED), bound_s=5)
    # Includes the 2.5 s watch above, during which nothing was asked of the gateway.
    figures["SIGCONT -> converted voice audio (s)"] = retried_at - resumed_at + recovery
    assert chunks[-1].summary.conversion_time.ToNanoseconds() > 0
    after_stop = watch.ended_at - stopped_at
    print(f"\nSIGSTOP + 2 s deadline: DEADLINE_EXCEEDED {elapsed:.2f} s after the call ({after_stop:.2f} s after "
          f"SIGSTOP); converted audio {recovery:.2f} s after retrying")  # fmt: skip


async def test_stopped_conversion_service_hits_the_stream_idle_timeout(
    fault_stack: FaultStack, figures: dict[str, float]
) -> None:
    stack = fault_stack
    idle_s = 3.0
    gateway = await asyncio.to_thread(stack.start_gateway, f"--stream-idle-timeout={idle_s:g}")
    pid = stack.rvc.process.pid
    try:
        async with grpc.aio.insecure_channel(gateway.address) as channel:
            stub = tts_gateway_pb2_grpc.TtsGatewayServiceStub(channel)
            await wait_availability(stub, CONVERTED, True, within_s=10)
            # No client deadline: only the server's idle limit can end this stream.
            watch = await open_stream(stub, CONVERTED, chunks=1, deadline_s=None)
            try:
                os.kill(pid, signal.SIGSTOP)
                stopped_at = time.monotonic()
                await watch.finish(within_s=idle_s + 20)  # the test's own bound, far beyond the flag
            finally:
                watch.cancel()
            assert watch.ended_at is not None
            after_stop = watch.ended_at - stopped_at
            after_last_chunk = watch.ended_at - watch.times[-1]
            figures["SIGSTOP conversion, idle timeout 3 s: ended after SIGSTOP (s)"] = after_stop
            assert watch.error is not None, "the stream completed although its conversion service was stopped"
            assert watch.error.code() == grpc.StatusCode.DEADLINE_EXCEEDED, watch.error
            assert "idle" in (watch.error.details() or "")
            assert after_stop < idle_s + 2.0, f"ended {after_stop:.2f} s after SIGSTOP"
            assert after_last_chunk > idle_s - 0.5, f"ended {after_last_chunk:.2f} s after the last audio"
            await wait_no_streams(stub, within_s=2)
            before, after = await settled_pieces(stack)
            assert after - before <= PIECES_AFTER_FAILURE, (before, after)
            sigcont(pid)
            recovery, _, _ = await retry_until_ok(stub, request("Back after the stall.", CONVERTED), bound_s=5)
            print(f"\nidle timeout {idle_s:g} s: DEADLINE_EXCEEDED {after_stop:.2f} s after SIGSTOP, "
                  f"{after_last_chunk:.2f} s after the last chunk; converted audio {recovery:.2f} s after "
                  "SIGCONT")  # fmt: skip
    finally:
        sigcont(pid)
        gateway.stop(signal.SIGKILL)


async def test_kill9_triton_mid_stream_fails_fast_goes_not_serving_and_recovers(
    fault_stack: FaultStack, stub: tts_gateway_pb2_grpc.TtsGatewayServiceStub, figures: dict[str, float]
) -> None:
    stack = fault_stack
    gateway_pid = stack.gateway.process.pid
    await wait_health(stack.gateway.address, SERVING, within_s=10)
    watch = await open_stream(stub, "joe", chunks=2)
    try:
        server = stack.triton.server_pid()
        killed_at = time.monotonic()
        os.kill(server, signal.SIGKILL)
        await watch.finish(within_s=30)
    finally:
        watch.cancel()
    assert watch.ended_at is not None
    to_unavailable = watch.ended_at - killed_at
    figures["triton kill -9 -> client UNAVAILABLE (s)"] = to_unavailable
    assert watch.error is not None, "the stream completed although Triton was killed"
    assert watch.error.code() == grpc.StatusCode.UNAVAILABLE, watch.error
    assert "triton" in (watch.error.details() or "").lower()
    assert to_unavailable < TRITON_KILL_TO_UNAVAILABLE_S, f"UNAVAILABLE {to_unavailable:.2f} s after the kill"

    # No voice can be served: health says so, every voice says why, a request fails fast naming Triton.
    not_serving = await wait_health(stack.gateway.address, NOT_SERVING, within_s=5)
    figures["triton kill -9 -> health NOT_SERVING (s)"] = time.monotonic() - killed_at
    voices = await availability(stub)
    assert all(not available and "Triton" in reason for available, reason in voices.values()), voices
    started = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await synthesize_all(stub, request("Anyone there?"))
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "triton" in (refused.value.details() or "").lower()
    assert time.monotonic() - started < 1.0

    # The launcher cleans up after its killed server; then Triton comes back on the same ports.
    assert await asyncio.to_thread(stack.triton.wait_launcher_exit, 30) != 0
    triton_start = await asyncio.to_thread(stack.triton.start)
    figures["triton restart to ready (s)"] = triton_start
    recovery, failures, chunks = await retry_until_ok(stub, request("Triton is back."), bound_s=TRITON_RECOVERY_S)
    figures["triton ready -> joe audio (s)"] = recovery
    assert recovery < TRITON_RECOVERY_S
    assert chunks[-1].summary.segment_count == 1
    await wait_health(stack.gateway.address, SERVING, within_s=2)
    assert stack.gateway.running and stack.gateway.process.pid == gateway_pid
    print(f"\ntriton kill: UNAVAILABLE after {to_unavailable:.3f} s, NOT_SERVING after "
          f"{not_serving:.2f} s more; Triton ready in {triton_start:.1f} s, audio {recovery:.2f} s later "
          f"({failures} refused attempt(s))")  # fmt: skip
