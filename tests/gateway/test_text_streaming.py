"""Text-in streaming (TEXT_INPUT_MODE_INCREMENTAL) without Triton: the pipeline with an in-process fake of the speech
upstream, the servicer's delta reader, validation of the mode, the model facts, the session request tensors, the
error-prefix mapping, and triton_client.TtsSession's session protocol against a scripted stand-in for the
ModelStreamInfer stub. End-to-end tests against the real model live with the other real-Triton tests.

The fake model speaks every increment at once: `SAMPLES_PER_CHAR` samples per non-space character, at a constant
level unique to the utterance, so each output sample says which utterance (segment) it came from.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import re
import struct
import uuid
from collections.abc import AsyncGenerator, AsyncIterator

import grpc
import numpy as np
import pytest
from prometheus_client import REGISTRY
from tritonclient.grpc import service_pb2

from services.common.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    ResourceExhausted,
    ServiceError,
)
from services.tts_gateway.domain import TtsInputs, TtsModelInfo
from services.tts_gateway.metrics import LatencyWindows
from services.tts_gateway.pipeline import SynthesisPipeline
from services.tts_gateway.plan import SynthesisPlan
from services.tts_gateway.servicer import TtsGatewayServicer
from services.tts_gateway.text import NOTHING_TO_SPEAK
from services.tts_gateway.triton_client import (
    TritonTts,
    build_request,
    build_session_request,
    model_stream_error,
    parse_model_config,
)
from services.tts_gateway.upstream_protocols import SpeechUpstream, TextIncrements
from services.tts_gateway.validation import Limits, ReferenceCache, RequestValidator
from services.tts_gateway.voices import Voice, VoiceCatalog, VoiceSpec, parse_voice_specs
from tests.gateway.test_pipeline_core import (
    RATE,
    FakeConversion,
    assert_nothing_left_running,
    level,
    make_plan,
    samples,
    settle,
)
from tests.gateway.test_units import CLONING_CONFIG, PIPER_CONFIG
from voice.v1 import audio_pb2, tts_gateway_pb2

pytestmark = pytest.mark.timeout(30)

SAMPLES_PER_CHAR = 100  # one character is 6.25 ms: "Hello" makes a chunk of its own (MIN_CHUNK_SECONDS)
COSY_CONFIG = {
    "name": "cosyvoice2",
    "model_transaction_policy": {"decoupled": True},
    "input": [{"name": n} for n in ("target_text", "reference_wav", "session_id", "session_start", "session_end")],
    "parameters": {
        "sample_rate_hz": {"string_value": "24000"},
        "supported_modes": {"string_value": "preset_speaker,zero_shot"},
        "language_code": {"string_value": "en-US"},
        "text_input_streaming": {"string_value": "true"},
    },
}


# ---- fake speech upstream that takes text in increments -----------------------------------------------------------


class FakeTextSession:
    """Stands in for triton_client.TtsSession in text-input mode. Records per utterance the session id and the
    increments sent (one per model request, the last one the end request); `owner.gates[n]` holds request n (0-based
    over the whole stream) until set, as a model busy with it would."""

    def __init__(self, owner: FakeTextSpeech) -> None:
        self.owner = owner
        self.busy_s = 0.0
        self.session_ids: list[str] = []
        self.increments: list[list[str]] = []  # per utterance, the text of each request
        self.finished: list[bool] = []  # per utterance: its end request was answered
        self.abandoned = 0
        self.closed = False
        self.cancelled = False

    def synthesize(
        self, text: str, inputs: TtsInputs, *, playback_ahead_s: float | None = None
    ) -> AsyncGenerator[np.ndarray, None]:
        raise AssertionError("incremental text went sentence by sentence")

    async def stream_utterance(self, text: TextIncrements, inputs: TtsInputs) -> AsyncGenerator[np.ndarray, None]:
        index = len(self.increments)
        self.session_ids.append(uuid.uuid4().hex)
        sent: list[str] = []
        self.increments.append(sent)
        self.finished.append(False)
        try:
            ended = False
            while not ended:
                increment, ended = await text.take()
                sent.append(increment)
                request = self.owner.requests
                self.owner.requests += 1
                gate = self.owner.gates.get(request)
                if gate is not None:
                    await gate.wait()
                spoken = len("".join(increment.split())) * SAMPLES_PER_CHAR
                if spoken:
                    await asyncio.sleep(0)  # a network read
                    self.busy_s += spoken / RATE / 10
                    yield np.full(spoken, level(index), dtype=np.float32)
            self.finished[index] = True
        finally:
            if not self.finished[index]:
                self.abandoned += 1

    async def close(self) -> None:
        self.closed = True

    def cancel(self) -> None:
        self.cancelled = True


class FakeTextSpeech:
    def __init__(self, *, gates: dict[int, asyncio.Event] | None = None) -> None:
        self.gates = gates or {}
        self.requests = 0
        self.sessions: list[FakeTextSession] = []

    def open(self, model: TtsModelInfo, request_id: str) -> FakeTextSession:
        session = FakeTextSession(self)
        self.sessions.append(session)
        return session

    @property
    def session(self) -> FakeTextSession:
        (session,) = self.sessions
        return session


_TEXT_SPEECH_IS_AN_UPSTREAM: type[SpeechUpstream] = FakeTextSpeech


def incremental_plan(*, converted: bool = False) -> SynthesisPlan:
    return dataclasses.replace(make_plan(converted=converted), incremental_text=True)


def increments_counted() -> float:
    return REGISTRY.get_sample_value("tts_gateway_text_increments_total", {"voice": "fake"}) or 0.0


@contextlib.asynccontextmanager
async def started(pipeline: SynthesisPipeline) -> AsyncIterator[AsyncGenerator[audio_pb2.AudioChunk, None]]:
    pipeline.start()
    chunks = pipeline.chunks()
    try:
        async with contextlib.aclosing(chunks):
            yield chunks
    finally:
        await pipeline.aclose()


# ---- the pipeline --------------------------------------------------------------------------------------------------


async def test_deltas_go_to_the_model_as_increments_in_order_and_audio_starts_before_any_sentence_end() -> None:
    speech = FakeTextSpeech()
    pipeline = SynthesisPipeline(incremental_plan(), speech, None, LatencyWindows())
    before = increments_counted()
    deltas = ["Hello", " wor", "ld", " how are", " you"]
    async with started(pipeline) as stream:
        await pipeline.deltas.put(deltas[0])
        first = await anext(stream)  # no sentence end anywhere yet: the model already speaks
        assert samples(first).size == 5 * SAMPLES_PER_CHAR and np.all(samples(first) == level(0))
        assert first.segment_index == 0 and first.segment_text == "Hello"
        for delta in deltas[1:]:
            await settle(lambda: speech.requests)
            await pipeline.deltas.put(delta)
        await settle(lambda: speech.requests)
        await pipeline.deltas.close()
        rest = [chunk async for chunk in stream]

    session = speech.session
    assert session.increments == [[*deltas, ""]]  # one request per delta, in order, then the end request
    assert session.finished == [True] and session.abandoned == 0
    assert session.closed and session.cancelled  # ended politely (the stage's finally cancels what is left: nothing)
    assert increments_counted() - before == len(deltas)
    chunks = [first, *rest]
    audio = np.concatenate([samples(c) for c in chunks])
    assert audio.size == len("Helloworldhowareyou") * SAMPLES_PER_CHAR and np.all(audio == level(0))
    final = chunks[-1]
    assert final.is_final and final.summary.segment_count == 1
    assert final.summary.processed_text == "Hello world how are you"
    assert_nothing_left_running()


async def test_deltas_queued_while_the_model_is_busy_go_out_joined_as_one_increment() -> None:
    busy = asyncio.Event()  # request 0 (the first increment) is in the model until set
    speech = FakeTextSpeech(gates={0: busy})
    pipeline = SynthesisPipeline(incremental_plan(), speech, None, LatencyWindows())
    before = increments_counted()
    async with started(pipeline) as stream:
        await pipeline.deltas.put("Once")
        await settle(lambda: speech.requests)
        for delta in [" upon", " a", " time"]:
            await pipeline.deltas.put(delta)
        await settle(lambda: speech.requests)
        assert speech.session.increments == [["Once"]]  # one request in flight at a time
        busy.set()
        await settle(lambda: speech.requests)
        await pipeline.deltas.put(" there")
        await settle(lambda: speech.requests)
        await pipeline.deltas.close()
        chunks = [chunk async for chunk in stream]
    assert speech.session.increments == [["Once", " upon a time", " there", ""]]
    assert increments_counted() - before == 3
    assert chunks[-1].summary.processed_text == "Once upon a time there"
    assert_nothing_left_running()


@pytest.mark.parametrize("converted", [False, True], ids=["plain", "converted"])
async def test_a_flush_ends_the_utterance_and_later_text_opens_a_new_session_and_segment(converted: bool) -> None:
    speech = FakeTextSpeech()
    conversion = FakeConversion() if converted else None
    pipeline = SynthesisPipeline(incremental_plan(converted=converted), speech, conversion, LatencyWindows())
    for item in ["Good", " morning", None, None, "  ", None, " Bye", " now,", " see you", None, " ", "!"]:
        await pipeline.deltas.put(item)
    await pipeline.deltas.close()
    async with started(pipeline) as stream:
        chunks = [chunk async for chunk in stream]

    session = speech.session
    # The whitespace-only utterance between the flushes never reaches the model; the trailing " " + "!" neither.
    assert len(session.increments) == 2 and session.finished == [True, True]
    # All of it was queued before the model started: each utterance is one increment, which also ends it.
    assert session.increments == [["Good morning"], [" Bye now, see you"]]
    assert len(set(session.session_ids)) == 2
    assert [c.segment_index for c in chunks] == sorted(c.segment_index for c in chunks)
    assert {c.segment_index for c in chunks} == {0, 1}
    gain = np.float32(0.5) if converted else np.float32(1.0)
    for chunk in chunks:
        assert np.all(samples(chunk) == level(chunk.segment_index) * gain)
    final = chunks[-1].summary
    assert final.segment_count == 2 and final.processed_text == "Good morning Bye now, see you"
    if conversion is not None:
        assert conversion.session.flushes == 2  # per utterance, not per increment
    assert_nothing_left_running()


async def test_cancelling_mid_utterance_abandons_the_session() -> None:
    speech = FakeTextSpeech()
    pipeline = SynthesisPipeline(incremental_plan(), speech, None, LatencyWindows())
    async with started(pipeline) as stream:
        await pipeline.deltas.put("Hello there")
        await anext(stream)
        await settle(lambda: speech.requests)
        pipeline.cancel()  # the client went away while the utterance waits for more text
        await settle(lambda: speech.session.abandoned)
    session = speech.session
    assert session.abandoned == 1 and session.finished == [False]
    assert session.cancelled and not session.closed
    assert_nothing_left_running()


# ---- the servicer's delta reader -----------------------------------------------------------------------------------


def _servicer() -> TtsGatewayServicer:
    validator = RequestValidator(VoiceCatalog([]), Limits(max_stream_text_chars=40), ReferenceCache())
    return TtsGatewayServicer(
        catalog=validator.catalog,
        validator=validator,
        triton=None,  # type: ignore[arg-type]  # reading text talks to no upstream
        rvc=None,  # type: ignore[arg-type]
        monitor=None,  # type: ignore[arg-type]
        windows=LatencyWindows(),
        max_concurrent_streams=1,
    )


async def _messages(*items: str | None) -> AsyncIterator[tts_gateway_pb2.StreamingSynthesizeRequest]:
    for item in items:
        if item is None:
            yield tts_gateway_pb2.StreamingSynthesizeRequest(flush=tts_gateway_pb2.StreamingSynthesizeRequest.Flush())
        else:
            yield tts_gateway_pb2.StreamingSynthesizeRequest(text=item)


async def test_the_servicer_forwards_each_delta_unsplit_and_a_flush_as_the_utterance_end() -> None:
    pipeline = SynthesisPipeline(incremental_plan(), FakeTextSpeech(), None, LatencyWindows())
    await _servicer()._read_deltas(_messages(None, "Hi.", " ", "there. And", "", None, None, " more"), pipeline)
    assert await pipeline.deltas.take_all() == ["Hi.", " ", "there. And", None, " more"]
    assert await pipeline.deltas.take_all() == []  # closed: the end of the stream ends the last utterance


@pytest.mark.parametrize(
    ("items", "problem"),
    [
        (("...", " ", None, "!?"), NOTHING_TO_SPEAK),
        (("Hello\x1b",), "control character U+001B"),
        (("x" * 30, "y" * 11), "40-character limit"),
    ],
    ids=["nothing-pronounceable", "control-character", "too-long"],
)
async def test_the_servicer_checks_deltas_as_it_checks_sentences(items: tuple[str | None, ...], problem: str) -> None:
    pipeline = SynthesisPipeline(incremental_plan(), FakeTextSpeech(), None, LatencyWindows())
    await _servicer()._read_deltas(_messages(*items), pipeline)
    with pytest.raises(InvalidArgument, match=re.escape(problem)):
        while await pipeline.deltas.take_all():
            pass


# ---- model facts, voices and validation ----------------------------------------------------------------------------


def test_a_model_streams_text_input_when_it_declares_it_is_decoupled_and_takes_a_session_id() -> None:
    assert parse_model_config(COSY_CONFIG).streams_text_input
    assert not parse_model_config(PIPER_CONFIG).streams_text_input
    undeclared = {**COSY_CONFIG, "parameters": {**COSY_CONFIG["parameters"], "text_input_streaming": {}}}
    assert not parse_model_config(undeclared).streams_text_input
    not_decoupled = {**COSY_CONFIG, "model_transaction_policy": {}}
    assert not parse_model_config(not_decoupled).streams_text_input
    no_session = {**COSY_CONFIG, "input": [{"name": "target_text"}]}
    assert not parse_model_config(no_session).streams_text_input


def _catalog() -> VoiceCatalog:
    specs = parse_voice_specs(
        {
            "voice": [
                {"name": "joe", "tts_model": "piper_tts"},
                {"name": "clone", "tts_model": "cloner"},
                {"name": "cosy", "tts_model": "cosyvoice2"},
            ]
        }
    )
    catalog = VoiceCatalog(specs)
    models = {c["name"]: parse_model_config(c) for c in (PIPER_CONFIG, CLONING_CONFIG, COSY_CONFIG)}
    catalog.voices = {s.name: Voice(s, models[s.tts_model]) for s in specs}
    return catalog


def test_voices_say_whether_they_stream_text_input_and_saved_voices_inherit_it() -> None:
    catalog = _catalog()
    listed = {v.name: v.streams_text_input for v in catalog.listing()}
    assert listed == {"joe": False, "clone": False, "cosy": True}
    saved = dataclasses.replace(catalog.voices["cosy"], spec=VoiceSpec(name="mine", tts_model="cosyvoice2"))
    assert saved.to_proto().streams_text_input
    assert catalog.streaming_text_input() == ["cosy"]


def _config(voice: str, mode: int) -> tts_gateway_pb2.StreamingSynthesizeConfig:
    return tts_gateway_pb2.StreamingSynthesizeConfig(
        voice=voice,
        output_format=audio_pb2.AudioFormat(encoding=audio_pb2.AUDIO_ENCODING_PCM16),
        text_input_mode=mode,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize(
    ("voice", "mode", "incremental"),
    [
        ("cosy", tts_gateway_pb2.TEXT_INPUT_MODE_UNSPECIFIED, True),
        ("cosy", tts_gateway_pb2.TEXT_INPUT_MODE_INCREMENTAL, True),
        ("cosy", tts_gateway_pb2.TEXT_INPUT_MODE_SENTENCES, False),
        ("joe", tts_gateway_pb2.TEXT_INPUT_MODE_UNSPECIFIED, False),
        ("joe", tts_gateway_pb2.TEXT_INPUT_MODE_SENTENCES, False),
    ],
)
async def test_the_text_input_mode_defaults_to_the_voices_and_can_be_sentences(
    voice: str, mode: int, incremental: bool
) -> None:
    validator = RequestValidator(_catalog(), Limits(), ReferenceCache())
    plan = await validator.plan(_config(voice, mode), text_field=None)
    assert plan.incremental_text is incremental


async def test_incremental_text_on_a_voice_that_cannot_take_it_names_the_voices_that_can() -> None:
    validator = RequestValidator(_catalog(), Limits(), ReferenceCache())
    with pytest.raises(FailedPrecondition, match="voices that can: cosy") as raised:
        await validator.plan(_config("joe", tts_gateway_pb2.TEXT_INPUT_MODE_INCREMENTAL), text_field=None)
    assert raised.value.code == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(InvalidArgument, match="text_input_mode"):
        await validator.plan(_config("cosy", 7), text_field=None)
    synthesize = tts_gateway_pb2.SynthesizeRequest(
        text="Hello.", voice="cosy", output_format=audio_pb2.AudioFormat(encoding=audio_pb2.AUDIO_ENCODING_PCM16)
    )
    assert not (await validator.plan(synthesize, text_field="text")).incremental_text  # whole text: sentences


# ---- Triton requests and errors ------------------------------------------------------------------------------------


def _tensors(request: service_pb2.ModelInferRequest) -> dict[str, tuple[str, list[int], bytes]]:
    return {
        t.name: (t.datatype, list(t.shape), raw)
        for t, raw in zip(request.inputs, request.raw_input_contents, strict=True)
    }


def _string(raw: bytes) -> str:
    (size,) = struct.unpack("<I", raw[:4])
    return raw[4 : 4 + size].decode()


def test_session_requests_carry_the_session_tensors() -> None:
    model = parse_model_config(COSY_CONFIG)
    inputs = TtsInputs(reference_wav=np.zeros(16000, np.float32), reference_text="ref", seed=3)
    first = _tensors(build_session_request(model, "Hel", "rid", "s1", inputs=inputs))
    assert first["session_id"] == ("BYTES", [1, 1], first["session_id"][2]) and _string(first["session_id"][2]) == "s1"
    assert first["session_start"] == ("BOOL", [1, 1], b"\x01")
    assert "session_end" not in first and "session_cancel" not in first
    plain = _tensors(build_request(model, "Hel", inputs, "rid", final_flag=True))
    assert set(first) - set(plain) == {"session_id", "session_start"}  # and everything a plain request has
    assert _string(first["target_text"][2]) == "Hel" and first["reference_wav"][1] == [1, 16000]

    middle_request = build_session_request(model, "lo", "rid", "s1")
    middle = _tensors(middle_request)
    assert set(middle) == {"target_text", "session_id"} and _string(middle["target_text"][2]) == "lo"
    last = _tensors(build_session_request(model, "", "rid", "s1", end=True))
    assert set(last) == {"target_text", "session_id", "session_end"} and last["session_end"] == (
        "BOOL",
        [1, 1],
        b"\x01",
    )
    assert _string(last["target_text"][2]) == ""
    cancel = _tensors(build_session_request(model, "", "rid", "s1", cancel=True))
    assert cancel["session_cancel"] == ("BOOL", [1, 1], b"\x01") and "session_end" not in cancel
    assert middle_request.parameters["triton_enable_empty_final_response"].bool_param


@pytest.mark.parametrize(
    ("message", "error", "code"),
    [
        ("RESOURCE_EXHAUSTED: 8 sessions are open", ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED),
        ("FAILED_PRECONDITION: session abc expired", FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
        ("INVALID_ARGUMENT: unknown session abc", InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
        ("DEADLINE_EXCEEDED: took too long", DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED),
        ("[request id: rid-1] RESOURCE_EXHAUSTED: full", ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED),
    ],
)
def test_model_error_prefixes_become_their_status_codes(message: str, error: type, code: grpc.StatusCode) -> None:
    mapped = model_stream_error("cosyvoice2", "rid-1", message)
    assert type(mapped) is error and mapped.code == code
    rest = message.rpartition(": ")[2]
    assert rest in mapped.message and code.name not in mapped.message
    assert mapped.message.endswith("(request id rid-1)")
    if isinstance(mapped, ResourceExhausted):
        assert mapped.retry_after_s == 1.0


@pytest.mark.parametrize("message", ["CUDA out of memory", "UNKNOWN_CODE: x", "RESOURCE_EXHAUSTED without colon"])
def test_other_model_errors_stay_internal(message: str) -> None:
    mapped = model_stream_error("cosyvoice2", "rid-1", message)
    assert type(mapped) is Internal and message in mapped.message and mapped.message.endswith("(request id rid-1)")


# ---- TtsSession's session protocol against a scripted stream -------------------------------------------------------


class ScriptedCall:
    """A ModelStreamInfer call: answers each request with one waveform response per spoken character group and
    an empty final response, unless the stub holds requests (`hold`) or fails them (`error`)."""

    def __init__(self, stub: ScriptedStub) -> None:
        self.stub = stub
        self.requests: list[service_pb2.ModelInferRequest] = []
        self.responses: asyncio.Queue[object] = asyncio.Queue()
        self.cancelled = False
        self.done_writing_called = False

    async def write(self, request: service_pb2.ModelInferRequest) -> None:
        self.requests.append(request)
        if self.stub.hold:
            return
        if self.stub.error:
            self.responses.put_nowait(service_pb2.ModelStreamInferResponse(error_message=self.stub.error))
            return
        text = _string(_tensors(request)["target_text"][2])
        if text.strip():
            response = service_pb2.ModelStreamInferResponse()
            output = response.infer_response.outputs.add(name="waveform", datatype="FP32", shape=[1, 4])
            assert output.name == "waveform"
            response.infer_response.raw_output_contents.append(np.full(4, 0.25, "<f4").tobytes())
            self.responses.put_nowait(response)
        final = service_pb2.ModelStreamInferResponse()
        final.infer_response.parameters["triton_final_response"].bool_param = True
        self.responses.put_nowait(final)

    async def read(self) -> object:
        return await self.responses.get()

    async def done_writing(self) -> None:
        self.done_writing_called = True
        self.responses.put_nowait(grpc.aio.EOF)

    def cancel(self) -> bool:
        self.cancelled = True
        return True


class ScriptedStub:
    def __init__(self) -> None:
        self.calls: list[ScriptedCall] = []
        self.hold = False
        self.error = ""

    def ModelStreamInfer(self, **kwargs: object) -> ScriptedCall:
        call = ScriptedCall(self)
        self.calls.append(call)
        return call


class QueuedText:
    """TextIncrements from a queue of (text, ended)."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[str, bool]] = asyncio.Queue()

    async def take(self) -> tuple[str, bool]:
        return await self.queue.get()


