"""Rich error details (`google.rpc.Status` in the `grpc-status-details-bin` trailer) and the health-check messages,
built from descriptors in a private descriptor pool.

The client depends on grpcio and protobuf only: not on googleapis-common-protos, grpcio-status or
grpcio-health-checking. The few message types it reads are declared here, field for field as in
`google/rpc/status.proto`, `google/rpc/error_details.proto` and `grpc/health/v1/health.proto`, and registered in a
`DescriptorPool()` of their own, never the default pool, so this module coexists with those packages in one process
(the server's environment has them) without a duplicate-symbol conflict. The wire format is all that has to match;
tests/clients/test_rpc_details.py checks each declaration against the real ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc
from google.protobuf import any_pb2, descriptor_pb2, descriptor_pool, duration_pb2, message_factory
from google.protobuf.message import DecodeError, Message

STATUS_DETAILS_KEY = "grpc-status-details-bin"
TYPE_URL_PREFIX = "type.googleapis.com/"

_F = descriptor_pb2.FieldDescriptorProto
_STRING, _INT32, _INT64, _MESSAGE, _ENUM = _F.TYPE_STRING, _F.TYPE_INT32, _F.TYPE_INT64, _F.TYPE_MESSAGE, _F.TYPE_ENUM
_OPTIONAL, _REPEATED = _F.LABEL_OPTIONAL, _F.LABEL_REPEATED

# (name, number, type, repeated, message or enum type name)
_FieldSpec = tuple[str, int, int, bool, str]


def _field(name: str, number: int, kind: int = _STRING, *, repeated: bool = False, type_name: str = "") -> _FieldSpec:
    return (name, number, kind, repeated, type_name)


def _message(
    name: str,
    fields: Sequence[_FieldSpec],
    *,
    nested: Sequence[descriptor_pb2.DescriptorProto] = (),
    map_entry: bool = False,
) -> descriptor_pb2.DescriptorProto:
    message = descriptor_pb2.DescriptorProto(name=name)
    for field_name, number, kind, repeated, type_name in fields:
        field = message.field.add(
            name=field_name,
            number=number,
            type=kind,
            label=_REPEATED if repeated else _OPTIONAL,
            json_name=_json_name(field_name),
        )
        if type_name:  # set only for message and enum fields: an empty but present type_name is invalid
            field.type_name = type_name
    message.nested_type.extend(nested)
    if map_entry:
        message.options.map_entry = True
    return message


def _json_name(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.capitalize() for part in rest)


def _string_map(entry: str) -> descriptor_pb2.DescriptorProto:
    return _message(entry, [_field("key", 1), _field("value", 2)], map_entry=True)


def _file(
    name: str, package: str, messages: Sequence[descriptor_pb2.DescriptorProto], dependencies: Sequence[str] = ()
) -> descriptor_pb2.FileDescriptorProto:
    proto = descriptor_pb2.FileDescriptorProto(name=name, package=package, syntax="proto3")
    proto.dependency.extend(dependencies)
    proto.message_type.extend(messages)
    return proto


_STATUS_FILE = _file(
    "google/rpc/status.proto",
    "google.rpc",
    [
        _message(
            "Status",
            [
                _field("code", 1, _INT32),
                _field("message", 2),
                _field("details", 3, _MESSAGE, repeated=True, type_name=".google.protobuf.Any"),
            ],
        )
    ],
    ["google/protobuf/any.proto"],
)

_ERROR_DETAILS_FILE = _file(
    "google/rpc/error_details.proto",
    "google.rpc",
    [
        _message(
            "ErrorInfo",
            [
                _field("reason", 1),
                _field("domain", 2),
                _field("metadata", 3, _MESSAGE, repeated=True, type_name=".google.rpc.ErrorInfo.MetadataEntry"),
            ],
            nested=[_string_map("MetadataEntry")],
        ),
        _message("RetryInfo", [_field("retry_delay", 1, _MESSAGE, type_name=".google.protobuf.Duration")]),
        _message("DebugInfo", [_field("stack_entries", 1, repeated=True), _field("detail", 2)]),
        # Violation's quota fields 3..8 are left out: kept as unknown fields, never read.
        _message(
            "QuotaFailure",
            [_field("violations", 1, _MESSAGE, repeated=True, type_name=".google.rpc.QuotaFailure.Violation")],
            nested=[_message("Violation", [_field("subject", 1), _field("description", 2)])],
        ),
        _message(
            "PreconditionFailure",
            [_field("violations", 1, _MESSAGE, repeated=True, type_name=".google.rpc.PreconditionFailure.Violation")],
            nested=[_message("Violation", [_field("type", 1), _field("subject", 2), _field("description", 3)])],
        ),
        _message(
            "BadRequest",
            [_field("field_violations", 1, _MESSAGE, repeated=True, type_name=".google.rpc.BadRequest.FieldViolation")],
            nested=[
                _message(
                    "FieldViolation",
                    [
                        _field("field", 1),
                        _field("description", 2),
                        _field("reason", 3),
                        _field("localized_message", 4, _MESSAGE, type_name=".google.rpc.LocalizedMessage"),
                    ],
                )
            ],
        ),
        _message("RequestInfo", [_field("request_id", 1), _field("serving_data", 2)]),
        _message(
            "ResourceInfo",
            [_field("resource_type", 1), _field("resource_name", 2), _field("owner", 3), _field("description", 4)],
        ),
        _message(
            "Help",
            [_field("links", 1, _MESSAGE, repeated=True, type_name=".google.rpc.Help.Link")],
            nested=[_message("Link", [_field("description", 1), _field("url", 2)])],
        ),
        _message("LocalizedMessage", [_field("locale", 1), _field("message", 2)]),
    ],
    ["google/protobuf/duration.proto"],
)


def _health_file() -> descriptor_pb2.FileDescriptorProto:
    response = _message(
        "HealthCheckResponse",
        [_field("status", 1, _ENUM, type_name=".grpc.health.v1.HealthCheckResponse.ServingStatus")],
    )
    serving_status = response.enum_type.add(name="ServingStatus")
    for number, value in enumerate(("UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN")):
        serving_status.value.add(name=value, number=number)
    return _file(
        "grpc/health/v1/health.proto",
        "grpc.health.v1",
        [_message("HealthCheckRequest", [_field("service", 1)]), response],
    )


_POOL = descriptor_pool.DescriptorPool()
for _dependency in (any_pb2, duration_pb2):
    _POOL.AddSerializedFile(_dependency.DESCRIPTOR.serialized_pb)
for _proto in (_STATUS_FILE, _ERROR_DETAILS_FILE, _health_file()):
    _POOL.AddSerializedFile(_proto.SerializeToString())


def message_class(full_name: str) -> type[Message]:
    """The private pool's class for `full_name` (e.g. "google.rpc.RetryInfo"); KeyError if it is not declared."""
    return message_factory.GetMessageClass(_POOL.FindMessageTypeByName(full_name))


