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

The estimator is pure (no gRPC, no asyncio) and takes the clock as an argument, so it is tested with exact numbers.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass


@dataclass(frozen=True)
class Decision:
    admitted: bool
    reason: str = ""
    retry_after_s: float = 0.0


@dataclass
class _Stream:
    voice: str
    started: float
    load_integral_at_start: float
    measured: bool


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
    ) -> None:
        if not 0 < target_load <= 1.5:
            raise ValueError(f"target_load must be in (0, 1.5], got {target_load}")
        self.target_load = target_load
        self.cold_start_streams = max(1, cold_start_streams)
        self.smoothing = smoothing
        self.min_audio_s = min_audio_s
        self.enabled = enabled
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

    def predicted_load(self, extra_voice: str | None = None) -> float:
        """The highest cost * streams over the voices present (with one more stream of `extra_voice`)."""
        voices = set(self.active_by_voice())
        n = self.active
        if extra_voice is not None:
            voices.add(extra_voice)
            n += 1
        known = [self.cost[v] for v in voices if v in self.cost]
        return max(known, default=0.0) * n

    # ---- decisions -----------------------------------------------------------------------------------------------

    def try_admit(self, voice: str, now: float) -> tuple[Decision, int | None]:
        """(decision, ticket). On admission the ticket must be passed to `finish` when the stream ends."""
        if self.enabled:
            decision = self._decide(voice)
            if not decision.admitted:
                self.refusals += 1
                return decision, None
        self._advance(now)
        ticket = self._next_id
        self._next_id += 1
        self._streams[ticket] = _Stream(voice, now, self._load_integral, voice in self.cost)
        return Decision(True), ticket

    def _decide(self, voice: str) -> Decision:
        by_voice = self.active_by_voice()
        if voice not in self.cost:
            unmeasured = sum(1 for s in self._streams.values() if not s.measured and s.voice == voice)
            if unmeasured >= self.cold_start_streams:
                return Decision(
                    False,
                    f"voice {voice!r} has not been measured yet and {unmeasured} of its streams are starting; "
                    "retry when the first one has finished",
                    self.retry_after_s(),
                )
        load = self.predicted_load(voice)
        if load > self.target_load and self._streams:
            worst = max((v for v in {*by_voice, voice} if v in self.cost), key=lambda v: self.cost[v], default=voice)
            return Decision(
                False,
                f"the gateway is at its real-time capacity: one more stream would slow {worst!r} streams to "
                f"{load:.2f} s of work per second of audio (limit {self.target_load:.2f})",
                self.retry_after_s(),
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
