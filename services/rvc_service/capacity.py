"""Admission of Convert streams by real-time capacity (pure Python: no gRPC, no torch, no metrics).

A Convert stream asks for one second of conversion per wall-clock second. What that costs the pool is measured, not
assumed: every finished stream job reports its time on a worker and the seconds of audio it converted, and the
estimator keeps, per cost class (a model and its F0 method), an exponentially weighted ratio

    cost = EWMA(run seconds) / EWMA(audio seconds)        (worker-seconds per audio second)

Weighting both sides keeps a short final window (a few ms of new audio after 0.5 s of context) from reading as a
huge cost. The jobs run under whatever load the pool has, so the estimate follows the throughput actually sustained.

A new stream is admitted when the streams already admitted plus the new one fit the pool:

    sum(cost[class of each admitted stream]) + cost[new class] <= workers * target_utilization

A class with no measurement yet counts at the highest cost known (and never below ``prior_cost``), so an unknown
voice is assumed expensive until its first jobs say otherwise. With no stream admitted, one is always admitted: a
lone stream cannot be helped by refusing it, and its jobs provide the measurement. Refusals carry a retry hint: the
expected wait until one of the admitted streams ends (their mean duration over their number, bounded).
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Admission:
    admitted: bool
    cost: float  # worker-seconds per audio second counted for the new stream
    load: float  # admitted load after the decision (worker units)
    capacity: float  # workers * target utilization
    retry_after_s: float  # hint for a refused client


@dataclass(frozen=True)
class CostEstimate:
    cost_class: str
    cost: float
    jobs: int


class CapacityEstimator:
    """Per-class cost EWMAs and the admitted streams; every method is thread-safe."""

    def __init__(
        self,
        workers: int,
        target_utilization: float = 0.8,
        *,
        alpha: float = 0.2,
        prior_cost: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        if target_utilization < 0:
            raise ValueError(f"target utilization must be >= 0 (0 turns admission off), got {target_utilization}")
        if not 0 < alpha <= 1:
            raise ValueError(f"alpha must be in (0, 1], got {alpha}")
        if prior_cost <= 0:
            raise ValueError(f"prior cost must be positive, got {prior_cost}")
        self.workers = workers
        self.target_utilization = target_utilization
        self.alpha = alpha
        self.prior_cost = prior_cost
        self._clock = clock
        self._lock = threading.Lock()
        self._run: dict[str, float] = {}  # EWMA of run seconds per job
        self._audio: dict[str, float] = {}  # EWMA of audio seconds per job
        self._jobs: dict[str, int] = {}
        self._streams: dict[str, tuple[str, float]] = {}  # stream id -> (cost class, admitted at)
        self._mean_stream_s = 5.0  # EWMA of admitted stream durations, for the retry hint
        self.refusals = 0

    @property
    def enabled(self) -> bool:
        return self.target_utilization > 0

    @property
    def capacity(self) -> float:
        """Worker-seconds per second the admitted streams may use."""
        return self.workers * self.target_utilization

    # ------------------------------------------------------------------------------------------ measurements

    def observe(self, cost_class: str, run_seconds: float, audio_seconds: float) -> None:
        """One finished job of a stream of this class: `run_seconds` on a worker for `audio_seconds` of new audio."""
        if run_seconds < 0 or audio_seconds <= 0:
            return
        with self._lock:
            if cost_class in self._run:
                a = self.alpha
                self._run[cost_class] = (1 - a) * self._run[cost_class] + a * run_seconds
                self._audio[cost_class] = (1 - a) * self._audio[cost_class] + a * audio_seconds
            else:
                self._run[cost_class] = run_seconds
                self._audio[cost_class] = audio_seconds
            self._jobs[cost_class] = self._jobs.get(cost_class, 0) + 1

    def _measured_locked(self, cost_class: str) -> float | None:
        if cost_class not in self._run:
            return None
        return self._run[cost_class] / self._audio[cost_class]

    def _cost_locked(self, cost_class: str) -> float:
        measured = self._measured_locked(cost_class)
        if measured is not None:
            return measured
        known = [self._run[c] / self._audio[c] for c in self._run]
        return max([self.prior_cost, *known])

    def cost(self, cost_class: str) -> float:
        """The cost a stream of this class is counted at now (measured, else the conservative prior)."""
        with self._lock:
            return self._cost_locked(cost_class)

    def estimates(self) -> list[CostEstimate]:
        with self._lock:
            return [CostEstimate(c, self._run[c] / self._audio[c], self._jobs[c]) for c in sorted(self._run)]

    # --------------------------------------------------------------------------------------------- admission

    def _load_locked(self) -> float:
        return sum(self._cost_locked(c) for c, _ in self._streams.values())

    def load(self) -> float:
        """Worker-seconds per second the admitted streams need, at the current estimates."""
        with self._lock:
            return self._load_locked()

    @property
    def active(self) -> int:
        with self._lock:
            return len(self._streams)

    def try_admit(self, stream_id: str, cost_class: str, *, count_refusal: bool = True) -> Admission:
        """Admit (and register) the stream if it fits; otherwise count a refusal (unless the caller will still let
        it wait: `count_refusal=False`). Never blocks."""
        with self._lock:
            cost = self._cost_locked(cost_class)
            load = self._load_locked()
            fits = not self.enabled or not self._streams or load + cost <= self.capacity + 1e-9
            if fits:
                self._streams[stream_id] = (cost_class, self._clock())
                return Admission(True, cost, load + cost, self.capacity, 0.0)
            if count_refusal:
                self.refusals += 1
            retry = min(10.0, max(0.2, self._mean_stream_s / max(1, len(self._streams))))
            return Admission(False, cost, load, self.capacity, retry)

    def note_refusal(self) -> None:
        """A stream was refused after all (it could not wait, or its wait ran out)."""
        with self._lock:
            self.refusals += 1

    def try_admit_dry(self, cost_class: str) -> Admission:
        """The refusal a stream of this class would get now, without registering or counting anything."""
        with self._lock:
            cost = self._cost_locked(cost_class)
            load = self._load_locked()
            retry = min(10.0, max(0.2, self._mean_stream_s / max(1, len(self._streams))))
            return Admission(False, cost, load, self.capacity, retry)

    def release(self, stream_id: str) -> None:
        """The stream ended (any way); its share of the capacity is free again."""
        with self._lock:
            entry = self._streams.pop(stream_id, None)
            if entry is not None:
                duration = self._clock() - entry[1]
                self._mean_stream_s = 0.8 * self._mean_stream_s + 0.2 * duration


class StreamQueue:
    """Streams that do not fit now wait, first come first served, instead of being refused (the gateway's admission
    queue, in the conversion service). A stream is refused (the last Admission, not admitted) only when `max_length`
    streams wait already, when its deadline leaves less than the retry hint, or when it waited `max_wait_s`.
    Only the head of the line is tried when a stream ends, so a later, cheaper stream cannot overtake it."""

    def __init__(self, estimator: CapacityEstimator, *, max_length: int = 32, max_wait_s: float = 5.0) -> None:
        self.estimator = estimator
        self.max_length = max(0, max_length)
        self.max_wait_s = max_wait_s
        self._line: collections.deque[asyncio.Future[None]] = collections.deque()

    @property
    def waiting(self) -> int:
        return len(self._line)

    async def admit(self, stream_id: str, cost_class: str, time_remaining: float | None = None) -> Admission:
        if not self._line:
            first = self.estimator.try_admit(stream_id, cost_class, count_refusal=False)
            if first.admitted:
                return first
        else:
            first = self.estimator.try_admit_dry(cost_class)
        budget = self.max_wait_s if time_remaining is None else min(self.max_wait_s, time_remaining)
        if len(self._line) >= self.max_length or budget < first.retry_after_s:
            self.estimator.note_refusal()
            return first
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._line.append(turn)
        if len(self._line) == 1:
            turn.set_result(None)  # the head tries at once, and again after each release
        try:
            async with asyncio.timeout(budget):
                while True:
                    await turn
                    decision = self.estimator.try_admit(stream_id, cost_class, count_refusal=False)
                    if decision.admitted:
                        return decision
                    turn = self._rearm(turn)
        except TimeoutError:
            self.estimator.note_refusal()
            return self.estimator.try_admit_dry(cost_class)
        finally:
            self._leave(turn)

    def _rearm(self, turn: asyncio.Future[None]) -> asyncio.Future[None]:
        fresh: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._line[self._line.index(turn)] = fresh
        return fresh

    def _leave(self, turn: asyncio.Future[None]) -> None:
        was_head = bool(self._line) and self._line[0] is turn
        if turn in self._line:
            self._line.remove(turn)
        if was_head:
            self.wake_head()

    def release(self, stream_id: str) -> None:
        self.estimator.release(stream_id)
        self.wake_head()

    def wake_head(self) -> None:
        if self._line and not self._line[0].done():
            self._line[0].set_result(None)


__all__ = ["Admission", "CapacityEstimator", "CostEstimate", "StreamQueue"]
