"""SynthesisPipeline in process: both upstreams are fakes, so no Triton, no conversion service, no gRPC, no processes.

The fakes stand in for the two protocols of services/tts_gateway/upstream_protocols.py. Every sentence's fake speech is
a constant level unique to the sentence (and fake conversion halves it), so each output sample says which sentence
it came from: ordering and segment attribution are checked on the audio itself. Nothing here waits on a clock: the
fakes never sleep, and `settle()` runs the event loop until the fakes' state stops changing, so the back-pressure
and cancellation checks read what the fakes recorded. The end-to-end tests with real Triton are in test_gateway.py.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Callable

import numpy as np
import pytest

from services.common.durations import seconds_from_duration
from services.common.errors import FailedPrecondition, Internal
from services.tts_gateway.domain import MODE_PRESET, TtsInputs, TtsModelInfo
from services.tts_gateway.metrics import LatencyWindows
from services.tts_gateway.pipeline import PIPE_DEPTH, SynthesisPipeline
from services.tts_gateway.plan import SynthesisPlan
from services.tts_gateway.upstream_protocols import ConversionUpstream, SpeechUpstream
from services.tts_gateway.voices import Voice, VoiceSpec
from voice.v1 import audio_pb2, conversion_pb2

pytestmark = pytest.mark.timeout(30)

RATE = 16000
FLOAT32 = audio_pb2.AUDIO_ENCODING_FLOAT32
CONVERSION_GAIN = np.float32(0.5)


def level(sentence: int) -> np.float32:
    """The constant sample value of sentence `sentence`'s fake speech."""
    return np.float32((sentence + 1) / 64)


def sentences(count: int) -> list[str]:
    return [f"Sentence number {i}." for i in range(count)]


# ---- fakes ---------------------------------------------------------------------------------------------------------


class FakeSpeechSession:
    """Fake speech session (stands in for triton_client.TtsSession). The n-th piece requested (0-based) is
    `seconds(n)` of audio at level(n), yielded in `parts` parts. `fail_on` makes a piece raise instead;
    `gates` makes a piece wait for an event first (one that is never set models an upstream that is mid-call)."""

    def __init__(self, owner: FakeSpeech) -> None:
        self.owner = owner
        self.busy_s = 0.0
        self.requested: list[str] = []  # pieces asked for, in order
        self.completed: list[str] = []  # pieces whose audio was all handed over
        self.interrupted = 0  # pieces whose synthesis ended early (the generator was closed or cancelled)
        self.closed = False  # the polite end after the last piece
        self.cancelled = False

    async def synthesize(
        self, text: str, inputs: TtsInputs, *, playback_ahead_s: float | None = None
    ) -> AsyncGenerator[np.ndarray, None]:
        index = len(self.requested)
        self.requested.append(text)
        done = False
        try:
            gate = self.owner.gates.get(index)
            if gate is not None:
                await gate.wait()
            if index in self.owner.fail_on:
                raise self.owner.fail_on[index]
            audio = np.full(round(self.owner.seconds(index) * RATE), level(index), dtype=np.float32)
            for part in np.array_split(audio, self.owner.parts):
                await asyncio.sleep(0)  # a network read: other tasks run
                self.busy_s += part.size / RATE / 10
                yield part
            done = True
            self.completed.append(text)
        finally:
            if not done:
                self.interrupted += 1

    async def close(self) -> None:
        self.closed = True

    def cancel(self) -> None:
        self.cancelled = True


class FakeSpeech:
    """Fake speech upstream (stands in for triton_client.TritonTts); keeps every session it opened."""

    def __init__(
        self,
        *,
        seconds: Callable[[int], float] = lambda index: 0.3,
        parts: int = 2,
        fail_on: dict[int, BaseException] | None = None,
        gates: dict[int, asyncio.Event] | None = None,
    ) -> None:
        self.seconds = seconds
        self.parts = parts
        self.fail_on = fail_on or {}
        self.gates = gates or {}
        self.sessions: list[FakeSpeechSession] = []

    def open(self, model: TtsModelInfo, request_id: str) -> FakeSpeechSession:
        session = FakeSpeechSession(self)
        self.sessions.append(session)
        return session

    @property
    def session(self) -> FakeSpeechSession:
        (session,) = self.sessions
        return session


