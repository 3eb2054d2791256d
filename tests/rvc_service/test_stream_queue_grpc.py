"""The conversion service's stream queue through the real service process: a Convert stream that does not fit waits
(no answer, no refusal) and is served to its end once the stream ahead of it ends; a stream whose deadline is too
short for the wait is refused at once with RESOURCE_EXHAUSTED and RetryInfo; the waiting one leaves nothing behind."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator

import grpc
import pytest
from google.rpc import error_details_pb2

from services.common.errors import status_details
from tests.fixtures.rvc_service import RvcServiceProcess
from tests.rvc_service.test_admission import audio_messages, config_message, start_one_stream_service
from tests.waiting import async_wait_until
from voice.v1 import voice_conversion_pb2, voice_conversion_pb2_grpc

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RvcServiceProcess]:
    # A second stream never fits while the first is open; it waits in a line of up to 4 for up to 20 s.
    log_dir = tmp_path_factory.mktemp("stream-queue")
    proc = start_one_stream_service(log_dir, "--stream-queue-length", "4", "--stream-max-wait", "20")
    yield proc
    proc.stop()


async def test_a_stream_that_does_not_fit_waits_and_is_served_once_the_first_ends(service: RvcServiceProcess) -> None:
    async with grpc.aio.insecure_channel(service.address) as channel:
        stub = voice_conversion_pb2_grpc.VoiceConversionServiceStub(channel)
        first_input: asyncio.Queue[voice_conversion_pb2.ConvertRequest | None] = asyncio.Queue()

        async def feed() -> AsyncIterator[voice_conversion_pb2.ConvertRequest]:
            while (message := await first_input.get()) is not None:
                yield message

        first = stub.Convert(feed())
        for message in [config_message(), *audio_messages(1.5)]:
            await first_input.put(message)
        await asyncio.wait_for(first.read(), timeout=30)  # admitted and converting

        async def whole() -> AsyncIterator[voice_conversion_pb2.ConvertRequest]:
            yield config_message()
            for message in audio_messages(1.0):
                yield message

        second = stub.Convert(whole(), timeout=60)
        second_read = asyncio.ensure_future(second.read())
        await asyncio.sleep(1.0)
        assert not second_read.done()  # waiting in line, neither served nor refused

        # A third stream with too little deadline for the wait ahead: refused at once, not queued.
        started = time.perf_counter()
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            async for _ in stub.Convert(whole(), timeout=0.3):
                pass
        assert time.perf_counter() - started < 0.3
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, refused.value
        retry = [d for d in status_details(refused.value) if isinstance(d, error_details_pb2.RetryInfo)]
        assert retry and retry[0].retry_delay.ToNanoseconds() > 0
        assert not second_read.done()

        await first_input.put(None)  # the first stream ends ...
        rest = []
        while (chunk := await first.read()) != grpc.aio.EOF:
            rest.append(chunk)
        assert rest and rest[-1].is_final

        first_chunk = await asyncio.wait_for(second_read, timeout=20)  # ... and the waiting one gets in
        chunks = [first_chunk]
        while (chunk := await second.read()) != grpc.aio.EOF:
            chunks.append(chunk)
        assert chunks[-1].is_final
        assert chunks[-1].summary.audio_duration.ToNanoseconds() == pytest.approx(1.0e9, abs=0.1e9)
        assert await second.code() == grpc.StatusCode.OK

        async def idle() -> bool:
            status = await stub.GetStatus(voice_conversion_pb2.VoiceConversionServiceGetStatusRequest())
            return status.active_streams == 0

        await async_wait_until(idle, within=10, interval=0.05, what="both streams to be released")
