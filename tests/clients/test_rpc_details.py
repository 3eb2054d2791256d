"""voice_client.rpc_details: finding, decoding and unpacking the rich status trailer, and health status names."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2

from voice_client import rpc_details


class FailedCall(grpc.RpcError):
    """An RpcError as grpc raises it for a finished call: only its trailing metadata matters here."""

    def __init__(self, trailers: tuple[tuple[str, bytes | str], ...] | None) -> None:
        self._trailers = trailers

    def trailing_metadata(self) -> tuple[tuple[str, bytes | str], ...] | None:
        if self._trailers is None:
            raise RuntimeError("no trailers on this failure path")
        return self._trailers


def packed(*details: object) -> list[any_pb2.Any]:
    items = []
    for detail in details:
        item = any_pb2.Any()
        item.Pack(detail)  # type: ignore[arg-type]
        items.append(item)
    return items


def test_every_detail_of_a_real_status_is_unpacked_in_order() -> None:
    details = [
        error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=2, nanos=500_000_000)),
        error_details_pb2.BadRequest(
            field_violations=[error_details_pb2.BadRequest.FieldViolation(field="text", description="is empty")]
        ),
        health_pb2.HealthCheckRequest(service="a type no status carries: skipped"),
        error_details_pb2.ErrorInfo(reason="VOICE_BUSY", domain="voice.v1", metadata={"voice": "joe"}),
    ]
    data = status_pb2.Status(code=8, message="busy", details=packed(*details)).SerializeToString()
    error = FailedCall(((rpc_details.STATUS_DETAILS_KEY, data),))
    retry, bad_request, error_info = rpc_details.status_details(error)
    assert rpc_details.is_a(retry, "google.rpc.RetryInfo") and retry.retry_delay.nanos == 500_000_000
    assert bad_request.field_violations[0].field == "text"
    assert error_info.reason == "VOICE_BUSY" and dict(error_info.metadata) == {"voice": "joe"}
    assert rpc_details.retry_delay_seconds(error) == pytest.approx(2.5)


@pytest.mark.parametrize(
    "trailers",
    [None, (), (("x-request-id", "abc"),), ((rpc_details.STATUS_DETAILS_KEY, b"\xff\xff not a status"),)],
    ids=["no-trailers", "empty", "other-keys", "malformed"],
)
def test_a_missing_or_broken_trailer_gives_no_details(trailers: tuple[tuple[str, bytes | str], ...] | None) -> None:
    error = FailedCall(trailers)
    assert rpc_details.status_details(error) == []
    assert rpc_details.retry_delay_seconds(error) is None


def test_a_negative_retry_delay_is_read_as_zero() -> None:
    detail = error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=-3))
    data = status_pb2.Status(code=8, details=packed(detail)).SerializeToString()
    assert rpc_details.retry_delay_seconds(FailedCall(((rpc_details.STATUS_DETAILS_KEY, data),))) == 0.0


def test_serving_status_names() -> None:
    assert rpc_details.serving_status_name(health_pb2.HealthCheckResponse.SERVING) == "SERVING"
    assert rpc_details.serving_status_name(health_pb2.HealthCheckResponse.NOT_SERVING) == "NOT_SERVING"
    assert rpc_details.serving_status_name(99) == "99"