class FakeConversionSession:
    """Fake conversion session (stands in for rvc_client.ConvertSession): the output of each `send` is the input
    times CONVERSION_GAIN at the same rate. Output waits in a queue of `window` entries, so a reader that stops
    reading stalls `send` as gRPC flow control would. `fail_after` outputs read, `read` raises `error`."""

    def __init__(self, window: int, fail_after: int | None, error: BaseException | None) -> None:
        self._output: asyncio.Queue[np.ndarray | None] = asyncio.Queue(maxsize=window)
        self.fail_after = fail_after
        self.error = error
        self.started = False
        self.sent_samples = 0
        self.flushes = 0
        self.finished = False
        self.outputs_read = 0
        self.cancelled = False

    async def start(self) -> None:
        self.started = True

    async def send(self, audio: np.ndarray) -> None:
        self.sent_samples += audio.size
        await self._output.put(audio * CONVERSION_GAIN)

    async def flush(self) -> None:
        self.flushes += 1

    async def finish(self) -> None:
        self.finished = True
        await self._output.put(None)

    async def read(self) -> np.ndarray | None:
        if self.fail_after is not None and self.outputs_read >= self.fail_after:
            assert self.error is not None
            raise self.error
        audio = await self._output.get()
        if audio is not None:
            self.outputs_read += 1
        return audio

    def cancel(self) -> None:
        self.cancelled = True


class FakeConversion:
    """Fake conversion upstream (stands in for rvc_client.RvcClient); keeps every session it opened."""

    def __init__(self, *, window: int = 2, fail_after: int | None = None, error: BaseException | None = None) -> None:
        self.window = window
        self.fail_after = fail_after
        self.error = error
        self.sessions: list[FakeConversionSession] = []

    def open(
        self, request_id: str, settings: conversion_pb2.ConversionSettings, input_rate: int, output_rate: int
    ) -> FakeConversionSession:
        assert (input_rate, output_rate) == (RATE, RATE)
        session = FakeConversionSession(self.window, self.fail_after, self.error)
        self.sessions.append(session)
        return session

    @property
    def session(self) -> FakeConversionSession:
        (session,) = self.sessions
        return session


# The fakes are what the pipeline's protocols describe.
_SPEECH_IS_AN_UPSTREAM: type[SpeechUpstream] = FakeSpeech
_CONVERSION_IS_AN_UPSTREAM: type[ConversionUpstream] = FakeConversion


# ---- helpers -------------------------------------------------------------------------------------------------------


def make_plan(*, converted: bool = False) -> SynthesisPlan:
    model = TtsModelInfo(
        name="fake_tts",
        sample_rate_hz=RATE,
        decoupled=True,
        supported_modes=(MODE_PRESET,),
        language_code="en-US",
        speakers=(),
        max_text_chars=500,
        inputs=frozenset({"target_text"}),
    )
    return SynthesisPlan(
        request_id="core-test",
        voice=Voice(VoiceSpec(name="fake", tts_model="fake_tts"), model),
        mode=MODE_PRESET,
        tts_inputs=TtsInputs(),
        conversion=conversion_pb2.ConversionSettings(model="fake-rvc") if converted else None,
        encoding=FLOAT32,
        output_rate=RATE,
    )


def make_pipeline(speech: FakeSpeech, conversion: FakeConversion | None = None) -> SynthesisPipeline:
    return SynthesisPipeline(make_plan(converted=conversion is not None), speech, conversion, LatencyWindows())


async def feed(pipeline: SynthesisPipeline, texts: list[str]) -> None:
    for text in texts:
        await pipeline.pieces.put(text)
    await pipeline.pieces.close()


