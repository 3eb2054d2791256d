"""A listener's view of one audio stream: a pure player model fed with when each chunk arrived.

Player model (printed by the benchmarks under their tables, see ``MODEL``):

* Playback starts ``preroll_s`` (default 0.1 s) after the first chunk with audio arrives.
* The player then consumes audio at real time (1 s of audio per second of wall time).
* When everything received so far has been played and the next chunk has not arrived yet, that is an underrun: it
  counts one, and the silence from the moment the buffer ran dry until playback resumes is a stall.
* Playback resumes when that chunk arrives, plus ``rebuffer_s`` (default 0: a player that plays whatever it has at
  once). With ``rebuffer_s = 0`` every stall is exactly the silence between dry buffer and arrival, and a stream that
  keeps arriving late is charged one underrun per late chunk; a re-buffering player (``rebuffer_s = preroll_s``)
  would stall longer per underrun and count fewer of them.
* A chunk arriving exactly when the buffer runs dry is not an underrun (within ``EPSILON_S``).

Reported per stream: time to first audio (request start to first audio arrival), underruns, total and worst stall,
and the per-stream real-time factor: wall time from the request to the arrival of the last audio divided by the audio
duration (below 1 means the stream was delivered faster than it plays).

Times are seconds on any one monotonic clock (the benchmarks use ``time.perf_counter()``); chunks are given in the
order they arrived. Chunks without audio (a summary-only final chunk) are ignored.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

DEFAULT_PREROLL_S = 0.1
# Arrival times come from a float clock; a chunk landing at the very instant the buffer empties is on time.
EPSILON_S = 1e-6

MODEL = (
    "player model: playback starts {preroll_ms:.0f} ms after the first audio arrives and consumes audio in real time; "
    "an underrun is the buffer running dry before the next chunk arrives (stall = silence until it arrives, "
    "playback resumes {rebuffer_text}); per-stream RTF = (last audio arrival - request start) / audio duration"
)


@dataclass(frozen=True)
class Arrival:
    """One chunk as the client saw it: when it arrived and how many seconds of audio it carries."""

    at_s: float
    duration_s: float


@dataclass
class ListenerReport:
    """What one listener experienced on one stream."""

    ttfa_s: float  # request start -> first audio arrival
    audio_s: float  # seconds of audio received
    wall_s: float  # request start -> last audio arrival
    underruns: int
    total_stall_s: float
    worst_stall_s: float
    stalls: list[float] = field(default_factory=list)

    @property
    def rtf(self) -> float:
        """Per-stream real-time factor: delivery wall time / audio duration (inf for a stream with no audio)."""
        return self.wall_s / self.audio_s if self.audio_s > 0 else math.inf


def describe(preroll_s: float = DEFAULT_PREROLL_S, rebuffer_s: float = 0.0) -> str:
    """The one-line statement of the player model, for the benchmarks' output."""
    rebuffer_text = "as soon as it arrives" if rebuffer_s <= 0 else f"{rebuffer_s * 1000:.0f} ms after it arrives"
    return MODEL.format(preroll_ms=preroll_s * 1000, rebuffer_text=rebuffer_text)


def play(
    request_start_s: float,
    arrivals: Iterable[Arrival],
    *,
    preroll_s: float = DEFAULT_PREROLL_S,
    rebuffer_s: float = 0.0,
) -> ListenerReport:
    """Play ``arrivals`` (in arrival order) through the player model and report what the listener heard."""
    if preroll_s < 0 or rebuffer_s < 0:
        raise ValueError("preroll_s and rebuffer_s must be >= 0")
    chunks = [a for a in arrivals if a.duration_s > 0]
    if not chunks:
        raise ValueError("the stream carried no audio: nothing to play")
    previous = -math.inf
    for chunk in chunks:
        if chunk.at_s < previous:
            raise ValueError("arrivals must be in arrival order (non-decreasing at_s)")
        if chunk.at_s < request_start_s:
            raise ValueError("a chunk arrived before the request started")
        previous = chunk.at_s

    first = chunks[0]
    # `dry_at`: the instant the player will have played everything received so far.
    dry_at = first.at_s + preroll_s + first.duration_s
    stalls: list[float] = []
    for chunk in chunks[1:]:
        if chunk.at_s > dry_at + EPSILON_S:
            resume_at = chunk.at_s + rebuffer_s
            stalls.append(resume_at - dry_at)
            dry_at = resume_at + chunk.duration_s
        else:
            dry_at += chunk.duration_s
    return ListenerReport(
        ttfa_s=first.at_s - request_start_s,
        audio_s=sum(c.duration_s for c in chunks),
        wall_s=chunks[-1].at_s - request_start_s,
        underruns=len(stalls),
        total_stall_s=sum(stalls),
        worst_stall_s=max(stalls, default=0.0),
        stalls=stalls,
    )


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolation percentile (numpy's default), nan for no values; kept here so the model needs no numpy."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass
class Summary:
    """Many streams' reports folded into the figures the benchmark tables print."""

    streams: int
    ttfa_p50: float
    ttfa_p99: float
    rtf_p50: float
    rtf_p99: float
    streams_with_underrun: int
    underruns: int
    total_stall_s: float
    worst_stall_s: float


def summarize(reports: Sequence[ListenerReport]) -> Summary:
    ttfa = [r.ttfa_s for r in reports]
    rtf = [r.rtf for r in reports]
    return Summary(
        streams=len(reports),
        ttfa_p50=percentile(ttfa, 50),
        ttfa_p99=percentile(ttfa, 99),
        rtf_p50=percentile(rtf, 50),
        rtf_p99=percentile(rtf, 99),
        streams_with_underrun=sum(1 for r in reports if r.underruns),
        underruns=sum(r.underruns for r in reports),
        total_stall_s=sum(r.total_stall_s for r in reports),
        worst_stall_s=max((r.worst_stall_s for r in reports), default=0.0),
    )
