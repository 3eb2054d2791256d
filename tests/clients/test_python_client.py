"""The Python client library (voice_client) used directly, against the real stack."""

from __future__ import annotations

import time

import grpc
import pytest

from tests.clients.audio_checks import assert_speech_like, pcm16_samples
from tests.clients.conftest import Stack
from voice.v1 import audio_pb2, tts_gateway_pb2
from voice_client import (
    ConversionClient,
    StreamStats,
    SynthesisOptions,
    TtsClient,
    conversion_settings,
    describe_rpc_error,
    exit_code_for,
)

TEXT = "First sentence is short. The second one follows it."


def test_synthesize_yields_ordered_chunks_with_a_summary(stack: Stack, plain_voice: tts_gateway_pb2.Voice) -> None:
    stats = StreamStats()
    pcm = bytearray()
    with TtsClient(stack.tts_target, timeout=120) as client:
        chunks = list(client.synthesize(TEXT, plain_voice.name, encoding="pcm16", request_id="client-test-1"))
    for chunk in chunks:
        stats.observe(chunk)
        pcm += chunk.audio
    assert [c.sequence_number for c in chunks] == list(range(len(chunks)))
    assert {c.request_id for c in chunks} == {"client-test-1"}
    assert chunks[-1].is_final and stats.summary is not None
    assert stats.segments == 2
    assert stats.time_to_first_audio is not None and stats.time_to_first_audio < stats.elapsed
    assert abs(stats.audio_seconds - len(pcm) / 2 / stats.sample_rate_hz) < 0.01
    assert_speech_like(pcm16_samples(bytes(pcm)), stats.sample_rate_hz, TEXT)


def test_streaming_synthesize_from_text_pieces(stack: Stack, plain_voice: tts_gateway_pb2.Voice) -> None:
    pieces = ["First sen", "tence is short. ", "The second one ", "follows it."]
    options = SynthesisOptions(voice=plain_voice.name, encoding="pcm16", sample_rate_hz=16000)
    with TtsClient(stack.tts_target, timeout=120) as client:
        chunks = list(client.streaming_synthesize(pieces, options))
    pcm = b"".join(c.audio for c in chunks)
    assert chunks[-1].is_final
    assert chunks[-1].summary.processed_text == TEXT
    assert_speech_like(pcm16_samples(pcm), 16000, TEXT)


def test_leaving_the_loop_cancels_the_stream(stack: Stack, plain_voice: tts_gateway_pb2.Voice) -> None:
    # Far more text than can be synthesized within the wait below, so only a real cancellation frees the slot.
    long_text = " ".join(f"This is sentence number {i}, and it keeps going." for i in range(80))
    with TtsClient(stack.tts_target, timeout=120) as client:
        baseline = client.status().active_streams
        stream = client.synthesize(long_text, plain_voice.name, encoding="pcm16")
        first = next(stream)
        assert first.sequence_number == 0
        assert client.status().active_streams == baseline + 1
        stream.close()  # what `break` in a for loop does to the generator
        # The gateway sees the cancellation and frees the stream's admission slot well before the text could be done.
        deadline = time.monotonic() + 5.0
        while client.status().active_streams > baseline and time.monotonic() < deadline:
            time.sleep(0.1)
        assert client.status().active_streams == baseline, "the cancelled stream is still being served"


def test_errors_become_one_line_and_an_exit_status(stack: Stack) -> None:
    with TtsClient(stack.tts_target, timeout=30) as client, pytest.raises(grpc.RpcError) as caught:
        list(client.synthesize("", "no-such-voice", encoding="pcm16"))
    line = describe_rpc_error(caught.value)
    assert "\n" not in line
    assert line.startswith("INVALID_ARGUMENT: ") or line.startswith("NOT_FOUND: "), line
    assert exit_code_for(caught.value) in (2, 3)


def test_conversion_client_lists_loads_and_converts(stack: Stack, plain_voice: tts_gateway_pb2.Voice) -> None:
    with TtsClient(stack.tts_target, timeout=120) as tts:
        source = b"".join(c.audio for c in tts.synthesize("Some words to convert.", plain_voice.name, encoding="wav"))
    with ConversionClient(stack.rvc_target, timeout=120) as rvc:
        assert rvc.health(ConversionClient.SERVICE) == "SERVING"
        names = [m.name for m in rvc.list_models()]
        assert "world-bright" in names
        loaded = rvc.load_model("world-bright")
        assert loaded.model.loaded
        assert rvc.unload_model("world-bright") is False  # built-in voices stay loaded (UnloadModel's contract)
        with pytest.raises(grpc.RpcError) as unknown:
            rvc.unload_model("no-such-model")
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
        clip = audio_pb2.AudioInput(audio=source, format=audio_pb2.AudioFormat(encoding=audio_pb2.AUDIO_ENCODING_WAV))
        settings = conversion_settings("world-bright", pitch_shift_semitones=2.0, f0_method="harvest")
        assert settings is not None
        response = rvc.convert_clip(clip, settings, encoding="pcm16", sample_rate_hz=16000)
        assert response.format.sample_rate_hz == 16000
        assert_speech_like(pcm16_samples(response.audio), 16000, "Some words to convert.")
        assert response.real_time_factor > 0
