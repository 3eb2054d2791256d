"""Prometheus metrics for gRPC servers (names follow the go-grpc-prometheus convention) and the exporter."""

from __future__ import annotations

import platform
import threading
from wsgiref.simple_server import WSGIServer

import grpc
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, Info, start_http_server

from services.common.version import VERSION

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)

RPC_STARTED = Counter(
    "grpc_server_started_total",
    "RPCs started on the server.",
    ["grpc_service", "grpc_method", "grpc_type"],
)
RPC_HANDLED = Counter(
    "grpc_server_handled_total",
    "RPCs completed on the server, by status code.",
    ["grpc_service", "grpc_method", "grpc_type", "grpc_code"],
)
RPC_LATENCY = Histogram(
    "grpc_server_handling_seconds",
    "Time from the start of an RPC to its status, in seconds.",
    ["grpc_service", "grpc_method", "grpc_type"],
    buckets=LATENCY_BUCKETS,
)
STREAM_MESSAGES_SENT = Counter(
    "grpc_server_msg_sent_total",
    "Stream messages sent by the server.",
    ["grpc_service", "grpc_method"],
)

# `voice_build_info{service,version,...} 1`: join on it to see which release each scraped pod runs.
BUILD_INFO = Info("voice_build", "The running release of this service and its runtime.")


def publish_build_info(service: str) -> None:
    BUILD_INFO.info(
        {
            "service": service,
            "version": VERSION,
            "python_version": platform.python_version(),
            "grpcio_version": grpc.__version__,
        }
    )


class MetricsExporter:
    """Serves /metrics over HTTP on its own port (0 picks a free port) until stopped."""

    def __init__(self, host: str, port: int, registry: CollectorRegistry = REGISTRY) -> None:
        self._server: WSGIServer
        self._thread: threading.Thread
        self._server, self._thread = start_http_server(port, addr=host, registry=registry)
        self.port: int = self._server.server_port
        self.host = host

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/metrics"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
