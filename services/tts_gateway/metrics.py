"""Gateway metrics: Prometheus families, plus recent-window percentiles for GetStatus."""

from __future__ import annotations

import collections
import threading

import numpy as np
from prometheus_client import Counter, Gauge, Histogram

from services.common.durations import duration_from_seconds
from services.tts_gateway.admission import AdmissionQueue, HostLoad, RealTimeAdmission
from voice.v1 import tts_gateway_pb2

_LATENCY_BUCKETS = (0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0)
_RTF_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0)

TIME_TO_FIRST_AUDIO = Histogram(
    "tts_gateway_time_to_first_audio_seconds",
    "From request (or first text) to the first audio chunk handed to gRPC.",
    ["voice"],
    buckets=_LATENCY_BUCKETS,
)
REAL_TIME_FACTOR = Histogram(
    "tts_gateway_real_time_factor", "Stream wall time divided by audio duration.", ["voice"], buckets=_RTF_BUCKETS
)
ACTIVE_STREAMS = Gauge("tts_gateway_active_streams", "Synthesis streams being served now.")
STAGE_LATENCY = Histogram(
    "tts_gateway_upstream_latency_seconds",
    "Per-stage upstream latency: tts_first_audio (piece sent to its first audio), tts_segment (whole piece), "
    "conversion_block (segment flushed to its converted audio complete).",
    ["stage"],
    buckets=_LATENCY_BUCKETS,
)
STREAMS = Counter("tts_gateway_streams_total", "Synthesis streams by voice and final status code.", ["voice", "code"])
ERRORS = Counter("tts_gateway_errors_total", "Failed synthesis streams by voice and status code.", ["voice", "code"])
TEXT_INCREMENTS = Counter(
    "tts_gateway_text_increments_total",
    "Requests carrying text sent to a model in incremental text-input mode (one per increment; deltas that arrive "
    "while a request is in flight are joined into one).",
    ["voice"],
)
AUDIO_SECONDS = Counter("tts_gateway_audio_seconds_total", "Seconds of audio streamed to clients.", ["voice"])
SAVED_VOICES = Gauge("tts_gateway_saved_voices", "Voices saved with CreateVoice and kept on disk.")
UPSTREAM_UP = Gauge("tts_gateway_upstream_up", "1 while the last probe of an upstream succeeded.", ["upstream"])
REJECTED = Counter(
    "tts_gateway_rejected_total",
    "Streams refused by admission control, by reason (max_streams: the hard cap on streams held, streaming or "
    "waiting; queue_full: the admission queue is full; deadline: the expected wait is longer than the call's deadline "
    "or the deadline came while waiting; max_wait: waited the longest allowed; real_time_capacity: without a queue).",
    ["reason"],
)
ADMISSION_COST = Gauge(
    "tts_gateway_admission_cost",
    "Measured production seconds per audio second, per concurrent stream, by voice (the real-time capacity model).",
    ["voice"],
)
ADMISSION_CAPACITY = Gauge(
    "tts_gateway_admission_capacity_streams", "Streams of one voice alone the gateway admits now.", ["voice"]
)
ADMISSION_LOAD = Gauge(
    "tts_gateway_admission_load",
    "Predicted production seconds per audio second of the slowest admitted voice at the current load (limit: the "
    "target load).",
)

_WAIT_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 30.0)
QUEUE_LENGTH = Gauge("tts_gateway_admission_queue_length", "Streams waiting in the admission queue.")
QUEUE_CAPACITY = Gauge(
    "tts_gateway_admission_queue_capacity", "Streams the admission queue holds; more are refused at once."
)
QUEUE_KEYS = Gauge(
    "tts_gateway_admission_queue_keys",
    "Share keys (callers or voices) with streams waiting; the least served goes first.",
)
QUEUE_WAIT = Histogram(
    "tts_gateway_admission_queue_wait_seconds",
    "Time a stream spent in the admission queue, by outcome (admitted, refused: its wait ran out, cancelled: the "
    "caller went away). Streams admitted at once are not observed.",
    ["outcome"],
    buckets=_WAIT_BUCKETS,
)
HOST_CPU_SATURATION = Gauge(
    "tts_gateway_host_cpu_saturation",
    "Host CPU saturation the admission target is scaled by (source psi: share of time some task waited for a CPU; "
    "proc_stat: host busy share; process_times: this process's busy share; off: not measured).",
    ["source"],
)
ADMISSION_TARGET = Gauge(
    "tts_gateway_admission_target_load", "Target load in use now: the configured one times the host's CPU headroom."
)


def observe_admission(admission: RealTimeAdmission) -> None:
    for voice, cost in admission.cost.items():
        ADMISSION_COST.labels(voice).set(cost)
        ADMISSION_CAPACITY.labels(voice).set(admission.capacity_streams(voice) or 0)
    ADMISSION_LOAD.set(admission.predicted_load())


def observe_queue(queue: AdmissionQueue) -> None:
    observe_admission(queue.admission)
    QUEUE_LENGTH.set(queue.waiting)
    QUEUE_KEYS.set(len(queue.waiting_by_key()))
    QUEUE_CAPACITY.set(queue.max_length)
    observe_host(queue.host)
    ADMISSION_TARGET.set(queue.admission.target_load * queue.host.headroom())


def observe_host(host: HostLoad) -> None:
    HOST_CPU_SATURATION.labels(host.source).set(host.saturation)


def observe_queue_wait(seconds: float, outcome: str) -> None:
    QUEUE_WAIT.labels(outcome).observe(seconds)


class LatencyWindows:
    """Last N observations per stage, for percentile reporting in GetStatus (Prometheus keeps the histograms)."""

    def __init__(self, size: int = 1000) -> None:
        self._size = size
        self._windows: dict[str, collections.deque[float]] = {}
        self._lock = threading.Lock()

    def observe(self, stage: str, seconds: float) -> None:
        with self._lock:
            window = self._windows.setdefault(stage, collections.deque(maxlen=self._size))
            window.append(seconds)
        if stage == "time_to_first_audio":
            return  # has its own per-voice histogram
        STAGE_LATENCY.labels(stage).observe(seconds)

    def snapshot(self) -> list[tts_gateway_pb2.StageLatency]:
        with self._lock:
            items = {stage: np.array(window) for stage, window in self._windows.items() if window}
        out = []
        for stage in sorted(items):
            p50, p90, p99 = np.percentile(items[stage], [50, 90, 99])
            out.append(
                tts_gateway_pb2.StageLatency(
                    stage=stage,
                    count=int(items[stage].size),
                    p50=duration_from_seconds(float(p50)),
                    p90=duration_from_seconds(float(p90)),
                    p99=duration_from_seconds(float(p99)),
                )
            )
        return out
