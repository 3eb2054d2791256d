"""The neural recognition models (whisper, voxtral) on their tiny random-weight checkpoints through the session's
real Triton server, called over gRPC with the ASR tensor interface the gateway relies on (voice_triton.asr).

Random weights transcribe gibberish, so these tests check structure, determinism, windowing of long audio and the
request errors, not words.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from tests.asr_models.client import SAMPLE_RATE, parameters, recognize, speech_like
from tests.fixtures.triton_server import TritonServer

MODELS = ["whisper", "voxtral"]


@pytest.mark.parametrize("model", MODELS)
def test_the_config_declares_the_recognition_interface(triton_server: TritonServer, model: str) -> None:
    params = parameters(triton_server.grpc_url, model)
    assert params["task"] == "recognition" and params["sample_rate_hz"] == "16000"
    assert params["word_time_offsets"] in ("true", "false") and params["description"]
    assert float(params["max_audio_seconds"]) > 60
    assert "en" in params["language_codes"].split(",") or params["language_codes"] == ""


@pytest.mark.parametrize("model", MODELS)
def test_a_clip_gives_a_transcript_and_the_same_one_again(triton_server: TritonServer, model: str) -> None:
    audio = speech_like(4.0, seed=1)
    first = recognize(triton_server.grpc_url, model, audio, language="en-US")
    again = recognize(triton_server.grpc_url, model, audio, language="en-US")
    assert isinstance(first.transcript, str)
    assert first.language == "en"
    assert 0.0 <= first.confidence <= 1.0 and math.isfinite(first.confidence)
    assert isinstance(first.words, list)
    assert again == first  # greedy decoding: the same audio, the same answer


@pytest.mark.parametrize("model", MODELS)
def test_audio_len_limits_the_samples_used(triton_server: TritonServer, model: str) -> None:
    audio = speech_like(3.0, seed=2)
    padded = np.concatenate([audio, speech_like(2.0, seed=3)])
    whole = recognize(triton_server.grpc_url, model, audio, language="en")
    cut = recognize(triton_server.grpc_url, model, padded, language="en", audio_len=audio.size)
    assert cut == whole


@pytest.mark.timeout(300)
@pytest.mark.parametrize("model", MODELS)
def test_long_audio_is_taken_in_30_s_windows(triton_server: TritonServer, model: str) -> None:
    limit = float(parameters(triton_server.grpc_url, model)["max_audio_seconds"])
    seconds = 70.0
    assert seconds < limit
    result = recognize(triton_server.grpc_url, model, speech_like(seconds, seed=4), word_timestamps=True)
    assert isinstance(result.transcript, str) and math.isfinite(result.confidence)
    for word in result.words:
        assert 0.0 <= word["start_s"] <= word["end_s"] <= seconds


@pytest.mark.parametrize("model", MODELS)
def test_bad_requests_are_invalid_arguments_saying_what_to_fix(triton_server: TritonServer, model: str) -> None:
    url = triton_server.grpc_url
    limit = float(parameters(url, model)["max_audio_seconds"])
    nan = speech_like(1.0)
    nan[100] = np.nan
    cases = [
        (np.zeros(0, dtype=np.float32), {}, "audio is empty"),
        (speech_like(limit + 1.0), {}, f"max_audio_seconds {limit:g}"),
        (nan, {}, "NaN or infinite"),
        (speech_like(1.0), {"language": "tlh"}, "language 'tlh' is not supported"),
        (speech_like(1.0), {"audio_len": SAMPLE_RATE * 2}, "audio_len 32000 is outside"),
    ]
    for audio, extra, message in cases:
        with pytest.raises(InferenceServerException) as error:
            recognize(url, model, audio, **extra)
        assert error.value.status() == "StatusCode.INVALID_ARGUMENT", (message, error.value)
        assert message in error.value.message(), error.value.message()
    # The model still serves after every bad request.
    assert isinstance(recognize(url, model, speech_like(1.0), language="en").transcript, str)
