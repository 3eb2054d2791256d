"""Synthesis over HTTP: open a Synthesize call (errors before audio become HTTP statuses), stream its audio as a
chunked body that cancels the call when the client leaves, or collect it whole; the timing headers."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from fastapi.responses import Response
from starlette.types import Receive, Scope, Send

from services.common.durations import seconds_from_duration
from services.common.request_id import REQUEST_ID_METADATA_KEY
from services.http_edge import metrics
from services.http_edge.encode import OutputFormat, StreamEncoder
from services.http_edge.errors import EdgeError, from_rpc_error
from services.http_edge.upstream import Metadata
from voice.v1 import audio_pb2, tts_gateway_pb2, tts_gateway_pb2_grpc

log = logging.getLogger(__name__)


def ms(duration: Any) -> float:
    """A google.protobuf.Duration in milliseconds."""
    return seconds_from_duration(duration) * 1000


class AudioStream(Response):
    """A chunked body from an async iterator that also watches for the client going away: a disconnect cancels the
    body task at once (even while the gateway has not produced the next chunk), and `on_close` always runs, so the
    upstream call is cancelled deterministically. An error after the first byte aborts the connection: the body ends
    without its final chunk, which HTTP clients report as an incomplete read."""

    def __init__(
        self,
        chunks: AsyncIterator[bytes],
        on_close: Callable[[], Awaitable[None]],
        *,
        media_type: str,
        headers: dict[str, str],
        route: str,
    ) -> None:
        super().__init__(media_type=media_type, headers=headers)
        # Response sets Content-Length: 0 for an empty `content`; without one the server sends a chunked body.
        self.raw_headers = [(k, v) for k, v in self.raw_headers if k != b"content-length"]
        self.chunks = chunks
        self.on_close = on_close
        self.route = route

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        metrics.ACTIVE_STREAMS.labels(self.route).inc()
        try:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            body = asyncio.ensure_future(self._send_body(send))
            watcher = asyncio.ensure_future(_wait_disconnect(receive))
            try:
                done, _ = await asyncio.wait({body, watcher}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (body, watcher):
                    task.cancel()
                await asyncio.gather(body, watcher, return_exceptions=True)
            if body in done and not body.cancelled() and (exc := body.exception()) is not None:
                raise exc
        finally:
            metrics.ACTIVE_STREAMS.labels(self.route).dec()
            await self.on_close()

    async def _send_body(self, send: Send) -> None:
        async for chunk in self.chunks:
            if chunk:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _wait_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


class StreamBroken(Exception):
    """The gateway failed after audio had been sent: the only signal left is to end the body early."""


@dataclass
class OpenSynthesis:
    """A Synthesize call whose first chunk has arrived (so errors before audio already became HTTP statuses)."""

    call: Any
    first: audio_pb2.AudioChunk
    started: float
    first_audio_s: float
    summary: audio_pb2.SynthesisSummary | None = None

    @property
    def sample_rate(self) -> int:
        return int(self.first.format.sample_rate_hz)

    async def rest(self) -> AsyncIterator[audio_pb2.AudioChunk]:
        chunk = self.first
        while True:
            if chunk.is_final:
                self.summary = chunk.summary
            yield chunk
            if chunk.is_final:
                return
            try:
                message = await self.call.read()
            except grpc.aio.AioRpcError as error:
                raise StreamBroken(f"{error.code().name}: {error.details()}") from error
            if message is grpc.aio.EOF:
                return
            chunk = message

    async def audio(self) -> AsyncIterator[bytes]:
        """The audio bytes; a failure after the first byte is logged and ends the body early."""
        try:
            async for chunk in self.rest():
                yield chunk.audio
        except StreamBroken as error:
            log.warning("synthesis failed after the response began; ending the body early: %s", error)
            raise

    async def whole_pcm(self) -> bytes:
        """All the audio (the call ends here); a failure midway is the HTTP error of its status."""
        pcm = bytearray()
        try:
            async for chunk in self.rest():
                pcm += chunk.audio
        except StreamBroken as error:
            cause = error.__cause__
            raise (
                from_rpc_error(cause) if isinstance(cause, grpc.RpcError) else EdgeError(502, str(error), "unknown")
            ) from None
        finally:
            await self.cancel()
        return bytes(pcm)

    async def cancel(self) -> None:
        self.call.cancel()


async def start_synthesis(
    gateway: tts_gateway_pb2_grpc.TtsGatewayServiceStub,
    pb: tts_gateway_pb2.SynthesizeRequest,
    metadata: Metadata,
    deadline_s: float,
) -> OpenSynthesis:
    """Start a Synthesize call and wait for its first chunk: an error before audio becomes an EdgeError (HTTP
    status), one after it is the caller's to handle while streaming."""
    started = time.perf_counter()
    call = gateway.Synthesize(pb, metadata=metadata, timeout=deadline_s)
    try:
        first = await call.read()
    except grpc.aio.AioRpcError as error:
        raise from_rpc_error(error) from None
    except BaseException:
        call.cancel()
        raise
    if first is grpc.aio.EOF:
        raise EdgeError(502, "the gateway ended the stream without audio", "unknown")
    return OpenSynthesis(call, first, started, time.perf_counter() - started)


def stream_response(
    opened: OpenSynthesis, fmt: OutputFormat, request_id: str, route: str, extra: dict[str, str]
) -> AudioStream:
    """The synthesis as a chunked body in `fmt` (encoded here for MP3/AAC/FLAC)."""
    encoder = StreamEncoder(fmt, opened.sample_rate) if fmt.container else None

    async def body() -> AsyncIterator[bytes]:
        async for audio in opened.audio():
            yield audio if encoder is None else await asyncio.to_thread(encoder.encode, audio)
        if encoder is not None:
            yield await asyncio.to_thread(encoder.finish)

    async def close() -> None:
        await opened.cancel()
        if encoder is not None:
            encoder.close()

    headers = {
        "X-Sample-Rate": str(opened.sample_rate),
        REQUEST_ID_METADATA_KEY: request_id,
        "X-Time-To-First-Audio-Ms": f"{opened.first_audio_s * 1000:.1f}",
        "Cache-Control": "no-store",
        **extra,
    }
    return AudioStream(body(), close, media_type=fmt.content_type, headers=headers, route=route)


def timing_headers(
    *, ttfa_ms: float | None, tts_ms: float, conversion_ms: float, audio_s: float, total_ms: float
) -> dict[str, str]:
    headers = {
        "X-TTS-Time-Ms": f"{tts_ms:.1f}",
        "X-Conversion-Time-Ms": f"{conversion_ms:.1f}",
        "X-Audio-Seconds": f"{audio_s:.3f}",
    }
    timing = [f"tts;dur={tts_ms:.1f}", f"conversion;dur={conversion_ms:.1f}", f"total;dur={total_ms:.1f}"]
    if ttfa_ms is not None:
        headers["X-Time-To-First-Audio-Ms"] = f"{ttfa_ms:.1f}"
        timing.insert(0, f"ttfa;dur={ttfa_ms:.1f}")
    headers["Server-Timing"] = ", ".join(timing)
    return headers
