"""The built-in WORLD voice keeps the pitch of the voice it converts (issue 11): Piper joe through the gateway,
converted at 0 and +12 semitones, against joe unconverted, measured by librosa's pYIN (an estimator the conversion
service does not use). It once moved joe from about 87 Hz to about 170 Hz at 0 semitones: DIO's octave error."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest

from tests.fixtures.gateway import GatewayProcess, start_gateway
from voice.v1 import audio_pb2, conversion_pb2, tts_gateway_pb2, tts_gateway_pb2_grpc

TEXT = "The quick brown fox jumps over the lazy dog. This is a second sentence to measure pitch."
RATE = 24000


def pyin(samples: np.ndarray, rate: int) -> np.ndarray:
    """pYIN F0 per 2048-sample frame, NaN where unvoiced."""
    import librosa

    f0, voiced, _ = librosa.pyin(samples, fmin=50, fmax=600, sr=rate, frame_length=2048)
    return np.where(voiced, f0, np.nan)


def pitch_offset(source: np.ndarray, converted: np.ndarray, rate: int) -> float:
    """Median over frames voiced in both of the converted F0 over the source F0, in semitones (conversion keeps
    timing, so frames line up; comparing frame by frame is immune to the two having different voiced frames)."""
    n = min(source.size, converted.size)  # streamed conversion may end a few ms short of the source
    a, b = pyin(source[:n], rate), pyin(converted[:n], rate)
    both = np.isfinite(a) & np.isfinite(b)
    assert both.sum() > 30, "too few frames voiced in both to compare"
    return float(np.median(12 * np.log2(b[both] / a[both])))


def speak(stub: tts_gateway_pb2_grpc.TtsGatewayServiceStub, **fields: object) -> np.ndarray:
    request = tts_gateway_pb2.SynthesizeRequest(
        text=TEXT,
        voice="joe",
        output_format=audio_pb2.AudioFormat(encoding=audio_pb2.AUDIO_ENCODING_PCM16, sample_rate_hz=RATE),
        **fields,
    )
    pcm = b"".join(chunk.audio for chunk in stub.Synthesize(request, timeout=120))
    return np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0


# Piper's noise off: both requests then get the very same joe take, so their frames line up one to one (with noise,
# the unconverted and the converted request are two takes with different timing).
STILL_JOE = """
[[voice]]
name = "joe"
tts_model = "piper_tts"
speaker = "joe"
noise_scale = 0.0
noise_w = 0.0
"""


@pytest.fixture(scope="module")
def still_gateway(triton_server: Any, rvc_service: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    directory = tmp_path_factory.mktemp("world-pitch")
    voices = directory / "voices.toml"
    voices.write_text(STILL_JOE, encoding="utf-8")
    process = start_gateway(triton_server.grpc_url, rvc_service.address, f"--voices={voices}", log_dir=directory)
    yield process
    process.stop()


@pytest.mark.parametrize("semitones", [0.0, 12.0])
def test_world_conversion_keeps_joes_pitch(still_gateway: GatewayProcess, semitones: float) -> None:
    with grpc.insecure_channel(still_gateway.address) as channel:
        stub = tts_gateway_pb2_grpc.TtsGatewayServiceStub(channel)
        source = speak(stub, disable_conversion=True)
        converted = speak(
            stub, conversion=conversion_pb2.ConversionSettings(model="world-default", pitch_shift_semitones=semitones)
        )
    assert 75.0 < float(np.nanmedian(pyin(source, RATE))) < 110.0  # joe is a low male voice
    error = pitch_offset(source, converted, RATE) - semitones
    assert abs(error) < 0.5, f"converted pitch is {error:+.2f} semitones off the source"