@contextlib.asynccontextmanager
async def scripted_triton() -> AsyncIterator[tuple[TritonTts, ScriptedStub]]:
    triton = TritonTts("127.0.0.1:9")  # the channel is never used: the stub is scripted
    stub = ScriptedStub()
    triton.stub = stub  # type: ignore[assignment]
    try:
        yield triton, stub
    finally:
        await triton.close()


def _session_flags(request: service_pb2.ModelInferRequest) -> tuple[str, str, set[str]]:
    tensors = _tensors(request)
    flags = {name for name in ("session_start", "session_end", "session_cancel") if name in tensors}
    return _string(tensors["session_id"][2]), _string(tensors["target_text"][2]), flags


async def test_tts_session_runs_one_model_session_per_utterance_over_one_stream() -> None:
    async with scripted_triton() as (triton, stub):
        model = parse_model_config(COSY_CONFIG)
        session = triton.open(model, "client-id")
        for texts in (["Hi", " there"], ["Again"]):
            text = QueuedText()
            for index, delta in enumerate(texts):
                text.queue.put_nowait((delta, index == len(texts) - 1))
            parts = [audio async for audio in session.stream_utterance(text, TtsInputs(reference_text="ref"))]
            assert len(parts) == len(texts) and all(np.all(p == 0.25) for p in parts)
        await session.close()
        (call,) = stub.calls
        sent = [_session_flags(r) for r in call.requests]
        first_id, second_id = sent[0][0], sent[3][0]
        assert first_id != second_id and "client-id" not in (first_id, second_id) and len(first_id) == 32
        assert sent == [
            (first_id, "Hi", {"session_start"}),
            (first_id, " there", {"session_end"}),
            (second_id, "Again", {"session_start"}),
            (second_id, "", {"session_end"}),  # start and end never ride on one request
        ]
        assert "reference_text" in _tensors(call.requests[0]) and "reference_text" not in _tensors(call.requests[1])
        assert call.done_writing_called and not call.cancelled


