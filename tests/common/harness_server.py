"""Test harness: a small voice.v1.TtsGatewayService on the shared bootstrap, used to test the bootstrap itself.

It is not the gateway (services/tts_gateway is); it streams a generated tone so tests can hold a stream open across a
SIGTERM and check metrics, errors and auth without Triton. Run as a process, it prints one JSON line with its ports.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator

import grpc
import numpy as np

from services.common.durations import duration_from_seconds
from services.common.errors import InvalidArgument
from services.common.request_id import resolve_request_id
from services.common.server import (
    EnvArgumentParser,
    ServiceHost,
    add_server_arguments,
    announce_ready,
    init_service_logging,
    server_options_from_args,
)
from voice.v1 import audio_pb2, tts_gateway_pb2, tts_gateway_pb2_grpc

SAMPLE_RATE = 16000
CHUNK_SECONDS = 0.1


class ToneServicer(tts_gateway_pb2_grpc.TtsGatewayServiceServicer):
    """Streams len(text) chunks of a 440 Hz tone, one every `chunk_delay` seconds."""

    def __init__(self, chunk_delay: float) -> None:
        self.chunk_delay = chunk_delay

    async def Synthesize(
        self, request: tts_gateway_pb2.SynthesizeRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[audio_pb2.AudioChunk]:
        violations = []
        if not request.text.strip():
            violations.append(("text", "must contain at least one non-space character"))
        if request.output_format.encoding != audio_pb2.AUDIO_ENCODING_PCM16:
            violations.append(("output_format.encoding", "this harness supports AUDIO_ENCODING_PCM16 only"))
        if violations:
            raise InvalidArgument(violations)
        request_id = resolve_request_id(request.request_id)
        n = int(SAMPLE_RATE * CHUNK_SECONDS)
        fmt = audio_pb2.AudioFormat(encoding=audio_pb2.AUDIO_ENCODING_PCM16, sample_rate_hz=SAMPLE_RATE, channels=1)
        count = len(request.text.strip())
        for i in range(count):
            t = (np.arange(n) + i * n) / SAMPLE_RATE
            pcm = (0.3 * np.sin(2 * np.pi * 440 * t) * 32767).astype("<i2").tobytes()
            yield audio_pb2.AudioChunk(
                request_id=request_id,
                sequence_number=i,
                audio=pcm,
                format=fmt,
                offset=duration_from_seconds(i * CHUNK_SECONDS),
                duration=duration_from_seconds(CHUNK_SECONDS),
                is_final=i == count - 1,
            )
            await asyncio.sleep(self.chunk_delay)  # a stream that takes time: the behaviour the tests drain and limit

    async def StreamingSynthesize(
        self,
        request_iterator: AsyncIterator[tts_gateway_pb2.StreamingSynthesizeRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[audio_pb2.AudioChunk]:
        """One short tone chunk per text message, until the client half-closes."""
        fmt = audio_pb2.AudioFormat(encoding=audio_pb2.AUDIO_ENCODING_PCM16, sample_rate_hz=SAMPLE_RATE, channels=1)
        sequence = 0
        async for message in request_iterator:
            if message.WhichOneof("request") != "text":
                continue
            yield audio_pb2.AudioChunk(sequence_number=sequence, audio=b"\0\0" * 160, format=fmt)
            sequence += 1
        yield audio_pb2.AudioChunk(sequence_number=sequence, format=fmt, is_final=True)

    async def ListVoices(
        self, request: tts_gateway_pb2.ListVoicesRequest, context: grpc.aio.ServicerContext
    ) -> tts_gateway_pb2.ListVoicesResponse:
        if request.language_code == "crash":
            raise RuntimeError("deliberate failure to test INTERNAL mapping")
        return tts_gateway_pb2.ListVoicesResponse(voices=[tts_gateway_pb2.Voice(name="tone", language_code="en-US")])


def build_host(args: object, chunk_delay: float) -> ServiceHost:
    host = ServiceHost("harness", server_options_from_args(args))
    servicer = ToneServicer(chunk_delay)
    host.add_service(
        tts_gateway_pb2.DESCRIPTOR.services_by_name["TtsGatewayService"].full_name,
        lambda server: tts_gateway_pb2_grpc.add_TtsGatewayServiceServicer_to_server(servicer, server),
    )
    return host


def make_parser() -> EnvArgumentParser:
    parser = EnvArgumentParser(description="bootstrap test harness", env_prefix="HARNESS")
    add_server_arguments(parser, port=0, metrics_port=0)
    parser.add_option("--chunk-delay", type=float, default=0.05, help="seconds between chunks")
    return parser


async def main(argv: list[str]) -> None:
    args = make_parser().parse_args(argv)
    init_service_logging("harness", server_options_from_args(args))
    host = build_host(args, args.chunk_delay)
    await host.start()
    announce_ready(host)
    await host.run_until_signal()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
