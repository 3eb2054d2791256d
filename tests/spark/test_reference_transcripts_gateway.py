"""Cloning without a transcript, end to end: the gateway transcribes a zero-shot reference with pocketsphinx on real
Triton (once per distinct clip), clones with Spark-TTS, and CreateVoice/GetVoice show the transcript.

The reference is Piper joe's rendering of a known sentence through the same gateway; the judge of the transcript is
the word error rate against that sentence. Recognitions are counted on Triton's side (nv_inference_request_success of
the pocketsphinx model) as well as by the gateway's tts_gateway_reference_transcripts_total.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from tests.fixtures.gateway import GatewayProcess
from tests.fixtures.spark import start_spark_gateway
from tests.fixtures.triton_server import TritonServer
from tests.prometheus import metric, scrape
from tests.recognition import speech
from tests.recognition.wer import wer
from tests.spark.helpers import speech_like
from voice.v1 import audio_pb2, tts_gateway_pb2, tts_gateway_pb2_grpc

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

PCM16 = audio_pb2.AUDIO_ENCODING_PCM16
SENTENCE = "I would like a cup of coffee with milk please."
TEXT = "Hello from a cloned voice."
WER_BOUND = 0.35
RPC_TIMEOUT_S = 180.0
COUNTER = "tts_gateway_reference_transcripts_total"

Stub = tts_gateway_pb2_grpc.TtsGatewayServiceStub


@pytest.fixture(scope="module")
def gateway(
    spark_triton: TritonServer, rvc_service: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    """A gateway of this module's own (its counters and saved voices are not shared) serving joe and spark."""
    directory = tmp_path_factory.mktemp("transcripts-gateway")
    process = start_spark_gateway(
        spark_triton, rvc_service.address, directory, f"--saved-voices-dir={directory / 'saved'}"
    )
    yield process
    process.stop()


