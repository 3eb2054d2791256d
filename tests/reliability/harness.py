"""Shared machinery of the reliability suite: raw-bytes calls on any RPC, status-message checks, and the "a normal
request still succeeds" probes run after each bad input.

Calls go out as raw bytes through the generic channel methods (no client-side serializer), so a test can send bytes
that no client library would produce. No client deadline is set: a server that never answers must fail the test
through the test-side bounds (``CALL_BOUND_S`` to the first response or the status, ``STREAM_BOUND_S`` to the end of
a stream that is sending), not be rescued by a deadline the server sees.
"""

from __future__ import annotations

import contextlib
import io
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import soundfile as sf
from google.protobuf import message_factory, text_format
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import DecodeError

from voice.v1 import (
    audio_pb2,
    conversion_pb2,
    tts_gateway_pb2,
    tts_gateway_pb2_grpc,
    voice_conversion_pb2,
    voice_conversion_pb2_grpc,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
GATEWAY = "voice.v1.TtsGatewayService"
CONVERSION = "voice.v1.VoiceConversionService"
SERVICES = {
    GATEWAY: tts_gateway_pb2.DESCRIPTOR.services_by_name["TtsGatewayService"],
    CONVERSION: voice_conversion_pb2.DESCRIPTOR.services_by_name["VoiceConversionService"],
}
ALL_RPCS: frozenset[tuple[str, str]] = frozenset(
    (service, method.name) for service, descriptor in SERVICES.items() for method in descriptor.methods
)

# The first response or the status must come within this. Rejections come in milliseconds; the margin is for the
# first audio of accepted requests on a 2-core machine shared with other work. Far below "never".
CALL_BOUND_S = 10.0
# An accepted stream that is sending audio may take longer to finish (real synthesis on a loaded machine).
STREAM_BOUND_S = 30.0
MAX_MESSAGE_CHARS = 1000
# What a status message must never carry: tracebacks, server paths, Python object reprs ("<_io.BytesIO object at
# 0x7f...>": an internal detail the client can do nothing with).
LEAK_MARKERS: tuple[str, ...] = (
    "Traceback",
    'File "',
    "/work/",
    "site-packages",
    '.py"',
    str(REPO_ROOT),
    " object at 0x",
)
# What the answer to an unparseable request must not carry: Python class names.
CLASS_MARKERS: tuple[str, ...] = ("class", "DecodeError", "Exception")

PCM16 = audio_pb2.AUDIO_ENCODING_PCM16
WAV = audio_pb2.AUDIO_ENCODING_WAV
OPUS = audio_pb2.AUDIO_ENCODING_OGG_OPUS
FLOAT32 = audio_pb2.AUDIO_ENCODING_FLOAT32


@dataclass
class Outcome:
    """How a raw call ended. ``code`` is None when no status came within the bound (the call was then cancelled)."""

    code: grpc.StatusCode | None
    details: str
    responses: list[bytes] = field(default_factory=list)
    seconds: float = 0.0

    def describe(self) -> str:
        if self.code is None:
            return f"no status within {self.seconds:.1f} s (the call hangs)"
        return f"{self.code.name} {self.details!r} after {self.seconds:.2f} s"


def method_descriptor(service: str, rpc: str) -> MethodDescriptor:
    return SERVICES[service].methods_by_name[rpc]


def _request_stream(messages: Sequence[bytes], hold: threading.Event | None) -> Iterator[bytes]:
    yield from messages
    if hold is not None:
        hold.wait()  # the request stream stays open (no half-close) until the call has ended


def call_raw(
    channel: grpc.Channel,
    service: str,
    rpc: str,
    messages: Sequence[bytes],
    *,
    half_close: bool = True,
    bound_s: float = CALL_BOUND_S,
    stream_bound_s: float = STREAM_BOUND_S,
) -> Outcome:
    """Send ``messages`` (serialized requests, or any bytes) on ``service/rpc`` and collect the raw responses and the
    final status. Unary-request RPCs take exactly one message. For client-streaming RPCs ``half_close=False`` keeps
    the request stream open after the last message, so only the server can end the call. The call is cancelled
    (and reported as hanging) when neither a response nor the status came within ``bound_s``, or when it has not
    ended within ``stream_bound_s``.

    The synchronous API on purpose: when a server ends a call while the client is still writing, grpc.aio reports
    its own INTERNAL "Internal error from Core" instead of the server's status; the synchronous client stops
    sending and reports what the server said.
    """
    descriptor = method_descriptor(service, rpc)
    path = f"/{service}/{rpc}"
    responses: list[bytes] = []
    hold = threading.Event()
    expired = threading.Event()
    started = time.perf_counter()
    call: Any
    if not descriptor.client_streaming:
        assert len(messages) == 1, f"{path} takes one request message"
        if descriptor.server_streaming:
            call = channel.unary_stream(path)(messages[0])
        else:
            call = channel.unary_unary(path).future(messages[0])
    else:
        call = channel.stream_stream(path)(_request_stream(messages, None if half_close else hold))

    ended = threading.Event()

    def expire() -> None:
        expired.set()
        call.cancel()  # frees the server's slot; the test fails on the missing status

    def watch() -> None:
        if ended.wait(bound_s):
            return
        # Neither a response nor the status by now: the server is not answering. Otherwise it is sending; give it
        # until the stream bound to finish.
        if not responses or not ended.wait(max(0.0, stream_bound_s - bound_s)):
            expire()

    threading.Thread(target=watch, daemon=True).start()
    try:
        if descriptor.server_streaming:
            with contextlib.suppress(grpc.RpcError):
                for response in call:
                    responses.append(response)
        else:
            with contextlib.suppress(grpc.RpcError):
                responses.append(call.result())
        code, details = call.code(), call.details() or ""
    finally:
        ended.set()
        hold.set()
    seconds = time.perf_counter() - started
    if expired.is_set() and code == grpc.StatusCode.CANCELLED:
        return Outcome(None, "", responses, seconds)
    return Outcome(code, details, responses, seconds)


def describe_request(service: str, rpc: str, data: bytes) -> str:
    """One request message as text (for failure reports), or what was unparseable about it."""
    message_class = message_factory.GetMessageClass(method_descriptor(service, rpc).input_type)
    try:
        message = message_class.FromString(data)
    except DecodeError:
        return f"<{len(data)} bytes that do not parse: {data[:60]!r}>"
    return text_format.MessageToString(message, as_one_line=True, as_utf8=True)[:600]


def leaks(details: str) -> list[str]:
    """The leak markers found in a status message."""
    return [marker for marker in LEAK_MARKERS if marker in details]


def class_names(details: str) -> list[str]:
    return [marker for marker in CLASS_MARKERS if marker in details]


# ------------------------------------------------------------------------------------------------ request builders


def tone(seconds: float, rate: int = 16000, freq: float = 150.0) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return (0.4 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def pcm16(x: np.ndarray) -> bytes:
    return (np.clip(x, -1, 1) * 32767).astype("<i2").tobytes()


def wav_bytes(x: np.ndarray, rate: int = 16000) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, x, rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def length_delimited(number: int, payload: bytes) -> bytes:
    """One length-delimited field (strings, bytes, messages) on the wire: tag, length, payload."""
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def fmt(encoding: int = PCM16, rate: int = 0, channels: int = 0) -> audio_pb2.AudioFormat:
    return audio_pb2.AudioFormat(encoding=encoding, sample_rate_hz=rate, channels=channels)


def short_synthesize_request(text: str = "Hi there.") -> tts_gateway_pb2.SynthesizeRequest:
    return tts_gateway_pb2.SynthesizeRequest(text=text, voice="joe", output_format=fmt(PCM16))


# ------------------------------------------------------------------------------------------------ still serving


def gateway_serves(channel: grpc.Channel) -> None:
    """A short `joe` Synthesize returns audio and a final chunk."""
    stub = tts_gateway_pb2_grpc.TtsGatewayServiceStub(channel)
    chunks = list(stub.Synthesize(short_synthesize_request(), timeout=30))
    assert chunks and chunks[-1].is_final, "the normal request did not end with a final chunk"
    assert sum(len(c.audio) for c in chunks) > 1000, "the normal request returned no audio"


def conversion_serves(channel: grpc.Channel) -> None:
    """ListModels answers and a short WORLD clip converts."""
    stub = voice_conversion_pb2_grpc.VoiceConversionServiceStub(channel)
    models = stub.ListModels(voice_conversion_pb2.ListModelsRequest(), timeout=10)
    assert "world-default" in {m.name for m in models.models}
    reply = stub.ConvertClip(
        voice_conversion_pb2.ConvertClipRequest(
            settings=conversion_pb2.ConversionSettings(model="world-default"),
            audio=audio_pb2.AudioInput(audio=pcm16(tone(0.3)), format=fmt(PCM16, 16000)),
            output_format=fmt(PCM16),
        ),
        timeout=30,
    )
    assert len(reply.audio) > 1000, "the normal conversion returned no audio"


def active_streams(channel: grpc.Channel, service: str) -> int:
    if service == GATEWAY:
        gateway = tts_gateway_pb2_grpc.TtsGatewayServiceStub(channel)
        return gateway.GetStatus(tts_gateway_pb2.TtsGatewayServiceGetStatusRequest(), timeout=10).active_streams
    conversion = voice_conversion_pb2_grpc.VoiceConversionServiceStub(channel)
    return conversion.GetStatus(
        voice_conversion_pb2.VoiceConversionServiceGetStatusRequest(), timeout=10
    ).active_streams


def streams_released(channel: grpc.Channel, service: str, baseline: int, within_s: float = 3.0) -> int:
    """Wait until the service's open streams are back to ``baseline``; returns the last count seen."""
    deadline = time.monotonic() + within_s
    while True:
        count = active_streams(channel, service)
        if count <= baseline or time.monotonic() > deadline:
            return count
        time.sleep(0.05)


def still_serving(channel: grpc.Channel, service: str) -> None:
    (gateway_serves if service == GATEWAY else conversion_serves)(channel)
