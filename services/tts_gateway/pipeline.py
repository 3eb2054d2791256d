"""The synthesis pipeline of one request: text pieces -> Triton -> (voice conversion) -> encoder -> AudioChunks.

Stages run as tasks joined by bounded pipes, so they overlap (Triton works on piece k+1 while conversion works on
piece k while piece k-1 goes out) and a slow client stalls the stages upstream of it instead of growing memory:

    pieces ──▶ [tts task] ──tts_out──▶ [conversion writer] ─▶ RVC Convert ─▶ [conversion reader] ──conv_out──▶ output

Any stage failing closes every pipe with its error, which the output loop raises; cancelling the pipeline (client
cancel, deadline) cancels the tasks, and the tasks' `finally` blocks cancel the Triton and conversion calls.

In incremental text-input mode (plan.incremental_text) the tts task reads `deltas` instead of `pieces`: text deltas
as the client wrote them, None where the client flushed. Each utterance (the text up to a flush or the end) is one
model session and one segment; deltas that queue up while the model works on a request go out joined, as one
increment.

The two upstreams are protocols (upstream_protocols.py): the pipeline knows nothing of gRPC or Triton.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import numpy as np
import numpy.typing as npt

from services.common import tracing
from services.common.audio import StreamResampler, make_encoder
from services.common.chunks import ChunkSequencer, synthesis_summary
from services.tts_gateway.metrics import TEXT_INCREMENTS, LatencyWindows
from services.tts_gateway.plan import SynthesisPlan
from services.tts_gateway.text import is_pronounceable, normalize
from services.tts_gateway.upstream_protocols import ConversionSession, ConversionUpstream, SpeechUpstream
from voice.v1 import audio_pb2

T = TypeVar("T")
PIPE_DEPTH = 4  # blocks buffered between two stages; each is at most one sentence of audio
MAX_CHUNK_SECONDS = 0.5  # output chunks are cut to at most this much audio, for smooth client playback
# No chunk but a stream's last is shorter than this: slivers cost a message each and help no player. Audio is split
# into equal parts instead (0.5 s + 1 ms becomes two chunks of 0.25 s) and a tiny block waits for the next one.
MIN_CHUNK_SECONDS = 0.02
# Converted audio within this much of a segment's end counts as the whole segment (SOLA may trim a few ms).
_CONVERSION_SLACK_S = 0.05
# With a conversion, the second piece goes to the speech upstream once the first audio has left, or after this long
# at most (and never longer than half the audio the first piece produced, so a listener never waits on the hold). On
# a small CPU the next sentence's synthesis would otherwise compete with the conversion of the first block (the
# speech model takes every core), delaying the first converted audio by about as long as that conversion takes.
FIRST_AUDIO_HOLD_S = 0.25


class PipeClosed(Exception):
    """put() on a pipe that was closed (downstream failed or was cancelled)."""


class Pipe(Generic[T]):
    """A bounded async FIFO that can be closed normally (readers see the end) or with an error (readers get it).

    With `deliver_buffered`, a reader still gets the items put before the error, then the error: the pipe that feeds
    the client holds audio already produced, which the listener should hear before the stream fails. Pipes that
    feed work (text to synthesize, audio to convert) fail at once instead, so no new upstream work starts."""

    def __init__(self, maxsize: int, *, deliver_buffered: bool = False) -> None:
        self._items: collections.deque[T] = collections.deque()
        self._maxsize = maxsize
        self._deliver_buffered = deliver_buffered
        self._cond = asyncio.Condition()
        self._closed = False
        self._error: BaseException | None = None

    async def put(self, item: T) -> None:
        async with self._cond:
            await self._cond.wait_for(lambda: self._closed or len(self._items) < self._maxsize)
            if self._closed:
                raise PipeClosed
            self._items.append(item)
            self._cond.notify_all()

    async def close(self, error: BaseException | None = None) -> None:
        async with self._cond:
            if error is not None and self._error is None:
                self._error = error
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed

    async def take_all(self, *, wait: bool = True) -> list[T]:
        """Every item queued now, at once. With `wait`, waits for one first and returns [] only once the pipe has
        ended; without, returns [] whenever none is queued. Raises the pipe's error as iteration does."""
        async with self._cond:
            if wait:
                await self._cond.wait_for(lambda: bool(self._items) or self._closed)
            if self._error is not None and not (self._deliver_buffered and self._items):
                raise self._error
            items = list(self._items)
            self._items.clear()
            self._cond.notify_all()
        return items

    # The pipe is its own iterator (one reader per pipe), not an async generator: a reader that stops early leaves
    # nothing suspended behind for the garbage collector to finalize on the event loop.
    def __aiter__(self) -> Pipe[T]:
        return self

    async def __anext__(self) -> T:
        async with self._cond:
            await self._cond.wait_for(lambda: bool(self._items) or self._closed)
            if self._error is not None and not (self._deliver_buffered and self._items):
                raise self._error
            if not self._items:
                raise StopAsyncIteration
            item = self._items.popleft()
            self._cond.notify_all()
        return item


