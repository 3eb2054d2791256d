"""The edge's Prometheus metrics (served on their own port by services.common.metrics.MetricsExporter)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from services.common.metrics import LATENCY_BUCKETS

REQUESTS = Counter(
    "http_edge_requests_total",
    "HTTP requests and WebSocket sessions by route template and final status (WebSocket: 200 or the error status).",
    ["route", "method", "status"],
)
DURATION = Histogram(
    "http_edge_request_duration_seconds",
    "Time from request to the end of the response.",
    ["route"],
    buckets=LATENCY_BUCKETS,
)
TIME_TO_FIRST_BYTE = Histogram(
    "http_edge_time_to_first_byte_seconds",
    "Time from request to the first body byte (for audio routes: the first audio byte).",
    ["route"],
    buckets=LATENCY_BUCKETS,
)
ACTIVE_STREAMS = Gauge("http_edge_active_streams", "Audio responses and WebSocket sessions streaming now.", ["route"])