async def test_an_utterance_abandoned_between_requests_is_cancelled_on_a_call_of_its_own() -> None:
    async with scripted_triton() as (triton, stub):
        session = triton.open(parse_model_config(COSY_CONFIG), "rid")
        text = QueuedText()
        text.queue.put_nowait(("Hello", False))
        parts = session.stream_utterance(text, TtsInputs())
        await anext(parts)
        await asyncio.sleep(0)
        reader = asyncio.ensure_future(anext(parts))  # waits for the next increment: no request in flight
        await asyncio.sleep(0)
        reader.cancel()  # the pipeline was cancelled
        with pytest.raises(asyncio.CancelledError):
            await reader
        await asyncio.gather(*list(triton._background))
        session.cancel()
        stream, cancel_call = stub.calls
        (started_id, _, _) = _session_flags(stream.requests[0])
        assert [_session_flags(r) for r in cancel_call.requests] == [(started_id, "", {"session_cancel"})]
        assert cancel_call.cancelled  # the short call is ended once its final response came
        assert stream.cancelled


async def test_an_utterance_abandoned_with_a_request_in_flight_cancels_the_stream_only() -> None:
    async with scripted_triton() as (triton, stub):
        session = triton.open(parse_model_config(COSY_CONFIG), "rid")
        stub.hold = True  # the model never answers: the first request stays in flight
        text = QueuedText()
        text.queue.put_nowait(("Hello", False))
        parts = session.stream_utterance(text, TtsInputs())
        reader = asyncio.ensure_future(anext(parts))
        await settle(lambda: sum(len(c.requests) for c in stub.calls))
        reader.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reader
        (stream,) = stub.calls  # no session_cancel call: Triton cancels the request, the model frees the session
        assert stream.cancelled and not triton._background


@pytest.mark.parametrize("incremental", [False, True], ids=["sentences", "incremental"])
async def test_stream_errors_are_mapped_by_their_code_prefix(incremental: bool) -> None:
    async with scripted_triton() as (triton, stub):
        session = triton.open(parse_model_config(COSY_CONFIG), "rid")
        stub.error = "RESOURCE_EXHAUSTED: 8 text-input sessions are open"
        if incremental:
            text = QueuedText()
            text.queue.put_nowait(("Hello", False))
            parts = session.stream_utterance(text, TtsInputs())
        else:
            parts = session.synthesize("Hello.", TtsInputs())
        with pytest.raises(ServiceError) as raised:
            async for _ in parts:
                pass
        assert isinstance(raised.value, ResourceExhausted) and "8 text-input sessions" in raised.value.message
        session.cancel()
        assert stub.calls[0].cancelled and not triton._background  # the failed request counts as in flight
