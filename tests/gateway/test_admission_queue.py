"""The admission queue (issue 27): FIFO per share key, fair turns between keys, bounded length and wait, deadlines,
cancelled waiters, host CPU headroom, refusals logged in aggregate. Unit tests on asyncio with a fake clock for the
real-time model, and an in-process gRPC server (port 0) for the status codes and RetryInfo a client sees."""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2

from services.common.errors import NotFound, status_details
from services.common.interceptors import ServerInterceptor
from services.tts_gateway.admission import (
    AdmissionQueue,
    HostLoad,
    RealTimeAdmission,
    RefusalLog,
    Refused,
)
from services.tts_gateway.servicer import TtsGatewayServicer
from tests.waiting import async_wait_until
from voice.v1 import audio_pb2, tts_gateway_pb2, tts_gateway_pb2_grpc


def queue_of(slots: int, *, max_length: int = 64, max_wait_s: float = 10.0, **kwargs: Any) -> AdmissionQueue:
    """A queue whose capacity is `slots` streams of any voice (cost 1/slots, target 1)."""
    admission = RealTimeAdmission(target_load=1.0, **kwargs)
    for voice in ("joe", "joe-world-high", "a", "b"):
        admission.observe(voice, 1.0 / slots)
    return AdmissionQueue(admission, max_calls=1000, max_length=max_length, max_wait_s=max_wait_s)


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_admits_at_once_while_there_is_room_then_queues_first_come_first_served() -> None:
    queue = queue_of(2)
    held = [await queue.acquire("joe", "k") for _ in range(2)]
    assert held[0].waited_s == 0.0 and queue.admitted == 2
    order: list[int] = []

    async def wait(i: int) -> None:
        held.append(await queue.acquire("joe", "k"))
        order.append(i)

    tasks = [asyncio.create_task(wait(i)) for i in range(5)]
    await settle()
    assert queue.waiting == 5 and not order
    for _ in range(5):
        queue.release(held.pop(0).ticket)
        await settle()
        assert queue.admitted == 2
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2, 3, 4]
    assert queue.waiting == 0


async def test_full_queue_refuses_at_once_with_a_retry_hint() -> None:
    queue = queue_of(1, max_length=2)
    await queue.acquire("joe", "k")
    waiters = [asyncio.create_task(queue.acquire("joe", "k")) for _ in range(2)]
    await settle()
    with pytest.raises(Refused) as refused:
        await queue.acquire("joe", "k")
    assert refused.value.cause == "queue_full" and refused.value.retry_after_s > 0
    assert queue.waiting == 2
    for task in waiters:
        task.cancel()
    await asyncio.gather(*waiters, return_exceptions=True)
    assert queue.waiting == 0


async def test_hard_cap_counts_waiting_and_streaming_calls() -> None:
    queue = queue_of(1)
    queue.max_calls = 2
    await queue.acquire("joe", "k")
    waiter = asyncio.create_task(queue.acquire("joe", "k"))
    await settle()
    with pytest.raises(Refused) as refused:
        await queue.acquire("joe", "k")
    assert refused.value.cause == "max_streams" and "concurrent streams" in refused.value.message
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)


async def test_deadline_shorter_than_the_expected_wait_is_refused_at_once() -> None:
    queue = queue_of(1)
    # One admitted stream whose kind lasts 0.4 s: the next slot is expected in about 0.4 s.
    ticket = (await queue.acquire("joe", "k")).ticket
    queue.admission._durations.extend([0.4, 0.4, 0.4])
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(Refused) as refused:
        await queue.acquire("joe", "k", time_remaining=0.1)
    assert refused.value.cause == "deadline" and loop.time() - started < 0.05
    assert queue.waiting == 0
    # A deadline that leaves room for the expected wait queues, and is refused when the wait runs out anyway.
    with pytest.raises(Refused) as refused:
        await queue.acquire("joe", "k", time_remaining=0.45)
    assert refused.value.cause == "deadline"
    queue.release(ticket)


async def test_wait_is_bounded_by_max_wait() -> None:
    queue = queue_of(1, max_wait_s=0.05)
    await queue.acquire("joe", "k")
    with pytest.raises(Refused) as refused:
        await queue.acquire("joe", "k")
    assert refused.value.cause == "max_wait" and queue.waiting == 0


async def test_a_cancelled_waiter_leaves_the_queue_and_leaks_nothing() -> None:
    queue = queue_of(1)
    held = await queue.acquire("joe", "k")
    waiters = [asyncio.create_task(queue.acquire("joe", f"k{i % 3}")) for i in range(30)]
    await settle()
    assert queue.waiting == 30
    for task in waiters:
        task.cancel()
    await asyncio.gather(*waiters, return_exceptions=True)
    assert queue.waiting == 0 and queue.waiting_by_key() == {} and queue.admitted == 1
    queue.release(held.ticket)
    assert queue.admitted == 0
    assert (await queue.acquire("joe", "k")).waited_s == 0.0