@contextlib.asynccontextmanager
async def running(pipeline: SynthesisPipeline) -> AsyncIterator[AsyncGenerator[audio_pb2.AudioChunk, None]]:
    """Start the pipeline and hand out its chunk stream; on leaving, close the stream and the pipeline as the
    servicer does (its `finally`)."""
    pipeline.start()
    chunks = pipeline.chunks()
    try:
        async with contextlib.aclosing(chunks):
            yield chunks
    finally:
        await pipeline.aclose()


async def collect(pipeline: SynthesisPipeline) -> list[audio_pb2.AudioChunk]:
    async with running(pipeline) as chunks:
        return [chunk async for chunk in chunks]


def samples(chunk: audio_pb2.AudioChunk) -> np.ndarray:
    return np.frombuffer(chunk.audio, dtype="<f4")


async def settle(*watched: Callable[[], object]) -> None:
    """Run the event loop until the watched fake state has not changed for a while: every task is then waiting on
    something (a full pipe, a gate, the consumer). Turns of the loop, not time."""
    quiet, last = 0, [w() for w in watched]
    for _ in range(10_000):
        await asyncio.sleep(0)
        now = [w() for w in watched]
        quiet = quiet + 1 if now == last else 0
        if quiet >= 50:
            return
        last = now
    raise AssertionError("the pipeline never settled")


def assert_nothing_left_running() -> None:
    assert asyncio.all_tasks() == {asyncio.current_task()}


def assert_attribution(chunks: list[audio_pb2.AudioChunk], texts: list[str], gain: np.float32) -> None:
    """Every chunk's audio is its segment's sentence; chunks follow the contract's numbering and timing."""
    offset = 0
    texted: set[int] = set()
    for number, chunk in enumerate(chunks):
        audio = samples(chunk)
        assert chunk.sequence_number == number
        assert chunk.request_id == "core-test"
        assert round(seconds_from_duration(chunk.offset) * RATE) == offset
        assert round(seconds_from_duration(chunk.duration) * RATE) == audio.size
        offset += audio.size
        if audio.size:
            assert np.all(audio == level(chunk.segment_index) * gain), (number, chunk.segment_index)
        if chunk.segment_text:
            assert chunk.segment_index not in texted  # only on the segment's first chunk
            assert chunk.segment_text == texts[chunk.segment_index]
            texted.add(chunk.segment_index)
    segments = [chunk.segment_index for chunk in chunks]
    assert segments == sorted(segments)  # sentences come out in order, never interleaved
    assert texted == set(range(len(texts)))


# ---- ordering and attribution --------------------------------------------------------------------------------------


@pytest.mark.parametrize("converted", [False, True], ids=["plain", "converted"])
async def test_chunks_follow_the_sentences_in_order_with_their_segment_text_offsets_and_numbers(
    converted: bool,
) -> None:
    # Lengths that exercise the 0.5 s chunk cap (0.8 s is cut in two) and several parts per sentence.
    lengths = [0.3, 0.8, 0.25, 0.6]
    texts = sentences(len(lengths))
    speech = FakeSpeech(seconds=lambda index: lengths[index], parts=3)
    conversion = FakeConversion() if converted else None
    pipeline = make_pipeline(speech, conversion)
    await feed(pipeline, texts)

    chunks = await collect(pipeline)

    gain = CONVERSION_GAIN if converted else np.float32(1.0)
    assert_attribution(chunks, texts, gain)
    expected = np.concatenate([np.full(round(s * RATE), level(i) * gain, np.float32) for i, s in enumerate(lengths)])
    np.testing.assert_array_equal(np.concatenate([samples(c) for c in chunks]), expected)
    assert max(round(seconds_from_duration(c.duration) * RATE) for c in chunks) <= RATE // 2
    final = chunks[-1]
    assert final.is_final and not any(c.is_final for c in chunks[:-1])
    assert final.summary.segment_count == len(texts)
    assert final.summary.processed_text == " ".join(texts)
    assert round(seconds_from_duration(final.summary.audio_duration) * RATE) == expected.size
    assert speech.session.requested == texts and speech.session.closed
    if conversion is not None:
        assert conversion.session.flushes == len(texts) and conversion.session.finished
        assert conversion.session.sent_samples == expected.size
    assert_nothing_left_running()


