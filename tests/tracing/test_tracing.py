"""OpenTelemetry tracing across gateway -> Triton and gateway -> conversion service, against a real OTLP collector.

One stack (Triton, conversion service, gateway) runs with tracing on, each part exporting the way it would in a
cluster: the gateway over OTLP/gRPC, the conversion service over OTLP/HTTP protobuf, Triton over its own OTLP/HTTP
(JSON) exporter. The collector (tests/tracing/collector.py) receives all three.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from services.tts_gateway.text import split_text
from tests.fixtures.gateway import GatewayProcess, start_gateway
from tests.fixtures.rvc_service import RvcServiceProcess, start_rvc_service
from tests.fixtures.triton_server import TritonServer, start_triton
from tests.tracing.collector import OtlpCollector, ReceivedSpan, running_collector
from tests.waiting import wait_until
from voice.v1 import (
    audio_pb2,
    conversion_pb2,
    tts_gateway_pb2,
    tts_gateway_pb2_grpc,
    voice_conversion_pb2,
    voice_conversion_pb2_grpc,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
TEXT = "The tide came in slowly. Gulls argued over the pier. By dusk the harbour was quiet again."
CONVERTED_VOICE = "joe-world-high"  # piper_tts through the WORLD conversion of the conversion service
GATEWAY_SYNTHESIZE = "voice.v1.TtsGatewayService/Synthesize"
EXPORT_WAIT_S = 30.0
OTEL_VARIABLES = (
    "OTEL_TRACES_EXPORTER",
    "OTEL_SDK_DISABLED",
    "OTEL_SERVICE_NAME",
    "OTEL_RESOURCE_ATTRIBUTES",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
)


@dataclass
class TracedStack:
    collector: OtlpCollector
    triton: TritonServer
    rvc: RvcServiceProcess
    gateway: GatewayProcess


def _set_otel(mp: pytest.MonkeyPatch, **values: str) -> None:
    """Exactly these OTEL_* variables for the next process started (nothing from the caller's shell)."""
    for name in OTEL_VARIABLES:
        mp.delenv(name, raising=False)
    for name, value in values.items():
        mp.setenv(name, value)


@pytest.fixture(scope="module")
def collector() -> Iterator[OtlpCollector]:
    yield from running_collector()


@pytest.fixture(scope="module")
def stack(collector: OtlpCollector, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TracedStack]:
    logs = tmp_path_factory.mktemp("traced")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")  # export within a tenth of a second, not the default 5 s
        _set_otel(
            mp,
            OTEL_TRACES_EXPORTER="otlp",
            OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
            OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=collector.http_traces_url,
        )
        with start_triton(logs / "tritonserver.log", models=["piper_tts", "piper_tts_whole"]) as triton:
            rvc = start_rvc_service(log_dir=logs)  # same variables: OTLP/HTTP protobuf
            try:
                _set_otel(
                    mp,
                    OTEL_TRACES_EXPORTER="otlp",
                    OTEL_EXPORTER_OTLP_PROTOCOL="grpc",
                    OTEL_EXPORTER_OTLP_ENDPOINT=collector.grpc_endpoint,
                )
                gateway = start_gateway(triton.grpc_url, rvc.address, log_dir=logs)
                try:
                    yield TracedStack(collector, triton, rvc, gateway)
                finally:
                    gateway.stop()
            finally:
                rvc.stop()


def synthesize(address: str, voice: str, request_id: str, metadata: tuple[tuple[str, str], ...] = ()) -> int:
    """One Synthesize call to the end; returns the number of audio chunks."""
    with grpc.insecure_channel(address) as channel:
        stub = tts_gateway_pb2_grpc.TtsGatewayServiceStub(channel)
        request = tts_gateway_pb2.SynthesizeRequest(
            text=TEXT,
            voice=voice,
            request_id=request_id,
            output_format=audio_pb2.AudioFormat(encoding=audio_pb2.AUDIO_ENCODING_PCM16),
        )
        chunks = list(stub.Synthesize(request, timeout=120, metadata=metadata))
    assert chunks and chunks[-1].is_final
    return len(chunks)


def _is_request(span: ReceivedSpan, request_id: str) -> bool:
    """Spans that name the request: the gateway's sentences, Triton's requests, the conversion blocks."""
    return request_id in (
        span.attributes.get("tts.request_id"),
        span.attributes.get("triton.request_id"),
        span.attributes.get("conversion.request_id"),
    )


def complete_trace(collector: OtlpCollector, request_id: str, sentences: int) -> list[ReceivedSpan] | None:
    """The request's whole trace once every part arrived: gateway root, sentences, Triton requests, conversion, and
    the parent of every span but the gateway's (whose parent is the caller's, when the caller sent one)."""
    named = [s for s in collector.spans() if _is_request(s, request_id)]
    trace_ids = {s.trace_id for s in named}
    if len(trace_ids) != 1:
        return None
    spans = collector.trace(trace_ids.pop())
    names = [s.name for s in spans]
    ids = {s.span_id for s in spans}
    ready = (
        names.count(GATEWAY_SYNTHESIZE) == 1
        # Exporters send in batches of their own: wait until no span's parent is still on its way.
        and all(s.parent_span_id in ids for s in spans if s.parent_span_id and s.name != GATEWAY_SYNTHESIZE)
        and names.count("sentence") == sentences
        and names.count("InferRequest") == sentences
        and "voice.v1.VoiceConversionService/Convert" in names
        and "conversion block" in names
    )
    return spans if ready else None


def by_id(spans: list[ReceivedSpan]) -> dict[str, ReceivedSpan]:
    return {s.span_id: s for s in spans}


def only(spans: list[ReceivedSpan], **match: str) -> ReceivedSpan:
    found = [s for s in spans if all(getattr(s, k) == v for k, v in match.items())]
    assert len(found) == 1, f"expected one span with {match}, got {[(s.service, s.name, s.kind) for s in found]}"
    return found[0]


def test_one_synthesize_is_one_trace_through_triton_and_the_conversion_service(stack: TracedStack) -> None:
    request_id = f"trace-{uuid.uuid4().hex[:12]}"
    sentences = split_text(TEXT)
    assert len(sentences) == 3  # the text is written to have three
    synthesize(stack.gateway.address, CONVERTED_VOICE, request_id)

    spans = wait_until(
        lambda: complete_trace(stack.collector, request_id, len(sentences)),
        within=EXPORT_WAIT_S,
        what=lambda: f"a complete trace; got {[(s.service, s.name) for s in stack.collector.spans()][-40:]}",
    )
    # Everything that names this request is in this one trace (complete_trace insists on a single trace id).
    assert {s.trace_id for s in stack.collector.spans() if _is_request(s, request_id)} == {spans[0].trace_id}
    assert {s.service for s in spans} == {"tts_gateway", "rvc_service", "triton"}
    ids = by_id(spans)
    assert len(ids) == len(spans), "span ids are unique"

    root = only(spans, parent_span_id="")
    assert (root.service, root.name, root.kind) == ("tts_gateway", GATEWAY_SYNTHESIZE, "SERVER")
    assert root.attributes["rpc.grpc.status_code"] == 0
    assert all(s.parent_span_id in ids for s in spans if s is not root), "every parent is in the trace"
    assert all(s.status != "ERROR" for s in spans)

    # Sentences: children of the RPC, one per sentence of the text, in order, with their sizes.
    sentence_spans = sorted(
        (s for s in spans if s.name == "sentence"), key=lambda s: s.attributes["tts.sentence.index"]
    )
    assert [s.parent_span_id for s in sentence_spans] == [root.span_id] * len(sentences)
    assert [s.attributes["tts.sentence.index"] for s in sentence_spans] == list(range(len(sentences)))
    assert [s.attributes["tts.sentence.chars"] for s in sentence_spans] == [len(t) for t in sentences]
    assert {s.attributes["tts.voice"] for s in sentence_spans} == {CONVERTED_VOICE}
    assert {s.attributes["tts.model"] for s in sentence_spans} == {"piper_tts"}
    assert all(s.attributes["tts.audio_seconds"] > 0 for s in sentence_spans)

    # Triton: one stream (a CLIENT span of the gateway) carrying one InferRequest per sentence.
    stream = only(spans, name="inference.GRPCInferenceService/ModelStreamInfer")
    assert (stream.service, stream.kind, stream.parent_span_id) == ("tts_gateway", "CLIENT", root.span_id)
    triton_requests = [s for s in spans if s.service == "triton" and s.name == "InferRequest"]
    assert len(triton_requests) == len(sentences)
    assert {s.parent_span_id for s in triton_requests} == {stream.span_id}
    triton_children = [s for s in spans if s.service == "triton" and s.name != "InferRequest"]
    assert triton_children and all(ids[s.parent_span_id].service == "triton" for s in triton_children)

    # Conversion: the gateway's CLIENT span, the service's SERVER span under it, block spans under that.
    convert_client = only(spans, name="voice.v1.VoiceConversionService/Convert", kind="CLIENT")
    assert (convert_client.service, convert_client.parent_span_id) == ("tts_gateway", root.span_id)
    convert_server = only(spans, name="voice.v1.VoiceConversionService/Convert", kind="SERVER")
    assert (convert_server.service, convert_server.parent_span_id) == ("rvc_service", convert_client.span_id)
    blocks = [s for s in spans if s.name == "conversion block"]
    assert blocks and {s.parent_span_id for s in blocks} == {convert_server.span_id}
    assert sorted(s.attributes["conversion.block.index"] for s in blocks) == list(range(len(blocks)))
    assert all(s.attributes["conversion.engine"] == "world" for s in blocks)
    assert all(s.attributes["conversion.worker"] >= 0 for s in blocks)
    assert all(s.attributes["conversion.queue_wait_ms"] >= 0 for s in blocks)
    assert sum(s.attributes["conversion.block.samples"] for s in blocks) > 0

    # Transports: each exporter really spoke its protocol.
    assert {s.transport for s in spans if s.service == "tts_gateway"} == {"grpc"}
    assert {s.transport for s in spans if s.service == "rvc_service"} == {"http/protobuf"}
    assert {s.transport for s in spans if s.service == "triton"} == {"http/json"}


def test_a_caller_traceparent_is_continued(stack: TracedStack) -> None:
    trace_id, parent_id = uuid.uuid4().hex, uuid.uuid4().hex[:16]
    request_id = f"parent-{uuid.uuid4().hex[:12]}"
    synthesize(
        stack.gateway.address, CONVERTED_VOICE, request_id, metadata=(("traceparent", f"00-{trace_id}-{parent_id}-01"),)
    )
    spans = wait_until(lambda: complete_trace(stack.collector, request_id, len(split_text(TEXT))), within=EXPORT_WAIT_S)
    assert {s.trace_id for s in spans} == {trace_id}
    assert not [s for s in spans if not s.parent_span_id], "no span starts a trace of its own"
    root = only(spans, name=GATEWAY_SYNTHESIZE)
    assert root.parent_span_id == parent_id


def test_a_failed_rpc_has_an_error_span_with_its_code(stack: TracedStack) -> None:
    trace_id = uuid.uuid4().hex
    with grpc.insecure_channel(stack.gateway.address) as channel:
        stub = tts_gateway_pb2_grpc.TtsGatewayServiceStub(channel)
        request = tts_gateway_pb2.SynthesizeRequest(
            text=TEXT,
            voice=CONVERTED_VOICE,
            output_format=audio_pb2.AudioFormat(encoding=audio_pb2.AUDIO_ENCODING_PCM16),
            conversion=conversion_pb2.ConversionSettings(pitch_shift_semitones=30),  # outside -24..24
        )
        with pytest.raises(grpc.RpcError) as caught:
            list(stub.Synthesize(request, timeout=30, metadata=(("traceparent", f"00-{trace_id}-{'1' * 16}-01"),)))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    spans = wait_until(lambda: stack.collector.trace(trace_id), within=EXPORT_WAIT_S)
    root = only(spans, name=GATEWAY_SYNTHESIZE)
    assert root.status == "ERROR"
    assert root.attributes["rpc.grpc.status_code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]


def test_with_tracing_off_nothing_is_exported_and_no_context_is_sent(
    stack: TracedStack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Everything a collector needs is configured except the switch: the gateway must stay silent.
    _set_otel(
        monkeypatch,
        OTEL_EXPORTER_OTLP_ENDPOINT=stack.collector.grpc_endpoint,
        OTEL_RESOURCE_ATTRIBUTES="test.instance=tracing-off",
    )
    gateway = start_gateway(stack.triton.grpc_url, stack.rvc.address, log_dir=tmp_path)
    request_id = f"off-{uuid.uuid4().hex[:12]}"
    try:
        synthesize(gateway.address, CONVERTED_VOICE, request_id)
    finally:
        assert gateway.stop() == 0  # a graceful stop: a tracing gateway would flush its spans here
    # The upstreams still trace (they are on), but as traces of their own: no traceparent came from the gateway.
    upstream = wait_until(
        lambda: (
            [s for s in stack.collector.spans() if _is_request(s, request_id)]
            if {"triton", "rvc_service"} <= {s.service for s in stack.collector.spans() if _is_request(s, request_id)}
            else None
        ),
        within=EXPORT_WAIT_S,
    )
    for trace_id in {s.trace_id for s in upstream}:
        trace_spans = stack.collector.trace(trace_id)
        roots = [s for s in trace_spans if not s.parent_span_id]
        assert len(roots) == 1 and roots[0].service in ("triton", "rvc_service")
        assert not [s for s in trace_spans if s.service == "tts_gateway"]
    assert not [s for s in stack.collector.spans() if s.resource.get("test.instance") == "tracing-off"]


@pytest.mark.parametrize("enabled", [False, True])
def test_the_sdk_and_exporters_load_only_when_tracing_is_on(enabled: bool) -> None:
    probe = (
        "import sys\n"
        "import services.tts_gateway.app, services.rvc_service.__main__\n"
        "from services.common import tracing\n"
        "on = tracing.configure_tracing('probe')\n"
        "loaded = sorted(m for m in sys.modules if m.startswith(('opentelemetry.sdk', 'opentelemetry.exporter')))\n"
        "print(on, len(tracing.server_interceptors()), len(loaded))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    if enabled:
        env |= {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"}
    result = subprocess.run(
        [sys.executable, "-P", "-c", probe], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    on, interceptors, loaded = result.stdout.split()
    assert on == str(enabled)
    assert int(interceptors) == int(enabled)
    assert (int(loaded) > 0) == enabled


def test_a_cancelled_call_is_recorded_as_cancelled_on_both_services(stack: TracedStack) -> None:
    trace_id = uuid.uuid4().hex
    with grpc.insecure_channel(stack.gateway.address) as channel:
        stub = tts_gateway_pb2_grpc.TtsGatewayServiceStub(channel)
        request = tts_gateway_pb2.SynthesizeRequest(
            text=" ".join([TEXT] * 8),
            voice=CONVERTED_VOICE,
            output_format=audio_pb2.AudioFormat(encoding=audio_pb2.AUDIO_ENCODING_PCM16),
        )
        call = stub.Synthesize(request, timeout=120, metadata=(("traceparent", f"00-{trace_id}-{'2' * 16}-01"),))
        next(call)  # audio is flowing: Triton and the conversion service are both mid-request
        call.cancel()

    def ended() -> list[ReceivedSpan] | None:
        spans = stack.collector.trace(trace_id)
        names = {(s.service, s.name, s.kind) for s in spans}
        wanted = {
            ("tts_gateway", GATEWAY_SYNTHESIZE, "SERVER"),
            ("rvc_service", "voice.v1.VoiceConversionService/Convert", "SERVER"),
        }
        return spans if wanted <= names else None

    spans = wait_until(ended, within=EXPORT_WAIT_S)
    root = only(spans, name=GATEWAY_SYNTHESIZE)
    assert root.status == "ERROR" and "cancelled" in root.events
    assert root.attributes["rpc.grpc.status_code"] == grpc.StatusCode.CANCELLED.value[0]
    convert_server = only(spans, name="voice.v1.VoiceConversionService/Convert", kind="SERVER")
    assert convert_server.status == "ERROR" and "cancelled" in convert_server.events
    # Fewer sentences were synthesized than the text has: the cancel stopped the work, and the spans say so.
    assert len([s for s in spans if s.name == "sentence"]) < len(split_text(request.text))


def test_probes_get_spans_only_when_the_caller_traces_them(stack: TracedStack) -> None:
    # The gateway's probe loop has polled the conversion service's GetStatus since it started: none of it is traced.
    assert stack.gateway.running
    assert not [s for s in stack.collector.spans() if s.name.endswith(("/GetStatus", "/Check", "/Watch"))]
    trace_id = uuid.uuid4().hex
    with grpc.insecure_channel(stack.rvc.address) as channel:
        stub = voice_conversion_pb2_grpc.VoiceConversionServiceStub(channel)
        stub.GetStatus(
            voice_conversion_pb2.VoiceConversionServiceGetStatusRequest(),
            timeout=10,
            metadata=(("traceparent", f"00-{trace_id}-{'3' * 16}-01"),),
        )
    spans = wait_until(lambda: stack.collector.trace(trace_id), within=EXPORT_WAIT_S)
    assert [(s.service, s.name, s.kind) for s in spans] == [
        ("rvc_service", "voice.v1.VoiceConversionService/GetStatus", "SERVER")
    ]
