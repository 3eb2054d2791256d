"""A real OTLP trace receiver for tests: the gRPC TraceService and OTLP/HTTP (protobuf and JSON bodies) on loopback.

The services export over OTLP/gRPC or OTLP/HTTP protobuf (the Python SDK's exporters); Triton's OpenTelemetry
exporter posts OTLP/HTTP JSON (ids in hex, as the OTLP JSON mapping says). Every span received is kept as a
`ReceivedSpan` with the service name of its resource.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1 import common_pb2

SPAN_KINDS = {0: "UNSPECIFIED", 1: "INTERNAL", 2: "SERVER", 3: "CLIENT", 4: "PRODUCER", 5: "CONSUMER"}
STATUS_CODES = {0: "UNSET", 1: "OK", 2: "ERROR"}


@dataclass(frozen=True)
class ReceivedSpan:
    service: str
    name: str
    trace_id: str  # hex
    span_id: str
    parent_span_id: str  # "" for a root span
    kind: str
    status: str
    attributes: dict[str, Any] = field(default_factory=dict)
    resource: dict[str, Any] = field(default_factory=dict)
    events: tuple[str, ...] = ()
    transport: str = ""  # grpc, http/protobuf or http/json


def _any_value(value: common_pb2.AnyValue) -> Any:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind in ("string_value", "bool_value", "int_value", "double_value") else None


def _json_value(value: dict[str, Any]) -> Any:
    for key in ("stringValue", "boolValue", "doubleValue"):
        if key in value:
            return value[key]
    if "intValue" in value:
        return int(value["intValue"])  # int64 travels as a string in OTLP JSON
    return None


def spans_from_proto(request: trace_service_pb2.ExportTraceServiceRequest, transport: str) -> list[ReceivedSpan]:
    out = []
    for resource_spans in request.resource_spans:
        resource = {a.key: _any_value(a.value) for a in resource_spans.resource.attributes}
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                out.append(
                    ReceivedSpan(
                        service=str(resource.get("service.name", "")),
                        name=span.name,
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_span_id=span.parent_span_id.hex(),
                        kind=SPAN_KINDS.get(span.kind, str(span.kind)),
                        status=STATUS_CODES.get(span.status.code, str(span.status.code)),
                        attributes={a.key: _any_value(a.value) for a in span.attributes},
                        resource=resource,
                        events=tuple(e.name for e in span.events),
                        transport=transport,
                    )
                )
    return out


def spans_from_json(body: dict[str, Any]) -> list[ReceivedSpan]:
    out = []
    for resource_spans in body.get("resourceSpans", []):
        resource = {a["key"]: _json_value(a["value"]) for a in resource_spans.get("resource", {}).get("attributes", [])}
        for scope_spans in resource_spans.get("scopeSpans", []):
            for span in scope_spans.get("spans", []):
                out.append(
                    ReceivedSpan(
                        service=str(resource.get("service.name", "")),
                        name=span["name"],
                        trace_id=span["traceId"].lower(),
                        span_id=span["spanId"].lower(),
                        parent_span_id=span.get("parentSpanId", "").lower(),
                        kind=SPAN_KINDS.get(int(span.get("kind", 0)), str(span.get("kind"))),
                        status=STATUS_CODES.get(int(span.get("status", {}).get("code", 0)), "?"),
                        attributes={a["key"]: _json_value(a["value"]) for a in span.get("attributes", [])},
                        resource=resource,
                        events=tuple(e["name"] for e in span.get("events", [])),
                        transport="http/json",
                    )
                )
    return out


class OtlpCollector:
    """Both OTLP receivers on free loopback ports; `spans()` is everything received so far."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._spans: list[ReceivedSpan] = []
        self.requests = 0
        collector = self

        class TraceService(trace_service_pb2_grpc.TraceServiceServicer):
            def Export(
                self, request: trace_service_pb2.ExportTraceServiceRequest, context: grpc.ServicerContext
            ) -> trace_service_pb2.ExportTraceServiceResponse:
                collector._add(spans_from_proto(request, "grpc"))
                return trace_service_pb2.ExportTraceServiceResponse()

        class HttpReceiver(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                if self.path != "/v1/traces":
                    self.send_error(404)
                    return
                content_type = self.headers.get("content-type", "")
                if content_type.startswith("application/json"):
                    collector._add(spans_from_json(json.loads(body)))
                    reply = b"{}"
                else:
                    request = trace_service_pb2.ExportTraceServiceRequest()
                    request.ParseFromString(body)
                    collector._add(spans_from_proto(request, "http/protobuf"))
                    reply = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("content-type", content_type or "application/x-protobuf")
                self.send_header("content-length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._grpc = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(TraceService(), self._grpc)
        self.grpc_port = self._grpc.add_insecure_port("127.0.0.1:0")
        self._http = ThreadingHTTPServer(("127.0.0.1", 0), HttpReceiver)
        self.http_port = self._http.server_address[1]
        self._http_thread = threading.Thread(target=self._http.serve_forever, daemon=True)

    @property
    def grpc_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.grpc_port}"

    @property
    def http_traces_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/v1/traces"

    def _add(self, spans: list[ReceivedSpan]) -> None:
        with self._lock:
            self._spans.extend(spans)
            self.requests += 1

    def spans(self) -> list[ReceivedSpan]:
        with self._lock:
            return list(self._spans)

    def trace(self, trace_id: str) -> list[ReceivedSpan]:
        return [s for s in self.spans() if s.trace_id == trace_id]

    def start(self) -> None:
        self._grpc.start()
        self._http_thread.start()

    def stop(self) -> None:
        self._http.shutdown()
        self._http.server_close()
        self._grpc.stop(grace=None)


def running_collector() -> Iterator[OtlpCollector]:
    collector = OtlpCollector()
    collector.start()
    try:
        yield collector
    finally:
        collector.stop()