async def test_a_slot_granted_to_a_caller_cancelled_in_the_same_instant_is_given_back() -> None:
    queue = queue_of(1)
    held = await queue.acquire("joe", "k")
    waiter = asyncio.create_task(queue.acquire("joe", "k"))
    await settle()
    queue.release(held.ticket)  # grants the waiter's future ...
    waiter.cancel()  # ... but the caller goes away before it runs again
    await asyncio.gather(waiter, return_exceptions=True)
    assert queue.admitted == 0 and queue.waiting == 0


async def test_fair_share_between_a_key_that_asks_ten_times_more_and_one_that_does_not() -> None:
    queue = queue_of(2)
    served: collections.Counter[str] = collections.Counter()
    stop = asyncio.Event()

    async def client(key: str) -> None:
        while not stop.is_set():
            try:
                admitted = await queue.acquire("joe", key)
            except Refused:
                await asyncio.sleep(0)
                continue
            served[key] += 1
            await asyncio.sleep(0.002)  # streaming
            queue.release(admitted.ticket)

    tasks = [asyncio.create_task(client("greedy")) for _ in range(20)]
    tasks += [asyncio.create_task(client("modest")) for _ in range(2)]
    await asyncio.sleep(0.5)
    stop.set()
    await asyncio.gather(*tasks)
    assert served["greedy"] > 20 and served["modest"] > 20
    assert abs(served["greedy"] - served["modest"]) <= 0.2 * served["modest"], served


async def test_a_key_that_arrives_late_catches_up_a_bounded_number_of_admissions() -> None:
    """The first crowd to arrive fills the free slots at once (nobody waits, no turn to respect); a voice whose
    callers come a moment later then goes first until it has caught up `catch_up` admissions, and no more."""
    queue = queue_of(4)
    early = [await queue.acquire("joe", "voice:joe") for _ in range(4)]  # all slots, no wait
    order: list[str] = []

    async def wait(key: str) -> None:
        admitted = await queue.acquire("joe", key)
        order.append(key)
        held.append(admitted)

    held: list[Any] = []
    tasks = [asyncio.create_task(wait("voice:joe")) for _ in range(8)]
    await settle()
    tasks += [asyncio.create_task(wait("voice:late")) for _ in range(8)]
    await settle()
    for admitted in early:
        queue.release(admitted.ticket)
        await settle()
    while len(order) < 16:
        queue.release(held.pop(0).ticket)
        await settle()
    await asyncio.gather(*tasks)
    # Four catch-up admissions (the four joe got without waiting), then strict turns; joe, which began to wait
    # first, goes first when the tags are equal.
    assert order[:4] == ["voice:late"] * 4
    assert order[4:] == ["voice:joe", "voice:late"] * 4 + ["voice:joe"] * 4
    for admitted in held:
        queue.release(admitted.ticket)


async def test_a_key_away_for_long_claims_no_more_than_its_catch_up() -> None:
    queue = queue_of(1)
    for _ in range(20):  # joe alone for 20 streams
        queue.release((await queue.acquire("joe", "voice:joe")).ticket)
    hold = await queue.acquire("joe", "voice:joe")
    order: list[str] = []

    async def wait(key: str) -> None:
        admitted = await queue.acquire("joe", key)
        order.append(key)
        queue.release(admitted.ticket)

    tasks = [asyncio.create_task(wait(k)) for k in ["voice:joe"] * 6 + ["voice:back"] * 6]
    await settle()
    queue.release(hold.ticket)
    await asyncio.gather(*tasks)
    assert order[:4] == ["voice:back"] * 4  # the catch-up, not the 20 it missed
    assert order[4:8] == ["voice:joe", "voice:back"] * 2


async def test_a_stream_held_back_by_start_up_gets_in_when_the_start_up_ends_without_any_stream_ending() -> None:
    admission = RealTimeAdmission(target_load=1.0, startup_s=0.2)
    admission.observe("joe", 0.25)  # 4 steady streams; 2 starting ones fill the capacity
    queue = AdmissionQueue(admission, max_calls=100)
    held = [await queue.acquire("joe", "voice:joe") for _ in range(2)]
    third = asyncio.create_task(queue.acquire("joe", "voice:joe"))
    await asyncio.sleep(0.1)
    assert not third.done() and queue.waiting == 1
    admitted = await asyncio.wait_for(third, timeout=1.0)  # the queue looks again when the start-up ends
    assert queue.waiting == 0 and queue.admitted == 3
    for ticket in [*held, admitted]:
        queue.release(ticket.ticket)