async def test_text_that_arrives_while_audio_streams_continues_the_numbering() -> None:
    """StreamingSynthesize feeds sentences as they arrive: the second sentence, sent after the first one's audio
    went out, continues the segment and sequence numbering."""
    texts = sentences(2)
    speech = FakeSpeech()
    pipeline = make_pipeline(speech)
    async with running(pipeline) as stream:
        await pipeline.pieces.put(texts[0])
        first = [await anext(stream), await anext(stream)]  # sentence 0: two parts of 0.15 s
        assert [c.segment_index for c in first] == [0, 0]
        await settle(lambda: len(speech.session.requested))
        assert speech.session.requested == texts[:1]  # nothing to synthesize until more text comes
        await pipeline.pieces.put(texts[1])
        await pipeline.pieces.close()
        rest = [chunk async for chunk in stream]
    assert_attribution(first + rest, texts, np.float32(1.0))
    assert rest[-1].is_final and rest[-1].summary.segment_count == 2


# ---- cancellation --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("converted", [False, True], ids=["plain", "converted"])
@pytest.mark.parametrize("how", ["aclose", "cancel"], ids=["stream-closed", "grpc-done-callback"])
async def test_a_consumer_cancelling_mid_stream_cancels_the_upstream_calls(converted: bool, how: str) -> None:
    never = asyncio.Event()  # sentence 2 is mid-call upstream when the consumer goes away
    speech = FakeSpeech(gates={1: never})
    conversion = FakeConversion() if converted else None
    pipeline = make_pipeline(speech, conversion)
    await feed(pipeline, sentences(10))
    pipeline.start()
    stream = pipeline.chunks()
    first = await anext(stream)
    assert first.segment_index == 0
    session = speech.session
    await settle(lambda: len(session.requested), lambda: session.interrupted)
    assert len(session.requested) == 2  # sentence 1 went into the pipes, sentence 2 waits upstream

    if how == "cancel":
        # The servicer's done callback (client cancelled, deadline): synchronous, from outside the stream.
        pipeline.cancel()
        await settle(lambda: session.cancelled, lambda: session.interrupted)
        assert session.cancelled and session.interrupted == 1
    await stream.aclose()
    await pipeline.aclose()

    assert session.cancelled and not session.closed  # aborted, not ended politely
    assert session.interrupted == 1 and session.completed == sentences(1)
    assert len(session.requested) == 2  # nothing was asked for after the consumer left
    if conversion is not None:
        assert conversion.session.cancelled and not conversion.session.finished
    assert_nothing_left_running()


# ---- errors --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("converted", [False, True], ids=["plain", "converted"])
async def test_speech_failing_on_sentence_two_reaches_the_caller_after_sentence_one(converted: bool) -> None:
    failure = Internal("triton model fake_tts failed: out of memory (request id core-test)")
    sentence_one_out = asyncio.Event()  # sentence 2 (index 1) fails only once sentence 1's audio was received
    speech = FakeSpeech(fail_on={1: failure}, gates={1: sentence_one_out})
    conversion = FakeConversion() if converted else None
    pipeline = make_pipeline(speech, conversion)
    await feed(pipeline, sentences(3))
    received: list[audio_pb2.AudioChunk] = []

    with pytest.raises(Internal) as raised:
        async with running(pipeline) as stream:
            async for chunk in stream:
                received.append(chunk)
                if sum(samples(c).size for c in received) == round(0.3 * RATE):
                    sentence_one_out.set()

    assert raised.value is failure  # the upstream's own error, message and code intact
    gain = CONVERSION_GAIN if converted else np.float32(1.0)
    assert received and {c.segment_index for c in received} == {0}
    assert np.all(np.concatenate([samples(c) for c in received]) == level(0) * gain)
    assert not any(c.is_final for c in received)
    session = speech.session
    assert session.requested == sentences(2)  # sentence 3 was never asked for
    assert session.cancelled and not session.closed
    if conversion is not None:
        assert conversion.session.cancelled and not conversion.session.finished
    assert_nothing_left_running()


