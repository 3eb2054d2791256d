"""The shared waits of tests/waiting.py: they return what they waited for and fail with a message that says what."""

from __future__ import annotations

import asyncio
import itertools
import time

import pytest

from tests.waiting import (
    assert_steady,
    async_wait_until,
    async_wait_until_steady,
    wait_until,
    wait_until_steady,
    yield_to_loop,
)


def test_wait_until_returns_the_first_truthy_value() -> None:
    counter = itertools.count()
    assert wait_until(lambda: next(counter) >= 3 and "done", within=5, interval=0.001) == "done"


def test_wait_until_times_out_naming_what_it_waited_for() -> None:
    started = time.monotonic()
    with pytest.raises(AssertionError, match=r"timed out after 0\.1 s waiting for the moon"):
        wait_until(lambda: False, within=0.1, interval=0.01, what=lambda: "the moon")
    assert time.monotonic() - started < 2


def test_a_condition_can_fail_at_once() -> None:
    def exited() -> bool:
        raise AssertionError("process exited")

    with pytest.raises(AssertionError, match="process exited"):
        wait_until(exited, within=10)


def test_wait_until_steady_returns_the_settled_value() -> None:
    values = iter([1, 2, 3])
    assert wait_until_steady(lambda: next(values, 3), quiet=0.05, within=5, interval=0.01) == 3


def test_wait_until_steady_fails_while_the_value_keeps_changing() -> None:
    counter = itertools.count()
    with pytest.raises(AssertionError, match=r"counter still changing after 0\.2 s"):
        wait_until_steady(lambda: next(counter), quiet=0.1, within=0.2, interval=0.01, what="counter")


def test_assert_steady_fails_on_the_first_change() -> None:
    values = iter([1, 1, 2])
    with pytest.raises(AssertionError, match="count changed from 1 to 2"):
        assert_steady(lambda: next(values, 2), period=5, interval=0.01, what="count")
    assert assert_steady(lambda: 7, period=0.05, interval=0.01) == 7


async def test_async_waits_take_plain_and_async_callables() -> None:
    counter = itertools.count()

    async def reached() -> bool:
        return next(counter) >= 2

    assert await async_wait_until(reached, within=5, interval=0.001)
    assert await async_wait_until(lambda: 5, within=1) == 5
    values = iter([1, 2])
    assert await async_wait_until_steady(lambda: next(values, 2), quiet=0.05, within=5, interval=0.01) == 2
    with pytest.raises(AssertionError, match=r"timed out after 0\.05 s waiting for reached"):
        await async_wait_until(lambda: False, within=0.05, interval=0.01, what="reached")


async def test_yield_to_loop_runs_ready_tasks_until_they_block() -> None:
    steps: list[int] = []
    gate = asyncio.Event()

    async def worker() -> None:
        steps.append(1)
        await asyncio.sleep(0)
        steps.append(2)
        await gate.wait()
        steps.append(3)

    task = asyncio.create_task(worker())
    await yield_to_loop()
    assert steps == [1, 2] and not task.done()
    gate.set()
    await yield_to_loop()
    assert steps == [1, 2, 3] and task.done()