async def test_a_stream_that_settles_lets_the_next_one_in_at_once() -> None:
    admission = RealTimeAdmission(target_load=1.0, startup_s=30.0)
    admission.observe("joe", 0.25)
    queue = AdmissionQueue(admission, max_calls=100)
    held = [await queue.acquire("joe", "voice:joe") for _ in range(2)]
    third = asyncio.create_task(queue.acquire("joe", "voice:joe"))
    await settle()
    assert not third.done()
    queue.settle(held[0].ticket)  # its listener has audio in hand: it counts once (1 + 2 + 2 for the new one: 1.25)
    await settle()
    assert not third.done()
    queue.settle(held[1].ticket)  # 1 + 1 + 2: fits, at once, with no stream ending
    await settle()
    assert third.done() and queue.admitted == 3
    for ticket in [*held, third.result()]:
        queue.release(ticket.ticket)


async def test_an_unmeasured_voice_is_not_starved_and_waits_only_for_its_own_measurement() -> None:
    admission = RealTimeAdmission(target_load=1.0, cold_start_streams=1)
    admission.observe("joe", 0.25)  # 4 joe streams fit
    queue = AdmissionQueue(admission, max_calls=100)
    joe = [await queue.acquire("joe", "voice:joe") for _ in range(4)]
    new_voice = asyncio.create_task(queue.acquire("fresh", "voice:fresh"))
    more_joe = [asyncio.create_task(queue.acquire("joe", "voice:joe")) for _ in range(3)]
    await settle()
    queue.release(joe[0].ticket)
    await settle()
    assert new_voice.done()  # its turn came first, and a cold voice gets its first stream
    fresh = new_voice.result()
    second_fresh = asyncio.create_task(queue.acquire("fresh", "voice:fresh"))
    queue.release(joe[1].ticket)
    await settle()
    # The second 'fresh' stream waits for the first one's measurement (cold start); joe may go meanwhile.
    assert not second_fresh.done() and sum(t.done() for t in more_joe) == 1
    queue.release(fresh.ticket, audio_s=10.0, busy_s=2.5)
    await settle()
    for task in [second_fresh, *more_joe]:
        task.cancel()
    await asyncio.gather(second_fresh, *more_joe, return_exceptions=True)
    assert queue.waiting == 0


async def test_host_saturation_scales_the_target_down(tmp_path: Path) -> None:
    psi = tmp_path / "cpu"
    now = [0.0]

    def write(total_us: int) -> None:
        psi.write_text(f"some avg10=0.00 avg60=0.00 avg300=0.00 total={total_us}\nfull avg10=0 total=0\n")

    write(0)
    host = HostLoad(psi_path=str(psi), clock=lambda: now[0], smoothing=1.0, floor=0.5)
    assert host.source == "psi"
    assert host.headroom() == 1.0
    now[0] = 1.0
    write(900_000)  # some task waited 90% of the last second
    assert host.headroom() == pytest.approx(0.5)
    now[0] = 2.0
    write(1_000_000)  # 10%: spare CPU again
    assert host.headroom() == pytest.approx(1.0)


def test_host_load_falls_back_without_psi(tmp_path: Path) -> None:
    stat = tmp_path / "stat"
    stat.write_text("cpu  100 0 100 800 0 0 0 0 0 0\n")
    host = HostLoad(psi_path=str(tmp_path / "absent"), stat_path=str(stat))
    assert host.source == "proc_stat"
    bare = HostLoad(psi_path=str(tmp_path / "absent"), stat_path=str(tmp_path / "absent"))
    assert bare.source == "process_times" and 0.5 <= bare.headroom() <= 1.0
    assert HostLoad("off").headroom() == 1.0


