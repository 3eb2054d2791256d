"""Saved voices end to end: CreateVoice/GetVoice/DeleteVoice/ListVoices on the real gateway, Spark-TTS on real Triton.

The independent check for "the stored reference is what reaches Triton": Synthesize on a saved voice must give the
same PCM, byte for byte, as a zero-shot (or cross-lingual) request on its base voice carrying the original clip, its
transcript, the same text and the same seed. The Triton side is checked with Triton's own nv_* metrics.
"""

from __future__ import annotations

import io
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import soundfile as sf

from tests.fixtures.gateway import GatewayProcess
from tests.fixtures.spark import start_spark_gateway
from tests.fixtures.triton_server import TritonServer
from tests.prometheus import metric, scrape
from tests.spark.helpers import RATE, speech_like
from voice.v1 import audio_pb2, tts_gateway_pb2, tts_gateway_pb2_grpc

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

PCM16, WAV = audio_pb2.AUDIO_ENCODING_PCM16, audio_pb2.AUDIO_ENCODING_WAV
TRANSCRIPT = "This is how I sound when I read aloud."
TEXT = "Hello from a saved voice."
TWO_SENTENCES = "The first sentence is short. The second one follows it."
RPC_TIMEOUT_S = 180.0

Stub = tts_gateway_pb2_grpc.TtsGatewayServiceStub


def wav_input(samples: np.ndarray, rate: int = RATE) -> audio_pb2.AudioInput:
    buffer = io.BytesIO()
    sf.write(buffer, samples, rate, format="WAV", subtype="PCM_16")
    return audio_pb2.AudioInput(audio=buffer.getvalue(), format=audio_pb2.AudioFormat(encoding=WAV))


def unique_name(prefix: str) -> str:
    """The session gateway is shared with other test files: every voice gets a name no other test uses."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def create_request(
    name: str, reference: audio_pb2.AudioInput | None, transcript: str = "", base: str = "spark", description: str = ""
) -> tts_gateway_pb2.CreateVoiceRequest:
    request = tts_gateway_pb2.CreateVoiceRequest(
        name=name, base_voice=base, reference_text=transcript, description=description
    )
    if reference is not None:
        request.reference_audio.CopyFrom(reference)
    return request


def synthesize(stub: Stub, voice: str, text: str, seed: int, **fields: Any) -> list[audio_pb2.AudioChunk]:
    request = tts_gateway_pb2.SynthesizeRequest(
        text=text, voice=voice, seed=seed, output_format=audio_pb2.AudioFormat(encoding=PCM16), **fields
    )
    return list(stub.Synthesize(request, timeout=RPC_TIMEOUT_S))


def pcm_bytes(chunks: list[audio_pb2.AudioChunk]) -> bytes:
    return b"".join(chunk.audio for chunk in chunks)


def rates(chunks: list[audio_pb2.AudioChunk]) -> set[int]:
    return {chunk.format.sample_rate_hz for chunk in chunks if chunk.audio}


def rpc_error(call: Callable[[], object]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


def tokenizer_runs(triton: TritonServer) -> float:
    return metric(scrape(triton.metrics_url), "nv_inference_request_success", model="spark_audio_tokenizer")


def connect(gateway: GatewayProcess) -> tuple[grpc.Channel, Stub]:
    channel = grpc.insecure_channel(gateway.address)
    return channel, tts_gateway_pb2_grpc.TtsGatewayServiceStub(channel)


@pytest.fixture
def stub(spark_gateway: GatewayProcess) -> Iterator[Stub]:
    channel, client = connect(spark_gateway)
    yield client
    channel.close()


@pytest.fixture
def saved(stub: Stub) -> Iterator[Callable[..., tts_gateway_pb2.Voice]]:
    """create(name, reference, transcript=..., base=...) on the session gateway; deletes the voice after the test."""
    names: list[str] = []

    def create(name: str, reference: audio_pb2.AudioInput, transcript: str = "", base: str = "spark") -> Any:
        voice = stub.CreateVoice(create_request(name, reference, transcript, base), timeout=RPC_TIMEOUT_S).voice
        names.append(name)
        return voice

    yield create
    for name in names:
        try:
            stub.DeleteVoice(tts_gateway_pb2.DeleteVoiceRequest(name=name), timeout=30)
        except grpc.RpcError as exc:  # a test that deleted its own voice already
            if exc.code() != grpc.StatusCode.NOT_FOUND:
                raise


@pytest.fixture
def own_gateway(
    spark_triton: TritonServer, rvc_service: Any, tmp_path: Path
) -> Iterator[Callable[..., GatewayProcess]]:
    """start(saved_dir, *flags): a gateway of this test's own (its saved-voice dir is not shared); stopped after."""
    started: list[GatewayProcess] = []

    def start(saved_dir: Path, *flags: str) -> GatewayProcess:
        log_dir = tmp_path / f"gateway-{len(started)}"
        log_dir.mkdir()
        process = start_spark_gateway(
            spark_triton, rvc_service.address, log_dir, f"--saved-voices-dir={saved_dir}", *flags
        )
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