Status = message_class("google.rpc.Status")
RetryInfo = message_class("google.rpc.RetryInfo")
BadRequest = message_class("google.rpc.BadRequest")
ErrorInfo = message_class("google.rpc.ErrorInfo")
PreconditionFailure = message_class("google.rpc.PreconditionFailure")
QuotaFailure = message_class("google.rpc.QuotaFailure")
ResourceInfo = message_class("google.rpc.ResourceInfo")
RequestInfo = message_class("google.rpc.RequestInfo")
DebugInfo = message_class("google.rpc.DebugInfo")
Help = message_class("google.rpc.Help")
LocalizedMessage = message_class("google.rpc.LocalizedMessage")
HealthCheckRequest = message_class("grpc.health.v1.HealthCheckRequest")
HealthCheckResponse = message_class("grpc.health.v1.HealthCheckResponse")

HEALTH_CHECK_METHOD = "/grpc.health.v1.Health/Check"


def serving_status_name(number: int) -> str:
    """ "SERVING", "NOT_SERVING", ... for a HealthCheckResponse.status value (the number itself if unknown)."""
    values = HealthCheckResponse.DESCRIPTOR.fields_by_name["status"].enum_type.values_by_number
    value = values.get(number)
    return value.name if value is not None else str(number)


def decode_status(data: bytes) -> Any:
    """A `google.rpc.Status` (code, message, details as Any) from the bytes of `grpc-status-details-bin`."""
    return Status.FromString(data)


def unpack_details(status: Any) -> list[Any]:
    """The details of a Status as messages of this module's types; detail types it does not declare are skipped."""
    unpacked: list[Any] = []
    for detail in status.details:
        type_url: str = detail.type_url
        name = type_url.rsplit("/", 1)[-1]
        try:
            cls = message_class(name)
        except KeyError:
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
        if is_a(detail, "google.rpc.RetryInfo"):
            delay = detail.retry_delay
            return max(0.0, float(delay.seconds) + float(delay.nanos) / 1e9)
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
    "message_class",
    "retry_delay_seconds",
    "serving_status_name",
    "status_details",
    "unpack_details",
]
