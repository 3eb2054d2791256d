"""The gateway end to end: real Triton (Piper), real voice-conversion service, real gateway process."""

from __future__ import annotations

import asyncio
import io
import re
import signal
import time
import urllib.request

import grpc
import numpy as np
import pytest
import soundfile as sf
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from services.common.errors import status_details
from tests.fixtures.gateway import GatewayProcess, start_gateway
from tests.waiting import async_wait_until, async_wait_until_steady
from voice.v1 import (
    audio_pb2,
    conversion_pb2,
    tts_gateway_pb2,
    tts_gateway_pb2_grpc,
    voice_conversion_pb2,
    voice_conversion_pb2_grpc,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

SERVICE = "voice.v1.TtsGatewayService"
PARAGRAPH = (
    "The weather was calm when we left the harbour. By noon the wind had picked up considerably. "
    "We reached the island just before the storm."
)
FIVE = (
    "The first sentence is here. Then a second one follows it. A third keeps things going. "
    "The fourth is nearly the last. And this is the final sentence of the paragraph."
)
PCM16, WAV, OPUS = audio_pb2.AUDIO_ENCODING_PCM16, audio_pb2.AUDIO_ENCODING_WAV, audio_pb2.AUDIO_ENCODING_OGG_OPUS


def seconds(d: object) -> float:
    return d.ToNanoseconds() / 1e9  # type: ignore[attr-defined]


def request(text: str = PARAGRAPH, voice: str = "joe", encoding: int = PCM16, rate: int = 0, **kw: object):
    return tts_gateway_pb2.SynthesizeRequest(
        text=text, voice=voice, output_format=audio_pb2.AudioFormat(encoding=encoding, sample_rate_hz=rate), **kw
    )


async def collect(stub: tts_gateway_pb2_grpc.TtsGatewayServiceStub, req: tts_gateway_pb2.SynthesizeRequest):
    """(chunks, arrival times relative to the call, trailing metadata)."""
    started = time.perf_counter()
    call = stub.Synthesize(req, timeout=120)
    chunks, times = [], []
    async for chunk in call:
        chunks.append(chunk)
        times.append(time.perf_counter() - started)
    return chunks, times, await call.trailing_metadata()


def pcm(chunks: list[audio_pb2.AudioChunk]) -> np.ndarray:
    return np.frombuffer(b"".join(c.audio for c in chunks), dtype="<i2").astype(np.float32) / 32768


def harvest_f0(x: np.ndarray, rate: int) -> np.ndarray:
    """F0 per 5 ms frame by WORLD Harvest (0 where unvoiced)."""
    import pyworld

    f0, _ = pyworld.harvest(x.astype(np.float64), rate, f0_floor=60.0, f0_ceil=500.0)
    return np.asarray(f0)


def median_shift_semitones(y: np.ndarray, z: np.ndarray, rate: int) -> float:
    """Median over frames voiced in both of the F0 ratio y/z, in semitones. Frame by frame, not a ratio of medians:
    Harvest reads this low voice (85-100 Hz) an octave high in stretches of ~100 ms, and which stretches flip moves
    with tiny changes of the waveform (a conversion block's size, 1 ms of leading silence), so each signal's own
    median wanders by semitones while the frame-wise ratio stays within 0.1 of the shift."""
    fy, fz = harvest_f0(y, rate), harvest_f0(z, rate)
    n = min(fy.size, fz.size)
    both = (fy[:n] > 0) & (fz[:n] > 0)
    assert both.sum() > 20, "too few frames voiced in both to measure a shift"
    return float(np.median(12 * np.log2(fy[:n][both] / fz[:n][both])))


@pytest.fixture
async def stub(gateway: GatewayProcess):
    async with grpc.aio.insecure_channel(gateway.address) as channel:
        yield tts_gateway_pb2_grpc.TtsGatewayServiceStub(channel)


def check_stream(chunks: list[audio_pb2.AudioChunk], encoding: int, rate: int) -> audio_pb2.SynthesisSummary:
    """Order, offsets, formats and the summary's totals agree."""
    assert [c.sequence_number for c in chunks] == list(range(len(chunks)))
    assert all(not c.is_final for c in chunks[:-1]) and chunks[-1].is_final
    assert all(c.format.encoding == encoding and c.format.sample_rate_hz == rate for c in chunks)
    assert len({c.request_id for c in chunks}) == 1
    position = 0.0
    for c in chunks:
        assert seconds(c.offset) == pytest.approx(position, abs=1e-6)
        position += seconds(c.duration)
    segments = [c.segment_index for c in chunks]
    assert segments == sorted(segments)
    summary = chunks[-1].summary
    assert seconds(summary.audio_duration) == pytest.approx(position, abs=1e-3)
    return summary


async def test_paragraph_streams_ordered_wav_matching_the_summary(stub) -> None:
    chunks, _, trailing = await collect(stub, request(encoding=WAV, rate=16000))
    summary = check_stream(chunks, WAV, 16000)
    assert summary.segment_count >= 3 and summary.processed_text == PARAGRAPH
    data = b"".join(c.audio for c in chunks)
    assert data[:4] == b"RIFF" and sum(c.audio.count(b"RIFF") for c in chunks[1:]) == 0  # header once
    audio, sr = sf.read(io.BytesIO(data), dtype="float32")
    assert sr == 16000
    assert audio.size / sr == pytest.approx(seconds(summary.audio_duration), abs=0.01)
    # Plausible speech: 10-25 characters per second.
    assert len(PARAGRAPH) / 25 < audio.size / sr < len(PARAGRAPH) / 10
    assert 0 < seconds(summary.time_to_first_audio) < seconds(summary.total_time)
    assert summary.real_time_factor == pytest.approx(seconds(summary.total_time) / (audio.size / sr), rel=1e-3)
    texts = [c.segment_text for c in chunks if c.segment_text]
    assert " ".join(texts) == PARAGRAPH  # each segment's text once, on its first chunk
    trailer = dict(trailing)
    assert audio_pb2.SynthesisSummary.FromString(trailer["x-summary-bin"]) == summary


async def test_ogg_opus_at_48k_decodes_to_the_summarized_length(stub) -> None:
    chunks, _, _ = await collect(stub, request(encoding=OPUS, rate=48000))
    summary = check_stream(chunks, OPUS, 48000)
    audio, sr = sf.read(io.BytesIO(b"".join(c.audio for c in chunks)), dtype="float32")
    assert sr == 48000
    assert audio.size / sr == pytest.approx(seconds(summary.audio_duration), abs=0.03)


async def test_pcm16_native_rate_and_non_streaming_model_agree_in_length(stub) -> None:
    streamed, _, _ = await collect(stub, request(encoding=PCM16))
    whole, _, _ = await collect(stub, request(encoding=PCM16, voice="joe-whole"))
    a = check_stream(streamed, PCM16, 22050)
    b = check_stream(whole, PCM16, 22050)
    assert pcm(streamed).size / 22050 == pytest.approx(seconds(a.audio_duration), abs=1e-3)
    assert seconds(a.audio_duration) == pytest.approx(seconds(b.audio_duration), rel=0.15)


DETERMINISTIC_VOICES = """
[[voice]]
name = "joe-still"
tts_model = "piper_tts"
noise_scale = 0.0
noise_w = 0.0

[voice.conversion]
model = "world-default"
pitch_shift_semitones = 4.0
formant_shift_semitones = 1.5
"""


async def test_world_conversion_changes_the_audio_and_shifts_f0_by_the_configured_semitones(
    gateway_factory, tmp_path
) -> None:
    # Piper's noise makes every render a little different (median F0 moves by up to ~2 semitones between renders),
    # so this gateway's voice fixes the noise controls: all three requests convert the very same speech.
    voices_file = tmp_path / "voices.toml"
    voices_file.write_text(DETERMINISTIC_VOICES)
    gateway = gateway_factory("--voices", str(voices_file))
    async with grpc.aio.insecure_channel(gateway.address) as channel:
        stub = tts_gateway_pb2_grpc.TtsGatewayServiceStub(channel)
        voices = {v.name: v for v in (await stub.ListVoices(tts_gateway_pb2.ListVoicesRequest())).voices}
        configured = voices["joe-still"].default_conversion.pitch_shift_semitones
        assert configured == 4.0
        plain, _, _ = await collect(stub, request(voice="joe-still", disable_conversion=True))
        again, _, _ = await collect(stub, request(voice="joe-still", disable_conversion=True))
        converted, _, _ = await collect(stub, request(voice="joe-still"))
        # The same conversion with only the pitch shift overridden to 0: WORLD resynthesis itself moves the
        # estimators' F0 a little, so the configured shift is measured against it.
        unshifted, _, _ = await collect(
            stub, request(voice="joe-still", conversion=conversion_pb2.ConversionSettings(pitch_shift_semitones=0))
        )
    s_plain, s_conv = check_stream(plain, PCM16, 22050), check_stream(converted, PCM16, 22050)
    check_stream(unshifted, PCM16, 22050)
    assert seconds(s_plain.conversion_time) == 0 and seconds(s_conv.conversion_time) > 0
    x, y, z = pcm(plain), pcm(converted), pcm(unshifted)
    np.testing.assert_array_equal(x, pcm(again))  # the voice really is deterministic
    assert y.size / x.size == pytest.approx(1.0, abs=0.05)  # same words, same length (± a conversion block)
    n = min(x.size, y.size)
    assert abs(np.corrcoef(x[:n], y[:n])[0, 1]) < 0.5  # conversion really changed the waveform
    measured = median_shift_semitones(y, z, 22050)
    assert measured == pytest.approx(configured, abs=0.75)


async def test_first_audio_leaves_before_the_last_sentence_is_synthesized(stub) -> None:
    chunks, times, _ = await collect(stub, request(text=FIVE))
    summary = check_stream(chunks, PCM16, 22050)
    assert summary.segment_count >= 5
    last_segment_first_chunk = next(
        t for c, t in zip(chunks, times, strict=True) if c.segment_index == summary.segment_count - 1
    )
    assert times[0] < last_segment_first_chunk
    assert seconds(summary.time_to_first_audio) < 0.6 * seconds(summary.tts_time)


async def test_bidi_text_stream_gets_audio_before_the_input_ends(gateway: GatewayProcess) -> None:
    async with grpc.aio.insecure_channel(gateway.address) as channel:
        call = tts_gateway_pb2_grpc.TtsGatewayServiceStub(channel).StreamingSynthesize(timeout=120)
        config = tts_gateway_pb2.StreamingSynthesizeConfig(
            voice="joe", output_format=audio_pb2.AudioFormat(encoding=PCM16)
        )
        await call.write(tts_gateway_pb2.StreamingSynthesizeRequest(config=config))
        for token in ["The first", " sentence is", " complete. The sec", "ond is not"]:
            await call.write(tts_gateway_pb2.StreamingSynthesizeRequest(text=token))
        first = await asyncio.wait_for(call.read(), timeout=30)  # input still open
        assert first.segment_index == 0 and first.segment_text == "The first sentence is complete."
        assert seconds(first.duration) > 0
        await call.write(tts_gateway_pb2.StreamingSynthesizeRequest(text=" yet"))
        await call.write(
            tts_gateway_pb2.StreamingSynthesizeRequest(flush=tts_gateway_pb2.StreamingSynthesizeRequest.Flush())
        )
        await call.write(tts_gateway_pb2.StreamingSynthesizeRequest(text="Done now."))
        await call.done_writing()
        chunks = [first]
        while (chunk := await call.read()) is not grpc.aio.EOF:
            chunks.append(chunk)
        summary = check_stream(chunks, PCM16, 22050)
        assert summary.segment_count == 3
        assert summary.processed_text == "The first sentence is complete. The second is not yet Done now."


async def _rvc_active_streams(address: str) -> int:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = voice_conversion_pb2_grpc.VoiceConversionServiceStub(channel)
        status = await stub.GetStatus(voice_conversion_pb2.VoiceConversionServiceGetStatusRequest(), timeout=5)
        return status.active_streams


def _triton_pieces(metrics_url: str) -> float:
    with urllib.request.urlopen(metrics_url, timeout=5) as response:
        text = response.read().decode()
    return sum(float(m) for m in re.findall(r'^tts_pieces_total\{[^}]*model="piper_tts"[^}]*\} (\S+)', text, re.M))


async def _no_conversion_streams(address: str, when: str) -> None:
    async def closed() -> bool:
        return await _rvc_active_streams(address) == 0

    await async_wait_until(closed, within=5, interval=0.1, what=f"the conversion stream to close {when}")


async def _triton_stops(metrics_url: str, pieces_at_start: float, when: str) -> None:
    """Triton's piece counter settles (quiet for 2 s) with at most the sentence in synthesis finished, and the
    story (30 sentences) never completed."""
    at_stop = _triton_pieces(metrics_url)
    settled = await async_wait_until_steady(
        lambda: _triton_pieces(metrics_url), quiet=2.0, within=10, what=f"Triton's piece count {when}"
    )
    assert settled - at_stop <= 1, f"Triton kept synthesizing {when}: {settled - at_stop:g} more pieces"
    assert settled - pieces_at_start < 30  # it never got through the whole story


async def test_cancel_mid_stream_ends_the_triton_and_conversion_streams(
    stub, gateway, triton_server, rvc_service
) -> None:
    long_text = " ".join(f"This is sentence number {i} of a long story." for i in range(30))
    pieces_at_start = _triton_pieces(triton_server.metrics_url)  # the counter is cumulative over the session
    call = stub.Synthesize(request(text=long_text, voice="joe-world-high"), timeout=120)
    for _ in range(2):
        assert await call.read() is not grpc.aio.EOF
    assert await _rvc_active_streams(rvc_service.address) >= 1
    call.cancel()
    await _no_conversion_streams(rvc_service.address, "after cancel")
    await _triton_stops(triton_server.metrics_url, pieces_at_start, "after cancel")
    status = await stub.GetStatus(tts_gateway_pb2.TtsGatewayServiceGetStatusRequest())
    assert status.active_streams == 0


async def test_deadline_ends_the_triton_and_conversion_streams(stub, triton_server, rvc_service) -> None:
    long_text = " ".join(f"Here is line number {i} of a story that runs past its deadline." for i in range(30))
    pieces_at_start = _triton_pieces(triton_server.metrics_url)
    started = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for _ in stub.Synthesize(request(text=long_text, voice="joe-world-high"), timeout=1.5):
            pass
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 3
    await _no_conversion_streams(rvc_service.address, "after the deadline")
    await _triton_stops(triton_server.metrics_url, pieces_at_start, "after the deadline")
    status = await stub.GetStatus(tts_gateway_pb2.TtsGatewayServiceGetStatusRequest())
    assert status.active_streams == 0


async def test_bad_inputs_get_their_status_and_the_gateway_keeps_serving(stub) -> None:
    ref = audio_pb2.AudioInput(audio=b"not audio", format=audio_pb2.AudioFormat(encoding=WAV))
    cases = [
        (request(text="   "), grpc.StatusCode.INVALID_ARGUMENT, "text"),
        (request(text="a" * 100_000), grpc.StatusCode.INVALID_ARGUMENT, "text"),
        (request(voice="nobody"), grpc.StatusCode.NOT_FOUND, None),
        (request(instruct=tts_gateway_pb2.Instruct(instruction="softly")), grpc.StatusCode.FAILED_PRECONDITION, None),
        (
            request(zero_shot=tts_gateway_pb2.ZeroShot(reference_audio=ref, reference_text="hi")),
            grpc.StatusCode.INVALID_ARGUMENT,
            "zero_shot.reference_audio.audio",
        ),
        (request(encoding=PCM16, rate=1234), grpc.StatusCode.INVALID_ARGUMENT, "output_format.sample_rate_hz"),
        (request(encoding=OPUS, rate=44100), grpc.StatusCode.INVALID_ARGUMENT, "output_format.sample_rate_hz"),
        (
            request(encoding=audio_pb2.AUDIO_ENCODING_UNSPECIFIED),
            grpc.StatusCode.INVALID_ARGUMENT,
            "output_format.encoding",
        ),
        (
            request(voice="joe-world-high", conversion=conversion_pb2.ConversionSettings(pitch_shift_semitones=30)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "conversion.pitch_shift_semitones",
        ),
        (
            request(conversion=conversion_pb2.ConversionSettings(protect=0.9), disable_conversion=True),
            grpc.StatusCode.INVALID_ARGUMENT,
            "conversion.protect",
        ),
        (request(speaking_rate=5.0), grpc.StatusCode.INVALID_ARGUMENT, "speaking_rate"),
        (
            request(conversion=conversion_pb2.ConversionSettings(model="no-such-model")),
            grpc.StatusCode.NOT_FOUND,
            None,
        ),
    ]
    for req, code, field in cases:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await collect(stub, req)
        assert info.value.code() == code, (req, info.value.details())
        if field is not None:
            violations = [
                v.field
                for d in status_details(info.value)
                if isinstance(d, error_details_pb2.BadRequest)
                for v in d.field_violations
            ]
            assert field in violations, (field, violations)
    chunks, _, _ = await collect(stub, request(text="Still here."))
    assert chunks[-1].is_final


async def test_health_reflection_status_and_voices(gateway: GatewayProcess, stub) -> None:
    async with grpc.aio.insecure_channel(gateway.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        reply = await health.Check(health_pb2.HealthCheckRequest(service=SERVICE))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        names = [s.name async for r in responses for s in r.list_services_response.service]
        assert SERVICE in names
    voices = (await stub.ListVoices(tts_gateway_pb2.ListVoicesRequest(language_code="en"))).voices
    joe = next(v for v in voices if v.name == "joe")
    assert joe.native_sample_rate_hz == 22050 and joe.streaming and joe.tts_model == "piper_tts"
    assert list(joe.supported_modes) == [tts_gateway_pb2.SYNTHESIS_MODE_PRESET_SPEAKER]
    assert not (await stub.ListVoices(tts_gateway_pb2.ListVoicesRequest(language_code="de"))).voices
    await collect(stub, request(text="Warm up the statistics."))
    status = await stub.GetStatus(tts_gateway_pb2.TtsGatewayServiceGetStatusRequest())
    assert {u.name: u.serving for u in status.upstreams} == {
        "triton": True,
        "voice_conversion": True,
        "saved_voices": True,
    }
    assert next(u for u in status.upstreams if u.name == "triton").version
    stages = {s.stage: s for s in status.stage_latencies}
    assert {"time_to_first_audio", "tts_segment"} <= set(stages)
    assert stages["time_to_first_audio"].count >= 1
    admission = status.admission
    assert (admission.queued_streams, admission.waiting_keys) == (0, 0)  # idle: nothing waits
    assert admission.queue_capacity > 0 and admission.max_wait.ToTimedelta().total_seconds() > 0
    assert admission.host_load_source in {"psi", "proc_stat", "process_times", "off"}
    assert 0.0 <= admission.host_cpu_saturation <= 1.0 and 0.0 < admission.target_load <= 1.0


async def test_concurrency_limit_refuses_at_once_with_retry_info(gateway_factory) -> None:
    limited = gateway_factory("--max-concurrent-streams=1")
    async with grpc.aio.insecure_channel(limited.address) as channel:
        stub = tts_gateway_pb2_grpc.TtsGatewayServiceStub(channel)
        first = stub.Synthesize(request(text=FIVE), timeout=120)
        await first.read()
        started = time.perf_counter()
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await collect(stub, request(text="One too many."))
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert time.perf_counter() - started < 1.0
        assert any(isinstance(d, error_details_pb2.RetryInfo) for d in status_details(info.value))
        while await first.read() is not grpc.aio.EOF:
            pass
        chunks, _, _ = await collect(stub, request(text="Now there is room."))
        assert chunks[-1].is_final


async def test_sigterm_lets_an_open_stream_finish(gateway_factory) -> None:
    process = gateway_factory()
    async with grpc.aio.insecure_channel(process.address) as channel:
        stub = tts_gateway_pb2_grpc.TtsGatewayServiceStub(channel)
        call = stub.Synthesize(request(text=FIVE), timeout=120)
        chunks = [await call.read()]
        process.process.send_signal(signal.SIGTERM)
        while (chunk := await call.read()) is not grpc.aio.EOF:
            chunks.append(chunk)
        assert await call.code() == grpc.StatusCode.OK
        check_stream(chunks, PCM16, 22050)
        assert chunks[-1].summary.segment_count >= 5
    assert await asyncio.to_thread(process.process.wait, 30) == 0


async def test_conversion_service_down_gives_unavailable_fast_and_recovers(
    gateway, stub, rvc_service_restartable
) -> None:
    rvc = rvc_service_restartable
    rvc.stop()

    async def voice_availability() -> dict[str, tuple[bool, str]]:
        voices = await stub.ListVoices(tts_gateway_pb2.ListVoicesRequest())
        return {v.name: (v.available, v.unavailable_reason) for v in voices.voices}

    async def converted_voice_available() -> bool:
        return (await voice_availability())["joe-world-high"][0]

    async def converted_voice_down() -> bool:
        return not await converted_voice_available()

    # The probe notices within its interval.
    await async_wait_until(converted_voice_down, within=10, interval=0.1, what="joe-world-high to be unavailable")
    started = time.perf_counter()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await collect(stub, request(text="Convert me.", voice="joe-world-high"))
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert time.perf_counter() - started < 1.0
    assert "voice conversion" in (info.value.details() or "")
    availability = await voice_availability()
    assert availability["joe"] == (True, "")
    assert not availability["joe-world-high"][0] and "voice conversion" in availability["joe-world-high"][1]
    status = await stub.GetStatus(tts_gateway_pb2.TtsGatewayServiceGetStatusRequest())
    assert {v.name: v.available for v in status.voices} == {"joe": True, "joe-whole": True, "joe-world-high": False}
    async with grpc.aio.insecure_channel(gateway.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        # One outage must not take every voice out of rotation: plain voices still serve, so the service does too.
        reply = await health.Check(health_pb2.HealthCheckRequest(service=SERVICE))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        plain, _, _ = await collect(stub, request(text="No conversion needed."))
        assert plain[-1].is_final
        await asyncio.to_thread(rvc.restart)
    await async_wait_until(
        converted_voice_available, within=5, interval=0.1, what="the converted voice to be back with its service"
    )
    chunks, _, _ = await collect(stub, request(text="Converted again.", voice="joe-world-high"))
    assert seconds(chunks[-1].summary.conversion_time) > 0
    assert gateway.running


async def test_triton_unreachable_gives_unavailable_naming_triton(rvc_service, tmp_path) -> None:
    from tests.fixtures.triton_server import free_ports

    (dead_port,) = free_ports(1)
    process = start_gateway(f"127.0.0.1:{dead_port}", rvc_service.address, log_dir=tmp_path)
    try:
        async with grpc.aio.insecure_channel(process.address) as channel:
            stub = tts_gateway_pb2_grpc.TtsGatewayServiceStub(channel)
            started = time.perf_counter()
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await collect(stub, request(text="Anyone there?"))
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "triton" in (info.value.details() or "")
            assert time.perf_counter() - started < 1.0
            health = health_pb2_grpc.HealthStub(channel)
            reply = await health.Check(health_pb2.HealthCheckRequest(service=SERVICE))
            assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
            status = await stub.GetStatus(tts_gateway_pb2.TtsGatewayServiceGetStatusRequest())
            triton = next(u for u in status.upstreams if u.name == "triton")
            assert not triton.serving and triton.last_error
    finally:
        process.stop()