# ---------------------------------------------------------------------------------------------------- cloning modes


def test_saved_voice_with_transcript_clones_zero_shot(stub: Stub, saved: Callable[..., Any]) -> None:
    clip = speech_like(3.0, f0=150.0, seed=101)
    reference = wav_input(clip)
    name = unique_name("zs")
    voice = saved(name, reference, TRANSCRIPT)

    assert voice.name == name
    assert voice.saved.base_voice == "spark"
    assert voice.saved.reference_text == TRANSCRIPT
    assert list(voice.supported_modes) == [tts_gateway_pb2.SYNTHESIS_MODE_ZERO_SHOT]
    assert abs(voice.saved.reference_duration.ToNanoseconds() / 1e9 - clip.size / RATE) < 0.01
    assert voice.saved.size_bytes > 0
    assert voice.tts_model == "spark_tts" and voice.native_sample_rate_hz == RATE
    assert voice.available and not voice.HasField("default_conversion")

    everything = {v.name: v for v in stub.ListVoices(tts_gateway_pb2.ListVoicesRequest(), timeout=30).voices}
    assert everything[name] == voice
    assert {"spark", "spark-world", "joe"} <= set(everything)
    saved_only = stub.ListVoices(tts_gateway_pb2.ListVoicesRequest(saved_only=True), timeout=30).voices
    assert name in {v.name for v in saved_only}
    assert all(v.HasField("saved") for v in saved_only), [v.name for v in saved_only if not v.HasField("saved")]
    assert stub.GetVoice(tts_gateway_pb2.GetVoiceRequest(name=name), timeout=30).voice == voice

    chunks = synthesize(stub, name, TEXT, seed=7)
    assert rates(chunks) == {RATE}
    assert all(chunk.format.encoding == PCM16 for chunk in chunks if chunk.audio)
    audio = pcm_bytes(chunks)
    assert len(audio) > 0 and chunks[-1].is_final
    assert chunks[-1].summary.audio_duration.ToNanoseconds() > 0
    assert pcm_bytes(synthesize(stub, name, TEXT, seed=7)) == audio  # same seed, same audio

    # The independent path: the original clip and transcript sent with the request, on the base voice.
    direct = synthesize(
        stub,
        "spark",
        TEXT,
        seed=7,
        zero_shot=tts_gateway_pb2.ZeroShot(reference_audio=reference, reference_text=TRANSCRIPT),
    )
    assert pcm_bytes(direct) == audio


def test_saved_voice_without_transcript_clones_cross_lingual(stub: Stub, saved: Callable[..., Any]) -> None:
    # 22.05 kHz, so the stored clip must be resampled to the model's reference rate on the saved path too.
    rate = 22050
    reference = wav_input(speech_like(2.5, f0=210.0, rate=rate, seed=102), rate)
    name = unique_name("xl")
    voice = saved(name, reference)

    assert list(voice.supported_modes) == [tts_gateway_pb2.SYNTHESIS_MODE_CROSS_LINGUAL]
    assert voice.saved.reference_text == ""
    assert abs(voice.saved.reference_duration.ToNanoseconds() / 1e9 - 2.5) < 0.01

    audio = pcm_bytes(synthesize(stub, name, TEXT, seed=8))
    assert len(audio) > 0
    direct = synthesize(
        stub, "spark", TEXT, seed=8, cross_lingual=tts_gateway_pb2.CrossLingual(reference_audio=reference)
    )
    assert pcm_bytes(direct) == audio


