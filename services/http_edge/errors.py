"""gRPC status -> HTTP status, and the JSON error body every edge error carries (OpenAI's shape).

The body is `{"error": {"message", "type", "code", "param", "request_id"}}`: `message` is the upstream's message
verbatim, `code` the gRPC code name in lower case (edge-made errors use the code gRPC would have used, or
`request_too_large` for 413), `param` the first field a google.rpc.BadRequest detail names (null otherwise).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import grpc
from google.rpc import error_details_pb2

from services.common.errors import status_details

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

RETRY_AFTER_STATUSES = frozenset({429, 503})
# Retry-After when a 429/503 carries no RetryInfo: one second, the shortest whole value the header can say.
DEFAULT_RETRY_AFTER_S = 1


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
        elif isinstance(detail, error_details_pb2.RetryInfo):
            delay = detail.retry_delay.seconds + detail.retry_delay.nanos / 1e9
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
