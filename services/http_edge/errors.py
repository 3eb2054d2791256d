"""Every error the edge answers, mapped in this one place: gRPC status -> HTTP status, pydantic/FastAPI validation
-> 400, and the bodies that carry them (OpenAI's error shape for HTTP, the error frame for WebSockets).

The HTTP body is `{"error": {"message", "type", "code", "param", "request_id"}}`: `message` is the upstream's message
verbatim, `code` the gRPC code name in lower case (edge-made errors use the code gRPC would have used, or
`request_too_large` for 413), `param` the first field a google.rpc.BadRequest detail names (null otherwise).
Refusals that say "try later" (429, 503) carry `Retry-After` in whole seconds, at least 1 (the gateway's RetryInfo
rounded up); the edge itself never retries, so clients add their own jitter.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import grpc
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from google.rpc import error_details_pb2
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from services.common.durations import seconds_from_duration
from services.common.errors import status_details
from services.common.request_id import REQUEST_ID_METADATA_KEY
from services.http_edge.context import request_id_of

# The mapping the edge documents (docs/http_edge.md); anything absent is 500.
HTTP_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.FAILED_PRECONDITION: 412,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}

# OpenAI's `type` vocabulary where it has a word for it; our own words otherwise.
ERROR_TYPES: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    412: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    499: "request_cancelled",
    501: "not_implemented_error",
    503: "service_unavailable_error",
    504: "timeout_error",
}

# The codes the edge gives errors of its own making (HTTPExceptions from routing, body limits).
HTTP_ERROR_CODES = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}

# FAILED_PRECONDITION violations that are a request field the client can change, not a state of the server: answered
# 400 (the request is wrong for this voice) with that field as `param`, as the OpenAI routes spell it.
REQUEST_PRECONDITIONS = {"SPEAKING_RATE": "speed"}

RETRY_AFTER_STATUSES = frozenset({429, 503})
# Retry-After when a 429/503 carries no RetryInfo: one second, the shortest whole value the header can say.
DEFAULT_RETRY_AFTER_S = 1

# The pydantic error type of a message written whole for the client (no "field: " prefix added).
EDGE_MESSAGE = "edge_message"


@dataclass
class EdgeError(Exception):
    """An error answered as JSON with `status`; raised by routes, rendered by the app's exception handler."""

    status: int
    message: str
    code: str
    param: str | None = None
    retry_after_s: int | None = None

    def __post_init__(self) -> None:
        super().__init__(self.message)

    @property
    def type(self) -> str:
        return ERROR_TYPES.get(self.status, "server_error")

    def body(self, request_id: str) -> dict[str, object]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "code": self.code,
                "param": self.param,
                "request_id": request_id,
            }
        }

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_s)} if self.retry_after_s is not None else {}

    def frame(self, request_id: str, *, with_param: bool = False, **extra: Any) -> dict[str, Any]:
        """The WebSocket error frame: `{"type": "error", "status", "code", "message", ("param"), "request_id"}`."""
        frame: dict[str, Any] = {"type": "error", "status": self.status, "code": self.code, "message": self.message}
        if with_param:
            frame["param"] = self.param
        return {**frame, "request_id": request_id, **extra}


def invalid(message: str, param: str | None = None) -> EdgeError:
    return EdgeError(400, message, "invalid_argument", param)


def from_rpc_error(error: grpc.RpcError) -> EdgeError:
    """The HTTP error for a failed gRPC call, keeping the upstream's message and its retry hint."""
    code = error.code() if isinstance(error, grpc.aio.AioRpcError | grpc.Call) else None
    details = (error.details() if isinstance(error, grpc.aio.AioRpcError | grpc.Call) else None) or str(error)
    if code is None:
        return EdgeError(500, details, "unknown")
    status = HTTP_STATUS.get(code, 500)
    param: str | None = None
    retry_after: int | None = None
    for detail in _details(error):
        if isinstance(detail, error_details_pb2.BadRequest) and detail.field_violations and param is None:
            param = detail.field_violations[0].field
        elif isinstance(detail, error_details_pb2.PreconditionFailure):
            fields = [REQUEST_PRECONDITIONS[v.type] for v in detail.violations if v.type in REQUEST_PRECONDITIONS]
            if fields and code == grpc.StatusCode.FAILED_PRECONDITION:
                status, param = 400, fields[0]
        elif isinstance(detail, error_details_pb2.RetryInfo):
            delay = seconds_from_duration(detail.retry_delay)
            retry_after = max(1, math.ceil(delay))  # Retry-After is whole seconds; never say 0 for "soon"
    if status in RETRY_AFTER_STATUSES and retry_after is None:
        retry_after = DEFAULT_RETRY_AFTER_S
    if status not in RETRY_AFTER_STATUSES:
        retry_after = None
    return EdgeError(status, details, code.name.lower(), param, retry_after)


def _details(error: grpc.RpcError) -> list[object]:
    try:
        return list(status_details(error))
    except Exception:  # a malformed details trailer must not hide the status itself
        return []


def validation_message(error: ValidationError | RequestValidationError) -> tuple[str, str | None]:
    """pydantic's errors as one message ("field: problem; ...") and the first field named."""
    problems = []
    first_param: str | None = None
    for item in error.errors():
        if item.get("type") == "json_invalid":  # FastAPI's body parsing: its loc is an offset, not a field
            problems.append(f"the body must be a JSON object: {item.get('ctx', {}).get('error', 'not JSON')}")
            continue
        loc = ".".join(str(part) for part in item.get("loc", ()) if part != "body")
        first_param = first_param or loc or None
        msg = str(item.get("msg", "invalid"))
        if not loc and item.get("type") in ("missing", "model_attributes_type", "model_type"):
            msg = "the body must be a JSON object"
        problems.append(f"{loc}: {msg}" if loc and item.get("type") != EDGE_MESSAGE else msg)
    return "; ".join(problems) or "invalid request", first_param


def invalid_from(error: ValidationError | RequestValidationError) -> EdgeError:
    message, param = validation_message(error)
    return invalid(message, param)


def error_response(error: EdgeError, request_id: str) -> JSONResponse:
    headers = {**error.headers(), REQUEST_ID_METADATA_KEY: request_id}
    return JSONResponse(error.body(request_id), status_code=error.status, headers=headers)


def from_http_exception(error: StarletteHTTPException) -> EdgeError:
    code = HTTP_ERROR_CODES.get(error.status_code, "invalid_argument")
    return EdgeError(error.status_code, str(error.detail), code)


async def _on_edge_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, EdgeError)
    return error_response(error, request_id_of(request))


async def _on_http_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, StarletteHTTPException)
    return error_response(from_http_exception(error), request_id_of(request))


async def _on_validation_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, RequestValidationError | ValidationError)
    return error_response(invalid_from(error), request_id_of(request))


def install_error_handlers(app: FastAPI) -> None:
    """Every error a route raises becomes the JSON body above."""
    app.add_exception_handler(EdgeError, _on_edge_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(ValidationError, _on_validation_error)