def test_refusals_are_logged_in_aggregate(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    refusals = RefusalLog(interval_s=10.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="services.tts_gateway.admission"):
        for i in range(500):
            now[0] = i * 0.05  # 25 s of refusals
            refusals.note("queue_full" if i % 2 else "deadline")
    assert refusals.lines == 2 and len(caplog.records) == 2
    assert "queue_full=" in caplog.records[0].getMessage()


# ---- through gRPC ---------------------------------------------------------------------------------------------------


class _Catalog:
    """The catalogue's lookup, for voices "a" and "b" (the admission path asks only whether a name is known)."""

    def get(self, name: str) -> str:
        if name not in ("a", "b"):
            raise NotFound(f"unknown voice {name!r}")
        return name


class _HoldingServicer(TtsGatewayServicer):
    """The real admission path (`_admitted`) around a stream that lasts until the test releases it."""

    def __init__(self, queue: AdmissionQueue) -> None:
        none: Any = None
        catalog: Any = _Catalog()
        super().__init__(
            catalog=catalog, validator=none, triton=none, rvc=none, monitor=none, windows=none,
            max_concurrent_streams=queue.max_calls, queue=queue,
        )  # fmt: skip
        self.release = asyncio.Event()
        self.admitted_voices: list[str] = []

    async def Synthesize(self, request: Any, context: Any) -> AsyncIterator[audio_pb2.AudioChunk]:
        async with self._admitted(request.voice, context):
            self.admitted_voices.append(request.voice)
            yield audio_pb2.AudioChunk(audio=b"\0\0")
            await self.release.wait()


async def _server(queue: AdmissionQueue) -> tuple[grpc.aio.Server, _HoldingServicer, str]:
    server = grpc.aio.server(interceptors=[ServerInterceptor()])
    servicer = _HoldingServicer(queue)
    tts_gateway_pb2_grpc.add_TtsGatewayServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, servicer, f"127.0.0.1:{port}"


def _retry_info(error: grpc.aio.AioRpcError) -> error_details_pb2.RetryInfo | None:
    return next((d for d in status_details(error) if isinstance(d, error_details_pb2.RetryInfo)), None)


async def test_grpc_queue_full_is_resource_exhausted_with_retry_info_and_waiters_are_served_in_fair_turns() -> None:
    server, servicer, address = await _server(queue_of(1, max_length=2))
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = tts_gateway_pb2_grpc.TtsGatewayServiceStub(channel)
            first = stub.Synthesize(tts_gateway_pb2.SynthesizeRequest(voice="a", text="x"), timeout=30)
            await first.read()
            waiting = [stub.Synthesize(tts_gateway_pb2.SynthesizeRequest(voice=v, text="x"), timeout=30) for v in "ab"]
            await async_wait_until(lambda: servicer.queue.waiting == 2, within=1, interval=0.01, what="2 waiters")
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.Synthesize(tts_gateway_pb2.SynthesizeRequest(voice="a", text="x"), timeout=30).read()
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            info = _retry_info(refused.value)
            assert info is not None and info.retry_delay.ToTimedelta().total_seconds() > 0
            servicer.release.set()  # every admitted stream ends at once; the queue lets the next in
            for call in [first, *waiting]:
                while await call.read() is not grpc.aio.EOF:
                    pass
                assert await call.code() == grpc.StatusCode.OK
            # "b" goes before the second "a": "a" had its share already (the first stream, admitted at once).
            assert servicer.admitted_voices == ["a", "b", "a"]
    finally:
        await server.stop(None)


async def test_grpc_deadline_shorter_than_the_wait_is_refused_at_once_and_cancel_leaves_the_queue() -> None:
    queue = queue_of(1)
    server, servicer, address = await _server(queue)
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = tts_gateway_pb2_grpc.TtsGatewayServiceStub(channel)
            first = stub.Synthesize(tts_gateway_pb2.SynthesizeRequest(voice="a", text="x"), timeout=30)
            await first.read()
            queue.admission._durations.extend([20.0] * 5)  # streams last 20 s: a slot in about 20 s
            loop = asyncio.get_running_loop()
            started = loop.time()
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.Synthesize(tts_gateway_pb2.SynthesizeRequest(voice="a", text="x"), timeout=2).read()
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert _retry_info(refused.value) is not None and loop.time() - started < 1.0
            # A client that gives up while waiting leaves the queue.
            waiter = stub.Synthesize(tts_gateway_pb2.SynthesizeRequest(voice="a", text="x"), timeout=30)
            await async_wait_until(lambda: queue.waiting == 1, within=1, interval=0.01, what="the waiter")
            waiter.cancel()
            await async_wait_until(lambda: queue.waiting == 0, within=1, interval=0.01, what="the waiter to leave")
            assert queue.admitted == 1
            servicer.release.set()
            while await first.read() is not grpc.aio.EOF:
                pass
            await async_wait_until(lambda: queue.admitted == 0, within=1, interval=0.01, what="the slot's release")
            assert servicer.active == 0
    finally:
        await server.stop(None)


async def test_unknown_voice_names_share_one_key_and_cannot_open_turns_of_their_own() -> None:
    queue = queue_of(1)
    server, _servicer, address = await _server(queue)
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = tts_gateway_pb2_grpc.TtsGatewayServiceStub(channel)
            first = stub.Synthesize(tts_gateway_pb2.SynthesizeRequest(voice="a", text="x"), timeout=30)
            await first.read()
            names = [f"made-up-{n}" for n in range(5)]
            flood = [stub.Synthesize(tts_gateway_pb2.SynthesizeRequest(voice=v, text="x"), timeout=30) for v in names]
            legit = stub.Synthesize(tts_gateway_pb2.SynthesizeRequest(voice="b", text="x"), timeout=30)
            # The server runs on this loop: the wait polls without blocking it.
            await async_wait_until(lambda: queue.waiting == 6, within=4, interval=0.02, what="6 waiters")
            assert queue.waiting_by_key() == {"voice:?": 5, "voice:b": 1}  # five names, one share
            for call in (first, *flood, legit):
                call.cancel()
    finally:
        await server.stop(0)
