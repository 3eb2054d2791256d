"""Shared by the Spark tests: a direct Triton streaming client for spark_tts, reference clips, metric readers."""

from __future__ import annotations

import queue
from dataclasses import dataclass, field

import numpy as np
import tritonclient.grpc as triton_grpc

RATE = 16000
HOP = 320  # samples per semantic token


def speech_like(seconds: float, f0: float = 140.0, rate: int = RATE, seed: int = 0) -> np.ndarray:
    """A voiced, syllable-modulated harmonic signal: something a speaker encoder can tell from another."""
    t = np.arange(int(seconds * rate)) / rate
    rng = np.random.default_rng(seed)
    wobble = 1.0 + 0.03 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * f0 * np.cumsum(wobble) / rate
    voice = sum(np.sin(k * phase) / k for k in range(1, 12))
    syllables = 0.55 + 0.45 * np.sin(2 * np.pi * 4.0 * t) ** 2
    return (0.25 * voice * syllables / 2.5 + 0.003 * rng.standard_normal(t.size)).astype(np.float32)


@dataclass
class SparkResult:
    chunks: list[np.ndarray] = field(default_factory=list)
    error: str = ""

    @property
    def audio(self) -> np.ndarray:
        return np.concatenate(self.chunks) if self.chunks else np.zeros(0, np.float32)


def _bytes_input(name: str, value: str) -> triton_grpc.InferInput:
    tensor = triton_grpc.InferInput(name, [1, 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[value.encode("utf-8")]], dtype=object))
    return tensor


def spark_inputs(
    text: str,
    *,
    reference: np.ndarray | None = None,
    reference_text: str | None = None,
    gender: str | None = None,
    pitch: str | None = None,
    seed: int | None = None,
    reference_len: int | None = None,
) -> list[triton_grpc.InferInput]:
    inputs = [_bytes_input("target_text", text)]
    if reference is not None:
        wav = triton_grpc.InferInput("reference_wav", [1, reference.size], "FP32")
        wav.set_data_from_numpy(reference.reshape(1, -1).astype(np.float32))
        length = triton_grpc.InferInput("reference_wav_len", [1, 1], "INT32")
        length.set_data_from_numpy(np.array([[reference_len or reference.size]], dtype=np.int32))
        inputs += [wav, length]
    if reference_text is not None:
        inputs.append(_bytes_input("reference_text", reference_text))
    if gender is not None:
        inputs.append(_bytes_input("gender", gender))
    if pitch is not None:
        inputs.append(_bytes_input("pitch_level", pitch))
    if seed is not None:
        tensor = triton_grpc.InferInput("seed", [1, 1], "UINT64")
        tensor.set_data_from_numpy(np.array([[seed]], dtype=np.uint64))
        inputs.append(tensor)
    return inputs


class SparkStream:
    """One ModelStreamInfer stream to spark_tts; `run` sends one request and collects its chunks."""

    def __init__(self, url: str) -> None:
        self.client = triton_grpc.InferenceServerClient(url)
        self.responses: queue.Queue = queue.Queue()
        self.client.start_stream(callback=lambda result, error: self.responses.put((result, error)))

    def send(self, inputs: list[triton_grpc.InferInput]) -> None:
        self.client.async_stream_infer("spark_tts", inputs, enable_empty_final_response=True)

    def next(self, timeout: float = 120.0) -> tuple[np.ndarray | None, bool, str]:
        """(audio or None, final?, error) of the next response."""
        result, error = self.responses.get(timeout=timeout)
        if error is not None:
            return None, True, str(error)
        audio = result.as_numpy("waveform")
        final = result.get_response().parameters["triton_final_response"].bool_param
        return (audio.reshape(-1) if audio is not None and audio.size else None), final, ""

    def run(self, inputs: list[triton_grpc.InferInput], timeout: float = 120.0) -> SparkResult:
        self.send(inputs)
        result = SparkResult()
        while True:
            audio, final, error = self.next(timeout)
            if error:
                result.error = error
                return result
            if audio is not None:
                result.chunks.append(audio)
            if final:
                return result

    def close(self, cancel: bool = False) -> None:
        self.client.stop_stream(cancel_requests=cancel)
        self.client.close()
