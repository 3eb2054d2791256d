"""A watcher thread that stops work in progress once its request is cancelled.

Between pieces a model asks `request.is_cancelled()` itself; during one long call it cannot, so the watcher asks
every `poll_s` and runs the stop callback it was given (ONNX Runtime's terminate flag, a torch loop's flag). Not more
often than needed: Triton 24.x can crash in ResponseFactoryIsCancelled when a cancellation races the check
(triton-inference-server/server#8034, #8192), so each check is a small risk.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any


class CancelWatcher:
    """One thread per model instance watching at most one request at a time."""

    def __init__(self, name: str, poll_s: float, ipc: threading.Lock | None = None) -> None:
        self._poll_s = poll_s
        self._ipc = ipc
        self._lock = threading.Lock()
        self._current: tuple[Any, Callable[[], None]] | None = None
        self._wake = threading.Event()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name=f"{name}-cancel", daemon=True)
        self._thread.start()

    @property
    def enabled(self) -> bool:
        return self._poll_s > 0

    def watch(self, request: Any, stop: Callable[[], None]) -> None:
        if self._poll_s <= 0:
            return
        with self._lock:
            self._current = (request, stop)
        self._wake.set()

    def clear(self) -> None:
        """Stop watching; returns only when no check is in flight, so the request may be released after it."""
        with self._lock:
            self._current = None

    def _run(self) -> None:
        while not self._stopped:
            self._wake.wait()
            with self._lock:
                if self._current is None:
                    self._wake.clear()
                    continue
                request, stop = self._current
                try:
                    with self._ipc or contextlib.nullcontext():
                        cancelled = request.is_cancelled()
                    if cancelled:
                        stop()
                        self._current = None
                except Exception:  # nothing to stop if the request cannot be asked
                    self._current = None
            time.sleep(self._poll_s)

    def stop(self) -> None:
        self._stopped = True
        self._wake.set()