@dataclass
class Block:
    """Audio of one segment (possibly part of it); `end` marks the segment's last block (audio may be empty)."""

    segment: int
    text: str
    audio: npt.NDArray[np.float32]
    end: bool = False


class DeltaReader:
    """The incremental text input of one request: text deltas, None where an utterance ends (a Flush)."""

    def __init__(self, source: Pipe[str | None], on_increment: Callable[[], None] = lambda: None) -> None:
        self._source = source
        self._ready: collections.deque[str | None] = collections.deque()  # read from the pipe, not taken yet
        self._ended = False  # the pipe ended: no more text
        self.on_increment = on_increment

    async def _read(self, *, wait: bool) -> None:
        if not self._ended:
            self._ready.extend(await self._source.take_all(wait=wait))
            self._ended = not self._ready and self._source.closed

    async def next_utterance(self) -> Utterance | None:
        """The next utterance with something to say, beginning with the deltas up to its first pronounceable one;
        None once the text has ended. An utterance with nothing pronounceable (flushed whitespace, punctuation) is
        skipped: it never reaches the model."""
        held: list[str] = []
        while True:
            while self._ready:
                item = self._ready.popleft()
                if item is None:
                    held.clear()
                    continue
                held.append(item)
                if is_pronounceable(item):
                    return Utterance(self, "".join(held))
            if self._ended:
                return None
            await self._read(wait=True)

    async def next_increment(self, *, wait: bool) -> tuple[list[str], bool]:
        """Every delta that has arrived, up to the end of the current utterance, and whether it ended. With `wait`,
        waits for a delta (or the end) when none has arrived."""
        await self._read(wait=False)
        parts: list[str] = []
        while True:
            while self._ready:
                item = self._ready.popleft()
                if item is None:
                    return parts, True
                parts.append(item)
            if self._ended:
                return parts, True
            if parts or not wait:
                return parts, False
            await self._read(wait=True)


class Utterance:
    """One utterance of incremental text (upstream_protocols.TextIncrements): `text` is what was taken so far."""

    def __init__(self, reader: DeltaReader, first: str) -> None:
        self._reader = reader
        self._pending = [first]
        self.text = ""
        self.ended = False

    async def take(self) -> tuple[str, bool]:
        parts, self._pending = self._pending, []
        if not self.ended:
            more, self.ended = await self._reader.next_increment(wait=not parts)
            parts += more
        increment = "".join(parts)
        self.text += increment
        if increment:
            self._reader.on_increment()
        return increment, self.ended


@dataclass
class Totals:
    segments: int = 0
    texts: list[str] = field(default_factory=list)
    tts_s: float = 0.0
    conversion_s: float = 0.0
    first_audio_s: float | None = None


@dataclass
class ConversionProgress:
    """What the conversion writer tells the conversion reader, so converted audio can be attributed to its segment
    and timed: where each segment ends in the input, and since when conversion has work outstanding."""

    segment_ends: list[tuple[int, float]] = field(default_factory=list)  # (input samples, when flushed)
    texts: dict[int, str] = field(default_factory=dict)
    sent: int = 0  # input samples sent
    busy_since: float | None = None  # first send not yet matched by output