@pytest.fixture(scope="module")
def channel(gateway: GatewayProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(gateway.address) as ch:
        yield ch


@pytest.fixture(scope="module")
def stub(channel: grpc.Channel) -> Stub:
    return tts_gateway_pb2_grpc.TtsGatewayServiceStub(channel)


@pytest.fixture(scope="module")
def joe_reference(channel: grpc.Channel) -> audio_pb2.AudioInput:
    """SENTENCE spoken by Piper joe through the gateway, as PCM16 at joe's rate, with a little silence around it."""
    audio, rate = speech.speak(channel, SENTENCE)
    pad = np.zeros(int(0.3 * rate), dtype=np.float32)
    data = speech.pcm16(np.concatenate([pad, audio, pad]))
    return audio_pb2.AudioInput(audio=data, format=audio_pb2.AudioFormat(encoding=PCM16, sample_rate_hz=rate))


def counts(gateway: GatewayProcess, triton: TritonServer) -> dict[str, float]:
    text = scrape(gateway.metrics_url)
    found = {result: metric(text, COUNTER, result=result) for result in ("hit", "miss", "failed")}
    found["triton"] = metric(scrape(triton.metrics_url), "nv_inference_request_success", model="pocketsphinx")
    return found


def delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {key: after[key] - before[key] for key in before}


def zero_shot(stub: Stub, reference: audio_pb2.AudioInput, reference_text: str = "") -> bytes:
    request = tts_gateway_pb2.SynthesizeRequest(
        text=TEXT,
        voice="spark",
        seed=5,
        output_format=audio_pb2.AudioFormat(encoding=PCM16),
        zero_shot=tts_gateway_pb2.ZeroShot(reference_audio=reference, reference_text=reference_text),
    )
    return b"".join(chunk.audio for chunk in stub.Synthesize(request, timeout=RPC_TIMEOUT_S))


def rpc_error(call: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


def pcm_reference(samples: np.ndarray, rate: int = 16000) -> audio_pb2.AudioInput:
    return audio_pb2.AudioInput(
        audio=speech.pcm16(samples), format=audio_pb2.AudioFormat(encoding=PCM16, sample_rate_hz=rate)
    )


def test_zero_shot_without_text_is_transcribed_once_per_reference(
    gateway: GatewayProcess, spark_triton: TritonServer, stub: Stub, joe_reference: audio_pb2.AudioInput
) -> None:
    before = counts(gateway, spark_triton)
    assert len(zero_shot(stub, joe_reference)) > 0
    first = counts(gateway, spark_triton)
    assert delta(before, first) == {"hit": 0, "miss": 1, "failed": 0, "triton": 1}

    assert len(zero_shot(stub, joe_reference)) > 0
    second = counts(gateway, spark_triton)
    assert delta(first, second) == {"hit": 1, "miss": 0, "failed": 0, "triton": 0}  # no second recognition

    # The request's own text wins: no recognition, no cache lookup.
    assert len(zero_shot(stub, joe_reference, "my own transcript of it")) > 0
    assert delta(second, counts(gateway, spark_triton)) == {"hit": 0, "miss": 0, "failed": 0, "triton": 0}
    assert "reference transcribed in" in gateway.log_text()
    assert "coffee" not in gateway.log_text().lower()  # the length is logged, not the words


def test_create_voice_without_text_saves_the_transcript(
    gateway: GatewayProcess, stub: Stub, joe_reference: audio_pb2.AudioInput
) -> None:
    name = f"transcribed-{uuid.uuid4().hex[:8]}"
    request = tts_gateway_pb2.CreateVoiceRequest(name=name, base_voice="spark", reference_audio=joe_reference)
    created = stub.CreateVoice(request, timeout=RPC_TIMEOUT_S).voice
    got = stub.GetVoice(tts_gateway_pb2.GetVoiceRequest(name=name), timeout=30).voice
    assert got.saved.reference_text == created.saved.reference_text
    error_rate = wer(SENTENCE, got.saved.reference_text)
    assert error_rate < WER_BOUND, (got.saved.reference_text, error_rate)
    assert list(got.supported_modes) == [tts_gateway_pb2.SYNTHESIS_MODE_ZERO_SHOT]
    audio = b"".join(
        chunk.audio
        for chunk in stub.Synthesize(
            tts_gateway_pb2.SynthesizeRequest(
                text=TEXT, voice=name, seed=5, output_format=audio_pb2.AudioFormat(encoding=PCM16)
            ),
            timeout=RPC_TIMEOUT_S,
        )
    )
    assert len(audio) > 0

    # Correcting the transcript: delete and create again with the text (names are unique; there is no update).
    stub.DeleteVoice(tts_gateway_pb2.DeleteVoiceRequest(name=name), timeout=30)
    request.reference_text = SENTENCE
    fixed = stub.CreateVoice(request, timeout=RPC_TIMEOUT_S).voice
    assert fixed.saved.reference_text == SENTENCE
    stub.DeleteVoice(tts_gateway_pb2.DeleteVoiceRequest(name=name), timeout=30)


def test_silence_or_no_words_says_to_give_a_transcript(
    gateway: GatewayProcess, spark_triton: TritonServer, stub: Stub
) -> None:
    # Digital silence is refused before recognition; the transcript field says what to give.
    error = rpc_error(lambda: zero_shot(stub, pcm_reference(np.zeros(32000, dtype=np.float32))))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "silent" in error.details()
    assert "zero_shot.reference_text: is empty and the reference audio could not be transcribed" in error.details()
    assert "give the transcript of reference_audio as reference_text" in error.details()

    # A voiced buzz with no words passes the silence check; pocketsphinx finds no words in it.
    buzz = pcm_reference(speech_like(2.5, f0=150.0, seed=31))
    before = counts(gateway, spark_triton)
    error = rpc_error(lambda: zero_shot(stub, buzz))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "could not be transcribed (no words were recognised in it" in error.details()
    assert "give the transcript of reference_audio as reference_text" in error.details()
    assert "or use cross_lingual, which clones without a transcript" in error.details()  # spark can
    assert delta(before, counts(gateway, spark_triton)) == {"hit": 0, "miss": 0, "failed": 1, "triton": 1}

    # CreateVoice on spark keeps its old behaviour when no transcript can be had: a cross-lingual voice.
    name = f"buzz-{uuid.uuid4().hex[:8]}"
    request = tts_gateway_pb2.CreateVoiceRequest(name=name, base_voice="spark", reference_audio=buzz)
    voice = stub.CreateVoice(request, timeout=RPC_TIMEOUT_S).voice
    assert voice.saved.reference_text == ""
    assert list(voice.supported_modes) == [tts_gateway_pb2.SYNTHESIS_MODE_CROSS_LINGUAL]
    stub.DeleteVoice(tts_gateway_pb2.DeleteVoiceRequest(name=name), timeout=30)


def test_transcripts_off_refuses_as_before(spark_triton: TritonServer, rvc_service: Any, tmp_path: Path) -> None:
    process = start_spark_gateway(spark_triton, rvc_service.address, tmp_path, "--transcript-model=off")
    try:
        with grpc.insecure_channel(process.address) as ch:
            stub = tts_gateway_pb2_grpc.TtsGatewayServiceStub(ch)
            error = rpc_error(lambda: zero_shot(stub, pcm_reference(speech_like(2.0, seed=3))))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "zero_shot.reference_text: must be 1..1000 characters" in error.details()
    finally:
        process.stop()
