"""The conversion pool's queue (issue 27): fair share between shares served round-robin, FIFO within a share,
deadlines (refused at once when the expected wait is longer; dropped when reached too late), cancelled waiters leave.
Jobs are plain Python functions gated by events, so the order is exact and nothing depends on the machine's speed."""

from __future__ import annotations

import asyncio
import collections
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from services.rvc_service.pool import CancelToken, PoolFull, WorkerPool
from tests.waiting import async_wait_until


@pytest.fixture
def pool() -> Iterator[WorkerPool]:
    pool = WorkerPool(1, 64, device="cpu", threads_per_worker=1)
    yield pool
    pool.close(timeout=10)


def gated(gate: threading.Event, ran: list[str], name: str) -> Callable[[CancelToken], str]:
    def fn(token: CancelToken) -> str:
        gate.wait(10)
        ran.append(name)
        return name

    return fn


async def test_shares_are_served_round_robin_and_fifo_within_a_share(pool: WorkerPool) -> None:
    gate = threading.Event()
    ran: list[str] = []
    blocker = pool.submit(gated(gate, ran, "blocker"), model="m")  # occupies the one worker
    await async_wait_until(lambda: pool.stats().busy == 1, within=10)
    # The busy model offers ten times the jobs of the quiet one, all queued before the quiet one's.
    busy = [pool.submit(gated(gate, ran, f"busy{i}"), model="busy", key=f"b{i}") for i in range(10)]
    quiet = [pool.submit(gated(gate, ran, f"quiet{i}"), model="quiet", key=f"q{i}") for i in range(2)]
    gate.set()
    for future in [blocker, *busy, *quiet]:
        await asyncio.wrap_future(future)
    assert ran[:5] == ["blocker", "busy0", "quiet0", "busy1", "quiet1"]
    assert [r for r in ran if r.startswith("busy")] == [f"busy{i}" for i in range(10)]


async def test_fair_share_under_sustained_demand(pool: WorkerPool) -> None:
    served: collections.Counter[str] = collections.Counter()
    stop = time.perf_counter() + 0.6

    def work(token: CancelToken) -> None:
        time.sleep(0.002)

    async def client(share: str) -> None:
        while time.perf_counter() < stop:
            await pool.run(work, model="m", share=share)
            served[share] += 1

    await asyncio.gather(*[client("greedy") for _ in range(10)], client("modest"), client("modest"))
    assert served["modest"] > 20
    assert abs(served["greedy"] - served["modest"]) <= 0.2 * served["modest"] + 2, served


async def test_expected_wait_past_the_deadline_is_refused_at_once(pool: WorkerPool) -> None:
    gate = threading.Event()
    ran: list[str] = []
    pool._job_ema_s = 0.5  # recent jobs took 0.5 s each
    running = pool.submit(gated(gate, ran, "running"), model="m")
    await async_wait_until(lambda: pool.stats().busy == 1, within=10)
    queued = [pool.submit(gated(gate, ran, f"q{i}"), model="m", key=f"k{i}") for i in range(4)]
    started = time.perf_counter()
    with pytest.raises(PoolFull) as refused:
        pool.submit(gated(gate, ran, "late"), model="m", deadline_s=0.5)
    assert "deadline" in str(refused.value) and time.perf_counter() - started < 0.05
    assert refused.value.retry_after_s > 0 and pool.stats().queue_depth == 4
    ok = pool.submit(gated(gate, ran, "patient"), model="m", deadline_s=60.0)
    gate.set()
    for future in [running, *queued, ok]:
        await asyncio.wrap_future(future)
    assert "late" not in ran and "patient" in ran


async def test_a_job_that_reaches_a_worker_after_its_deadline_is_dropped(pool: WorkerPool) -> None:
    gate = threading.Event()
    ran: list[str] = []
    pool._job_ema_s = 0.001  # the estimate says no wait; the blocker says otherwise
    running = pool.submit(gated(gate, ran, "running"), model="m")
    await async_wait_until(lambda: pool.stats().busy == 1, within=10)
    late = pool.submit(gated(gate, ran, "late"), model="m", deadline_s=0.05)
    await asyncio.sleep(0.1)
    gate.set()
    await asyncio.wrap_future(running)
    with pytest.raises(PoolFull, match="past its deadline"):
        await asyncio.wrap_future(late)
    assert ran == ["running"]


async def test_cancelled_waiters_leave_their_share_queue(pool: WorkerPool) -> None:
    gate = threading.Event()
    ran: list[str] = []
    running = pool.submit(gated(gate, ran, "running"), model="m")
    await async_wait_until(lambda: pool.stats().busy == 1, within=10)
    waiters = [asyncio.create_task(pool.run(gated(gate, ran, f"w{i}"), model="m", share=f"s{i % 3}")) for i in range(9)]
    await async_wait_until(lambda: pool.stats().queue_depth == 9, within=10)
    for task in waiters:
        task.cancel()
    await asyncio.gather(*waiters, return_exceptions=True)
    assert pool.stats().queue_depth == 0 and not pool._ready
    gate.set()
    await asyncio.wrap_future(running)
    assert ran == ["running"]
