"""Quiet access logs: probes only at DEBUG, failures one by one, successes summarized per interval."""

from __future__ import annotations

import json
import logging
import signal
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.access_log import AccessLog
from tests.fixtures.service_process import spawn_service
from voice.v1 import audio_pb2, tts_gateway_pb2, tts_gateway_pb2_grpc

OK, NOT_FOUND = grpc.StatusCode.OK, grpc.StatusCode.NOT_FOUND
GATEWAY = "voice.v1.TtsGatewayService"


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def messages(caplog: pytest.LogCaptureFixture, level: int) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "services.access" and r.levelno == level]


def test_probes_go_to_debug_failures_get_a_line_successes_a_summary(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    access = AccessLog("summary", interval_s=60, clock=clock)
    caplog.set_level(logging.DEBUG, logger="services.access")
    for _ in range(100):
        access.record("grpc.health.v1.Health", "Check", OK, 0.001)
        access.record("voice.v1.VoiceConversionService", "GetStatus", OK, 0.002)
    for _ in range(5):
        access.record(GATEWAY, "Synthesize", OK, 0.5)
    access.record(GATEWAY, "Synthesize", NOT_FOUND, 0.01)
    assert len(messages(caplog, logging.DEBUG)) == 200
    (failure,) = messages(caplog, logging.INFO)  # no summary before the interval ends
    assert failure.grpc_code == "NOT_FOUND" and failure.grpc_method == f"{GATEWAY}/Synthesize"  # type: ignore[attr-defined]
    clock.now = 61
    access.record(GATEWAY, "ListVoices", OK, 0.004)  # the first record past the interval writes the summary
    summary = messages(caplog, logging.INFO)[-1]
    assert summary.getMessage().startswith("rpc summary: 7 calls")
    tallies = summary.rpc_summary  # type: ignore[attr-defined]
    assert set(tallies) == {f"{GATEWAY}/Synthesize", f"{GATEWAY}/ListVoices"}
    assert tallies[f"{GATEWAY}/Synthesize"]["calls"] == 6 and tallies[f"{GATEWAY}/Synthesize"]["errors"] == 1
    assert tallies[f"{GATEWAY}/Synthesize"]["codes"] == {"OK": 5, "NOT_FOUND": 1}
    assert tallies[f"{GATEWAY}/Synthesize"]["max_ms"] == 500.0
    access.flush()
    assert messages(caplog, logging.INFO)[-1] is summary  # an empty window writes nothing


@pytest.mark.parametrize("mode", ["summary", "errors"])
def test_refusals_under_load_are_counted_into_one_line_per_interval(
    caplog: pytest.LogCaptureFixture, mode: str
) -> None:
    clock = FakeClock()
    access = AccessLog(mode, interval_s=60, clock=clock, shed_interval_s=10)
    caplog.set_level(logging.INFO, logger="services.access")
    for _ in range(500):
        access.record(GATEWAY, "Synthesize", grpc.StatusCode.RESOURCE_EXHAUSTED, 0.001)
    access.record(GATEWAY, "StreamingSynthesize", grpc.StatusCode.RESOURCE_EXHAUSTED, 0.001)
    assert messages(caplog, logging.INFO) == []  # nothing per refusal
    clock.now = 10.5
    access.record(GATEWAY, "Synthesize", grpc.StatusCode.RESOURCE_EXHAUSTED, 0.001)
    (line,) = messages(caplog, logging.INFO)
    assert line.getMessage() == "refused under load: 502 calls in 10 s"
    assert line.refusals == {f"{GATEWAY}/StreamingSynthesize": 1, f"{GATEWAY}/Synthesize": 501}  # type: ignore[attr-defined]
    access.record(GATEWAY, "Synthesize", grpc.StatusCode.RESOURCE_EXHAUSTED, 0.001)
    access.flush_refusals()  # at shutdown: the partial window
    assert messages(caplog, logging.INFO)[-1].getMessage().startswith("refused under load: 1 calls")
    access.flush_refusals()
    assert len(messages(caplog, logging.INFO)) == 2  # an empty window writes nothing


def test_mode_all_logs_each_refusal(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="services.access")
    access = AccessLog("all")
    for _ in range(3):
        access.record(GATEWAY, "Synthesize", grpc.StatusCode.RESOURCE_EXHAUSTED, 0.001)
    assert [r.grpc_code for r in messages(caplog, logging.INFO)] == ["RESOURCE_EXHAUSTED"] * 3  # type: ignore[attr-defined]


def test_mode_all_logs_each_success_and_errors_mode_none(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="services.access")
    AccessLog("all").record(GATEWAY, "ListVoices", OK, 0.001)
    assert len(messages(caplog, logging.INFO)) == 1
    quiet = AccessLog("errors", interval_s=0)
    quiet.record(GATEWAY, "ListVoices", OK, 0.001)
    quiet.flush()
    assert len(messages(caplog, logging.INFO)) == 1
    with pytest.raises(ValueError, match="summary, all, errors"):
        AccessLog("verbose")


def test_a_served_process_logs_no_probe_and_summarizes(tmp_path: Path) -> None:
    """The real bootstrap in its own process: 200 health checks and status polls leave no INFO line."""
    log_path = tmp_path / "harness.log"
    harness = spawn_service(
        "tests.common.harness_server",
        ["--port", "0", "--metrics-port", "0", "--access-log-interval", "3600"],
        log_path,
        "HARNESS_",
    )
    try:
        with grpc.insecure_channel(f"127.0.0.1:{harness.port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for _ in range(200):
                health.Check(health_pb2.HealthCheckRequest())
            stub = tts_gateway_pb2_grpc.TtsGatewayServiceStub(channel)
            for _ in range(3):
                stub.ListVoices(tts_gateway_pb2.ListVoicesRequest())
            request = tts_gateway_pb2.SynthesizeRequest(
                text="hi", output_format=audio_pb2.AudioFormat(encoding=audio_pb2.AUDIO_ENCODING_UNSPECIFIED)
            )
            with pytest.raises(grpc.RpcError):
                list(stub.Synthesize(request))
    finally:
        harness.process.send_signal(signal.SIGTERM)
        assert harness.process.wait(timeout=15) == 0
    lines = [json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]
    access = [line for line in lines if line["logger"] == "services.access"]
    assert not [line for line in access if "Health" in line.get("grpc_method", "")]
    failed = [line for line in access if line.get("grpc_code") not in (None, "OK")]
    assert [line["grpc_method"] for line in failed] == [f"{GATEWAY}/Synthesize"]
    (summary,) = [line for line in access if "rpc_summary" in line]  # written at shutdown
    assert summary["rpc_summary"][f"{GATEWAY}/ListVoices"]["calls"] == 3
    assert len(access) == 2
