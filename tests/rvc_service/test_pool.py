"""The worker pool with real threads and real CPU work (torch kernels, which release the GIL)."""

from __future__ import annotations

import asyncio
import threading
import time

import grpc
import pytest
import torch

from services.rvc_service.pool import CancelToken, JobCancelled, PoolClosed, PoolFull, WorkerPool
from tests.waiting import async_wait_until

MODEL = "test-model"


def torch_work(iterations: int) -> float:
    """Single-threaded CPU work in torch (the pool sets 1 intra-op thread per worker on 2 cores)."""
    a = torch.randn(384, 384)
    for _ in range(iterations):
        a = torch.tanh(a @ a * 0.01)
    return float(a.sum())


def iterations_for(seconds: float) -> int:
    """Calibrate torch_work to take about `seconds` on this machine (one thread)."""
    torch.set_num_threads(1)
    n = 20
    while True:
        started = time.perf_counter()
        torch_work(n)
        elapsed = time.perf_counter() - started
        if elapsed > 0.05:
            return max(1, round(n * seconds / elapsed))
        n *= 2


@pytest.fixture
def make_pool():
    pools: list[WorkerPool] = []

    def factory(workers: int, capacity: int = 64) -> WorkerPool:
        pool = WorkerPool(workers, capacity, device="cpu", threads_per_worker=1)
        pools.append(pool)
        return pool

    yield factory
    for pool in pools:
        pool.close(timeout=10)


async def test_jobs_of_one_stream_run_in_order_and_streams_overlap(make_pool) -> None:
    pool = make_pool(3)
    events: list[tuple[str, int, str, float]] = []
    lock = threading.Lock()

    def job(key: str, i: int):
        def fn(token: CancelToken) -> int:
            with lock:
                events.append((key, i, "start", time.perf_counter()))
            time.sleep(0.01)  # the job's work
            with lock:
                events.append((key, i, "end", time.perf_counter()))
            return i

        return fn

    # Submit all jobs at once so the queue holds many jobs of each key simultaneously.
    tasks = [asyncio.create_task(pool.run(job(key, i), model=MODEL, key=key)) for i in range(12) for key in ("a", "b")]
    results = await asyncio.gather(*tasks)
    assert [r.value for r in results] == [i for i in range(12) for _ in ("a", "b")]
    for key in ("a", "b"):
        seq = [(i, kind) for k, i, kind, _ in events if k == key]
        # Strictly start0, end0, start1, end1, ...: in order and never two of one key at once.
        assert seq == [(i, kind) for i in range(12) for kind in ("start", "end")]
    # Different keys did overlap in time (3 workers, 2 keys).
    spans = {(k, i): [t for kk, ii, _, t in events if (kk, ii) == (k, i)] for k in ("a", "b") for i in range(12)}
    overlaps = sum(
        1
        for i in range(12)
        for j in range(12)
        if spans[("a", i)][0] < spans[("b", j)][1] and spans[("b", j)][0] < spans[("a", i)][1]
    )
    assert overlaps > 0


