"""Whisper and Voxtral (tiny random-weight checkpoints on the session Triton server) through the gateway's
RecognitionService: listed, whole clips and streams give well-formed interim and final results per utterance, long
audio is windowed, bad audio gets a precise error, a cancelled stream leaves the model serving.

Random weights transcribe nothing meaningful, so these tests judge structure (results, finality, ordering, offsets,
the model named) and determinism, not words; the words are judged on PocketSphinx (test_recognition.py).
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import numpy as np
import pytest

from tests.fixtures.gateway import GatewayProcess
from tests.recognition import speech
from voice.v1 import audio_pb2, recognition_pb2, recognition_pb2_grpc

pytestmark = pytest.mark.timeout(600)
PCM16 = audio_pb2.AUDIO_ENCODING_PCM16
MODELS = ["whisper", "voxtral"]


@pytest.fixture(scope="module")
def channel(gateway: GatewayProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(gateway.address) as ch:
        yield ch


@pytest.fixture(scope="module")
def two_sentences(channel: grpc.Channel) -> tuple[np.ndarray, int]:
    first, rate = speech.speak(channel, "The weather is fine today.")
    second, _ = speech.speak(channel, "We will walk to the park.")
    pause = np.zeros(int(1.2 * rate), np.float32)
    return np.concatenate([first, pause, second, pause]), rate


def test_both_models_are_listed(channel: grpc.Channel) -> None:
    stub = recognition_pb2_grpc.RecognitionServiceStub(channel)
    models = {m.name: m for m in stub.ListRecognitionModels(recognition_pb2.ListRecognitionModelsRequest()).models}
    for name in MODELS:
        assert models[name].sample_rate_hz == 16000 and models[name].available
    assert models["whisper"].word_time_offsets and not models["voxtral"].word_time_offsets


@pytest.mark.parametrize("model", MODELS)
def test_a_clip_gives_one_final_result_per_utterance(
    channel: grpc.Channel, two_sentences: tuple[np.ndarray, int], model: str
) -> None:
    audio, rate = two_sentences
    response = speech.recognize(channel, speech.pcm16(audio), PCM16, rate, model=model)
    again = speech.recognize(channel, speech.pcm16(audio), PCM16, rate, model=model)
    assert response.model == model
    assert len(response.results) == 2  # the two sentences, cut at the pause by voice activity
    assert [r.utterance_index for r in response.results] == [0, 1]
    assert all(r.is_final and r.alternatives for r in response.results)
    ends = [r.result_end_offset.ToTimedelta().total_seconds() for r in response.results]
    assert 0 < ends[0] < ends[1] <= audio.size / rate + 0.01
    assert [r.alternatives[0].transcript for r in response.results] == [
        r.alternatives[0].transcript for r in again.results
    ]


@pytest.mark.parametrize("model", MODELS)
def test_a_stream_gives_interims_then_finals_with_utterance_events(
    channel: grpc.Channel, two_sentences: tuple[np.ndarray, int], model: str
) -> None:
    audio, rate = two_sentences
    stub = recognition_pb2_grpc.RecognitionServiceStub(channel)
    requests = speech.stream_requests(speech.pcm16(audio), PCM16, rate, pace=0.5, interim=True, model=model)
    responses = list(stub.StreamingRecognize(requests, timeout=300))
    events = [r.speech_event_type for r in responses]
    end = recognition_pb2.StreamingRecognizeResponse.SpeechEventType.SPEECH_EVENT_TYPE_END_OF_UTTERANCE
    assert events.count(end) == 2
    results = [result for r in responses for result in r.results]
    finals = [r for r in results if r.is_final]
    assert [r.utterance_index for r in finals] == [0, 1]
    assert any(not r.is_final for r in results)  # interim results came while the sentences were spoken
    # No interim result of an utterance follows its final.
    seen_final: set[int] = set()
    for result in results:
        assert result.utterance_index not in seen_final
        if result.is_final:
            seen_final.add(result.utterance_index)


@pytest.mark.parametrize("model", MODELS)
def test_long_audio_and_bad_audio(channel: grpc.Channel, model: str) -> None:
    rng = np.random.default_rng(1)
    # 70 s of continuous noise-like "speech" is one utterance forced to end at 30 s: three windows, no error.
    t = np.arange(70 * 16000) / 16000
    voiced = (0.2 * np.sin(2 * np.pi * 150 * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))).astype(np.float32)
    voiced += 0.01 * rng.standard_normal(t.size).astype(np.float32)
    response = speech.recognize(channel, speech.pcm16(voiced), PCM16, 16000, model=model)
    assert all(r.is_final for r in response.results)
    silence = speech.recognize(channel, bytes(16000 * 2 * 3), PCM16, 16000, model=model)
    assert not silence.results  # silence: nothing to say, not an error

    def code_of(data: bytes, encoding: int, rate: int) -> tuple[grpc.StatusCode, str]:
        with pytest.raises(grpc.RpcError) as caught:
            speech.recognize(channel, data, encoding, rate, model=model)
        return caught.value.code(), caught.value.details() or ""

    code, details = code_of(b"", PCM16, 16000)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "empty" in details
    code, _ = code_of(b"RIFF not really a wav file", audio_pb2.AUDIO_ENCODING_WAV, 0)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    # Two hours of telephone audio is far over the 8 MiB upload limit: refused by size before anything is decoded.
    code, details = code_of(b"\xff" * (9 << 20), audio_pb2.AUDIO_ENCODING_MULAW, 8000)
    assert code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED) and "MiB" in details
    # The model still serves.
    assert speech.recognize(channel, speech.pcm16(voiced[: 16000 * 3]), PCM16, 16000, model=model).model == model
