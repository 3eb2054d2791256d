"""Bounded waits on observable state, so tests never sleep a guessed time to let something happen.

- ``wait_until(condition, within=...)``: poll until ``condition()`` is truthy; returns that value.
- ``wait_until_steady(read, quiet=..., within=...)``: poll until ``read()`` has kept one value for ``quiet`` seconds
  (work in flight may finish, nothing new may start); returns that value.
- ``assert_steady(read, period=...)``: the window of a negative check: ``read()`` must not change for ``period``.
- ``async_*`` twins for coroutines: their callables may return a value or an awaitable.
- ``yield_to_loop()``: run every asyncio task that is ready, for pure-asyncio code with nothing to poll.

A condition may raise AssertionError itself to fail at once (a process that exited while being waited for).
Every timeout raises AssertionError naming what was awaited and, for ``read`` waits, the last value seen.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

Description = str | Callable[[], str]


def _describe(what: Description, fallback: Callable[..., object]) -> str:
    if callable(what):
        return what()
    return what or getattr(fallback, "__name__", "the condition")


def wait_until(condition: Callable[[], T], *, within: float, interval: float = 0.05, what: Description = "") -> T:
    """Call ``condition`` every ``interval`` seconds until it returns something truthy, and return that. After
    ``within`` seconds, AssertionError naming ``what`` (a text, or a callable giving one, e.g. a log tail)."""
    deadline = time.monotonic() + within
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {within:g} s waiting for {_describe(what, condition)}")
        time.sleep(interval)


def wait_until_steady(
    read: Callable[[], T], *, quiet: float, within: float, interval: float = 0.1, what: Description = ""
) -> T:
    """Poll ``read`` until its value has not changed for ``quiet`` seconds; return that value. AssertionError when
    it is still changing ``within`` seconds on."""
    deadline = time.monotonic() + within
    value, since = read(), time.monotonic()
    while time.monotonic() - since < quiet:
        if time.monotonic() >= deadline:
            raise AssertionError(f"{_describe(what, read)} still changing after {within:g} s (last value {value!r})")
        time.sleep(interval)
        if (latest := read()) != value:
            value, since = latest, time.monotonic()
    return value


def assert_steady(read: Callable[[], T], *, period: float, interval: float = 0.1, what: Description = "") -> T:
    """Assert that ``read`` keeps its first value for ``period`` seconds (the observation window of a check that
    something does NOT happen); fails as soon as it changes. Returns the value."""
    value = read()
    deadline = time.monotonic() + period
    while time.monotonic() < deadline:
        time.sleep(interval)
        latest = read()
        if latest != value:
            raise AssertionError(f"{_describe(what, read)} changed from {value!r} to {latest!r}")
    return value


async def _call(function: Callable[[], T | Awaitable[T]]) -> T:
    value = function()
    if inspect.isawaitable(value):
        return await value
    return value


async def async_wait_until(
    condition: Callable[[], T | Awaitable[T]], *, within: float, interval: float = 0.05, what: Description = ""
) -> T:
    """``wait_until`` for coroutines: ``condition`` may be a plain callable or return an awaitable."""
    deadline = time.monotonic() + within
    while True:
        value = await _call(condition)
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {within:g} s waiting for {_describe(what, condition)}")
        await asyncio.sleep(interval)


async def async_wait_until_steady(
    read: Callable[[], T | Awaitable[T]],
    *,
    quiet: float,
    within: float,
    interval: float = 0.1,
    what: Description = "",
) -> T:
    """``wait_until_steady`` for coroutines."""
    deadline = time.monotonic() + within
    value, since = await _call(read), time.monotonic()
    while time.monotonic() - since < quiet:
        if time.monotonic() >= deadline:
            raise AssertionError(f"{_describe(what, read)} still changing after {within:g} s (last value {value!r})")
        await asyncio.sleep(interval)
        if (latest := await _call(read)) != value:
            value, since = latest, time.monotonic()
    return value


async def yield_to_loop(rounds: int = 10) -> None:
    """Let every ready asyncio task run until it blocks: for code that only awaits other tasks (no threads, no
    I/O), a few passes of the event loop are the whole wait, with no clock involved."""
    for _ in range(rounds):
        await asyncio.sleep(0)