async def test_audio_buffered_before_a_failure_reaches_the_listener_before_the_error() -> None:
    """The listener reads nothing until speech has already failed on sentence 2: sentence 1's audio, produced and
    buffered before the failure, still arrives in full, then the upstream's error."""
    failure = Internal("triton model fake_tts failed: out of memory (request id core-test)")
    speech = FakeSpeech(fail_on={1: failure})
    pipeline = make_pipeline(speech)
    await feed(pipeline, sentences(3))
    pipeline.start()
    await settle(lambda: [(len(s.requested), s.cancelled) for s in speech.sessions])
    assert speech.session.requested == sentences(2) and speech.session.cancelled  # failed before anyone listened

    received: list[audio_pb2.AudioChunk] = []
    chunks = pipeline.chunks()
    with pytest.raises(Internal) as raised:
        try:
            async with contextlib.aclosing(chunks):
                async for chunk in chunks:
                    received.append(chunk)
        finally:
            await pipeline.aclose()

    assert raised.value is failure
    audio = np.concatenate([samples(c) for c in received])
    assert audio.size == round(0.3 * RATE) and np.all(audio == level(0))
    assert {c.segment_index for c in received} == {0} and not any(c.is_final for c in received)
    assert_nothing_left_running()


class FailsWhileSpeechIsMidCall(FakeConversion):
    """Fake conversion whose failing read comes once the speech upstream is at work on the second piece (which the
    pipeline requests only after the first converted audio has left)."""

    def __init__(self, speech: FakeSpeech, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.speech = speech

    def open(
        self, request_id: str, settings: conversion_pb2.ConversionSettings, input_rate: int, output_rate: int
    ) -> FakeConversionSession:
        session = super().open(request_id, settings, input_rate, output_rate)
        read, speech = session.read, self.speech

        async def read_later() -> np.ndarray | None:
            for _ in range(10_000 if session.outputs_read >= 1 else 0):  # turns of the loop, not time
                if len(speech.session.requested) >= 2:
                    break
                await asyncio.sleep(0)
            return await read()

        session.read = read_later  # type: ignore[method-assign]
        return session


async def test_conversion_failing_ends_the_request_even_while_speech_is_mid_call() -> None:
    """The conversion call fails after its first output while Triton is still busy with sentence 2: the error
    must reach the caller now, and the speech call be cancelled, not left synthesizing for a dead stream."""
    failure = FailedPrecondition("voice conversion: model fake-rvc was unloaded")
    speech = FakeSpeech(parts=1, gates={1: asyncio.Event()})  # never set: sentence 2 stays mid-call
    conversion = FailsWhileSpeechIsMidCall(speech, fail_after=1, error=failure)
    pipeline = make_pipeline(speech, conversion)
    await feed(pipeline, sentences(3))
    received: list[audio_pb2.AudioChunk] = []

    with pytest.raises(FailedPrecondition) as raised:
        async with running(pipeline) as stream:
            async for chunk in stream:
                received.append(chunk)

    assert raised.value is failure
    assert not any(c.is_final for c in received)
    assert all(c.segment_index == 0 for c in received)
    session = speech.session
    assert session.requested == sentences(2) and session.interrupted == 1
    assert session.cancelled and not session.closed
    assert conversion.session.cancelled
    assert_nothing_left_running()


# ---- back-pressure -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("converted", [False, True], ids=["plain", "converted"])
async def test_a_slow_consumer_bounds_how_far_speech_runs_ahead(converted: bool) -> None:
    count = 40
    texts = sentences(count)
    speech = FakeSpeech(parts=1)  # one block per sentence: audio + end marker
    conversion = FakeConversion(window=2) if converted else None
    pipeline = make_pipeline(speech, conversion)
    await feed(pipeline, texts)
    # Sentences requested beyond the one being played: those in the speech pipe (audio + end marker each) and the
    # one waiting to go in; converted, also the writer's block, the call's window, the reader's block and the
    # output pipe (audio only). However long the text, no more.
    bound = PIPE_DEPTH // 2 + 2
    if conversion is not None:
        bound += 1 + conversion.window + 1 + PIPE_DEPTH
    requested_ahead: list[int] = []
    chunks: list[audio_pb2.AudioChunk] = []
    async with running(pipeline) as stream:
        async for chunk in stream:
            chunks.append(chunk)
            await settle(lambda: len(speech.session.requested))  # the consumer dawdles: upstream runs on
            requested_ahead.append(len(speech.session.requested) - chunk.segment_index)
    assert max(requested_ahead) <= bound, requested_ahead
    assert min(requested_ahead[: count // 2]) >= 2  # but it does work ahead: the next sentence is being made
    assert speech.session.requested == texts
    assert_attribution(chunks, texts, CONVERSION_GAIN if converted else np.float32(1.0))
    assert_nothing_left_running()


# ---- first audio before the second piece ---------------------------------------------------------------------------


class GatedConversion(FakeConversion):
    """Fake conversion whose first output waits for `first_out` (a conversion still working on its first block)."""

    def __init__(self) -> None:
        super().__init__(window=8)
        self.first_out = asyncio.Event()

    def open(
        self, request_id: str, settings: conversion_pb2.ConversionSettings, input_rate: int, output_rate: int
    ) -> FakeConversionSession:
        session = super().open(request_id, settings, input_rate, output_rate)
        read, gate = session.read, self.first_out

        async def gated_read() -> np.ndarray | None:
            await gate.wait()
            return await read()

        session.read = gated_read  # type: ignore[method-assign]
        return session


async def test_second_piece_waits_until_the_first_converted_audio_has_left() -> None:
    """On a small CPU the next sentence's synthesis would compete with the conversion of the first block: the
    second piece goes to the speech upstream only once the first audio is out."""
    texts = sentences(3)
    speech = FakeSpeech(seconds=lambda index: 2.0)  # the hold's bound (0.25 s) is far away
    conversion = GatedConversion()
    pipeline = make_pipeline(speech, conversion)
    await feed(pipeline, texts)
    async with running(pipeline) as stream:
        first = asyncio.ensure_future(anext(stream))
        await settle(
            lambda: [len(s.requested) for s in speech.sessions],
            lambda: [s.sent_samples for s in conversion.sessions],
        )
        assert speech.session.requested == texts[:1]  # sentence 0 synthesized and sent; sentence 1 held back
        assert conversion.session.sent_samples == 2 * RATE
        conversion.first_out.set()
        chunk = await first
        assert samples(chunk).size and chunk.segment_index == 0
        await settle(lambda: len(speech.session.requested))
        assert speech.session.requested == texts
        rest = [c async for c in stream]
    assert_attribution([chunk, *rest], texts, CONVERSION_GAIN)
    assert_nothing_left_running()


async def test_the_hold_for_first_audio_is_bounded() -> None:
    """A first block that takes long to convert holds the second piece for at most the bound (and at most half the
    audio the first piece made), never for good."""
    texts = sentences(2)
    speech = FakeSpeech(seconds=lambda index: 0.3)  # bound: min(0.25 s, 0.15 s)
    conversion = GatedConversion()
    pipeline = make_pipeline(speech, conversion)
    await feed(pipeline, texts)
    async with running(pipeline) as stream:
        first = asyncio.ensure_future(anext(stream))
        await settle(lambda: [len(s.requested) for s in speech.sessions])
        assert speech.session.requested == texts[:1]
        await asyncio.sleep(0.3)  # past the bound: no first audio yet, but the second piece went
        assert speech.session.requested == texts
        assert not first.done()
        conversion.first_out.set()
        chunks = [await first, *[c async for c in stream]]
    assert_attribution(chunks, texts, CONVERSION_GAIN)
    assert_nothing_left_running()
