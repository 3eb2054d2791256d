"""A fake of the gateway's overload response, for the retry tests of both clients.

A real gRPC server (grpcio, a free loopback port) serving voice.v1.TtsGatewayService: it refuses the calls listed in
`refusals` the way the gateway's admission control does (RESOURCE_EXHAUSTED or UNAVAILABLE, with a google.rpc.Status
carrying RetryInfo in the `grpc-status-details-bin` trailer), then serves a short WAV stream of a tone. It records when
each call came, so tests can check how many attempts a client made and how long it waited between them.
"""

from __future__ import annotations

import struct
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2

from voice.v1 import audio_pb2, tts_gateway_pb2, tts_gateway_pb2_grpc

SAMPLE_RATE = 16000


def status_trailer(code: grpc.StatusCode, message: str, retry_after_s: float | None) -> bytes:
    """`grpc-status-details-bin` as the services write it (google.rpc.Status from googleapis-common-protos)."""
    details = []
    if retry_after_s is not None:
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(int(retry_after_s * 1e9))
        packed = any_pb2.Any()
        packed.Pack(error_details_pb2.RetryInfo(retry_delay=delay))
        details.append(packed)
    status = status_pb2.Status(code=code.value[0], message=message, details=details)
    return status.SerializeToString()


@dataclass
class Refusal:
    code: grpc.StatusCode = grpc.StatusCode.RESOURCE_EXHAUSTED
    retry_after_s: float | None = 0.2
    after_chunks: int = 0  # > 0: fail mid-stream, after this many chunks


@dataclass
class FakeOverloadedGateway(tts_gateway_pb2_grpc.TtsGatewayServiceServicer):
    """Refuses the calls listed in `refusals` (one per call, in order), then serves: a short WAV stream of a tone."""

    refusals: list[Refusal] = field(default_factory=list)
    calls: list[float] = field(default_factory=list)  # monotonic time of each call
    texts: list[str] = field(default_factory=list)  # StreamingSynthesize: the text each call received
    lock: threading.Lock = field(default_factory=threading.Lock)

    def _next_refusal(self) -> Refusal | None:
        with self.lock:
            self.calls.append(time.monotonic())
            return self.refusals.pop(0) if self.refusals else None

    @staticmethod
    def _refuse(context: grpc.ServicerContext, refusal: Refusal) -> None:
        message = "the gateway is at its real-time capacity (fake); retry shortly"
        trailer = status_trailer(refusal.code, message, refusal.retry_after_s)
        context.set_trailing_metadata((("grpc-status-details-bin", trailer),))
        context.abort(refusal.code, message)

    def _chunks(self, refusal: Refusal | None, context: grpc.ServicerContext) -> Iterator[audio_pb2.AudioChunk]:
        seconds = 0.6
        t = np.arange(int(SAMPLE_RATE * seconds)) / SAMPLE_RATE
        pcm = (0.3 * np.sin(2 * np.pi * 220 * t) * 32767).astype("<i2").tobytes()
        header = wav_stream_header(SAMPLE_RATE)
        pieces = [header + pcm[: len(pcm) // 2], pcm[len(pcm) // 2 :]]
        fmt = audio_pb2.AudioFormat(encoding=audio_pb2.AUDIO_ENCODING_WAV, sample_rate_hz=SAMPLE_RATE, channels=1)
        for index, piece in enumerate(pieces):
            if refusal is not None and index == refusal.after_chunks:
                self._refuse(context, refusal)
            chunk = audio_pb2.AudioChunk(audio=piece, format=fmt, sequence_number=index, request_id="fake")
            chunk.duration.FromNanoseconds(int(seconds / 2 * 1e9))
            yield chunk
        yield audio_pb2.AudioChunk(sequence_number=len(pieces), is_final=True, format=fmt, request_id="fake")

    def Synthesize(self, request: Any, context: grpc.ServicerContext) -> Iterator[audio_pb2.AudioChunk]:
        refusal = self._next_refusal()
        if refusal is not None and refusal.after_chunks == 0:
            self._refuse(context, refusal)
        yield from self._chunks(refusal, context)

    def StreamingSynthesize(
        self, request_iterator: Iterator[Any], context: grpc.ServicerContext
    ) -> Iterator[audio_pb2.AudioChunk]:
        refusal = self._next_refusal()
        config = next(request_iterator)
        assert config.HasField("config")
        if refusal is not None:
            # Let the client's request thread take some text first, as a real refusal can happen after it did.
            time.sleep(0.1)
            self._refuse(context, refusal)
        text = "".join(r.text for r in request_iterator)
        with self.lock:
            self.texts.append(text)
        yield from self._chunks(None, context)

    def ListVoices(self, request: Any, context: grpc.ServicerContext) -> Any:
        refusal = self._next_refusal()
        if refusal is not None:
            self._refuse(context, refusal)
        return tts_gateway_pb2.ListVoicesResponse(voices=[tts_gateway_pb2.Voice(name="fake")])


def wav_stream_header(rate: int) -> bytes:
    """The 44-byte header of a streamed mono PCM16 WAV, sizes 'unknown' as the gateway sends them."""
    return (
        b"RIFF"
        + struct.pack("<I", 0xFFFFFFFF)
        + b"WAVEfmt "
        + struct.pack("<IHHIIHH", 16, 1, 1, rate, rate * 2, 2, 16)
        + b"data"
        + struct.pack("<I", 0xFFFFFFFF)
    )


def serve_fake_gateway() -> Iterator[tuple[FakeOverloadedGateway, str]]:
    """Yields the servicer and its address ("127.0.0.1:PORT"); stops the server afterwards."""
    servicer = FakeOverloadedGateway()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    tts_gateway_pb2_grpc.add_TtsGatewayServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield servicer, f"127.0.0.1:{port}"
    finally:
        server.stop(grace=None)
