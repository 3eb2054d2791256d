"""OpenTelemetry tracing for both services, off unless the standard OTEL_* variables ask for it.

Off (the default): `OTEL_TRACES_EXPORTER` unset, empty or `none`, or `OTEL_SDK_DISABLED=true`. Nothing of the SDK
or of an exporter is imported, no server interceptor is installed, no trace header is sent, and every helper here
returns at once (`span()` yields the API's invalid span, whose setters do nothing).

On: `OTEL_TRACES_EXPORTER=otlp` (and/or `console`). The SDK reads the rest of its standard variables itself:
`OTEL_SERVICE_NAME` / `OTEL_RESOURCE_ATTRIBUTES` (the service's own name when neither names one),
`OTEL_TRACES_SAMPLER(_ARG)`, `OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT/HEADERS/TIMEOUT/...`, `OTEL_BSP_*`, and
`OTEL_PROPAGATORS` (default W3C tracecontext + baggage). `OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL` picks the OTLP
transport: `grpc` (the default of the Python SDK) or `http/protobuf`.

What is traced: a SERVER span per RPC (continuing a caller's `traceparent`), CLIENT spans for upstream calls (whose
context travels in the call's gRPC metadata), and INTERNAL spans the services open with `span()` (a sentence, a
conversion block). Probes (health, reflection, GetStatus: services/common/access_log.py) get a span only when the
caller sends a trace context: kubelets and the gateway's probe loop would otherwise start a trace every few seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from typing import Any

import grpc
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import INVALID_SPAN, Span, SpanKind, Status, StatusCode, Tracer

from services.common.access_log import is_probe

log = logging.getLogger(__name__)

Attributes = Mapping[str, str | int | float | bool]
Metadata = tuple[tuple[str, str | bytes], ...]

KNOWN_EXPORTERS = ("otlp", "console")
_OTLP_PROTOCOLS = ("grpc", "http/protobuf")

_tracer: Tracer | None = None
_provider: Any = None  # the SDK's TracerProvider when configured (typed loosely: the SDK is imported lazily)


def requested_exporters(environ: Mapping[str, str] | None = None) -> list[str]:
    """The exporters the environment asks for; empty means tracing is off."""
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    names = [name.strip().lower() for name in env.get("OTEL_TRACES_EXPORTER", "").split(",")]
    return [name for name in names if name and name != "none"]


def otlp_protocol(environ: Mapping[str, str] | None = None) -> str:
    env = os.environ if environ is None else environ
    protocol = (
        env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "grpc"
    ).strip()
    if protocol not in _OTLP_PROTOCOLS:
        raise SystemExit(f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r} is not supported; use one of {_OTLP_PROTOCOLS}")
    return protocol


def _exporter(name: str, environ: Mapping[str, str]) -> Any:
    # Imported only here: with tracing off no exporter module (nor its HTTP/gRPC client stack) is loaded.
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    if name == "otlp":
        if otlp_protocol(environ) == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

            return GrpcExporter()
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

        return HttpExporter()
    raise SystemExit(f"OTEL_TRACES_EXPORTER names {name!r}; this service knows {', '.join(KNOWN_EXPORTERS)} or none")


def configure_tracing(service_name: str, environ: Mapping[str, str] | None = None) -> bool:
    """Set up the SDK when the environment asks for tracing; returns whether tracing is on. Call once, at start."""
    global _tracer, _provider
    env = os.environ if environ is None else environ
    exporters = requested_exporters(env)
    if not exporters:
        return False
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create()  # OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: service_name}))
    provider = TracerProvider(resource=resource)  # the sampler comes from OTEL_TRACES_SAMPLER(_ARG)
    for name in exporters:
        provider.add_span_processor(BatchSpanProcessor(_exporter(name, env)))
    trace.set_tracer_provider(provider)
    _provider = provider
    _tracer = provider.get_tracer("voice-serving")
    log.info("tracing on: exporters %s", ",".join(exporters))
    return True


def enabled() -> bool:
    return _tracer is not None


async def shutdown_tracing() -> None:
    """Export what is still buffered and stop the exporter threads (a ServiceHost stop hook)."""
    global _tracer, _provider
    provider, _provider, _tracer = _provider, None, None
    if provider is not None:
        # The batch processor's flush blocks on network I/O: keep the event loop free meanwhile.
        await asyncio.to_thread(provider.shutdown)


def server_interceptors() -> list[grpc.aio.ServerInterceptor]:
    """The interceptors a server adds (first in its list, so the span covers the whole RPC); none when off."""
    return [TracingServerInterceptor()] if _tracer is not None else []


# ---- spans the services open -----------------------------------------------------------------------------------


def current_context() -> otel_context.Context | None:
    """The active trace context, to parent spans started later from another place (None when tracing is off)."""
    return otel_context.get_current() if _tracer is not None else None


@contextlib.contextmanager
def span(name: str, attributes: Attributes | None = None) -> Iterator[Span]:
    """An INTERNAL span around a block, current inside it; an error or cancellation ending the block is recorded."""
    if _tracer is None:
        yield INVALID_SPAN
        return
    with _tracer.start_as_current_span(
        name, attributes=attributes, record_exception=False, set_status_on_exception=False
    ) as current:
        try:
            yield current
        except (asyncio.CancelledError, GeneratorExit):
            mark_cancelled(current)
            raise
        except BaseException as exc:
            mark_error(current, type(exc).__name__, str(exc))
            raise


def mark_cancelled(target: Span) -> None:
    target.add_event("cancelled")
    target.set_attribute("cancelled", True)
    target.set_status(Status(StatusCode.ERROR, "CANCELLED"))


def mark_error(target: Span, code: str, message: str = "") -> None:
    target.set_status(Status(StatusCode.ERROR, f"{code}: {message}" if message else code))


class ClientSpan:
    """A CLIENT span for one upstream call (a whole stream, or one unary call) and the metadata that carries it.

    `metadata(base)` returns `base` plus the propagation headers (`traceparent`, ...); `end(code)` ends the span once,
    with ERROR status for any code but OK (CANCELLED is recorded as a cancellation)."""

    __slots__ = ("_span",)

    def __init__(
        self, service: str, method: str, *, parent: otel_context.Context | None, attributes: Attributes | None
    ) -> None:
        self._span: Span | None = None
        if _tracer is None:
            return
        self._span = _tracer.start_span(
            f"{service}/{method}",
            context=parent,
            kind=SpanKind.CLIENT,
            attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": method, **(attributes or {})},
        )

    def metadata(self, base: Sequence[tuple[str, Any]]) -> Metadata:
        if self._span is None:
            return tuple(base)
        carrier: dict[str, str] = {}
        propagate.inject(carrier, context=trace.set_span_in_context(self._span))
        return (*base, *carrier.items())

    def set_attribute(self, key: str, value: str | int | float | bool) -> None:
        if self._span is not None:
            self._span.set_attribute(key, value)

    def end(self, code: grpc.StatusCode = grpc.StatusCode.OK, message: str = "") -> None:
        current, self._span = self._span, None
        if current is None:
            return
        current.set_attribute("rpc.grpc.status_code", code.value[0])
        if code == grpc.StatusCode.CANCELLED:
            mark_cancelled(current)
        elif code != grpc.StatusCode.OK:
            mark_error(current, code.name, message)
        current.end()


# ---- the server side ---------------------------------------------------------------------------------------------


def _split_method(full_method: str) -> tuple[str, str]:
    _, service, method = full_method.split("/", 2)
    return service, method


def _extract(metadata: Sequence[tuple[str, str | bytes]] | None) -> otel_context.Context:
    carrier = {key: value for key, value in metadata or () if isinstance(value, str)}
    return propagate.extract(carrier)


def _status_code(context: grpc.aio.ServicerContext[Any, Any]) -> grpc.StatusCode:
    code: grpc.StatusCode | int | None = context.code()
    if code is None:
        return grpc.StatusCode.OK
    if isinstance(code, int):  # some grpc.aio paths keep the raw int
        return next((c for c in grpc.StatusCode if c.value[0] == code), grpc.StatusCode.UNKNOWN)
    return code


class _ServerCall:
    """The SERVER span of one RPC, current while the handler runs."""

    def __init__(self, tracer: Tracer, parent: otel_context.Context, service: str, method: str) -> None:
        self.span = tracer.start_span(
            f"{service}/{method}",
            context=parent,
            kind=SpanKind.SERVER,
            attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": method},
        )
        # Never detached: each grpc.aio RPC runs in a task of its own, whose context ends with it, and a detach from
        # a generator finalised elsewhere would fail (and log) anyway.
        otel_context.attach(trace.set_span_in_context(self.span))

    def finish(self, context: grpc.aio.ServicerContext[Any, Any], exc: BaseException | None) -> None:
        if isinstance(exc, asyncio.CancelledError | GeneratorExit):
            code = grpc.StatusCode.CANCELLED
        elif exc is not None and not isinstance(exc, grpc.aio.AbortError):
            code = grpc.StatusCode.UNKNOWN
        else:
            code = _status_code(context)
        self.span.set_attribute("rpc.grpc.status_code", code.value[0])
        if code == grpc.StatusCode.CANCELLED:
            mark_cancelled(self.span)
        elif code != grpc.StatusCode.OK:
            details = context.details() if exc is None or isinstance(exc, grpc.aio.AbortError) else str(exc)
            mark_error(self.span, code.name, details.decode() if isinstance(details, bytes) else str(details or ""))
        self.span.end()


class TracingServerInterceptor(grpc.aio.ServerInterceptor):
    """Wraps each handler in a SERVER span that continues the caller's trace (W3C traceparent in the metadata)."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        tracer = _tracer
        if handler is None or tracer is None:
            return handler
        service, method = _split_method(handler_call_details.method)
        parent = _extract(handler_call_details.invocation_metadata)
        if is_probe(service, method) and not trace.get_current_span(parent).get_span_context().is_valid:
            return handler
        behavior: Callable[..., Any] | None = (
            handler.unary_unary or handler.unary_stream or handler.stream_unary or handler.stream_stream
        )
        assert behavior is not None

        if handler.response_streaming:

            async def streaming(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
                call = _ServerCall(tracer, parent, service, method)
                error: BaseException | None = None
                result = behavior(request, context)
                try:
                    if inspect.isasyncgen(result):
                        async for message in result:
                            yield message
                    else:
                        await result
                except BaseException as exc:
                    error = exc
                    raise
                finally:
                    if inspect.isasyncgen(result):
                        with contextlib.suppress(BaseException):
                            await result.aclose()  # its cleanup runs now, inside the span
                    call.finish(context, error)

            wrapped: Callable[..., Any] = streaming
        else:

            async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                call = _ServerCall(tracer, parent, service, method)
                error: BaseException | None = None
                try:
                    return await behavior(request, context)
                except BaseException as exc:
                    error = exc
                    raise
                finally:
                    call.finish(context, error)

            wrapped = unary

        if handler.request_streaming and handler.response_streaming:
            factory: Callable[..., grpc.RpcMethodHandler[Any, Any]] = grpc.stream_stream_rpc_method_handler
        elif handler.request_streaming:
            factory = grpc.stream_unary_rpc_method_handler
        elif handler.response_streaming:
            factory = grpc.unary_stream_rpc_method_handler
        else:
            factory = grpc.unary_unary_rpc_method_handler
        return factory(
            wrapped,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