def test_two_saved_voices_from_different_speakers_sound_different(stub: Stub, saved: Callable[..., Any]) -> None:
    """Guards the equivalence tests: if the reference were ignored, every clone would sound the same."""
    low, high = unique_name("low"), unique_name("high")
    saved(low, wav_input(speech_like(3.0, f0=110.0, seed=103)), TRANSCRIPT)
    saved(high, wav_input(speech_like(3.0, f0=260.0, seed=104)), TRANSCRIPT)
    assert pcm_bytes(synthesize(stub, low, TEXT, seed=9)) != pcm_bytes(synthesize(stub, high, TEXT, seed=9))


# ----------------------------------------------------------------------------------------------------------- errors


def _create_error_cases() -> list[Any]:
    good = wav_input(speech_like(2.0, seed=105))
    return [
        pytest.param(create_request("", good), grpc.StatusCode.INVALID_ARGUMENT, "name: must not be empty", id="empty"),
        pytest.param(
            create_request("../x", good), grpc.StatusCode.INVALID_ARGUMENT, "start with a letter or digit", id="dotdot"
        ),
        pytest.param(create_request("a b", good), grpc.StatusCode.INVALID_ARGUMENT, "contains ' '", id="space"),
        pytest.param(
            create_request("joe", good),
            grpc.StatusCode.ALREADY_EXISTS,
            "already exists as a configured voice",
            id="cfg",
        ),
        pytest.param(
            create_request(unique_name("nobase"), good, base="no-such-voice"),
            grpc.StatusCode.NOT_FOUND,
            "unknown base voice 'no-such-voice'",
            id="unknown-base",
        ),
        pytest.param(
            create_request(unique_name("piper"), good, TRANSCRIPT, base="joe"),
            grpc.StatusCode.FAILED_PRECONDITION,
            "base voice 'joe' (model piper_tts) cannot clone",
            id="piper-base",
        ),
        pytest.param(
            create_request(unique_name("short"), wav_input(speech_like(0.5, seed=106))),
            grpc.StatusCode.INVALID_ARGUMENT,
            "reference_audio.audio: is 0.50 s",
            id="short",
        ),
        pytest.param(
            create_request(unique_name("silent"), wav_input(np.zeros(3 * RATE, np.float32))),
            grpc.StatusCode.INVALID_ARGUMENT,
            "silent",
            id="silent",
        ),
        pytest.param(
            create_request(unique_name("noref"), None),
            grpc.StatusCode.INVALID_ARGUMENT,
            "reference_audio: is required",
            id="no-reference",
        ),
    ]


@pytest.mark.parametrize(("request_", "code", "message"), _create_error_cases())
def test_create_voice_errors_say_what_to_fix(
    stub: Stub, request_: tts_gateway_pb2.CreateVoiceRequest, code: grpc.StatusCode, message: str
) -> None:
    error = rpc_error(lambda: stub.CreateVoice(request_, timeout=RPC_TIMEOUT_S))
    assert error.code() == code, error.details()
    assert message in error.details()
    if request_.name:  # nothing was saved under the rejected name (except the configured voice that owns it)
        found = stub.ListVoices(tts_gateway_pb2.ListVoicesRequest(saved_only=True), timeout=30).voices
        assert request_.name not in {v.name for v in found}


