"""Helpers of the recognition tests: known sentences spoken through the gateway, and gRPC requests."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import numpy as np

from voice.v1 import audio_pb2, recognition_pb2, recognition_pb2_grpc, tts_gateway_pb2, tts_gateway_pb2_grpc

# Everyday sentences in the language model's domain (no rare names), each spoken as its own utterance.
SENTENCES = (
    "The quick brown fox jumps over the lazy dog.",
    "I would like a cup of coffee with milk please.",
    "The weather is going to be sunny and warm tomorrow.",
    "Please call me back when you get home tonight.",
    "We need to buy bread, eggs and apples at the store.",
    "The meeting has been moved to three o'clock on Friday.",
)
GAP_S = 1.2  # silence between sentences: over the 0.6 s end-of-utterance pause


def speak(channel: grpc.Channel, text: str, voice: str = "joe") -> tuple[np.ndarray, int]:
    """Synthesize through the gateway as PCM16 at the native rate; float samples and the rate."""
    stub = tts_gateway_pb2_grpc.TtsGatewayServiceStub(channel)
    request = tts_gateway_pb2.SynthesizeRequest(
        text=text, voice=voice, output_format=audio_pb2.AudioFormat(encoding=audio_pb2.AUDIO_ENCODING_PCM16)
    )
    chunks = list(stub.Synthesize(request, timeout=120))
    pcm = b"".join(chunk.audio for chunk in chunks)
    rate = next(chunk.format.sample_rate_hz for chunk in chunks if chunk.format.sample_rate_hz)
    return np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0, rate


def speak_all(
    channel: grpc.Channel, sentences: tuple[str, ...] = SENTENCES, voice: str = "joe"
) -> tuple[np.ndarray, int]:
    """The sentences one after another with GAP_S of silence between them (and half of it around them)."""
    parts: list[np.ndarray] = []
    rate = 0
    for sentence in sentences:
        audio, rate = speak(channel, sentence, voice)
        gap = np.zeros(int(GAP_S * rate), dtype=np.float32)
        parts += [gap[: gap.size // 2] if not parts else gap, audio]
    parts.append(np.zeros(int(GAP_S * rate / 2), dtype=np.float32))
    return np.concatenate(parts), rate


def pcm16(audio: np.ndarray) -> bytes:
    return np.rint(np.clip(audio, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()


def recognize(
    channel: grpc.Channel,
    data: bytes,
    encoding: int,
    rate: int,
    *,
    model: str = "",
    words: bool = False,
) -> recognition_pb2.RecognizeResponse:
    stub = recognition_pb2_grpc.RecognitionServiceStub(channel)
    request = recognition_pb2.RecognizeRequest(
        config=recognition_pb2.RecognitionConfig(model=model, enable_word_time_offsets=words),
        audio=audio_pb2.AudioInput(audio=data, format=audio_pb2.AudioFormat(encoding=encoding, sample_rate_hz=rate)),
    )
    return stub.Recognize(request, timeout=300)


def transcript(response: recognition_pb2.RecognizeResponse) -> str:
    return " ".join(result.alternatives[0].transcript for result in response.results)


def stream_requests(
    data: bytes,
    encoding: int,
    rate: int,
    *,
    bytes_per_sample: int = 2,
    chunk_s: float = 0.1,
    pace: float = 0.0,
    interim: bool = False,
    words: bool = False,
    single: bool = False,
    model: str = "",
) -> Iterator[recognition_pb2.StreamingRecognizeRequest]:
    """Config, then the audio in chunk_s chunks; `pace` seconds of sleep per chunk second (1 = real time)."""
    import time

    yield recognition_pb2.StreamingRecognizeRequest(
        config=recognition_pb2.StreamingRecognitionConfig(
            config=recognition_pb2.RecognitionConfig(model=model, enable_word_time_offsets=words),
            audio_format=audio_pb2.AudioFormat(encoding=encoding, sample_rate_hz=rate),
            interim_results=interim,
            single_utterance=single,
        )
    )
    step = int(rate * chunk_s) * bytes_per_sample
    for offset in range(0, len(data), step):
        yield recognition_pb2.StreamingRecognizeRequest(audio=data[offset : offset + step])
        if pace:
            time.sleep(chunk_s * pace)
