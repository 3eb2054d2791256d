"""Cancellation shared by the worker pool and the engines (pure Python, no gRPC, no torch).

A conversion job gets a ``CancelToken``; the engines take it as a plain ``should_stop()`` callable and call
``check_stop`` between their steps and inside their loops, so a job whose client is gone stops within one step
instead of finishing its whole block.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

# What engines accept: true once the work is no longer wanted.
ShouldStop = Callable[[], bool]


class JobCancelled(Exception):
    """Raised inside a job (by ``check_stop`` / ``CancelToken.raise_if_cancelled``) or for a job dropped before it
    ran."""


class CancelToken:
    """Thread-safe flag a job polls; set when its client is gone."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.reason = ""

    def cancel(self, reason: str = "cancelled") -> None:
        if not self._event.is_set():
            self.reason = reason
            self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def __call__(self) -> bool:  # lets engines take it as a plain `should_stop()` callable
        return self._event.is_set()

    def raise_if_cancelled(self) -> None:
        if self._event.is_set():
            raise JobCancelled(self.reason)


def check_stop(should_stop: ShouldStop | None) -> None:
    """Raise JobCancelled when ``should_stop()`` is true (no-op without one)."""
    if should_stop is not None and should_stop():
        raise JobCancelled(getattr(should_stop, "reason", "") or "cancelled")


__all__ = ["CancelToken", "JobCancelled", "ShouldStop", "check_stop"]