def test_duplicate_name_and_other_errors_leave_the_gateway_serving(stub: Stub, saved: Callable[..., Any]) -> None:
    reference = wav_input(speech_like(2.0, f0=170.0, seed=107))
    name = unique_name("dup")
    first = saved(name, reference, TRANSCRIPT)

    error = rpc_error(lambda: stub.CreateVoice(create_request(name, reference), timeout=RPC_TIMEOUT_S))
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS
    assert f"saved voice {name!r} already exists" in error.details()
    # The failed create changed nothing: still a zero-shot voice with the first transcript.
    assert stub.GetVoice(tts_gateway_pb2.GetVoiceRequest(name=name), timeout=30).voice == first

    error = rpc_error(lambda: stub.GetVoice(tts_gateway_pb2.GetVoiceRequest(name="no-such-saved-voice"), timeout=30))
    assert error.code() == grpc.StatusCode.NOT_FOUND and "no-such-saved-voice" in error.details()
    error = rpc_error(
        lambda: stub.DeleteVoice(tts_gateway_pb2.DeleteVoiceRequest(name="no-such-saved-voice"), timeout=30)
    )
    assert error.code() == grpc.StatusCode.NOT_FOUND and "no saved voice named 'no-such-saved-voice'" in error.details()
    error = rpc_error(lambda: stub.DeleteVoice(tts_gateway_pb2.DeleteVoiceRequest(name="spark"), timeout=30))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION and "cannot be deleted" in error.details()
    assert stub.GetVoice(tts_gateway_pb2.GetVoiceRequest(name="spark"), timeout=30).voice.name == "spark"

    # A saved voice brings its own reference: a mode in the request is a mistake, not an override.
    for mode in (
        {"zero_shot": tts_gateway_pb2.ZeroShot(reference_audio=reference, reference_text="other words")},
        {"cross_lingual": tts_gateway_pb2.CrossLingual(reference_audio=reference)},
    ):
        error = rpc_error(lambda mode=mode: synthesize(stub, name, TEXT, seed=1, **mode))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "saved voice and brings its own reference: leave mode unset" in error.details()

    assert len(pcm_bytes(synthesize(stub, name, TEXT, seed=2))) > 0
    assert (
        len(
            pcm_bytes(
                synthesize(
                    stub,
                    "spark",
                    TEXT,
                    seed=2,
                    zero_shot=tts_gateway_pb2.ZeroShot(reference_audio=reference, reference_text=TRANSCRIPT),
                )
            )
        )
        > 0
    )


def test_deleted_voice_is_gone_everywhere(stub: Stub, saved: Callable[..., Any], spark_gateway: GatewayProcess) -> None:
    name = unique_name("gone")
    created = saved(name, wav_input(speech_like(2.0, seed=108)), TRANSCRIPT)
    assert (spark_gateway.saved_dir / name).is_dir()  # type: ignore[attr-defined]

    deleted = stub.DeleteVoice(tts_gateway_pb2.DeleteVoiceRequest(name=name), timeout=30).voice
    assert deleted.name == name and deleted.saved.base_voice == "spark"
    assert deleted.saved.size_bytes == created.saved.size_bytes
    assert not (spark_gateway.saved_dir / name).exists()  # type: ignore[attr-defined]
    assert rpc_error(lambda: stub.GetVoice(tts_gateway_pb2.GetVoiceRequest(name=name), timeout=30)).code() == (
        grpc.StatusCode.NOT_FOUND
    )
    listed = stub.ListVoices(tts_gateway_pb2.ListVoicesRequest(), timeout=30).voices
    assert name not in {v.name for v in listed}
    error = rpc_error(lambda: synthesize(stub, name, TEXT, seed=1))
    assert error.code() == grpc.StatusCode.NOT_FOUND and "unknown voice" in error.details()


def test_name_length_limit_is_128_characters(stub: Stub, saved: Callable[..., Any]) -> None:
    reference = wav_input(speech_like(2.0, seed=109))
    longest = "n" + uuid.uuid4().hex + "x" * 95
    assert len(longest) == 128
    assert saved(longest, reference, TRANSCRIPT).name == longest
    too_long = "n" + uuid.uuid4().hex + "x" * 96
    error = rpc_error(lambda: stub.CreateVoice(create_request(too_long, reference), timeout=RPC_TIMEOUT_S))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "name: must be at most 128 characters (got 129)" in error.details()


# ------------------------------------------------------------------------------------------ quota, restart, conversion


def test_quota_counts_saved_voices_and_frees_on_delete(
    own_gateway: Callable[..., GatewayProcess], tmp_path: Path
) -> None:
    gateway = own_gateway(tmp_path / "saved", "--max-saved-voices=2")
    channel, stub = connect(gateway)
    try:
        reference = wav_input(speech_like(2.0, seed=110))
        for name in ("quota-a", "quota-b"):
            stub.CreateVoice(create_request(name, reference, TRANSCRIPT), timeout=RPC_TIMEOUT_S)
        error = rpc_error(lambda: stub.CreateVoice(create_request("quota-c", reference), timeout=RPC_TIMEOUT_S))
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "2 of 2 voices" in error.details() and "delete a saved voice" in error.details()
        assert not (tmp_path / "saved" / "quota-c").exists()

        stub.DeleteVoice(tts_gateway_pb2.DeleteVoiceRequest(name="quota-a"), timeout=30)
        voice = stub.CreateVoice(create_request("quota-c", reference), timeout=RPC_TIMEOUT_S).voice
        assert voice.name == "quota-c"
        listed = stub.ListVoices(tts_gateway_pb2.ListVoicesRequest(saved_only=True), timeout=30).voices
        assert [v.name for v in listed] == ["quota-b", "quota-c"]
    finally:
        channel.close()


