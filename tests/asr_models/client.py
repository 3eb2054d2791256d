"""Calling a recognition model over gRPC with the ASR tensor interface (voice_triton.asr), as the gateway does."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient

SAMPLE_RATE = 16000


@dataclass
class Recognition:
    transcript: str
    words: list[dict[str, Any]]
    language: str
    confidence: float


def speech_like(seconds: float, seed: int = 0) -> np.ndarray:
    """A voiced, syllable-modulated test signal (no speech model is needed to make it): float32 mono 16 kHz."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    pitch = 120 + 20 * np.sin(2 * np.pi * 0.5 * t)
    voiced = sum(np.sin(2 * np.pi * k * np.cumsum(pitch) / SAMPLE_RATE) / k for k in range(1, 6))
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * t)
    return (0.2 * voiced * envelope + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


def recognize(
    url: str,
    model: str,
    audio: np.ndarray,
    *,
    language: str | None = None,
    word_timestamps: bool | None = None,
    audio_len: int | None = None,
    timeout_s: float = 120.0,
) -> Recognition:
    client = grpcclient.InferenceServerClient(url)
    try:
        inputs = [grpcclient.InferInput("audio", [1, audio.size], "FP32")]
        inputs[0].set_data_from_numpy(np.asarray(audio, dtype=np.float32).reshape(1, -1))
        if audio_len is not None:
            inputs.append(grpcclient.InferInput("audio_len", [1, 1], "INT32"))
            inputs[-1].set_data_from_numpy(np.array([[audio_len]], dtype=np.int32))
        if language is not None:
            inputs.append(grpcclient.InferInput("language", [1, 1], "BYTES"))
            inputs[-1].set_data_from_numpy(np.array([[language.encode()]], dtype=np.object_))
        if word_timestamps is not None:
            inputs.append(grpcclient.InferInput("word_timestamps", [1, 1], "BOOL"))
            inputs[-1].set_data_from_numpy(np.array([[word_timestamps]], dtype=np.bool_))
        outputs = [grpcclient.InferRequestedOutput(name) for name in ("transcript", "words", "language", "confidence")]
        result = client.infer(model, inputs, outputs=outputs, client_timeout=timeout_s)
    finally:
        client.close()
    shapes = {name: result.as_numpy(name).shape for name in ("transcript", "words", "language", "confidence")}
    assert all(shape == (1, 1) for shape in shapes.values()), shapes
    assert result.as_numpy("confidence").dtype == np.float32

    def text(name: str) -> str:
        value = result.as_numpy(name)[0, 0]
        assert isinstance(value, bytes), (name, type(value))
        return value.decode()

    return Recognition(
        transcript=text("transcript"),
        words=json.loads(text("words")),
        language=text("language"),
        confidence=float(result.as_numpy("confidence")[0, 0]),
    )


def parameters(url: str, model: str) -> dict[str, str]:
    client = grpcclient.InferenceServerClient(url)
    try:
        config = client.get_model_config(model, as_json=True)["config"]
    finally:
        client.close()
    return {key: value["string_value"] for key, value in config.get("parameters", {}).items()}
