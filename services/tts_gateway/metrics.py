"""Gateway metrics: Prometheus families, plus recent-window percentiles for GetStatus."""

from __future__ import annotations

import collections
import threading

import numpy as np
from prometheus_client import Counter, Gauge, Histogram

from services.common.durations import duration_from_seconds
from services.tts_gateway.admission import RealTimeAdmission
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
    "Streams refused by admission control, by reason (max_streams: the hard cap; real_time_capacity: serving one "
    "more would push admitted streams below real time).",
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


def observe_admission(admission: RealTimeAdmission) -> None:
    for voice, cost in admission.cost.items():
        ADMISSION_COST.labels(voice).set(cost)
        ADMISSION_CAPACITY.labels(voice).set(admission.capacity_streams(voice) or 0)
    ADMISSION_LOAD.set(admission.predicted_load())


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
