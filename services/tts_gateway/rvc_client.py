"""Client for voice.v1.VoiceConversionService: one Convert stream per gateway request, FLOAT32 both ways."""

from __future__ import annotations

import asyncio
import time
from typing import TypeAlias, cast

import grpc
import numpy as np
from numpy.typing import NDArray

from services.common import tracing
from services.common.channels import UPSTREAM_CHANNEL_OPTIONS, UpstreamCredentials, open_channel
from services.common.contract import MAX_CONVERSION_MESSAGE_BYTES
from services.common.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    ServiceError,
    Unavailable,
    upstream_message,
)
from services.common.request_id import REQUEST_ID_METADATA_KEY
from voice.v1 import audio_pb2, conversion_pb2, voice_conversion_pb2, voice_conversion_pb2_grpc

UPSTREAM_NAME = "voice_conversion"
CONVERSION_SERVICE = "voice.v1.VoiceConversionService"
MAX_AUDIO_MESSAGE_BYTES = MAX_CONVERSION_MESSAGE_BYTES
_SAMPLES_PER_MESSAGE = MAX_AUDIO_MESSAGE_BYTES // 4
# The stream's first audio message carries at most this much: the service converts its first (short) block as soon
# as that message is in, while the rest of a sentence (seconds of audio, hundreds of KB) is still on its way and
# before it is decoded and resampled. Covers the service's first block (0.06 s) plus its look-ahead (0.055 s).
FIRST_MESSAGE_SECONDS = 0.2

_ConvertCall: TypeAlias = grpc.aio.StreamStreamCall[voice_conversion_pb2.ConvertRequest, audio_pb2.AudioChunk]


class RvcClient:
    """One gRPC channel (keepalive, fast reconnect) to the conversion service, shared by all requests."""

    def __init__(self, url: str, credentials: UpstreamCredentials | None = None) -> None:
        self.url = url
        self.upstream = open_channel("voice conversion service", url, UPSTREAM_CHANNEL_OPTIONS, credentials)
        self.channel = self.upstream.channel
        # The token as metadata on a plaintext channel (with TLS it rides as call credentials): every call adds it.
        self.call_metadata = self.upstream.call_metadata
        self.stub = voice_conversion_pb2_grpc.VoiceConversionServiceStub(self.channel)

    def unavailable(self, detail: str) -> Unavailable:
        return Unavailable(f"voice conversion service unavailable at {self.url}: {detail}", retry_after_s=1.0)

    def map_error(self, exc: grpc.aio.AioRpcError) -> ServiceError:
        """Translate the service's status into ours, saying that it came from voice conversion."""
        code, detail = exc.code(), upstream_message(exc.details() or exc.code().name)
        if code == grpc.StatusCode.CANCELLED:
            raise exc
        if refused := self.upstream.refused(exc):
            return refused
        if code == grpc.StatusCode.UNAVAILABLE:
            return self.unavailable(detail)
        message = f"voice conversion: {detail}"
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            return InvalidArgument([("conversion", detail)], message=message)
        if code == grpc.StatusCode.NOT_FOUND:
            return NotFound(message, resource_type="conversion model")
        if code == grpc.StatusCode.FAILED_PRECONDITION:
            return FailedPrecondition(message)
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
            return ResourceExhausted(message, retry_after_s=1.0)
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return DeadlineExceeded(message)
        return Internal(message)

    async def probe(self) -> str:
        """The service's version if it answers GetStatus; raises Unavailable otherwise."""
        try:
            status: voice_conversion_pb2.VoiceConversionServiceGetStatusResponse = await self.stub.GetStatus(
                voice_conversion_pb2.VoiceConversionServiceGetStatusRequest(), timeout=2, metadata=self.call_metadata
            )
        except grpc.aio.AioRpcError as exc:
            raise (self.upstream.refused(exc) or self.unavailable(exc.details() or exc.code().name)) from None
        return status.version

    async def list_models(self) -> list[voice_conversion_pb2.ModelInfo]:
        try:
            response: voice_conversion_pb2.ListModelsResponse = await self.stub.ListModels(
                voice_conversion_pb2.ListModelsRequest(), timeout=5, metadata=self.call_metadata
            )
        except grpc.aio.AioRpcError as exc:
            raise self.map_error(exc) from None
        return list(response.models)

    def open(
        self, request_id: str, settings: conversion_pb2.ConversionSettings, input_rate: int, output_rate: int
    ) -> ConvertSession:
        return ConvertSession(self, request_id, settings, input_rate, output_rate)

    async def close(self) -> None:
        await self.channel.close()


