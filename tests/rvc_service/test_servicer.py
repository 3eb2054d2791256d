"""voice.v1.VoiceConversionService over real gRPC, against the real service process (python -m services.rvc_service)."""

from __future__ import annotations

import asyncio
import io
import signal
import threading
from collections.abc import AsyncIterator, Iterable

import grpc
import numpy as np
import pytest
import soundfile as sf
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from services.common import audio as A
from services.common.errors import status_details
from tests.fixtures.rvc_service import RvcServiceProcess, start_rvc_service
from tests.prometheus import metric, scrape
from tests.signals import dominant_frequency
from tests.waiting import async_wait_until, wait_until
from voice.v1 import audio_pb2, conversion_pb2, voice_conversion_pb2, voice_conversion_pb2_grpc

pytestmark = pytest.mark.timeout(120)

SERVICE = "voice.v1.VoiceConversionService"
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
IN_RATE = 16000
PCM16_IN = audio_pb2.AudioFormat(encoding=A.PCM16, sample_rate_hz=IN_RATE)
FLOAT_OUT = audio_pb2.AudioFormat(encoding=A.FLOAT32, sample_rate_hz=24000)


def tone(seconds: float, freq: float = 150.0, rate: int = IN_RATE, amp: float = 0.4) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def settings(model: str = "world-default", **kw: object) -> conversion_pb2.ConversionSettings:
    return conversion_pb2.ConversionSettings(model=model, **kw)


def config(**kw: object) -> voice_conversion_pb2.ConvertRequest:
    values: dict[str, object] = {"settings": settings(), "input_format": PCM16_IN, "output_format": FLOAT_OUT}
    values.update(kw)
    return voice_conversion_pb2.ConvertRequest(config=voice_conversion_pb2.ConvertConfig(**values))


def audio_messages(x: np.ndarray, piece: int = 4000) -> list[voice_conversion_pb2.ConvertRequest]:
    pcm = A.float_to_pcm16(x)
    return [voice_conversion_pb2.ConvertRequest(audio=pcm[i : i + 2 * piece]) for i in range(0, len(pcm), 2 * piece)]


async def requests(messages: Iterable[voice_conversion_pb2.ConvertRequest]) -> AsyncIterator:
    for message in messages:
        yield message


def bad_fields(err: grpc.aio.AioRpcError) -> dict[str, str]:
    bad = next(d for d in status_details(err) if isinstance(d, error_details_pb2.BadRequest))
    return {v.field: v.description for v in bad.field_violations}


@pytest.fixture
async def stub(rvc_service: RvcServiceProcess) -> AsyncIterator[voice_conversion_pb2_grpc.VoiceConversionServiceStub]:
    async with grpc.aio.insecure_channel(rvc_service.address) as channel:
        yield voice_conversion_pb2_grpc.VoiceConversionServiceStub(channel)


async def convert(stub, messages) -> list[audio_pb2.AudioChunk]:
    # Error cases send only what the server reads before it fails: a grpc.aio client still writing requests when
    # the call ends reports its own INTERNAL ("Internal error from Core") instead of the server's status.
    return [chunk async for chunk in stub.Convert(requests(messages))]


async def assert_still_serving(stub) -> None:
    status = await stub.GetStatus(voice_conversion_pb2.VoiceConversionServiceGetStatusRequest())
    assert status.workers == 2


# ---------------------------------------------------------------------------------------------------- platform


