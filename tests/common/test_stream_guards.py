"""What the shared interceptor guards against, over real gRPC: request bytes that do not parse (answered at once
with INVALID_ARGUMENT on every kind of RPC, never left open), streams that idle or run past the server's limits,
and error texts that could overflow trailers or leak server internals."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import grpc
import pytest

from services.common.errors import InvalidArgument, NotFound, ServiceError, clip, upstream_message
from services.common.server import ServiceHost
from tests.common.test_bootstrap import start_host
from voice.v1 import tts_gateway_pb2

SYNTHESIZE = "/voice.v1.TtsGatewayService/Synthesize"
STREAMING = "/voice.v1.TtsGatewayService/StreamingSynthesize"
LIST_VOICES = "/voice.v1.TtsGatewayService/ListVoices"
# Field 2 (text) of SynthesizeRequest, length 2, holding bytes that are not UTF-8.
INVALID_UTF8 = b"\x12\x02\xff\xfe"
GARBAGE = b"\xff\xff\xff\xff\x0f\x01"
PYTHON_WORDS = ("class", "DecodeError", "Exception", "Traceback")


def identity(data: bytes) -> bytes:
    return data


@pytest.fixture
async def guarded() -> AsyncIterator[ServiceHost]:
    host = await start_host("--stream-idle-timeout", "0.5", "--max-stream-duration", "1.5", chunk_delay=0.05)
    yield host
    await host.stop(grace=0)


def assert_parse_error(error: grpc.aio.AioRpcError) -> None:
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (error.code(), error.details())
    assert "voice.v1." in (error.details() or "")
    assert not any(word in (error.details() or "") for word in PYTHON_WORDS), error.details()


@pytest.mark.parametrize("payload", [INVALID_UTF8, GARBAGE], ids=["invalid-utf8", "garbage"])
async def test_unparseable_server_streaming_request_is_answered_at_once(guarded: ServiceHost, payload: bytes) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{guarded.port}") as channel:
        call = channel.unary_stream(SYNTHESIZE, request_serializer=identity, response_deserializer=identity)(payload)
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as err:
            # No client deadline: the server alone must end the call. The test's own bound only keeps a hang short.
            await asyncio.wait_for(call.read(), timeout=5)
        assert time.monotonic() - started < 0.4  # well before the 0.5 s idle timeout: answered, not timed out
        assert_parse_error(err.value)


# Field 1 (language_code) of ListVoicesRequest holding bytes that are not UTF-8.
@pytest.mark.parametrize("payload", [b"\x0a\x02\xff\xfe", GARBAGE], ids=["invalid-utf8", "garbage"])
async def test_unparseable_unary_request_gets_invalid_argument(guarded: ServiceHost, payload: bytes) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{guarded.port}") as channel:
        call = channel.unary_unary(LIST_VOICES, request_serializer=identity, response_deserializer=identity)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await asyncio.wait_for(call(payload), timeout=5)
        assert_parse_error(err.value)


async def test_unparseable_later_stream_message_ends_the_call(guarded: ServiceHost) -> None:
    text = tts_gateway_pb2.StreamingSynthesizeRequest(text="hello").SerializeToString()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{guarded.port}") as channel:
        call = channel.stream_stream(STREAMING, request_serializer=identity, response_deserializer=identity)()
        await call.write(text)
        first = await asyncio.wait_for(call.read(), timeout=5)
        assert first  # the valid message was served
        await call.write(b"\x12\x01\xff")  # text field with one byte that is not UTF-8
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await asyncio.wait_for(call.read(), timeout=5)
        assert_parse_error(err.value)


async def test_idle_stream_ends_with_deadline_exceeded(guarded: ServiceHost) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{guarded.port}") as channel:
        call = channel.stream_stream(STREAMING, request_serializer=identity, response_deserializer=identity)()
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await asyncio.wait_for(call.read(), timeout=5)
        elapsed = time.monotonic() - started
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "idle for 0.5 s" in (err.value.details() or "")
    assert 0.45 <= elapsed < 2.0


async def test_activity_keeps_a_stream_alive_past_the_idle_timeout(guarded: ServiceHost) -> None:
    message = tts_gateway_pb2.StreamingSynthesizeRequest(text="hello").SerializeToString()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{guarded.port}") as channel:
        call = channel.stream_stream(STREAMING, request_serializer=identity, response_deserializer=identity)()
        # The behaviour under test: a message every 0.3 s (under the 0.5 s idle timeout), 4 x 0.3 s = 1.2 s in all,
        # more than twice the idle timeout and under the 1.5 s limit.
        for _ in range(4):
            await call.write(message)
            await asyncio.wait_for(call.read(), timeout=5)
            await asyncio.sleep(0.3)
        await call.done_writing()
        final = await asyncio.wait_for(call.read(), timeout=5)
        assert final
        assert await call.code() == grpc.StatusCode.OK


async def test_stream_longer_than_the_limit_ends_with_deadline_exceeded(guarded: ServiceHost) -> None:
    # 100 chunks, one every 50 ms: 5 s of streaming against a 1.5 s limit; chunks keep the stream from idling.
    request = tts_gateway_pb2.SynthesizeRequest(text="x" * 100, voice="tone")
    request.output_format.encoding = 1  # AUDIO_ENCODING_PCM16
    async with grpc.aio.insecure_channel(f"127.0.0.1:{guarded.port}") as channel:
        call = channel.unary_stream(SYNTHESIZE, request_serializer=identity, response_deserializer=identity)(
            request.SerializeToString()
        )
        started = time.monotonic()
        received = 0
        with pytest.raises(grpc.aio.AioRpcError) as err:
            while True:
                message = await asyncio.wait_for(call.read(), timeout=5)
                if message is grpc.aio.EOF:
                    break
                received += 1
        elapsed = time.monotonic() - started
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "limit of 1.5 s" in (err.value.details() or "")
    assert 1.4 <= elapsed < 3.0 and 5 < received < 100


def test_long_client_values_are_clipped_in_errors() -> None:
    name = "v" * 10_000
    error = NotFound(f"unknown voice {clip(name)!r}", resource_type="voice", resource_name=name)
    status = error.to_status_proto()
    assert status.ByteSize() < 2_000
    bad = InvalidArgument([(f"field{i}", "x" * 5_000) for i in range(100)])
    assert bad.to_status_proto().ByteSize() < 16 * 1024  # fits gRPC's default trailer budget
    assert len(ServiceError("y" * 50_000).message) <= 1_100


def test_upstream_messages_lose_tracebacks_and_paths() -> None:
    text = (
        "Failed to process the request(s) for model 'piper_tts_0_0', message: ValueError: embedded null character\n"
        "Traceback (most recent call last):\n"
        '  File "/work/main/triton/model_repo/piper_tts/1/model.py", line 240, in execute\n'
        "ValueError: embedded null character\n"
    )
    short = upstream_message(text)
    assert "Traceback" not in short and "/work/" not in short and "model.py" not in short
    assert "embedded null character" in short
    assert upstream_message("open /opt/models/x/voice.onnx failed") == "open <path> failed"
