"""voice_client.rpc_details declares the google.rpc and grpc.health.v1 messages it reads in a private descriptor pool.

Checked here against the real declarations (googleapis-common-protos and grpcio-health-checking are in the
development environment, not among the client's dependencies): same field numbers, types and labels, so the wire
format matches; and the private pool keeps the default pool untouched, in either import order.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from google.protobuf import any_pb2, descriptor_pool, duration_pb2
from google.protobuf.descriptor import Descriptor
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2

from voice_client import rpc_details

DECLARED = [
    status_pb2.Status,
    error_details_pb2.ErrorInfo,
    error_details_pb2.RetryInfo,
    error_details_pb2.DebugInfo,
    error_details_pb2.QuotaFailure,
    error_details_pb2.PreconditionFailure,
    error_details_pb2.BadRequest,
    error_details_pb2.RequestInfo,
    error_details_pb2.ResourceInfo,
    error_details_pb2.Help,
    error_details_pb2.LocalizedMessage,
    health_pb2.HealthCheckRequest,
    health_pb2.HealthCheckResponse,
]
# Fields left out on purpose (read by no one; kept as unknown fields when present).
OMITTED = {"google.rpc.QuotaFailure.Violation": {3, 4, 5, 6, 7, 8}}
OMITTED_TYPES = {"google.rpc.QuotaFailure.Violation.QuotaDimensionsEntry"}


def shape(descriptor: Descriptor) -> dict[int, tuple[str, int, bool, str]]:
    fields: dict[int, tuple[str, int, bool, str]] = {}
    for f in descriptor.fields:
        if f.number in OMITTED.get(descriptor.full_name, set()):
            continue
        target = f.message_type.full_name if f.message_type else f.enum_type.full_name if f.enum_type else ""
        fields[f.number] = (f.name, f.type, f.is_repeated, target)
    return fields


def all_messages(descriptor: Descriptor) -> list[Descriptor]:
    return [descriptor, *(m for nested in descriptor.nested_types for m in all_messages(nested))]


@pytest.mark.parametrize("real", DECLARED, ids=lambda cls: cls.DESCRIPTOR.full_name)
def test_declarations_match_the_real_ones(real: type) -> None:
    mine = rpc_details.message_class(real.DESCRIPTOR.full_name)
    assert mine is not real
    for theirs in all_messages(real.DESCRIPTOR):
        if theirs.full_name in OMITTED_TYPES:
            continue
        ours = mine.DESCRIPTOR.file.pool.FindMessageTypeByName(theirs.full_name)
        assert shape(ours) == shape(theirs), theirs.full_name
        assert ours.GetOptions().map_entry == theirs.GetOptions().map_entry
    for theirs_enum in real.DESCRIPTOR.enum_types:
        ours_enum = mine.DESCRIPTOR.enum_types_by_name[theirs_enum.name]
        assert [(v.name, v.number) for v in ours_enum.values] == [(v.name, v.number) for v in theirs_enum.values]


def test_a_real_status_decodes_with_every_detail() -> None:
    delay = duration_pb2.Duration(seconds=2, nanos=500_000_000)
    details = [
        error_details_pb2.RetryInfo(retry_delay=delay),
        error_details_pb2.BadRequest(
            field_violations=[error_details_pb2.BadRequest.FieldViolation(field="text", description="is empty")]
        ),
        error_details_pb2.ErrorInfo(reason="VOICE_BUSY", domain="voice.v1", metadata={"voice": "joe"}),
        error_details_pb2.QuotaFailure(
            violations=[error_details_pb2.QuotaFailure.Violation(subject="saved voices", quota_value=5)]
        ),
        health_pb2.HealthCheckRequest(service="a type no status carries: skipped"),
    ]
    packed = []
    for detail in details:
        item = any_pb2.Any()
        item.Pack(detail)
        packed.append(item)
    data = status_pb2.Status(code=8, message="busy", details=packed).SerializeToString()
    status = rpc_details.decode_status(data)
    assert (status.code, status.message) == (8, "busy")
    retry, bad_request, error_info, quota, health = rpc_details.unpack_details(status)
    assert retry.retry_delay.seconds == 2 and retry.retry_delay.nanos == 500_000_000
    assert bad_request.field_violations[0].field == "text"
    assert error_info.reason == "VOICE_BUSY" and dict(error_info.metadata) == {"voice": "joe"}
    assert quota.violations[0].subject == "saved voices"
    assert health.service.startswith("a type")
    # Re-encoded from the private classes, the bytes are the real ones (unknown fields included).
    assert [d.SerializeToString() for d in (retry, bad_request, error_info, quota)] == [
        d.SerializeToString(deterministic=True) for d in details[:4]
    ]


def test_the_default_pool_is_left_alone() -> None:
    real = descriptor_pool.Default().FindMessageTypeByName("google.rpc.RetryInfo")
    assert real is error_details_pb2.RetryInfo.DESCRIPTOR
    assert rpc_details.RetryInfo.DESCRIPTOR is not real


GOOGLEAPIS = "from google.rpc import error_details_pb2, status_pb2; from grpc_health.v1 import health_pb2"


@pytest.mark.parametrize(
    "imports",
    [f"import voice_client; {GOOGLEAPIS}", f"{GOOGLEAPIS}; import voice_client"],
    ids=["client-first", "googleapis-first"],
)
def test_coexists_with_googleapis_in_either_import_order(imports: str) -> None:
    code = f"{imports}; print(voice_client.rpc_details.RetryInfo.DESCRIPTOR.full_name)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "google.rpc.RetryInfo"