def test_saved_voice_survives_a_restart(own_gateway: Callable[..., GatewayProcess], tmp_path: Path) -> None:
    saved_dir = tmp_path / "saved"
    reference = wav_input(speech_like(3.0, f0=190.0, seed=111))
    first = own_gateway(saved_dir)
    channel, stub = connect(first)
    try:
        created = stub.CreateVoice(create_request("keeper", reference, TRANSCRIPT), timeout=RPC_TIMEOUT_S).voice
        before = pcm_bytes(synthesize(stub, "keeper", TEXT, seed=11))
    finally:
        channel.close()
    assert len(before) > 0
    first.stop()

    second = own_gateway(saved_dir)
    channel, stub = connect(second)
    try:
        again = stub.GetVoice(tts_gateway_pb2.GetVoiceRequest(name="keeper"), timeout=30).voice
        assert again == created
        assert pcm_bytes(synthesize(stub, "keeper", TEXT, seed=11)) == before
    finally:
        channel.close()


def test_saved_voice_inherits_the_base_voice_conversion(stub: Stub, saved: Callable[..., Any]) -> None:
    reference = wav_input(speech_like(3.0, f0=140.0, seed=112))
    name = unique_name("conv")
    voice = saved(name, reference, TRANSCRIPT, base="spark-world")
    base = stub.GetVoice(tts_gateway_pb2.GetVoiceRequest(name="spark-world"), timeout=30).voice

    assert voice.saved.base_voice == "spark-world"
    assert voice.HasField("default_conversion") and voice.default_conversion == base.default_conversion
    assert voice.default_conversion.model == "world-default"
    assert voice.native_sample_rate_hz == base.native_sample_rate_hz == RATE

    converted = synthesize(stub, name, TEXT, seed=12)
    # Output format unset means the voice's native rate; the conversion service is asked for that rate.
    assert rates(converted) == {base.native_sample_rate_hz}
    assert len(pcm_bytes(converted)) > 0
    assert converted[-1].summary.conversion_time.ToNanoseconds() > 0
    # The same seed without the conversion gives the same TTS audio, so a difference is the conversion's doing.
    plain = synthesize(stub, name, TEXT, seed=12, disable_conversion=True)
    assert plain[-1].summary.conversion_time.ToNanoseconds() == 0
    assert len(pcm_bytes(plain)) > 0 and pcm_bytes(plain) != pcm_bytes(converted)
    # Without its conversion, a spark-world clone is the spark clone of the same clip.
    direct = synthesize(
        stub,
        "spark",
        TEXT,
        seed=12,
        zero_shot=tts_gateway_pb2.ZeroShot(reference_audio=reference, reference_text=TRANSCRIPT),
    )
    assert pcm_bytes(direct) == pcm_bytes(plain)


def test_triton_tokenizes_a_saved_reference_once(
    stub: Stub, saved: Callable[..., Any], spark_triton: TritonServer
) -> None:
    # A clip no other test uses, so the first request really misses Triton's reference cache.
    name = unique_name("cache")
    saved(name, wav_input(speech_like(2.7, f0=230.0, seed=113)), TRANSCRIPT)

    start = tokenizer_runs(spark_triton)
    assert len(pcm_bytes(synthesize(stub, name, TEXT, seed=13))) > 0
    after_first = tokenizer_runs(spark_triton)
    assert after_first == start + 1  # the metric does count this reference: a miss runs the tokenizer once

    chunks = synthesize(stub, name, TWO_SENTENCES, seed=14)
    assert chunks[-1].summary.segment_count == 2 and len(pcm_bytes(chunks)) > 0
    assert tokenizer_runs(spark_triton) == after_first
