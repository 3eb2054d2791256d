"""Admission of Convert streams by measured real-time capacity, through the real service process (issue 9, item 8):
with one worker and a low target utilization, a second concurrent stream is refused at once with RESOURCE_EXHAUSTED
and RetryInfo, clips are not refused, and streams are admitted again once the first ends."""

from __future__ import annotations

import asyncio
import statistics
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from google.rpc import error_details_pb2

from services.common import audio as A
from services.common.errors import status_details
from tests.fixtures.rvc_service import RvcServiceProcess, start_rvc_service
from tests.prometheus import metric
from tests.waiting import async_wait_until
from voice.v1 import audio_pb2, conversion_pb2, voice_conversion_pb2, voice_conversion_pb2_grpc

pytestmark = pytest.mark.timeout(180)

RATE = 16000
PCM16_IN = audio_pb2.AudioFormat(encoding=A.PCM16, sample_rate_hz=RATE)
OUT = audio_pb2.AudioFormat(encoding=A.PCM16, sample_rate_hz=24000)
SETTINGS = conversion_pb2.ConversionSettings(
    model="world-default", pitch_shift_semitones=4.0, formant_shift_semitones=1.5
)


def tone(seconds: float) -> np.ndarray:
    t = np.arange(round(seconds * RATE)) / RATE
    return (0.4 * np.sin(2 * np.pi * 150 * t)).astype(np.float32)


def config_message() -> voice_conversion_pb2.ConvertRequest:
    return voice_conversion_pb2.ConvertRequest(
        config=voice_conversion_pb2.ConvertConfig(settings=SETTINGS, input_format=PCM16_IN, output_format=OUT)
    )


def audio_messages(seconds: float, piece_s: float = 0.25) -> list[voice_conversion_pb2.ConvertRequest]:
    pcm = A.float_to_pcm16(tone(seconds))
    step = 2 * round(piece_s * RATE)
    return [voice_conversion_pb2.ConvertRequest(audio=pcm[i : i + step]) for i in range(0, len(pcm), step)]


def start_one_stream_service(log_dir: Path, *flags: str) -> RvcServiceProcess:
    """One worker at 30%: a WORLD stream costs about that alone, so a second one never fits; the prior (0.5) is above
    the capacity too, so the refusal does not depend on how fast this machine happens to be."""
    return start_rvc_service("--workers", "1", "--target-utilization", "0.3", *flags, log_dir=log_dir)


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RvcServiceProcess]:
    # No stream queue here (tests/rvc_service/test_stream_queue_grpc.py covers waiting): a stream that does not fit
    # is refused at once, which is what this module times.
    proc = start_one_stream_service(tmp_path_factory.mktemp("admission"), "--stream-queue-length", "0")
    yield proc
    proc.stop()


@pytest.fixture
async def stub(service: RvcServiceProcess) -> AsyncIterator[voice_conversion_pb2_grpc.VoiceConversionServiceStub]:
    async with grpc.aio.insecure_channel(service.address) as channel:
        stub = voice_conversion_pb2_grpc.VoiceConversionServiceStub(channel)
        await stub.ListModels(voice_conversion_pb2.ListModelsRequest())  # connected before anything is timed
        yield stub


async def refused_after(stub) -> tuple[float, grpc.aio.AioRpcError]:
    """Open a stream (config only; the refusal comes before any audio is needed) and time the answer."""
    started = time.perf_counter()

    async def messages() -> AsyncIterator[voice_conversion_pb2.ConvertRequest]:
        yield config_message()
        await asyncio.sleep(30)  # a client holding its request side open (as one streaming audio would)

    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for _ in stub.Convert(messages()):
            pass
    return time.perf_counter() - started, err.value


async def test_second_stream_is_refused_at_once_and_admitted_after_the_first_ends(
    stub, service: RvcServiceProcess
) -> None:
    queue: asyncio.Queue = asyncio.Queue()

    async def feed() -> AsyncIterator[voice_conversion_pb2.ConvertRequest]:
        while (message := await queue.get()) is not None:
            yield message

    first = stub.Convert(feed())
    await queue.put(config_message())
    for message in audio_messages(1.5):
        await queue.put(message)
    await asyncio.wait_for(first.read(), timeout=30)  # admitted, converting, and its cost measured

    times = []
    for _ in range(3):
        elapsed, err = await refused_after(stub)
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err
        assert "real-time capacity" in err.details() and "world-default" in err.details()
        retry = [d for d in status_details(err) if isinstance(d, error_details_pb2.RetryInfo)]
        assert retry and retry[0].retry_delay.ToNanoseconds() > 0
        times.append(elapsed)
    print(f"refused after {', '.join(f'{1000 * t:.1f}' for t in times)} ms")
    assert statistics.median(times) < 0.1 and max(times) < 0.5, times

    # Clips are not real-time: they stay governed by the queue bound and are served meanwhile.
    clip = await stub.ConvertClip(
        voice_conversion_pb2.ConvertClipRequest(
            settings=SETTINGS,
            audio=audio_pb2.AudioInput(audio=A.float_to_pcm16(tone(0.5)), format=PCM16_IN),
            output_format=OUT,
        )
    )
    assert len(clip.audio) > 0

    # The first stream ends normally; then a new stream is admitted and served to its end.
    await queue.put(None)
    chunks = []
    while (chunk := await first.read()) != grpc.aio.EOF:
        chunks.append(chunk)
    assert chunks and chunks[-1].is_final

    async def no_open_stream() -> bool:
        status = await stub.GetStatus(voice_conversion_pb2.VoiceConversionServiceGetStatusRequest())
        return status.active_streams == 0

    await async_wait_until(no_open_stream, within=10, interval=0.02, what="the first stream to be released")

    async def whole() -> AsyncIterator[voice_conversion_pb2.ConvertRequest]:
        yield config_message()
        for message in audio_messages(1.0):
            yield message

    again = [chunk async for chunk in stub.Convert(whole())]
    assert again[-1].is_final and again[-1].summary.audio_duration.ToNanoseconds() > 0.8e9

    text = await asyncio.to_thread(lambda: urllib.request.urlopen(service.metrics_url, timeout=5).read().decode())
    assert metric(text, "rvc_admission_refusals_total", model="world-default") >= 3
    assert metric(text, "rvc_admission_capacity_workers") == pytest.approx(0.3)
    assert metric(text, "rvc_stream_cost_ratio", model="world-default", f0_method="pm") > 0
    assert "rvc_admitted_load_workers" in text