class ConvertSession:
    """One Convert stream: `send` float audio, `flush` at segment ends, `finish` after the last, `read` the output."""

    def __init__(
        self,
        owner: RvcClient,
        request_id: str,
        settings: conversion_pb2.ConversionSettings,
        input_rate: int,
        output_rate: int,
    ) -> None:
        self.owner = owner
        self.output_rate = output_rate
        self._config = voice_conversion_pb2.ConvertConfig(
            request_id=request_id,
            settings=settings,
            input_format=audio_pb2.AudioFormat(
                encoding=audio_pb2.AUDIO_ENCODING_FLOAT32, sample_rate_hz=input_rate, channels=1
            ),
            output_format=audio_pb2.AudioFormat(
                encoding=audio_pb2.AUDIO_ENCODING_FLOAT32, sample_rate_hz=output_rate, channels=1
            ),
        )
        self._call: _ConvertCall | None = None
        self._first_message_samples = max(1, round(FIRST_MESSAGE_SECONDS * input_rate))
        self._audio_sent = False
        self._metadata = (*owner.call_metadata, (REQUEST_ID_METADATA_KEY, request_id))
        self.opened_s = 0.0
        self._trace_parent = tracing.current_context()
        self._span: tracing.ClientSpan | None = None

    async def _ensure_open(self) -> _ConvertCall:
        if self._call is None:
            self._span = tracing.ClientSpan(
                CONVERSION_SERVICE,
                "Convert",
                parent=self._trace_parent,
                attributes={"conversion.model": self._config.settings.model},
            )
            self._call = self.owner.stub.Convert(metadata=self._span.metadata(self._metadata))
            self.opened_s = time.perf_counter()
            await self._write(voice_conversion_pb2.ConvertRequest(config=self._config))
        return self._call

    async def _write(self, message: voice_conversion_pb2.ConvertRequest) -> None:
        assert self._call is not None
        try:
            await self._call.write(message)
        except grpc.aio.AioRpcError as exc:
            raise self.owner.map_error(exc) from None
        except asyncio_invalid_state_errors:
            # The call already ended (its status is what matters): let `read` report it.
            pass

    async def start(self) -> None:
        await self._ensure_open()

    async def send(self, audio: NDArray[np.float32]) -> None:
        await self._ensure_open()
        data = np.ascontiguousarray(audio, dtype="<f4")
        first = 0
        if not self._audio_sent and data.size:
            self._audio_sent = True
            first = min(data.size, self._first_message_samples)
            await self._write(voice_conversion_pb2.ConvertRequest(audio=data[:first].tobytes()))
        for start in range(first, data.size, _SAMPLES_PER_MESSAGE):
            await self._write(
                voice_conversion_pb2.ConvertRequest(audio=data[start : start + _SAMPLES_PER_MESSAGE].tobytes())
            )

    async def flush(self) -> None:
        await self._ensure_open()
        await self._write(voice_conversion_pb2.ConvertRequest(flush=voice_conversion_pb2.ConvertRequest.Flush()))

    async def finish(self) -> None:
        call = await self._ensure_open()
        try:
            await call.done_writing()
        except grpc.aio.AioRpcError as exc:
            raise self.owner.map_error(exc) from None
        except asyncio_invalid_state_errors:
            pass

    async def read(self) -> NDArray[np.float32] | None:
        """The next output audio (float samples at the output rate), or None when the stream ended normally."""
        call = await self._ensure_open()
        try:
            chunk = await call.read()
        except grpc.aio.AioRpcError as exc:
            self._end_span(exc.code(), exc.details() or "")
            raise self.owner.map_error(exc) from None
        if chunk is grpc.aio.EOF:
            code = await call.code()
            details = await call.details() if code != grpc.StatusCode.OK else ""
            self._end_span(code, details or "")
            if code != grpc.StatusCode.OK:
                raise self.owner.map_error(
                    grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details)
                )
            return None
        # grpc-stubs type read() as `object | AudioChunk`, so the EOF test above cannot narrow it.
        return chunk_samples(cast(audio_pb2.AudioChunk, chunk))

    def _end_span(self, code: grpc.StatusCode, details: str = "") -> None:
        if self._span is not None:
            span, self._span = self._span, None
            span.end(code, details)

    def cancel(self) -> None:
        if self._call is not None:
            self._call.cancel()
        self._end_span(grpc.StatusCode.CANCELLED)  # a no-op when the call already ended and its span with it


def chunk_samples(chunk: audio_pb2.AudioChunk) -> NDArray[np.float32]:
    """Float samples of a FLOAT32 chunk from the conversion service."""
    if not chunk.audio:
        return np.zeros(0, dtype=np.float32)
    return np.frombuffer(chunk.audio, dtype="<f4").astype(np.float32)


# grpc.aio raises these when writing to a call that has already finished.
asyncio_invalid_state_errors: tuple[type[BaseException], ...] = (grpc.aio.UsageError, asyncio.InvalidStateError)
