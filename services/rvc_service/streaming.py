"""Block-wise streaming conversion with left context and a SOLA crossfade at block seams.

Audio arrives as the TTS produces it, in pieces of any size. ``SolaStitcher`` (pure numpy, no I/O) cuts the input
into windows ``[left context | block | look-ahead]``; each window is converted on its own (a pool job), and the
stitcher keeps only the part of the output that belongs to the block:

* left context gives the engine (F0 tracker, content encoder, vocoder) history, so a block's start sounds like the
  middle of an utterance rather than a cold start;
* the look-ahead (crossfade + search samples) is converted twice, at the end of one window and the start of the
  next. SOLA picks the offset in a short search window where the new output best matches the previous block's tail
  (normalized cross-correlation), then crossfades over that overlap, so seams have neither clicks nor phase jumps;
* positions are tracked in absolute input samples and mapped to output samples by rounding, so the output length
  equals ``input_seconds * out_rate`` minus at most the search window, however the input was split.

A flush (or the end of input) converts everything buffered in one last window, look-ahead included. After a mid-
stream flush the next block starts without a crossfade partner (its left context still makes it continuous in
content); flushes come at sentence ends, where the signal is usually near silence.

``ConversionStream`` drives a stitcher through the worker pool for one Convert call: it resamples the client's audio
to the engine's rate, runs each window as a pool job keyed by the stream (so its blocks run in order), resamples the
result to the requested rate, encodes it and builds sequence-numbered ``AudioChunk`` messages.
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from services.common import tracing
from services.common.audio import AudioEncoder, StreamResampler, make_encoder
from services.common.chunks import ChunkSequencer, synthesis_summary
from services.rvc_service.pool import CancelToken, WorkerPool
from voice.v1 import audio_pb2

# A window's conversion: (input at the engine's input rate, leading context samples, cancel token) -> the output of
# audio[context:] only, at the engine's output rate (the shape of RvcModel.convert_block).
ConvertFn = Callable[[NDArray[np.float32], int, CancelToken], NDArray[np.float32]]


@dataclass(frozen=True)
class BlockSettings:
    block_s: float = 0.5  # new audio per window; latency is about block + look-ahead
    context_s: float = 0.5  # left context converted with each block and then discarded
    crossfade_s: float = 0.04  # SOLA crossfade length at each seam
    search_s: float = 0.015  # SOLA search range: at least one period of the lowest F0 (~67 Hz)
    min_window_s: float = 0.1  # shorter windows (tiny final pieces) are zero-padded for the engine
    # The stream's first block (None: block_s). A short first block lets the first converted audio leave early;
    # each next block is `block_growth` times longer up to block_s, where the per-window overhead is amortized.
    first_block_s: float | None = None
    block_growth: float = 2.0

    def validate(self) -> BlockSettings:
        if not (self.block_s > 0 and self.context_s >= 0 and self.crossfade_s >= 0 and self.search_s >= 0):
            raise ValueError(f"invalid block settings: {self}")
        first = self.block_s if self.first_block_s is None else self.first_block_s
        if self.crossfade_s + self.search_s >= min(first, self.block_s):
            raise ValueError("crossfade + search must be shorter than a block (the first one included)")
        if self.block_growth < 1.0:
            raise ValueError("block_growth must be at least 1")
        return self


@dataclass(frozen=True)
class Window:
    """One piece of input to convert: ``audio`` = context + new samples (+ look-ahead), zero-padded by ``pad``."""

    index: int
    audio: NDArray[np.float32]
    start: int  # absolute input sample of audio[0]
    emit_from: int  # absolute input sample where this window's committed output begins
    advance_to: int  # absolute input sample up to which output is committed after this window
    final: bool  # converts everything buffered (flush or end of input)
    pad: int  # zeros appended to reach the engine's minimum length

    @property
    def new_samples(self) -> int:
        return self.advance_to - self.emit_from

    @property
    def context(self) -> int:
        """Leading samples of ``audio`` that are context only (the engine converts but does not return them)."""
        return self.emit_from - self.start


def best_offset(search: NDArray[np.floating[Any]], reference: NDArray[np.floating[Any]]) -> int:
    """Offset k in [0, len(search) - len(reference)] where search[k:k+n] best matches reference (normalized
    cross-correlation, so a louder stretch does not win just by energy)."""
    n = reference.size
    if n == 0 or search.size < n:
        return 0
    num = np.correlate(search.astype(np.float64), reference.astype(np.float64), mode="valid")
    energy = np.cumsum(np.concatenate(([0.0], search.astype(np.float64) ** 2)))
    den = np.sqrt(energy[n:] - energy[:-n]) + 1e-8
    return int(np.argmax(num / den))


class SolaStitcher:
    """Per-stream DSP state: feed input, take windows to convert, hand back converted windows, get output."""

    def __init__(self, in_rate: int, out_rate: int, settings: BlockSettings | None = None) -> None:
        self.in_rate = in_rate
        self.out_rate = out_rate
        self.settings = (settings or BlockSettings()).validate()
        s = self.settings
        self._ratio = out_rate / in_rate
        self.block_in = max(1, round(s.block_s * in_rate))
        first = s.block_s if s.first_block_s is None else s.first_block_s
        self.first_block_in = max(1, min(self.block_in, round(first * in_rate)))
        self._block_now = self.first_block_in  # grows toward block_in window by window
        self.context_in = round(s.context_s * in_rate)
        self.crossfade_out = round(s.crossfade_s * out_rate)
        self.search_out = round(s.search_s * out_rate)
        # Input samples whose output covers the crossfade tail plus the search range (+1 for rounding).
        self.lookahead_in = math.ceil((self.crossfade_out + self.search_out) / self._ratio) + 1
        self.min_window_in = round(s.min_window_s * in_rate)
        fade = np.sin(0.5 * np.pi * (np.arange(self.crossfade_out) + 0.5) / max(1, self.crossfade_out)) ** 2
        self._fade_in = fade.astype(np.float32)  # sin² in + cos² out sum to 1: no level dip for aligned signals
        self._buf = np.zeros(0, dtype=np.float32)
        self._buf_start = 0  # absolute input index of _buf[0]
        self._emitted = 0  # absolute input index up to which output is committed
        self._tail: NDArray[np.float32] | None = (
            None  # previous window's output just past its block: the crossfade partner
        )
        self._next_index = 0
        self.output_samples = 0

    @property
    def received(self) -> int:
        return self._buf_start + self._buf.size

    @property
    def pending(self) -> int:
        """Input samples received but not yet committed to output."""
        return self.received - self._emitted

    def feed(self, samples: NDArray[np.floating[Any]]) -> None:
        if samples.size:
            self._buf = np.concatenate((self._buf, np.asarray(samples, dtype=np.float32).reshape(-1)))

    def next_window(self, *, final: bool = False) -> Window | None:
        """The next window to convert, or None until enough input arrived (``final``: whatever is buffered)."""
        if final:
            if self.pending <= 0:
                return None
            end = advance_to = self.received
        else:
            if self.pending < self._block_now + self.lookahead_in:
                return None
            advance_to = self._emitted + self._block_now
            end = advance_to + self.lookahead_in
        start = max(self._buf_start, self._emitted - self.context_in)
        audio = self._buf[start - self._buf_start : end - self._buf_start]
        pad = max(0, self.min_window_in - audio.size)
        if pad:
            audio = np.concatenate((audio, np.zeros(pad, dtype=np.float32)))
        window = Window(self._next_index, audio.copy(), start, self._emitted, advance_to, final, pad)
        self._next_index += 1
        return window

    def release(self) -> None:
        """Drop the buffered audio (the stream is over); the stitcher must not be fed again."""
        self._buf = np.zeros(0, dtype=np.float32)
        self._tail = None

    def _out_pos(self, input_pos: int) -> int:
        return round(input_pos * self._ratio)

    def accept(self, window: Window, converted: NDArray[np.floating[Any]]) -> NDArray[np.float32]:
        """Stitch a converted window onto the stream; returns the output samples now final."""
        if window.emit_from != self._emitted:
            raise RuntimeError("windows must be accepted in the order they were taken")
        region = np.asarray(converted, dtype=np.float32).reshape(-1)
        # `converted` is the output of audio[context:]. Engines may round their frame count; pin it to the length
        # the input implies, dropping the output of the zero padding.
        expected = self._out_pos(window.start + window.audio.size - window.pad) - self._out_pos(window.emit_from)
        if region.size < expected:
            region = np.concatenate((region, np.zeros(expected - region.size, dtype=np.float32)))
        region = region[:expected]
        offset = 0
        tail = self._tail
        if tail is not None and tail.size and region.size >= tail.size + self.search_out:
            offset = best_offset(region[: tail.size + self.search_out], tail)
        if window.final:
            out = region[offset:].copy()
            self._tail = None
        else:
            n_emit = self._out_pos(window.advance_to) - self._out_pos(window.emit_from)
            out = region[offset : offset + n_emit].copy()
            self._tail = region[offset + n_emit : offset + n_emit + self.crossfade_out].copy()
            grown = max(self._block_now + 1, round(self._block_now * self.settings.block_growth))
            self._block_now = min(self.block_in, grown)
        if tail is not None and tail.size:
            n = min(tail.size, out.size)
            fade_in = self._fade_in[:n] if n == self.crossfade_out else _fade(n)
            out[:n] = tail[:n] * (1.0 - fade_in) + out[:n] * fade_in
        self._emitted = window.advance_to
        keep_from = max(self._buf_start, self._emitted - self.context_in)
        self._buf = self._buf[keep_from - self._buf_start :]
        self._buf_start = keep_from
        self.output_samples += out.size
        return out


def _fade(n: int) -> NDArray[np.float32]:
    fade: NDArray[np.float32] = (np.sin(0.5 * np.pi * (np.arange(n) + 0.5) / max(1, n)) ** 2).astype(np.float32)
    return fade


@dataclass(frozen=True)
class EngineRates:
    input_hz: int  # rate the engine wants its input at
    output_hz: int  # rate the engine produces


class ConversionStream:
    """One Convert call's conversion state: input resampler, stitcher, pool jobs, output resampler, encoder."""

    def __init__(
        self,
        *,
        pool: WorkerPool,
        convert: ConvertFn,
        model: str,
        key: str,
        request_id: str,
        input_rate: int,
        engine: EngineRates,
        output_encoding: int,
        output_rate: int,
        settings: BlockSettings | None = None,
        token: CancelToken | None = None,
        on_job: Callable[[float, float], None] | None = None,
        engine_name: str = "",
        share: str | None = None,
        time_remaining: Callable[[], float | None] | None = None,
    ) -> None:
        """``on_job(run_seconds, audio_seconds)`` is told about every finished window (the admission estimator).
        ``share``: whose turn the blocks take in the pool (None: the model's); ``time_remaining``: what is left of the
        call's deadline, so the pool refuses a block that could not finish in time instead of queueing it."""
        self.share = share
        self.time_remaining = time_remaining
        self.pool = pool
        self.on_job = on_job
        self.convert = convert
        self.model = model
        self.engine_name = engine_name
        self.key = key
        self.request_id = request_id
        self.input_rate = input_rate
        self.engine = engine
        self.output_rate = output_rate
        self.token = token if token is not None else CancelToken()
        self.stitcher = SolaStitcher(engine.input_hz, engine.output_hz, settings)
        self._in_resampler = StreamResampler(input_rate, engine.input_hz)
        self._out_resampler = StreamResampler(engine.output_hz, output_rate)
        self.encoder: AudioEncoder = make_encoder(output_encoding, output_rate)
        self.chunks = ChunkSequencer(request_id, output_encoding, output_rate)
        self.format = self.chunks.format
        self.started = time.perf_counter()
        self.first_audio_at: float | None = None
        self.conversion_seconds = 0.0
        self.blocks = 0
        self.received_samples = 0  # client samples, at input_rate
        self._closed = False

    @property
    def samples_sent(self) -> int:
        """Output samples handed out so far (at ``output_rate``)."""
        return self.chunks.samples_sent

    async def _run_window(self, window: Window) -> NDArray[np.float32]:
        with tracing.span("conversion block", self._block_attributes(window)) as block_span:
            result = await self.pool.run(
                lambda token: self.convert(window.audio, window.context, token),
                model=self.model,
                key=self.key,
                token=self.token,
                audio_seconds=window.new_samples / self.engine.input_hz,
                share=self.share,
                deadline_s=self.time_remaining() if self.time_remaining is not None else None,
            )
            block_span.set_attribute("conversion.worker", result.worker)
            block_span.set_attribute("conversion.queue_wait_ms", result.wait_seconds * 1000)
            block_span.set_attribute("conversion.run_ms", result.run_seconds * 1000)
            self.conversion_seconds += result.run_seconds
            self.blocks += 1
            if self.on_job is not None and window.new_samples > 0:
                self.on_job(result.run_seconds, window.new_samples / self.engine.input_hz)
            return self.stitcher.accept(window, result.value)

    def _block_attributes(self, window: Window) -> dict[str, str | int | bool]:
        return {
            "conversion.block.index": window.index,
            "conversion.block.samples": window.new_samples,  # new input at the engine's rate, context excluded
            "conversion.block.window_samples": window.audio.size,
            "conversion.block.final": window.final,
            "conversion.model": self.model,
            "conversion.engine": self.engine_name,
            "conversion.request_id": self.request_id,
        }

    def _chunk(self, samples: NDArray[np.float32], *, block: int) -> audio_pb2.AudioChunk:
        chunk = self.chunks.chunk(self.encoder.encode(samples), samples.size, segment_index=block)
        if self.first_audio_at is None and samples.size:
            self.first_audio_at = time.perf_counter()
        return chunk

    async def _drain(self, *, final: bool) -> AsyncIterator[audio_pb2.AudioChunk]:
        while (window := self.stitcher.next_window()) is not None:
            out = self._out_resampler.process(await self._run_window(window))
            if out.size:
                yield self._chunk(out, block=window.index)
        if final:
            window = self.stitcher.next_window(final=True)
            block = window.index if window is not None else max(0, self.blocks - 1)
            out = await self._run_window(window) if window is not None else np.zeros(0, dtype=np.float32)
            out = np.concatenate((self._out_resampler.process(out), self._out_resampler.flush()))
            # A later block needs fresh resampler state; the flushed one has been drained.
            self._out_resampler = StreamResampler(self.engine.output_hz, self.output_rate)
            if out.size:
                yield self._chunk(out, block=block)

    def push(self, samples: NDArray[np.floating[Any]]) -> AsyncIterator[audio_pb2.AudioChunk]:
        """Add client audio (at ``input_rate``); yields a chunk per block as soon as it is converted."""
        self.received_samples += samples.size
        self.stitcher.feed(self._in_resampler.process(samples))
        return self._drain(final=False)

    def flush(self) -> AsyncIterator[audio_pb2.AudioChunk]:
        """Convert and yield everything buffered (the stream stays open)."""
        self.stitcher.feed(self._in_resampler.flush())
        self._in_resampler = StreamResampler(self.input_rate, self.engine.input_hz)
        return self._drain(final=True)

    async def finish(self) -> AsyncIterator[audio_pb2.AudioChunk]:
        """End of input: flush, then a final chunk with the encoder's trailer and the summary."""
        async for chunk in self.flush():
            yield chunk
        trailer = self.encoder.finish()
        self._closed = True
        final = self.chunks.chunk(trailer, 0, segment_index=max(0, self.blocks - 1), is_final=True)
        final.summary.CopyFrom(
            synthesis_summary(
                audio_seconds=self.chunks.seconds_sent,
                total_seconds=time.perf_counter() - self.started,
                first_audio_seconds=(self.first_audio_at or time.perf_counter()) - self.started,
                segment_count=self.blocks,
                conversion_seconds=self.conversion_seconds,
            )
        )
        yield final

    def close(self) -> None:
        """End of the call (finished or abandoned): stop its jobs and release the encoder, the buffered audio and
        the resamplers' filter state. What the call's frames keep alive after it ended (a reference cycle there
        lasts until a full garbage collection) is then a few small objects, not audio buffers."""
        self.token.cancel("stream closed")
        if not self._closed:
            self._closed = True
            self.encoder.close()
        self.stitcher.release()
        self._in_resampler = StreamResampler(self.input_rate, self.input_rate)  # identity: holds no soxr state
        self._out_resampler = StreamResampler(self.output_rate, self.output_rate)
