"""Rich error details (`google.rpc.Status` in the `grpc-status-details-bin` trailer) and the health-check messages.

The message types come from the two small standard packages every gRPC ecosystem ships:
googleapis-common-protos (`google.rpc`) and grpcio-health-checking (`grpc.health.v1`). This module only finds the
trailer, decodes it and unpacks the details it knows, so callers never handle `Any` themselves.
"""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf.message import DecodeError, Message
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2

STATUS_DETAILS_KEY = "grpc-status-details-bin"

Status = status_pb2.Status
RetryInfo = error_details_pb2.RetryInfo
BadRequest = error_details_pb2.BadRequest
ErrorInfo = error_details_pb2.ErrorInfo
PreconditionFailure = error_details_pb2.PreconditionFailure
QuotaFailure = error_details_pb2.QuotaFailure
ResourceInfo = error_details_pb2.ResourceInfo
RequestInfo = error_details_pb2.RequestInfo
DebugInfo = error_details_pb2.DebugInfo
Help = error_details_pb2.Help
LocalizedMessage = error_details_pb2.LocalizedMessage
HealthCheckRequest = health_pb2.HealthCheckRequest
HealthCheckResponse = health_pb2.HealthCheckResponse

HEALTH_CHECK_METHOD = "/grpc.health.v1.Health/Check"

# The detail types a Status of these services carries, by full name (the type URL's last part).
_DETAIL_TYPES: dict[str, type[Message]] = {
    cls.DESCRIPTOR.full_name: cls
    for cls in (
        RetryInfo,
        BadRequest,
        ErrorInfo,
        PreconditionFailure,
        QuotaFailure,
        ResourceInfo,
        RequestInfo,
        DebugInfo,
        Help,
        LocalizedMessage,
    )
}


def serving_status_name(number: int) -> str:
    """ "SERVING", "NOT_SERVING", ... for a HealthCheckResponse.status value (the number itself if unknown)."""
    value = HealthCheckResponse.ServingStatus.DESCRIPTOR.values_by_number.get(number)
    return value.name if value is not None else str(number)


def decode_status(data: bytes) -> status_pb2.Status:
    """A `google.rpc.Status` (code, message, details as Any) from the bytes of `grpc-status-details-bin`."""
    return status_pb2.Status.FromString(data)


def unpack_details(status: status_pb2.Status) -> list[Any]:
    """The details of a Status as messages; detail types other than google.rpc's error details are skipped."""
    unpacked: list[Any] = []
    for detail in status.details:
        cls = _DETAIL_TYPES.get(detail.type_url.rsplit("/", 1)[-1])
        if cls is None:
            continue
        try:
            unpacked.append(cls.FromString(detail.value))
        except DecodeError:
            continue
    return unpacked


def status_details(error: grpc.RpcError) -> list[Any]:
    """The rich details of a failed call: BadRequest, RetryInfo, ErrorInfo, ... (empty when there are none or the
    trailer does not parse; a malformed trailer must never hide the plain status)."""
    data = _trailer(error, STATUS_DETAILS_KEY)
    if data is None:
        return []
    try:
        return unpack_details(decode_status(data))
    except DecodeError:
        return []


def is_a(detail: Message, full_name: str) -> bool:
    """Whether `detail` is of the google.rpc type `full_name` (e.g. "google.rpc.RetryInfo")."""
    return bool(detail.DESCRIPTOR.full_name == full_name)


def retry_delay_seconds(error: grpc.RpcError) -> float | None:
    """The delay a RetryInfo detail of `error` asks for, in seconds; None when the error carries no RetryInfo."""
    for detail in status_details(error):
        if isinstance(detail, RetryInfo):
            return max(0.0, detail.retry_delay.ToTimedelta().total_seconds())
    return None


def _trailer(error: grpc.RpcError, key: str) -> bytes | None:
    getter = getattr(error, "trailing_metadata", None)
    if getter is None:
        return None
    try:
        metadata = getter() or ()
    except Exception:  # no trailers on some failure paths (e.g. connection refused)
        return None
    for item in metadata:
        if item[0] == key and isinstance(item[1], bytes):
            return item[1]
    return None


__all__ = [
    "HEALTH_CHECK_METHOD",
    "STATUS_DETAILS_KEY",
    "BadRequest",
    "DebugInfo",
    "ErrorInfo",
    "HealthCheckRequest",
    "HealthCheckResponse",
    "Help",
    "LocalizedMessage",
    "PreconditionFailure",
    "QuotaFailure",
    "RequestInfo",
    "ResourceInfo",
    "RetryInfo",
    "Status",
    "decode_status",
    "is_a",
    "retry_delay_seconds",
    "serving_status_name",
    "status_details",
    "unpack_details",
]
