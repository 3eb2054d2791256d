"""The one server bootstrap both services use.

A `ServiceHost` runs a grpc.aio server with: grpc.health.v1 (per-service status, NOT_SERVING during shutdown),
server reflection, Prometheus metrics on their own HTTP port, the shared interceptor (auth, request-id logs,
per-RPC metrics, ServiceError -> google.rpc.Status), message size limits, optional TLS, and graceful shutdown on
SIGTERM/SIGINT (stop accepting, let in-flight streams finish within a grace period, then cancel them).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from services.common.access_log import ACCESS_LOG_MODES, AccessLog
from services.common.config import EnvArgumentParser, parse_bool
from services.common.contract import MAX_MESSAGE_MB, MiB
from services.common.interceptors import ServerInterceptor
from services.common.logs import configure_logging
from services.common.metrics import MetricsExporter, publish_build_info
from services.common.ready import ready_line
from services.common.reflection import enable_reflection
from services.common.tracing import server_interceptors

log = logging.getLogger(__name__)


SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@dataclass
class ServerOptions:
    host: str = "127.0.0.1"
    port: int = 0
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 0  # 0 picks a free port; -1 disables the exporter
    max_message_mb: int = MAX_MESSAGE_MB
    grace_seconds: float = 10.0
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    auth_token: str | None = None
    max_concurrent_rpcs: int | None = None
    stream_idle_timeout: float = 60.0
    max_stream_duration: float = 3600.0
    log_level: str = "INFO"
    log_format: str = "json"
    access_log: str = "summary"
    max_connection_age: float = 0.0
    access_log_interval: float = 60.0


def add_server_arguments(parser: EnvArgumentParser, *, port: int, metrics_port: int) -> None:
    """Add the flags every service shares; the defaults are the service's well-known ports."""
    parser.add_option("--host", default="127.0.0.1", help="address to listen on for gRPC (0.0.0.0 in containers)")
    parser.add_option("--port", type=int, default=port, help="gRPC port (0 picks a free port)")
    parser.add_option("--metrics-host", default="127.0.0.1", help="address for the Prometheus /metrics endpoint")
    parser.add_option("--metrics-port", type=int, default=metrics_port, help="Prometheus port (0 free port, -1 off)")
    parser.add_option(
        "--max-message-mb", type=int, default=MAX_MESSAGE_MB, help="largest gRPC message accepted or sent, MiB"
    )
    parser.add_option(
        "--grace-seconds", type=float, default=10.0, help="on SIGTERM, how long in-flight RPCs may run before cancel"
    )
    parser.add_option("--tls-cert", type=Path, default=None, help="PEM certificate chain; enables TLS with --tls-key")
    parser.add_option("--tls-key", type=Path, default=None, help="PEM private key for --tls-cert")
    parser.add_option("--tls-client-ca", type=Path, default=None, help="PEM CA bundle; when set, clients need certs")
    parser.add_option(
        "--auth-token",
        default=None,
        help="when set, every RPC except health checks needs metadata 'authorization: Bearer <token>'",
    )
    parser.add_option("--max-concurrent-rpcs", type=int, default=None, help="hard cap on concurrent RPCs (gRPC core)")
    parser.add_option(
        "--stream-idle-timeout",
        type=float,
        default=60.0,
        help="seconds a streaming RPC may go without a request message or a response before it ends with "
        "DEADLINE_EXCEEDED (0 off)",
    )
    parser.add_option(
        "--max-stream-duration",
        type=float,
        default=3600.0,
        help="seconds a streaming RPC may last in all before it ends with DEADLINE_EXCEEDED (0 off)",
    )
    parser.add_option(
        "--max-connection-age",
        type=float,
        default=0.0,
        help="seconds after which a client connection is asked to go away (in-flight streams finish first), so "
        "clients balancing over a headless Service re-resolve and reach new replicas (0 off)",
    )
    parser.add_option("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="log level")
    parser.add_option("--log-format", default="json", choices=["json", "text"], help="log line format")
    parser.add_option(
        "--access-log",
        default="summary",
        choices=list(ACCESS_LOG_MODES),
        help="RPCs that succeed: 'summary' (one line per interval with counts and latency per method), 'all' (a line "
        "each) or 'errors' (none); failed RPCs always get a line, health/status/reflection probes only at DEBUG",
    )
    parser.add_option(
        "--access-log-interval", type=float, default=60.0, help="seconds between access-log summary lines"
    )


def server_options_from_args(args: object) -> ServerOptions:
    return ServerOptions(**{name: getattr(args, name) for name in ServerOptions.__dataclass_fields__})


RegisterFn = Callable[[grpc.aio.Server], None]
StopHook = Callable[[], Awaitable[None]]


class ServiceHost:
    """Owns one grpc.aio server and everything around it. Use: add_service(...), start(), run_until_signal()."""

    def __init__(self, name: str, options: ServerOptions) -> None:
        self.name = name
        self.options = options
        self.health = HealthServicer()
        self._service_names: list[str] = []
        self._registrations: list[RegisterFn] = []
        self._stop_hooks: list[StopHook] = []
        self._server: grpc.aio.Server | None = None
        self._interceptor: ServerInterceptor | None = None
        self._metrics: MetricsExporter | None = None
        self._stopping = False
        self.port = 0

    def add_service(self, full_name: str, register: RegisterFn) -> None:
        """full_name: e.g. 'voice.v1.TtsGatewayService'; register: the generated add_*Servicer_to_server bound call."""
        self._service_names.append(full_name)
        self._registrations.append(register)

    def on_stop(self, hook: StopHook) -> None:
        """Run `hook` after in-flight RPCs finished (close pools, channels)."""
        self._stop_hooks.append(hook)

    @property
    def address(self) -> str:
        return f"{self.options.host}:{self.port}"

    @property
    def metrics_url(self) -> str | None:
        return self._metrics.url if self._metrics else None

    @property
    def metrics_port(self) -> int | None:
        return self._metrics.port if self._metrics else None

    def _credentials(self) -> grpc.ServerCredentials | None:
        o = self.options
        if o.tls_cert is None and o.tls_key is None:
            return None
        if o.tls_cert is None or o.tls_key is None:
            raise SystemExit("TLS needs both --tls-cert and --tls-key")
        client_ca = o.tls_client_ca.read_bytes() if o.tls_client_ca else None
        return grpc.ssl_server_credentials(
            [(o.tls_key.read_bytes(), o.tls_cert.read_bytes())],
            root_certificates=client_ca,
            require_client_auth=client_ca is not None,
        )

    def _connection_age_options(self) -> list[tuple[str, int]]:
        age_s = self.options.max_connection_age
        if age_s <= 0:
            return []
        # The grace lets the longest allowed stream end normally on the old connection after GOAWAY.
        grace_s = self.options.max_stream_duration if self.options.max_stream_duration > 0 else 24 * 3600
        return [
            ("grpc.max_connection_age_ms", int(age_s * 1000)),
            ("grpc.max_connection_age_grace_ms", int(grace_s * 1000)),
        ]

    async def start(self) -> None:
        o = self.options
        limit = o.max_message_mb * MiB
        self._interceptor = ServerInterceptor(
            auth_token=o.auth_token,
            idle_timeout_s=o.stream_idle_timeout,
            max_stream_s=o.max_stream_duration,
            access_log=AccessLog(o.access_log, o.access_log_interval),
        )
        server = grpc.aio.server(
            # Tracing first (empty when off), so its span covers everything the shared interceptor does.
            interceptors=[*server_interceptors(), self._interceptor],
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", limit),
                ("grpc.so_reuseport", 0),
                # Let idle streaming clients keep their connection; answer their keepalive pings.
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.min_ping_interval_without_data_ms", 5000),
                *self._connection_age_options(),
            ],
            maximum_concurrent_rpcs=o.max_concurrent_rpcs,
        )
        for register in self._registrations:
            register(server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        enable_reflection([*self._service_names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name], server)
        credentials = self._credentials()
        address = f"{o.host}:{o.port}"
        self.port = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
        if self.port == 0:
            raise SystemExit(f"could not bind gRPC address {address}")
        await server.start()
        self._server = server
        if o.metrics_port >= 0:
            publish_build_info(self.name)
            self._metrics = MetricsExporter(o.metrics_host, o.metrics_port)
        for service_name in ["", *self._service_names]:
            await self.health.set(service_name, SERVING)
        log.info(
            "%s serving",
            self.name,
            extra={"grpc_method": "-", "grpc_code": "-", "duration_ms": 0},
        )

    async def set_serving(self, serving: bool, service_name: str | None = None) -> None:
        """Flip health for one service (or the server as a whole and all services) while a dependency is down."""
        if self._stopping:
            return
        status = SERVING if serving else NOT_SERVING
        names = [service_name] if service_name is not None else ["", *self._service_names]
        for name in names:
            await self.health.set(name, status)

    async def stop(self, grace: float | None = None) -> None:
        """Graceful stop: health NOT_SERVING, refuse new RPCs, let in-flight ones finish within the grace period."""
        if self._stopping:
            return
        self._stopping = True
        await self.health.enter_graceful_shutdown()
        grace = self.options.grace_seconds if grace is None else grace
        started = time.monotonic()
        if self._interceptor is not None:
            # Refuse new RPCs with UNAVAILABLE while the listener stays open, let in-flight ones finish, and only
            # then stop the server (which closes the listener and cancels whatever is left).
            self._interceptor.draining = True
            await self._interceptor.wait_drained(grace)
        if self._server is not None:
            await self._server.stop(max(0.0, grace - (time.monotonic() - started)))
        for hook in reversed(self._stop_hooks):
            try:
                await hook()
            except Exception:  # shutdown continues whatever one hook does
                log.exception("stop hook failed")
        if self._interceptor is not None:
            self._interceptor.access_log.flush()  # the last partial interval
            self._interceptor.access_log.flush_refusals()
        if self._metrics is not None:
            self._metrics.stop()
            self._metrics = None

    async def wait_for_termination(self) -> None:
        if self._server is not None:
            await self._server.wait_for_termination()

    async def run_until_signal(self) -> None:
        """Serve until SIGTERM or SIGINT, then stop gracefully."""
        loop = asyncio.get_running_loop()
        stop_requested = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop_requested.set)
        await stop_requested.wait()
        log.info("signal received; draining for up to %.1f s", self.options.grace_seconds)
        await self.stop()


def announce_ready(host: ServiceHost, **extra: object) -> None:
    """Print one JSON line with the bound ports to stdout: how launchers and tests learn ports chosen with 0."""
    print(ready_line(host.name, host.port, host.metrics_port, **extra), flush=True)


def init_service_logging(name: str, options: ServerOptions) -> None:
    configure_logging(name, options.log_level, options.log_format)


__all__ = [
    "NOT_SERVING",
    "SERVING",
    "EnvArgumentParser",
    "ServerOptions",
    "ServiceHost",
    "add_server_arguments",
    "announce_ready",
    "init_service_logging",
    "parse_bool",
    "server_options_from_args",
]
