"""Errors with a gRPC status and google.rpc.Status details.

Engines and pipelines raise these (they know nothing of gRPC servicer contexts); the bootstrap's interceptor turns
them into an aborted RPC whose trailing metadata carries the rich status (`grpc-status-details-bin`), so clients get
BadRequest field violations, RetryInfo, PreconditionFailure or ResourceInfo alongside the plain code and message.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterable, Sequence

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from services.common.durations import duration_from_seconds

FieldViolations = Sequence[tuple[str, str]]

# Status messages and details travel in HTTP/2 trailers, which peers cap (16 KiB by default): a client value echoed
# whole (a 10,000-character voice name) would turn a precise error into RESOURCE_EXHAUSTED "Stream removed".
MAX_MESSAGE_CHARS = 1000
MAX_DETAIL_CHARS = 400
MAX_VIOLATIONS = 20
ECHO_CHARS = 64


_PATH = re.compile(r"(?:[A-Za-z]:)?(?:[/\\][\w.+@-]+){2,}[/\\]?")
_TRACE_MARKERS = ("Traceback", 'File "', "  at ")


def status_code_of(exc: BaseException) -> grpc.StatusCode:
    """The status an RPC ends with when `exc` escapes its handler: a ServiceError's own code, CANCELLED for a call
    that went away, INTERNAL for anything else (for metrics that count calls by outcome)."""
    if isinstance(exc, ServiceError):
        return exc.code
    if isinstance(exc, asyncio.CancelledError | GeneratorExit):
        return grpc.StatusCode.CANCELLED
    return grpc.StatusCode.INTERNAL


def upstream_message(text: str, limit: int = 300) -> str:
    """What of an upstream's error text may reach a client: its first line, no tracebacks, no file paths.

    The full text belongs in the server log (under the request id); clients get enough to act on.
    """
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    first = next((line for line in lines if not line.startswith(_TRACE_MARKERS)), "")
    for marker in _TRACE_MARKERS:
        if marker in first:
            first = first[: first.index(marker)].rstrip(" :,")
    first = _PATH.sub("<path>", first)
    return clip(first, limit) or "no details"


def clip(value: str, limit: int = ECHO_CHARS) -> str:
    """A client-supplied value shortened for echoing in an error message."""
    if len(value) <= limit:
        return value
    return f"{value[:limit]}…(+{len(value) - limit} chars)"


class ServiceError(Exception):
    """An error that becomes a gRPC status with rich details."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str, *, details: Iterable[Message] = ()) -> None:
        message = clip(message, MAX_MESSAGE_CHARS)
        super().__init__(message)
        self.message = message
        self.details = list(details)

    def to_status_proto(self) -> status_pb2.Status:
        packed = []
        for detail in self.details:
            any_detail = any_pb2.Any()
            any_detail.Pack(detail)
            packed.append(any_detail)
        return status_pb2.Status(code=self.code.value[0], message=self.message, details=packed)

    def to_grpc_status(self) -> grpc.Status:
        status: grpc.Status = rpc_status.to_status(self.to_status_proto())  # grpc_status is untyped
        return status


class InvalidArgument(ServiceError):
    """INVALID_ARGUMENT with one BadRequest field violation per problem."""

    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, violations: FieldViolations, message: str | None = None) -> None:
        if not violations:
            raise ValueError("InvalidArgument needs at least one field violation")
        self.violations = [
            (clip(field, ECHO_CHARS * 2), clip(description, MAX_DETAIL_CHARS))
            for field, description in violations[:MAX_VIOLATIONS]
        ]
        bad_request = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=field, description=description)
                for field, description in self.violations
            ]
        )
        text = message or "; ".join(f"{field}: {description}" for field, description in self.violations)
        super().__init__(text, details=[bad_request])


class ResourceError(ServiceError):
    """An error about one named resource, with a ResourceInfo detail naming it when one is given."""

    def __init__(self, message: str, *, resource_type: str = "", resource_name: str = "") -> None:
        details = []
        if resource_type or resource_name:
            details.append(
                error_details_pb2.ResourceInfo(
                    resource_type=resource_type,
                    resource_name=clip(resource_name),
                    description=clip(message, MAX_DETAIL_CHARS),
                )
            )
        super().__init__(message, details=details)


class NotFound(ResourceError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(ResourceError):
    """A create that names a taken resource."""

    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(ServiceError):
    code = grpc.StatusCode.FAILED_PRECONDITION

    def __init__(self, message: str, *, violations: Sequence[tuple[str, str, str]] = ()) -> None:
        """violations: (type, subject, description) triples for a PreconditionFailure detail."""
        details = []
        if violations:
            details.append(
                error_details_pb2.PreconditionFailure(
                    violations=[
                        error_details_pb2.PreconditionFailure.Violation(
                            type=t, subject=clip(s), description=clip(d, MAX_DETAIL_CHARS)
                        )
                        for t, s, d in violations[:MAX_VIOLATIONS]
                    ]
                )
            )
        super().__init__(message, details=details)


def _retry_info(retry_after_s: float) -> error_details_pb2.RetryInfo:
    return error_details_pb2.RetryInfo(retry_delay=duration_from_seconds(retry_after_s))


class ResourceExhausted(ServiceError):
    """RESOURCE_EXHAUSTED with RetryInfo telling the client when trying again makes sense."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED

    def __init__(self, message: str, *, retry_after_s: float = 1.0) -> None:
        self.retry_after_s = retry_after_s
        super().__init__(message, details=[_retry_info(retry_after_s)])


class Unavailable(ServiceError):
    code = grpc.StatusCode.UNAVAILABLE

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message, details=[_retry_info(retry_after_s)] if retry_after_s is not None else [])


class DeadlineExceeded(ServiceError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Internal(ServiceError):
    code = grpc.StatusCode.INTERNAL


def status_details(error: grpc.RpcError) -> list[Message]:
    """Unpack the google.rpc.Status details a server attached to a failed call (client side helper)."""
    status = rpc_status.from_call(error)
    if status is None:
        return []
    unpacked: list[Message] = []
    for detail in status.details:
        for cls in (
            error_details_pb2.BadRequest,
            error_details_pb2.RetryInfo,
            error_details_pb2.PreconditionFailure,
            error_details_pb2.ResourceInfo,
            error_details_pb2.ErrorInfo,
        ):
            if detail.Is(cls.DESCRIPTOR):
                message = cls()
                detail.Unpack(message)
                unpacked.append(message)
    return unpacked


__all__ = [
    "DeadlineExceeded",
    "FailedPrecondition",
    "FieldViolations",
    "Internal",
    "InvalidArgument",
    "NotFound",
    "ResourceExhausted",
    "ServiceError",
    "Unavailable",
    "clip",
    "status_code_of",
    "status_details",
    "upstream_message",
]