async def test_health_and_reflection(rvc_service: RvcServiceProcess) -> None:
    async with grpc.aio.insecure_channel(rvc_service.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for name in ("", SERVICE):
            reply = await health.Check(health_pb2.HealthCheckRequest(service=name))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING

    def list_services() -> list[str]:
        with grpc.insecure_channel(rvc_service.address) as sync_channel:
            return list(ProtoReflectionDescriptorDatabase(sync_channel).get_services())

    assert SERVICE in await asyncio.to_thread(list_services)


async def test_get_status_describes_device_pool_and_models(stub) -> None:
    status = await stub.GetStatus(voice_conversion_pb2.VoiceConversionServiceGetStatusRequest())
    assert status.device.kind in ("cpu", "cuda") and status.device.name
    assert (status.workers, status.queue_capacity) == (2, 16)
    assert status.busy_workers == 0 and status.queue_depth == 0
    assert {"world-default", "world-bright"} <= {m.name for m in status.loaded_models}
    assert status.version


# ---------------------------------------------------------------------------------------------------- conversion


async def test_convert_streams_world_voice_with_pitch_shift(stub, rvc_service: RvcServiceProcess) -> None:
    before = scrape(rvc_service.metrics_url)
    x = tone(2.0, freq=150.0)
    call = stub.Convert(
        requests(
            [
                config(
                    request_id="pitch-test",
                    settings=settings(pitch_shift_semitones=5.0),
                    output_format=audio_pb2.AudioFormat(encoding=A.FLOAT32, sample_rate_hz=24000),
                ),
                *audio_messages(x, piece=3000),
            ]
        )
    )
    chunks = [c async for c in call]
    assert dict(await call.initial_metadata())["x-request-id"] == "pitch-test"
    assert [c.sequence_number for c in chunks] == list(range(len(chunks)))
    assert chunks[-1].is_final and chunks[-1].summary.segment_count >= 3
    assert all(c.request_id == "pitch-test" for c in chunks)
    y = np.frombuffer(b"".join(c.audio for c in chunks), dtype="<f4")
    assert abs(y.size / 24000 - 2.0) <= 0.5  # ± one block
    measured = dominant_frequency(y[6000:-6000], 24000)
    expected = 150.0 * 2 ** (5 / 12)
    assert measured == pytest.approx(expected, rel=0.03), (measured, expected)

    after = scrape(rvc_service.metrics_url)
    model = {"model": "world-default"}
    assert metric(after, "rvc_pool_jobs_total", outcome="ok", **model) > metric(
        before, "rvc_pool_jobs_total", outcome="ok", **model
    )
    assert (
        metric(after, "rvc_audio_converted_seconds_total", **model)
        >= metric(before, "rvc_audio_converted_seconds_total", **model) + 1.9
    )
    assert metric(after, "grpc_server_handled_total", grpc_method="Convert", grpc_code="OK") >= 1


async def test_convert_flush_emits_buffered_audio_before_more_input(stub) -> None:
    x = tone(0.1)  # shorter than the first block with its look-ahead (0.06 + 0.055 s): nothing until the flush
    flush = voice_conversion_pb2.ConvertRequest(flush=voice_conversion_pb2.ConvertRequest.Flush())
    queue: asyncio.Queue = asyncio.Queue()

    async def feed() -> AsyncIterator:
        while (message := await queue.get()) is not None:
            yield message

    call = stub.Convert(feed())
    for message in [config(), *audio_messages(x), flush]:
        await queue.put(message)
    first = await asyncio.wait_for(call.read(), timeout=20)
    assert not first.is_final and first.duration.ToNanoseconds() == pytest.approx(0.1e9, abs=0.02e9)
    await queue.put(None)
    rest = []
    while (chunk := await call.read()) is not grpc.aio.EOF:
        rest.append(chunk)
    assert rest[-1].is_final


async def test_convert_clip_returns_wav_at_requested_rate(stub) -> None:
    x = tone(1.5, freq=200.0, rate=22050)
    request = voice_conversion_pb2.ConvertClipRequest(
        settings=settings("world-bright"),
        audio=audio_pb2.AudioInput(
            audio=A.float_to_pcm16(x), format=audio_pb2.AudioFormat(encoding=A.PCM16, sample_rate_hz=22050)
        ),
        output_format=audio_pb2.AudioFormat(encoding=A.WAV, sample_rate_hz=16000),
    )
    call = stub.ConvertClip(request)
    reply = await call
    assert dict(await call.initial_metadata())["x-request-id"] == reply.request_id != ""
    decoded, rate = sf.read(io.BytesIO(reply.audio), dtype="float32")
    assert rate == 16000 and reply.format.sample_rate_hz == 16000
    assert decoded.size / rate == pytest.approx(1.5, abs=0.05)
    assert reply.audio_duration.ToNanoseconds() == pytest.approx(1.5e9, abs=0.05e9)
    assert reply.conversion_time.ToNanoseconds() > 0 and reply.real_time_factor > 0
    # world-bright is 4 semitones up.
    assert dominant_frequency(decoded[2000:-2000], rate) == pytest.approx(200 * 2 ** (4 / 12), rel=0.03)


# ---------------------------------------------------------------------------------------------------- models


async def test_list_load_unload_models(stub) -> None:
    listed = await stub.ListModels(voice_conversion_pb2.ListModelsRequest())
    names = [m.name for m in listed.models]
    assert names == sorted(names) and {"world-default", "world-bright"} <= set(names)
    world = next(m for m in listed.models if m.name == "world-default")
    assert world.engine == voice_conversion_pb2.CONVERSION_ENGINE_WORLD and world.loaded and world.sample_rate_hz > 0

    loaded = await stub.LoadModel(voice_conversion_pb2.LoadModelRequest(name="world-default"))
    assert loaded.model.name == "world-default" and loaded.model.loaded
    assert loaded.load_time.ToNanoseconds() == 0
    unloaded = await stub.UnloadModel(voice_conversion_pb2.UnloadModelRequest(name="world-default"))
    assert not unloaded.was_loaded  # built-ins stay

    for bad in ("../../etc/passwd", "a/b", "..", ""):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.LoadModel(voice_conversion_pb2.LoadModelRequest(name=bad))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, bad
        assert "name" in bad_fields(err.value)
    for call in (stub.LoadModel, stub.UnloadModel):
        request_type = (
            voice_conversion_pb2.LoadModelRequest if call is stub.LoadModel else voice_conversion_pb2.UnloadModelRequest
        )
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call(request_type(name="no-such-voice"))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    await assert_still_serving(stub)


# ---------------------------------------------------------------------------------------------------- errors


INVALID_SETTINGS = [
    (dict(pitch_shift_semitones=30.0), "config.settings.pitch_shift_semitones", "-24 and 24"),
    (dict(index_rate=1.5), "config.settings.index_rate", "0 and 1"),
    (dict(protect=0.9), "config.settings.protect", "0 and 0.5"),
    (dict(rms_mix_rate=-0.1), "config.settings.rms_mix_rate", "0 and 1"),
    (dict(filter_radius=9), "config.settings.filter_radius", "0 and 7"),
    (dict(formant_shift_semitones=13.0), "config.settings.formant_shift_semitones", "-12 and 12"),
    (dict(speaker_id=3), "config.settings.speaker_id", "0 and 0"),
]


@pytest.mark.parametrize(("values", "field", "range_text"), INVALID_SETTINGS)
async def test_out_of_range_settings_name_field_and_range(stub, values, field, range_text) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await convert(stub, [config(settings=settings(**values))])
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    fields = bad_fields(err.value)
    assert field in fields and range_text in fields[field], fields
    await assert_still_serving(stub)


async def test_convert_request_errors(stub) -> None:
    pcm = audio_messages(tone(0.2))
    cases = [
        ("first message is audio", pcm[:1], "config"),
        ("no messages at all", [], "config"),
        ("second config", [config(), *pcm, config()], "config"),
        ("no model", [config(settings=conversion_pb2.ConversionSettings())], "config.settings.model"),
        (
            "WAV input",
            [config(input_format=audio_pb2.AudioFormat(encoding=A.WAV, sample_rate_hz=IN_RATE))],
            "config.input_format.encoding",
        ),
        (
            "rate too low",
            [config(input_format=audio_pb2.AudioFormat(encoding=A.PCM16, sample_rate_hz=4000))],
            "config.input_format.sample_rate_hz",
        ),
        (
            "no output encoding",
            [config(output_format=audio_pb2.AudioFormat(sample_rate_hz=16000))],
            "config.output_format.encoding",
        ),
        (
            "opus at 44100",
            [config(output_format=audio_pb2.AudioFormat(encoding=A.OGG_OPUS, sample_rate_hz=44100))],
            "config.output_format.sample_rate_hz",
        ),
        ("odd PCM16 bytes", [config(), voice_conversion_pb2.ConvertRequest(audio=b"\x00\x01\x02")], "audio"),
        ("over 1 MiB message", [config(), voice_conversion_pb2.ConvertRequest(audio=bytes((1 << 20) + 2))], "audio"),
        ("no audio before close", [config()], "audio"),
    ]
    for label, messages, field in cases:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await convert(stub, messages)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, label
        assert field in bad_fields(err.value), (label, bad_fields(err.value))
    await assert_still_serving(stub)


async def test_unknown_model_and_missing_rmvpe(stub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await convert(stub, [config(settings=settings("no-such-voice"))])
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await convert(stub, [config(settings=settings("../secrets"))])
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "config.settings.model" in bad_fields(err.value)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await convert(stub, [config(settings=settings(f0_method=conversion_pb2.F0_METHOD_RMVPE))])
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "rmvpe" in err.value.details().lower()
    await assert_still_serving(stub)


async def test_convert_clip_audio_errors(stub) -> None:
    wav_out = audio_pb2.AudioFormat(encoding=A.WAV)

    def clip(data: bytes, fmt: audio_pb2.AudioFormat, out=wav_out) -> voice_conversion_pb2.ConvertClipRequest:
        return voice_conversion_pb2.ConvertClipRequest(
            settings=settings(), audio=audio_pb2.AudioInput(audio=data, format=fmt), output_format=out
        )

    wav_in = audio_pb2.AudioFormat(encoding=A.WAV)
    pcm8k = audio_pb2.AudioFormat(encoding=A.PCM16, sample_rate_hz=8000)
    cases = [
        ("empty", clip(b"", wav_in), "audio.audio"),
        ("not a WAV", clip(b"RIFF-not-really-a-wave-file" * 10, wav_in), "audio"),
        ("over 10 minutes", clip(bytes(2 * 8000 * 601), pcm8k), "audio"),
        (
            "no output encoding",
            clip(A.float_to_pcm16(tone(0.2, rate=8000)), pcm8k, audio_pb2.AudioFormat()),
            "output_format.encoding",
        ),
    ]
    for label, request, field in cases:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.ConvertClip(request)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, label
        assert field in bad_fields(err.value), (label, bad_fields(err.value))
    await assert_still_serving(stub)


# ---------------------------------------------------------------------------------------------------- lifecycle


async def test_client_cancel_frees_the_stream(stub) -> None:
    queue: asyncio.Queue = asyncio.Queue()

    async def feed() -> AsyncIterator:
        while (message := await queue.get()) is not None:
            yield message

    call = stub.Convert(feed())
    for message in [config(), *audio_messages(tone(1.2))]:
        await queue.put(message)
    await asyncio.wait_for(call.read(), timeout=20)
    status = await stub.GetStatus(voice_conversion_pb2.VoiceConversionServiceGetStatusRequest())
    assert status.active_streams == 1
    call.cancel()
    last: list[voice_conversion_pb2.VoiceConversionServiceGetStatusResponse] = []

    async def idle() -> bool:
        last[:] = [await stub.GetStatus(voice_conversion_pb2.VoiceConversionServiceGetStatusRequest())]
        return last[0].active_streams == 0 and last[0].busy_workers == 0 and last[0].queue_depth == 0

    await async_wait_until(idle, within=10, what=lambda: f"the service to be idle again: {last}")


def health_status(address: str) -> int:
    with grpc.insecure_channel(address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=SERVICE), timeout=5)
        return int(reply.status)


def test_sigterm_lets_an_open_convert_stream_finish(tmp_path) -> None:
    service = start_rvc_service("--grace-seconds", "15", log_dir=tmp_path)
    try:
        with grpc.insecure_channel(service.address) as channel:
            stub = voice_conversion_pb2_grpc.VoiceConversionServiceStub(channel)
            sent_signal = []
            stream_open = threading.Event()

            def messages():
                yield config()
                for i, message in enumerate(audio_messages(tone(2.0), piece=2000)):
                    if i == 4:
                        # Only once the server is handling this call: a signal that beats the call's arrival would
                        # test refusal of a new RPC, not the drain of an open one.
                        assert stream_open.wait(30)
                        service.process.send_signal(signal.SIGTERM)  # mid-stream
                        sent_signal.append(True)
                        # The rest of the audio goes to a server that is draining.
                        wait_until(lambda: health_status(service.address) == NOT_SERVING, within=10, what="drain")
                    yield message

            call = stub.Convert(messages())
            call.initial_metadata()  # the service sends x-request-id when it starts handling the call
            stream_open.set()
            chunks = list(call)
        assert sent_signal and chunks[-1].is_final
        assert chunks[-1].summary.audio_duration.ToNanoseconds() == pytest.approx(2.0e9, abs=0.5e9)
        assert service.process.wait(20) == 0
    finally:
        service.stop()


def test_full_queue_gives_resource_exhausted_with_retry_info(tmp_path) -> None:
    service = start_rvc_service("--workers", "1", "--queue-capacity", "1", log_dir=tmp_path)
    try:
        request = voice_conversion_pb2.ConvertClipRequest(
            settings=settings(),
            audio=audio_pb2.AudioInput(audio=A.float_to_pcm16(tone(6.0)), format=PCM16_IN),
            output_format=audio_pb2.AudioFormat(encoding=A.PCM16),
        )

        async def burst() -> list[grpc.StatusCode | None]:
            async with grpc.aio.insecure_channel(service.address) as channel:
                stub = voice_conversion_pb2_grpc.VoiceConversionServiceStub(channel)

                async def one() -> grpc.StatusCode | None:
                    try:
                        await stub.ConvertClip(request)
                        return None
                    except grpc.aio.AioRpcError as err:
                        if err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                            retry = [d for d in status_details(err) if isinstance(d, error_details_pb2.RetryInfo)]
                            assert retry and retry[0].retry_delay.ToNanoseconds() > 0
                        return err.code()

                results = await asyncio.gather(*(one() for _ in range(5)))
                # Still serving after refusing: a later request succeeds.
                await stub.ConvertClip(request)
                return results

        results = asyncio.run(burst())
        assert grpc.StatusCode.RESOURCE_EXHAUSTED in results
        assert None in results  # the first ones were served
    finally:
        service.stop()


def test_restart_on_same_port(rvc_service_restartable: RvcServiceProcess) -> None:
    service = rvc_service_restartable
    address = service.address
    with grpc.insecure_channel(address) as channel:
        stub = voice_conversion_pb2_grpc.VoiceConversionServiceStub(channel)
        stub.ListModels(voice_conversion_pb2.ListModelsRequest(), timeout=10)
        assert service.stop() == 0
        with pytest.raises(grpc.RpcError) as err:
            stub.ListModels(voice_conversion_pb2.ListModelsRequest(), timeout=2)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        service.restart()
        assert service.address == address
        reply = stub.ListModels(voice_conversion_pb2.ListModelsRequest(), timeout=10, wait_for_ready=True)
        assert reply.models


async def test_inprocess_service_reports_its_pool(rvc_inprocess) -> None:
    async with grpc.aio.insecure_channel(rvc_inprocess.host.address) as channel:
        stub = voice_conversion_pb2_grpc.VoiceConversionServiceStub(channel)
        chunks = await convert(stub, [config(), *audio_messages(tone(0.6))])
        assert chunks[-1].is_final
        status = await stub.GetStatus(voice_conversion_pb2.VoiceConversionServiceGetStatusRequest())
    stats = rvc_inprocess.pool.stats()
    assert (status.workers, status.queue_capacity) == (stats.workers, stats.queue_capacity)
    assert status.active_streams == rvc_inprocess.servicer.active_streams == 0
