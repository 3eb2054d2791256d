"""Admission by real-time capacity: refuse a new stream when serving it would push admitted streams below real time.

Every stream needs its audio at least as fast as a listener plays it. The upstreams (one Triton worker interleaving
sentences of all streams, a conversion pool of a few workers) share their throughput among the active streams, so a
stream's production time per audio second grows about linearly with the number of streams at once:

    wall_per_audio_s(n) ~= cost_v * n        (cost_v: measured per voice, per concurrent stream)

Each finished stream gives one observation: its production time per audio second divided by the time-averaged
number of streams it shared the upstreams with. cost_v is a moving average of those observations, so it follows what
the system actually sustains now (an upstream scaled out, a noisy neighbour, another mix of voices) instead of a
constant. A new stream of voice v is admitted while, for every voice w among the active streams and v itself,

    cost_w * (n + 1) <= target_load        (target_load < 1 keeps headroom for sentence-sized bursts)

At low load the linear model overestimates the slowdown (several workers run in parallel), which errs on the side
of listeners; observations taken at higher load correct it. A voice with no observation yet is admitted only a few
streams at a time (`cold_start_streams`) until its first stream has been measured.

A stream that has just started needs more than its steady share: its second sentence must be ready before the first
one has played out, so it builds its listener's buffer at burst speed. Until it has settled (the servicer calls
`settle` once its listener has a couple of seconds of audio in hand) and for at most `startup_s`, a stream counts
`startup_weight` times in n. Without this, a crowd arriving at an idle gateway is admitted all at once and every one
of those listeners runs dry at the same sentence boundary (measured: 4 of 391 streams, gaps of 34-108 ms, all at the
end of the first sentence). A time alone would not do: 3 s is most of a stream's life under load, and it cut the
streams running in steady state from 5.6 to 3.2.

The estimator is pure (no gRPC, no asyncio) and takes the clock as an argument, so it is tested with exact numbers.

Around it (issue 27, overload without collapse):

* `AdmissionQueue`: a stream that does not fit now waits (bounded length, bounded wait, within its deadline) in a
  FIFO of its share key (caller, else voice); keys take turns by fair queuing on admission counts (the least served
  goes first, with a bounded catch-up for a key that was away). Refusals come only from a full queue, a deadline the
  expected wait would pass, or a wait that ran out, and they are cheap (decided before any validation).
* `HostLoad`: the host's CPU saturation (PSI, else /proc/stat, else os.times()) scales the target load down, so
  CPU the estimator cannot see (refusals, other processes) still lowers the admitted load.
* `RefusalLog`: refusals are logged as one line of counts per interval, not one line each.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Decision:
    admitted: bool
    reason: str = ""
    retry_after_s: float = 0.0
    kind: str = ""  # why not: "cold_start" (the voice waits for its own first measurement) or "capacity"


@dataclass
class _Stream:
    voice: str
    started: float
    load_integral_at_start: float
    measured: bool
    settled: bool = False  # its listener has audio in hand: it no longer counts as starting


class RealTimeAdmission:
    """Tracks active streams and per-voice cost; decides whether one more stream keeps everyone real time."""

    def __init__(
        self,
        *,
        target_load: float = 0.8,
        cold_start_streams: int = 2,
        smoothing: float = 0.3,
        min_audio_s: float = 0.5,
        enabled: bool = True,
        startup_s: float = 0.0,
        startup_weight: float = 2.0,
    ) -> None:
        if not 0 < target_load <= 1.5:
            raise ValueError(f"target_load must be in (0, 1.5], got {target_load}")
        self.target_load = target_load
        self.cold_start_streams = max(1, cold_start_streams)
        self.smoothing = smoothing
        self.min_audio_s = min_audio_s
        self.enabled = enabled
        self.startup_s = max(0.0, startup_s)
        self.startup_weight = max(1.0, startup_weight)
        self.cost: dict[str, float] = {}  # voice -> production seconds per audio second, per concurrent stream
        self._streams: dict[int, _Stream] = {}
        self._next_id = 0
        self._load_integral = 0.0  # integral of the number of active streams over time
        self._last_change = 0.0
        self._durations: collections.deque[float] = collections.deque(maxlen=50)
        self.refusals = 0

    # ---- bookkeeping ---------------------------------------------------------------------------------------------

    def _advance(self, now: float) -> None:
        if now > self._last_change:
            self._load_integral += len(self._streams) * (now - self._last_change)
        self._last_change = max(self._last_change, now)

    @property
    def active(self) -> int:
        return len(self._streams)

    def active_by_voice(self) -> collections.Counter[str]:
        return collections.Counter(s.voice for s in self._streams.values())

    def capacity_streams(self, voice: str) -> int | None:
        """How many streams of `voice` alone would be admitted; None while the voice is unmeasured."""
        cost = self.cost.get(voice)
        if cost is None:
            return None
        return max(1, int(self.target_load / cost)) if cost > 0 else None

    def _startup_left(self, now: float | None) -> list[float] | None:
        """Seconds of start-up left, per stream still in its start-up at `now`; None when start-ups are not counted
        (no time given, or `startup_s` is 0)."""
        if now is None or self.startup_s <= 0:
            return None
        left = (s.started + self.startup_s - now for s in self._streams.values() if not s.settled)
        return [t for t in left if t > 0]

    def next_startup_end(self, now: float) -> float | None:
        """Seconds until the next stream's start-up times out (and it stops counting extra); None when none is in
        its start-up."""
        left = self._startup_left(now)
        return min(left) if left else None

    def settle(self, ticket: int) -> bool:
        """The stream's listener has audio in hand: it counts once from now on. True if that changed anything."""
        stream = self._streams.get(ticket)
        if stream is None or stream.settled:
            return False
        stream.settled = True
        return True

    def predicted_load(self, extra_voice: str | None = None, now: float | None = None) -> float:
        """The highest cost * streams over the voices present (with one more stream of `extra_voice`); at a time
        `now`, streams in their start-up count `startup_weight` times (the new one too)."""
        voices = set(self.active_by_voice())
        extra = self.startup_weight - 1.0
        starting = self._startup_left(now)
        n = self.active + extra * len(starting or ())
        if extra_voice is not None:
            voices.add(extra_voice)
            n += 1.0 + (extra if starting is not None else 0.0)
        known = [self.cost[v] for v in voices if v in self.cost]
        return max(known, default=0.0) * n

    # ---- decisions -----------------------------------------------------------------------------------------------

    def try_admit(self, voice: str, now: float) -> tuple[Decision, int | None]:
        """(decision, ticket). On admission the ticket must be passed to `finish` when the stream ends."""
        if self.enabled:
            decision = self._decide(voice, now=now)
            if not decision.admitted:
                self.refusals += 1
                return decision, None
        return Decision(True), self.start(voice, now)

    def check(self, voice: str, *, target_load: float | None = None, now: float | None = None) -> Decision:
        """Would one more stream of `voice` fit (at `target_load` instead of the configured one; at time `now`, for
        the streams in their start-up)? No effects."""
        if not self.enabled:
            return Decision(True)
        return self._decide(voice, target_load, now)

    def start(self, voice: str, now: float) -> int:
        """Register a stream without deciding (the caller decided); returns its ticket for `finish`."""
        self._advance(now)
        ticket = self._next_id
        self._next_id += 1
        self._streams[ticket] = _Stream(voice, now, self._load_integral, voice in self.cost)
        return ticket

    def typical_stream_s(self) -> float | None:
        """Median lifetime of recent streams; None before the first one ended."""
        if not self._durations:
            return None
        return sorted(self._durations)[len(self._durations) // 2]

    def _decide(self, voice: str, target_load: float | None = None, now: float | None = None) -> Decision:
        target = self.target_load if target_load is None else target_load
        by_voice = self.active_by_voice()
        if voice not in self.cost:
            unmeasured = sum(1 for s in self._streams.values() if not s.measured and s.voice == voice)
            if unmeasured >= self.cold_start_streams:
                return Decision(
                    False,
                    f"voice {voice!r} has not been measured yet and {unmeasured} of its streams are starting; "
                    "retry when the first one has finished",
                    self.retry_after_s(),
                    "cold_start",
                )
        load = self.predicted_load(voice, now)
        if load > target and self._streams:
            worst = max((v for v in {*by_voice, voice} if v in self.cost), key=lambda v: self.cost[v], default=voice)
            return Decision(
                False,
                f"the gateway is at its real-time capacity: one more stream would slow {worst!r} streams to "
                f"{load:.2f} s of work per second of audio (limit {target:.2f})",
                self.retry_after_s(),
                "capacity",
            )
        return Decision(True)

    def retry_after_s(self) -> float:
        """About when a stream will have ended: the typical stream length spread over the active streams."""
        if not self._durations or not self._streams:
            return 0.5
        typical = sorted(self._durations)[len(self._durations) // 2]
        return float(min(5.0, max(0.2, typical / max(1, len(self._streams)))))

    def finish(self, ticket: int, now: float, *, audio_s: float = 0.0, busy_s: float | None = None) -> None:
        """The stream ended. `audio_s`: audio it produced; `busy_s`: time it spent producing it (defaults to its
        whole lifetime). A stream too short to judge, or one that failed, passes audio_s=0 and teaches nothing."""
        stream = self._streams.get(ticket)
        if stream is None:
            return
        self._advance(now)
        lifetime = now - stream.started
        mean_streams = (self._load_integral - stream.load_integral_at_start) / lifetime if lifetime > 0 else 1.0
        del self._streams[ticket]
        self._durations.append(lifetime)
        busy = lifetime if busy_s is None else busy_s
        if audio_s >= self.min_audio_s and busy > 0:
            self.observe(stream.voice, busy / audio_s / max(1.0, mean_streams))

    def observe(self, voice: str, cost: float) -> None:
        previous = self.cost.get(voice)
        self.cost[voice] = cost if previous is None else previous + self.smoothing * (cost - previous)


# ---- the host's CPU ------------------------------------------------------------------------------------------------

PSI_CPU_PATH = "/proc/pressure/cpu"
PROC_STAT_PATH = "/proc/stat"
HOST_SOURCES = ("auto", "psi", "proc_stat", "process_times", "off")


@dataclass(frozen=True)
class _Thresholds:
    ok: float  # saturation up to which the full target load is used
    full: float  # saturation at which the target is cut to its floor


# Per source, what "saturated" reads as: PSI "some" is the share of wall time at least one runnable task waited for a
# CPU (a few % is normal; sustained tens of % is where streams start missing their deadlines); /proc/stat and
# os.times() give a busy share, which says nothing about waiting until it is close to 1.
_THRESHOLDS = {
    "psi": _Thresholds(ok=0.2, full=0.8),
    "proc_stat": _Thresholds(ok=0.85, full=1.0),
    "process_times": _Thresholds(ok=0.85, full=1.0),
}


class HostLoad:
    """How saturated the host's CPUs are, whatever uses them: this process (refusals included), the upstreams on the
    same host, a noisy neighbour. Sources, best first: Linux pressure-stall information (PSI, /proc/pressure/cpu),
    the host's busy share from /proc/stat, this process's own CPU share from os.times() (a container that hides
    both). `source` names the one in use (exported as a metric label). Sampled lazily, at most every `interval_s`,
    smoothed; `headroom()` maps saturation to a factor in [floor, 1] that scales the admission target."""

    def __init__(
        self,
        source: str = "auto",
        *,
        interval_s: float = 1.0,
        smoothing: float = 0.5,
        floor: float = 0.5,
        psi_path: str = PSI_CPU_PATH,
        stat_path: str = PROC_STAT_PATH,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if source not in HOST_SOURCES:
            raise ValueError(f"host load source must be one of {', '.join(HOST_SOURCES)}, not {source!r}")
        self.interval_s = interval_s
        self.smoothing = smoothing
        self.floor = floor
        self._psi_path = psi_path
        self._stat_path = stat_path
        self._clock = clock
        self.source = self._pick(source)
        self.saturation = 0.0
        self._last_time = clock()
        self._last_counter = self._counter()

    def _pick(self, wanted: str) -> str:
        if wanted != "auto":
            return wanted
        if _read_psi_total(self._psi_path) is not None:
            return "psi"
        if _read_stat_busy(self._stat_path) is not None:
            return "proc_stat"
        return "process_times"

    def _counter(self) -> tuple[float, float]:
        """(work counter, capacity counter) in the same unit; saturation = d(work) / d(capacity)."""
        if self.source == "psi":
            total_us = _read_psi_total(self._psi_path)
            return (total_us / 1e6 if total_us is not None else 0.0), self._clock()
        if self.source == "proc_stat":
            return _read_stat_busy(self._stat_path) or (0.0, 0.0)
        if self.source == "process_times":
            t = os.times()
            return t.user + t.system, self._clock() * (os.cpu_count() or 1)
        return 0.0, 0.0

    def sample(self) -> float:
        """Read the source if `interval_s` passed since the last read; returns the smoothed saturation (0..1)."""
        if self.source == "off":
            return 0.0
        now = self._clock()
        if now - self._last_time < self.interval_s:
            return self.saturation
        work, capacity = self._counter()
        last_work, last_capacity = self._last_counter
        self._last_time, self._last_counter = now, (work, capacity)
        if capacity > last_capacity:
            share = min(1.0, max(0.0, (work - last_work) / (capacity - last_capacity)))
            self.saturation += self.smoothing * (share - self.saturation)
        return self.saturation

    def headroom(self) -> float:
        """Factor for the admission target: 1 while the host has CPU to spare, down to `floor` when it is saturated."""
        thresholds = _THRESHOLDS.get(self.source)
        if thresholds is None:
            return 1.0
        s = self.sample()
        spare = (thresholds.full - s) / (thresholds.full - thresholds.ok)
        return self.floor + (1.0 - self.floor) * min(1.0, max(0.0, spare))


def _read_psi_total(path: str) -> float | None:
    """Microseconds some task waited for a CPU since boot (the 'some' line's total), or None without PSI."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith("some "):
                    for field in line.split()[1:]:
                        if field.startswith("total="):
                            return float(field[len("total=") :])
    except (OSError, ValueError):
        return None
    return None


def _read_stat_busy(path: str) -> tuple[float, float] | None:
    """(busy jiffies, all jiffies) of all CPUs since boot from /proc/stat, or None where it cannot be read."""
    try:
        with open(path) as f:
            fields = f.readline().split()
    except OSError:
        return None
    if len(fields) < 5 or fields[0] != "cpu":
        return None
    try:
        values = [float(v) for v in fields[1:]]
    except ValueError:
        return None
    idle = values[3] + (values[4] if len(values) > 4 else 0.0)  # idle + iowait
    total = sum(values[:8])  # guest time is already counted in user
    return total - idle, total


# ---- refusals, in aggregate ----------------------------------------------------------------------------------------


class RefusalLog:
    """Counts refusals by reason and logs them as one line per `interval_s` instead of one line per refusal (under
    overload a line per refusal is itself a noticeable share of the CPU)."""

    def __init__(self, interval_s: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval_s = interval_s
        self._clock = clock
        self._counts: collections.Counter[str] = collections.Counter()
        self._since = clock()
        self.lines = 0

    def note(self, reason: str) -> None:
        self._counts[reason] += 1
        self.flush_if_due()

    def flush_if_due(self, *, force: bool = False) -> None:
        now = self._clock()
        if not self._counts or (not force and now - self._since < self.interval_s):
            return
        counts = ", ".join(f"{reason}={n}" for reason, n in sorted(self._counts.items()))
        total = sum(self._counts.values())
        log.warning("admission refused %d streams in %.0f s (%s)", total, now - self._since, counts)
        self.lines += 1
        self._counts.clear()
        self._since = now


# ---- the queue -----------------------------------------------------------------------------------------------------


class Refused(Exception):
    """A stream that will not be admitted: `cause` is queue_full, max_streams, deadline or max_wait."""

    def __init__(self, cause: str, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.cause = cause
        self.message = message
        self.retry_after_s = retry_after_s


@dataclass(eq=False)
class _Waiter:
    voice: str
    key: str
    enqueued: float
    future: asyncio.Future[int]


@dataclass(frozen=True)
class Admitted:
    ticket: int
    waited_s: float


RECHECK_S = 1.0  # while streams wait, the longest the queue goes without looking at the capacity again


class AdmissionQueue:
    """Streams that cannot start now wait here instead of being refused.

    * Each share key (the authenticated caller, else the voice) has its own FIFO. Keys take turns by start-time
      fair queuing with unit cost per admission: every admission (the ones that needed no wait included) moves its
      key's tag one step, and the waiting key with the lowest tag goes next, so a caller that sends (or retries) ten
      times as much gets no more than its share, and a voice the model has not measured yet is not starved by one it
      has. A key that was away (all its callers streaming, or a crowd that arrived a moment later) may catch up by at
      most `catch_up` admissions, not by everything it missed; so over a minute the admissions per key stay within a
      few streams of each other whoever came first.
    * The key whose turn it is keeps it while its head does not fit the capacity (later keys may not jump ahead: a
      costly voice would otherwise wait for ever behind cheap ones); a head that waits only for its own voice's first
      measurement (cold start) lets the other keys go.
    * A call is refused (Refused, RESOURCE_EXHAUSTED at the RPC) only when `max_calls` calls are held already
      (admitted and waiting), when the queue holds `max_length` calls, when the expected wait is longer than what is
      left of the call's deadline, or when it waited `max_wait_s` without getting in.
    * Capacity is `admission` (the measured real-time model) at a target scaled by the host's CPU headroom.
    """

    def __init__(
        self,
        admission: RealTimeAdmission,
        *,
        max_calls: int,
        max_length: int = 64,
        max_wait_s: float = 10.0,
        host: HostLoad | None = None,
        refusal_log: RefusalLog | None = None,
        catch_up: float = 4.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.admission = admission
        self.catch_up = max(0.0, catch_up)
        self.max_calls = max_calls
        self.max_length = max(0, max_length)
        self.max_wait_s = max_wait_s
        self.host = host or HostLoad("off")
        self.refusal_log = refusal_log or RefusalLog()
        self._clock = clock
        self._keys: dict[str, collections.deque[_Waiter]] = {}  # waiting keys, in the order they began to wait
        self._tags: dict[str, float] = {}  # key -> virtual finish tag of its latest admission
        self._virtual_time = 0.0  # the highest finish tag so far: "now" in admissions
        self.waiting = 0
        self._recheck: asyncio.TimerHandle | None = None
        self.on_change: Callable[[], None] | None = None  # metrics hook
        self.on_wait: Callable[[float, str], None] | None = None  # (seconds waited, outcome) hook

    # ---- state -----------------------------------------------------------------------------------------------

    @property
    def admitted(self) -> int:
        return self.admission.active

    def waiting_by_key(self) -> dict[str, int]:
        return {key: len(q) for key, q in self._keys.items()}

    def target_load(self) -> float:
        return self.admission.target_load * self.host.headroom()

    def completion_interval_s(self) -> float | None:
        """Expected seconds between two admitted streams ending (None: nothing to go by yet)."""
        typical = self.admission.typical_stream_s()
        if typical is None:
            return None
        return typical / max(1, self.admission.active)

    def expected_wait_s(self, key: str) -> float:
        """Wait of a call of `key` joining now: the streams served before it (keys taking turns), one per completion."""
        interval = self.completion_interval_s()
        if interval is None:
            return 0.0
        mine = len(self._keys.get(key, ()))
        ahead = sum(min(len(q), mine + 1) for k, q in self._keys.items() if k != key) + mine
        return (ahead + 1) * interval

    def _retry_hint(self) -> float:
        """For a refused call: about when the next admitted stream ends (a place in the queue frees), bounded. Not
        when the queue will have drained: a client told to come back much later misses its turns
        meanwhile, and its voice's share goes to whoever happens to be waiting."""
        interval = self.completion_interval_s() or 0.5
        return float(min(5.0, max(0.2, interval)))

    # ---- admission -------------------------------------------------------------------------------------------

    def _fits(self, voice: str) -> Decision:
        if self.admission.active >= self.max_calls:
            return Decision(False, "", 0.0, "capacity")
        return self.admission.check(voice, target_load=self.target_load(), now=self._clock())

    def _refuse(self, cause: str, message: str) -> Refused:
        self.admission.refusals += 1
        self.refusal_log.note(cause)
        return Refused(cause, message, self._retry_hint())

    async def acquire(self, voice: str, key: str, time_remaining: float | None = None) -> Admitted:
        """Wait for a stream slot for `voice` under share key `key`. Raises Refused; cancelling the caller takes
        it out of the queue (or gives back a slot granted in the same instant)."""
        now = self._clock()
        if self.admission.active + self.waiting >= self.max_calls:
            raise self._refuse(
                "max_streams",
                f"the gateway is holding its limit of {self.max_calls} concurrent streams (streaming or waiting); "
                "retry shortly",
            )
        if not self._keys and self._fits(voice).admitted:  # nobody waits: no turn to respect
            self._charge(key)
            return Admitted(self.admission.start(voice, now), 0.0)
        if self.waiting >= self.max_length:
            raise self._refuse(
                "queue_full", f"the gateway is at its real-time capacity and {self.waiting} streams wait already"
            )
        budget = self.max_wait_s
        if time_remaining is not None:
            expected = self.expected_wait_s(key)
            if expected > time_remaining:
                raise self._refuse(
                    "deadline",
                    f"the gateway is at its real-time capacity: the expected wait ({expected:.1f} s) is longer than "
                    f"the call's deadline allows ({max(0.0, time_remaining):.1f} s)",
                )
            budget = min(budget, time_remaining)
        waiter = _Waiter(voice, key, now, asyncio.get_running_loop().create_future())
        self._keys.setdefault(key, collections.deque()).append(waiter)
        self.waiting += 1
        self._dispatch()
        self._changed()
        try:
            async with asyncio.timeout(budget):
                await asyncio.shield(waiter.future)
        except TimeoutError:
            if waiter.future.done():  # admitted in the same instant the wait ran out
                return self._granted(waiter)
            self._remove(waiter)
            self._waited(waiter, "refused")
            cause = "max_wait" if time_remaining is None or budget < time_remaining else "deadline"
            raise self._refuse(
                cause, f"the gateway is at its real-time capacity: no stream slot freed within {budget:.1f} s"
            ) from None
        except asyncio.CancelledError:
            if waiter.future.done() and not waiter.future.cancelled():
                self.release(waiter.future.result())  # granted, but the caller is gone
            else:
                self._remove(waiter)
            self._waited(waiter, "cancelled")
            raise
        return self._granted(waiter)

    def _granted(self, waiter: _Waiter) -> Admitted:
        waited = self._clock() - waiter.enqueued
        self._waited(waiter, "admitted")
        return Admitted(waiter.future.result(), waited)

    def _waited(self, waiter: _Waiter, outcome: str) -> None:
        if self.on_wait is not None:
            self.on_wait(self._clock() - waiter.enqueued, outcome)

    def _remove(self, waiter: _Waiter) -> None:
        queue = self._keys.get(waiter.key)
        if queue is None or waiter not in queue:
            return
        queue.remove(waiter)
        self.waiting -= 1
        if not queue:
            del self._keys[waiter.key]
        if not waiter.future.done():
            waiter.future.cancel()
        self._dispatch()  # the head of a key may have been blocking the turn
        self._changed()

    def _start_tag(self, key: str) -> float:
        """Where `key`'s next admission stands in virtual time: after its previous one, but no further back than
        `catch_up` admissions behind the latest (a key that was away catches up that much, not more)."""
        return max(self._tags.get(key, -math.inf), self._virtual_time - self.catch_up)

    def _charge(self, key: str) -> None:
        """Account one admission to `key`."""
        self._tags[key] = self._start_tag(key) + 1.0
        self._virtual_time = max(self._virtual_time, self._tags[key])
        if len(self._tags) > 2 * len(self._keys) + 64:  # forget keys that are gone and could not claim anything
            floor = self._virtual_time - self.catch_up
            self._tags = {k: t for k, t in self._tags.items() if k in self._keys or t > floor}

    def _dispatch(self) -> None:
        """Admit waiting streams while they fit, the least served key first."""
        while self._keys:
            granted = False
            for key in sorted(self._keys, key=self._start_tag):  # stable: equal tags keep the order of arrival
                queue = self._keys[key]
                waiter = queue[0]
                decision = self._fits(waiter.voice)
                if decision.admitted:
                    queue.popleft()
                    self.waiting -= 1
                    if not queue:
                        del self._keys[key]
                    self._charge(key)
                    waiter.future.set_result(self.admission.start(waiter.voice, self._clock()))
                    granted = True
                    break
                if decision.kind != "cold_start":
                    self._recheck_later()
                    return  # this key keeps its turn until capacity frees
            if not granted:
                self._recheck_later()
                return

    def _recheck_later(self) -> None:
        """Capacity also frees without a stream ending: a stream leaves its start-up, the host's headroom grows.
        While streams wait, look again when the next start-up ends, and at least every `RECHECK_S`."""
        if self._recheck is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        startup_end = self.admission.next_startup_end(self._clock())
        delay = RECHECK_S if startup_end is None else min(RECHECK_S, startup_end + 0.01)
        self._recheck = loop.call_later(delay, self._rechecked)

    def _rechecked(self) -> None:
        self._recheck = None
        self.poke()

    def release(self, ticket: int, *, audio_s: float = 0.0, busy_s: float | None = None) -> None:
        """The admitted stream ended: teach the model, then let the next waiting streams in."""
        self.admission.finish(ticket, self._clock(), audio_s=audio_s, busy_s=busy_s)
        self._dispatch()
        self._changed()

    def settle(self, ticket: int) -> None:
        """The admitted stream is past its start-up: the capacity it held beyond its steady share is free."""
        if self.admission.settle(ticket):
            self.poke()

    def poke(self) -> None:
        """Re-check the queue (the host's headroom may have grown); cheap when nothing waits."""
        if self._keys:
            self._dispatch()
            self._changed()

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()
