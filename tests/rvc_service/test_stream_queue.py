"""The conversion service's stream queue: streams that do not fit wait first come first served, bounded in length,
in time and by their own deadline, and a waiter that goes away leaves the line."""

from __future__ import annotations

import asyncio

import pytest

from services.rvc_service.capacity import CapacityEstimator, StreamQueue

COST_CLASS = "world-default|harvest"


def one_stream_queue(max_length: int = 8, max_wait_s: float = 5.0) -> StreamQueue:
    """Room for exactly one stream at a time: one worker at full utilization, every stream costing one worker."""
    return StreamQueue(CapacityEstimator(1, 1.0, prior_cost=1.0), max_length=max_length, max_wait_s=max_wait_s)


async def test_waiting_streams_are_admitted_in_arrival_order_as_streams_end() -> None:
    queue = one_stream_queue()
    assert (await queue.admit("a", COST_CLASS)).admitted
    order: list[str] = []

    async def stream(name: str) -> None:
        assert (await queue.admit(name, COST_CLASS)).admitted
        order.append(name)

    waiters = [asyncio.create_task(stream(name)) for name in ("b", "c", "d")]
    await asyncio.sleep(0.05)
    assert queue.waiting == 3 and order == []
    for ending in ("a", "b", "c"):
        queue.release(ending)
        await asyncio.sleep(0.02)
    await asyncio.gather(*waiters)
    assert order == ["b", "c", "d"] and queue.waiting == 0


async def test_a_full_line_refuses_at_once_with_a_retry_hint() -> None:
    queue = one_stream_queue(max_length=1)
    assert (await queue.admit("a", COST_CLASS)).admitted
    waiter = asyncio.create_task(queue.admit("b", COST_CLASS))
    await asyncio.sleep(0.02)
    started = asyncio.get_running_loop().time()
    refused = await queue.admit("c", COST_CLASS)
    assert not refused.admitted and refused.retry_after_s > 0
    assert asyncio.get_running_loop().time() - started < 0.05
    queue.release("a")
    assert (await waiter).admitted


async def test_a_deadline_shorter_than_the_retry_hint_is_refused_at_once() -> None:
    queue = one_stream_queue()
    assert (await queue.admit("a", COST_CLASS)).admitted
    refused = await queue.admit("b", COST_CLASS, time_remaining=0.01)
    assert not refused.admitted and queue.waiting == 0


async def test_the_wait_is_bounded_and_the_line_is_left_empty() -> None:
    queue = one_stream_queue(max_wait_s=0.3)
    for n in range(20):  # short streams teach the estimator a retry hint (0.2 s) below the wait limit
        assert (await queue.admit(f"short-{n}", COST_CLASS)).admitted
        queue.release(f"short-{n}")
    assert (await queue.admit("a", COST_CLASS)).admitted
    started = asyncio.get_running_loop().time()
    refused = await queue.admit("b", COST_CLASS)
    assert not refused.admitted
    assert 0.25 <= asyncio.get_running_loop().time() - started < 1.0
    assert queue.waiting == 0 and queue.estimator.active == 1


async def test_a_cancelled_waiter_leaves_the_line_and_the_next_one_gets_in() -> None:
    queue = one_stream_queue()
    assert (await queue.admit("a", COST_CLASS)).admitted
    gone = asyncio.create_task(queue.admit("b", COST_CLASS))
    stays = asyncio.create_task(queue.admit("c", COST_CLASS))
    await asyncio.sleep(0.02)
    gone.cancel()
    with pytest.raises(asyncio.CancelledError):
        await gone
    assert queue.waiting == 1
    queue.release("a")
    assert (await asyncio.wait_for(stays, 1.0)).admitted
    assert queue.waiting == 0 and queue.estimator.active == 1


async def test_only_streams_that_are_refused_in_the_end_count_as_refusals() -> None:
    queue = one_stream_queue(max_length=1, max_wait_s=5.0)
    assert (await queue.admit("a", COST_CLASS)).admitted
    waiter = asyncio.create_task(queue.admit("b", COST_CLASS))  # waits, then gets in: not a refusal
    await asyncio.sleep(0.02)
    assert not (await queue.admit("c", COST_CLASS)).admitted  # the line is full: a refusal
    queue.release("a")
    assert (await waiter).admitted
    assert queue.estimator.refusals == 1