def raw_thread_speedup(n: int) -> float:
    """What two bare threads gain over one on this host right now (the ceiling for any pool)."""
    started = time.perf_counter()
    torch_work(n)
    torch_work(n)
    serial = time.perf_counter() - started
    threads = [threading.Thread(target=torch_work, args=(n,)) for _ in range(2)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return serial / (time.perf_counter() - started)


async def test_two_workers_beat_one_on_parallel_streams(make_pool) -> None:
    n = iterations_for(0.1)

    async def run_streams(pool: WorkerPool) -> float:
        started = time.perf_counter()

        async def stream(key: str) -> None:
            for _ in range(3):
                await pool.run(lambda token: torch_work(n), model=MODEL, key=key)

        await asyncio.gather(*(stream(f"s{i}") for i in range(4)))
        return time.perf_counter() - started

    # The 2 cores are shared with other work, so alternate trials, keep the best, and compare with what two bare
    # threads achieve at the same time.
    pools = (make_pool(1), make_pool(2))
    best = ceiling = 0.0
    for _ in range(4):
        ceiling = max(ceiling, raw_thread_speedup(n))
        one = await run_streams(pools[0])
        two = await run_streams(pools[1])
        best = max(best, one / two)
        print(f"1 worker {one:.2f}s, 2 workers {two:.2f}s: {one / two:.2f}x (bare threads {ceiling:.2f}x)")
        if best > 1.3:
            break
    if best <= 1.3 and ceiling < 1.3:
        pytest.skip(f"no spare core on this host now: two bare threads reach only {ceiling:.2f}x")
    assert best > 1.3


async def test_full_queue_refuses_at_once_with_retry_hint(make_pool) -> None:
    pool = make_pool(1, capacity=2)
    release = threading.Event()
    blocker = asyncio.create_task(pool.run(lambda t: release.wait(10), model=MODEL))
    await async_wait_until(lambda: pool.stats().busy == 1, within=5, interval=0.005)
    queued = [asyncio.create_task(pool.run(lambda t, i=i: i, model=MODEL)) for i in range(2)]
    await async_wait_until(lambda: pool.stats().queue_depth == 2, within=5, interval=0.005)
    started = time.perf_counter()
    with pytest.raises(PoolFull) as refused:
        pool.submit(lambda t: None, model=MODEL)
    assert time.perf_counter() - started < 0.1
    assert refused.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert refused.value.retry_after_s > 0
    release.set()
    assert [r.value for r in await asyncio.gather(*queued)] == [0, 1]
    await blocker
    # Room again once drained.
    assert (await pool.run(lambda t: "ok", model=MODEL)).value == "ok"


async def test_cancelled_queued_job_is_dropped(make_pool) -> None:
    pool = make_pool(1)
    release = threading.Event()
    ran: list[str] = []
    blocker = asyncio.create_task(pool.run(lambda t: release.wait(10), model=MODEL))
    await async_wait_until(lambda: pool.stats().busy == 1, within=5, interval=0.005)
    victim = asyncio.create_task(pool.run(lambda t: ran.append("victim"), model=MODEL, key="k"))
    await async_wait_until(lambda: pool.stats().queue_depth == 1, within=5, interval=0.005)
    victim.cancel()
    with pytest.raises(asyncio.CancelledError):
        await victim
    assert pool.stats().queue_depth == 0
    release.set()
    await blocker
    # The same key is usable again (its slot was released), and the dropped job never ran.
    assert (await pool.run(lambda t: "next", model=MODEL, key="k")).value == "next"
    assert ran == []


async def test_cancel_stops_running_job_at_next_segment_and_frees_worker(make_pool) -> None:
    pool = make_pool(1)
    segments_done: list[int] = []

    def long_job(token: CancelToken) -> str:
        for i in range(200):  # 200 x 20 ms = 4 s if never cancelled
            token.raise_if_cancelled()
            time.sleep(0.02)  # one segment of work
            segments_done.append(i)
        return "finished"

    task = asyncio.create_task(pool.run(long_job, model=MODEL))
    await async_wait_until(lambda: len(segments_done) >= 3, within=5, interval=0.005)
    task.cancel()
    started = time.perf_counter()
    with pytest.raises(asyncio.CancelledError):
        await task
    # The worker is free again after at most about one segment.
    result = await pool.run(lambda t: "after", model=MODEL)
    assert result.value == "after"
    assert time.perf_counter() - started < 0.5
    assert len(segments_done) < 20


async def test_token_cancelled_before_start_drops_job(make_pool) -> None:
    pool = make_pool(1)
    token = CancelToken()
    token.cancel("client gone")
    with pytest.raises(JobCancelled):
        await pool.run(lambda t: "never", model=MODEL, token=token)
    assert (await pool.run(lambda t: 1, model=MODEL)).value == 1


async def test_job_error_reaches_caller_and_worker_survives(make_pool) -> None:
    pool = make_pool(1)

    def broken(token: CancelToken) -> None:
        raise ValueError("engine failure")

    with pytest.raises(ValueError, match="engine failure"):
        await pool.run(broken, model=MODEL)
    assert (await pool.run(lambda t: 2, model=MODEL)).value == 2
    assert pool.stats().busy == 0


async def test_close_joins_workers_and_fails_queued_work() -> None:
    def workers() -> set[threading.Thread]:
        return {t for t in threading.enumerate() if t.name.startswith("leak-check")}

    pool = WorkerPool(2, 8, device="cpu", threads_per_worker=1, name="leak-check")
    assert len(workers()) == 2
    release = threading.Event()
    running = [asyncio.create_task(pool.run(lambda t: release.wait(0.3), model=MODEL)) for _ in range(2)]
    await async_wait_until(lambda: pool.stats().busy == 2, within=5, interval=0.005)
    queued = asyncio.create_task(pool.run(lambda t: "late", model=MODEL))
    await async_wait_until(lambda: pool.stats().queue_depth == 1, within=5, interval=0.005)
    await pool.aclose(join_timeout=5)
    with pytest.raises(PoolClosed):
        await queued
    await asyncio.gather(*running)
    assert all(not t.is_alive() for t in pool.threads)
    assert workers() == set()
    with pytest.raises(PoolClosed):
        pool.submit(lambda t: None, model=MODEL)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
async def test_each_worker_runs_on_its_own_cuda_stream() -> None:
    pool = WorkerPool(2, 8, device="cuda")
    try:

        def which_stream(token: CancelToken) -> int:
            x = torch.randn(1024, 1024, device="cuda")
            (x @ x).sum().item()
            return torch.cuda.current_stream().cuda_stream

        release = threading.Barrier(2)

        def paired(token: CancelToken) -> int:
            release.wait(5)  # both workers hold a job at once, so each reports its own stream
            return which_stream(token)

        results = await asyncio.gather(*(pool.run(paired, model=MODEL) for _ in range(2)))
        streams = {r.value for r in results}
        assert len(streams) == 2
        assert torch.cuda.default_stream().cuda_stream not in streams
        assert pool.stats().cuda_streams == 2
    finally:
        pool.close()