class SynthesisPipeline:
    """Runs one request. Feed text pieces into `pieces` (then close it), `start()`, iterate `chunks()` for the output
    and `aclose()` at the end. `converter` is needed when the plan has a conversion."""

    def __init__(
        self,
        plan: SynthesisPlan,
        speech: SpeechUpstream,
        converter: ConversionUpstream | None,
        windows: LatencyWindows,
        *,
        started_at: float | None = None,
        pipe_depth: int = PIPE_DEPTH,
    ) -> None:
        self.plan = plan
        self.speech = speech
        self.converter = converter
        self.windows = windows
        # TTFA counts from the request (or, for streaming input, the first text): the caller may reset it.
        self.started_at = started_at if started_at is not None else time.perf_counter()
        self.pieces: Pipe[str] = Pipe(1 << 30)  # text is small; its size is capped at validation
        # Incremental text input (plan.incremental_text): the client's deltas, None where an utterance ends.
        self.deltas: Pipe[str | None] = Pipe(1 << 30)
        converted = plan.conversion is not None
        self._tts_out: Pipe[Block] = Pipe(pipe_depth, deliver_buffered=not converted)
        self._conv_out: Pipe[Block] = Pipe(pipe_depth, deliver_buffered=True)
        self._tasks: list[asyncio.Task[None]] = []
        self._pipes: list[Pipe[Block] | Pipe[str] | Pipe[str | None]] = [
            self.pieces,
            self.deltas,
            self._tts_out,
            self._conv_out,
        ]
        self.totals = Totals()
        self.on_first_audio: Callable[[float], None] | None = None
        self._first_audio_out = asyncio.Event()  # the first chunk with audio has been handed out
        self.audio_seconds = 0.0  # audio handed out so far
        self.streamed_input = False  # text arrives over time (StreamingSynthesize): waiting for it is not work

    # ---- stages ----------------------------------------------------------------------------------------------

    async def fail(self, error: BaseException) -> None:
        for pipe in self._pipes:
            await pipe.close(error)

    def _spawn(self, name: str, coro_fn: Callable[[], object]) -> None:
        async def runner() -> None:
            try:
                await coro_fn()  # type: ignore[misc]
            except PipeClosed:
                pass  # a later stage failed or finished early; its error is already in the pipes
            except asyncio.CancelledError:
                raise
            except BaseException as exc:
                await self.fail(exc)

        self._tasks.append(asyncio.create_task(runner(), name=f"{name}:{self.plan.request_id}"))

    async def _tts_stage(self) -> None:
        session = self.speech.open(self.plan.voice.model, self.plan.request_id)
        rate = self.plan.voice.model.sample_rate_hz
        first_audio_at: float | None = None  # when Triton's first audio for this request arrived
        produced_s = 0.0
        try:
            segment = 0
            async for piece in self.pieces:
                if segment == 1 and self.plan.conversion is not None:
                    await self._hold_for_first_audio(produced_s)
                with tracing.span("sentence", self._sentence_attributes(segment, piece)) as sentence_span:
                    sent = time.perf_counter()
                    # Audio the listener still has if playback began at the first response: the model schedules our
                    # next sentence behind streams whose listeners are closer to running dry.
                    ahead = None if first_audio_at is None else max(0.0, produced_s - (sent - first_audio_at))
                    busy_before = session.busy_s
                    first = True
                    samples = 0
                    # aclosing: when a later stage fails while this piece is mid-way, the upstream iteration ends
                    # now (its cleanup runs), not whenever the generator is garbage-collected.
                    parts = session.synthesize(piece, self.plan.tts_inputs, playback_ahead_s=ahead)
                    async with contextlib.aclosing(parts):
                        async for audio in parts:
                            if first:
                                self.windows.observe("tts_first_audio", time.perf_counter() - sent)
                                first = False
                            if first_audio_at is None:
                                first_audio_at = time.perf_counter()
                            produced_s += audio.size / rate
                            samples += audio.size
                            await self._tts_out.put(Block(segment, piece, audio))
                    sentence_span.set_attribute("tts.audio_seconds", samples / rate)
                    self.windows.observe("tts_segment", session.busy_s - busy_before)
                    self.totals.tts_s = session.busy_s
                    self.totals.segments = segment + 1
                    self.totals.texts.append(piece)
                    await self._tts_out.put(Block(segment, piece, np.zeros(0, np.float32), end=True))
                segment += 1
            await session.close()
            await self._tts_out.close()
        finally:
            session.cancel()

    async def _hold_for_first_audio(self, produced_s: float) -> None:
        """Wait (bounded) until the first audio has left before the speech upstream starts the second piece."""
        limit = min(FIRST_AUDIO_HOLD_S, produced_s / 2)
        if self._first_audio_out.is_set() or limit <= 0:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._first_audio_out.wait(), limit)

    async def _incremental_tts_stage(self) -> None:
        """Text-input streaming: each utterance is one upstream session and one segment, its audio possibly
        starting before its text is complete."""
        session = self.speech.open(self.plan.voice.model, self.plan.request_id)
        rate = self.plan.voice.model.sample_rate_hz
        increments = TEXT_INCREMENTS.labels(self.plan.voice.name)
        reader = DeltaReader(self.deltas, on_increment=increments.inc)
        try:
            segment = 0
            while (utterance := await reader.next_utterance()) is not None:
                with tracing.span("utterance", self._sentence_attributes(segment, "")) as span:
                    busy_before = session.busy_s
                    samples = 0
                    parts = session.stream_utterance(utterance, self.plan.tts_inputs)
                    async with contextlib.aclosing(parts):
                        async for audio in parts:
                            samples += audio.size
                            # The segment's text so far: a chunk's segment_text is the text spoken up to it.
                            await self._tts_out.put(Block(segment, utterance.text, audio))
                    span.set_attribute("tts.audio_seconds", samples / rate)
                    span.set_attribute("tts.sentence.chars", len(utterance.text))
                    self.windows.observe("tts_segment", session.busy_s - busy_before)
                    self.totals.tts_s = session.busy_s
                    self.totals.segments = segment + 1
                    self.totals.texts.append(utterance.text)
                    await self._tts_out.put(Block(segment, utterance.text, np.zeros(0, np.float32), end=True))
                segment += 1
            await session.close()
            await self._tts_out.close()
        finally:
            session.cancel()

    def _sentence_attributes(self, segment: int, piece: str) -> dict[str, str | int]:
        voice = self.plan.voice
        return {
            "tts.sentence.index": segment,
            "tts.sentence.chars": len(piece),
            "tts.voice": voice.name,
            "tts.model": voice.model.name,
            "tts.request_id": self.plan.request_id,
        }

    async def _conversion_stage(self) -> None:
        plan, settings = self.plan, self.plan.conversion
        assert self.converter is not None and settings is not None
        session = self.converter.open(plan.request_id, settings, plan.tts_rate, plan.output_rate)
        progress = ConversionProgress()

        async def read_all() -> None:
            # A failed conversion call must fail the request now, not when the writer next looks at the reader: the
            # writer may be waiting on Triton (which would go on synthesizing for a dead stream) or writing into a
            # call that has already ended.
            try:
                await self._conversion_reader(session, progress)
            except (asyncio.CancelledError, PipeClosed):
                raise
            except BaseException as exc:
                await self.fail(exc)
                raise

        try:
            await session.start()
            reader = asyncio.create_task(read_all())
            try:
                async for block in self._tts_out:
                    progress.texts.setdefault(block.segment, block.text)
                    if block.audio.size:
                        if progress.busy_since is None:
                            progress.busy_since = time.perf_counter()
                        await session.send(block.audio)
                        progress.sent += block.audio.size
                    if block.end:
                        progress.segment_ends.append((progress.sent, time.perf_counter()))
                        await session.flush()
                await session.finish()
                await reader
            finally:
                if not reader.done():
                    reader.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await reader
                elif not reader.cancelled():
                    reader.exception()  # its failure already failed the pipeline (read_all): mark it as seen
        finally:
            session.cancel()

    async def _conversion_reader(self, session: ConversionSession, progress: ConversionProgress) -> None:
        ratio = self.plan.output_rate / self.plan.tts_rate
        slack = int(_CONVERSION_SLACK_S * self.plan.output_rate)

        def output_end(input_samples: int) -> int:
            """Where converted audio of this much input ends, in output samples, less the SOLA slack."""
            return round(input_samples * ratio) - slack

        received = 0
        timed = 0  # segments whose conversion latency was recorded
        while True:
            audio = await session.read()
            if audio is None:
                break
            if not audio.size:
                continue
            # The segment this audio belongs to: the first whose end (in output samples) lies beyond its start.
            segment = sum(1 for end, _ in progress.segment_ends if output_end(end) <= received)
            received += audio.size
            await self._conv_out.put(Block(segment, progress.texts.get(segment, ""), audio))
            now = time.perf_counter()
            ends = progress.segment_ends
            while timed < len(ends) and received >= output_end(ends[timed][0]):
                self.windows.observe("conversion_block", now - ends[timed][1])
                timed += 1
            if progress.busy_since is not None and received >= output_end(progress.sent):
                self.totals.conversion_s += now - progress.busy_since
                progress.busy_since = None
        if progress.busy_since is not None:
            self.totals.conversion_s += time.perf_counter() - progress.busy_since
            progress.busy_since = None
        await self._conv_out.close()

    # ---- output ----------------------------------------------------------------------------------------------

    def start(self) -> None:
        self._spawn("tts", self._incremental_tts_stage if self.plan.incremental_text else self._tts_stage)
        if self.plan.conversion is not None:
            self._spawn("conversion", self._conversion_stage)

    async def chunks(self) -> AsyncIterator[audio_pb2.AudioChunk]:
        """Encoded, ordered chunks; the last has is_final and the summary."""
        plan = self.plan
        converted = plan.conversion is not None
        source = self._conv_out if converted else self._tts_out
        resampler = StreamResampler(plan.output_rate if converted else plan.tts_rate, plan.output_rate)
        encoder = make_encoder(plan.encoding, plan.output_rate)
        sequencer = ChunkSequencer(plan.request_id, plan.encoding, plan.output_rate)
        max_samples = int(MAX_CHUNK_SECONDS * plan.output_rate)
        min_samples = max(1, int(MIN_CHUNK_SECONDS * plan.output_rate))
        pending_bytes = b""
        segment, text = 0, ""
        held = np.zeros(0, dtype=np.float32)  # resampled audio too short for a chunk of its own yet

        def next_chunk(data: bytes, *, final: bool) -> audio_pb2.AudioChunk:
            samples = encoder.samples_encoded - sequencer.samples_sent
            chunk = sequencer.chunk(data, samples, segment_index=segment, segment_text=text, is_final=final)
            self.audio_seconds = sequencer.seconds_sent
            if samples:
                self._note_first_audio()
            return chunk

        try:
            async for block in source:
                if block.end or not block.audio.size:
                    continue
                segment, text = block.segment, block.text
                out = resampler.process(block.audio)
                if held.size:
                    out = np.concatenate((held, out))
                if out.size < min_samples:
                    held = out
                    continue
                held = np.zeros(0, dtype=np.float32)
                for part in np.array_split(out, -(-out.size // max_samples)):
                    pending_bytes += encoder.encode(part)
                    if not pending_bytes:
                        continue  # Opus holds back partial frames; their samples ride on a later chunk
                    chunk = next_chunk(pending_bytes, final=False)
                    pending_bytes = b""
                    yield chunk
            pending_bytes += encoder.encode(np.concatenate((held, resampler.flush())))
            pending_bytes += encoder.finish()
            final = next_chunk(pending_bytes, final=True)
            final.summary.CopyFrom(self.summary(sequencer.samples_sent))
            yield final
        finally:
            encoder.close()

    def audio_ahead_s(self) -> float:
        """Audio handed out that a listener who started playing at the first chunk has not played yet."""
        if self.totals.first_audio_s is None:
            return 0.0
        return self.audio_seconds - (time.perf_counter() - self.started_at - self.totals.first_audio_s)

    def _note_first_audio(self) -> None:
        if self.totals.first_audio_s is None:
            self.totals.first_audio_s = time.perf_counter() - self.started_at
            self._first_audio_out.set()
            if self.on_first_audio is not None:
                self.on_first_audio(self.totals.first_audio_s)

    def summary(self, samples: int) -> audio_pb2.SynthesisSummary:
        return synthesis_summary(
            audio_seconds=samples / self.plan.output_rate,
            total_seconds=time.perf_counter() - self.started_at,
            first_audio_seconds=self.totals.first_audio_s or 0.0,
            segment_count=self.totals.segments,
            processed_text=normalize(" ".join(self.totals.texts)),  # no space between CJK sentences
            tts_seconds=self.totals.tts_s,
            conversion_seconds=self.totals.conversion_s,
        )

    async def aclose(self) -> None:
        """Cancel every stage (and with them the upstream calls) and wait until they are gone."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for pipe in self._pipes:
            await pipe.close()

    def cancel(self) -> None:
        """Synchronous cancel, for gRPC done callbacks."""
        for task in self._tasks:
            task.cancel()
