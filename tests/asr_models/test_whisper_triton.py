"""Whisper specifics through the session's Triton server: language detection and forcing, word timings across
30 s windows."""

from __future__ import annotations

from tests.asr_models.client import parameters, recognize, speech_like
from tests.fixtures.triton_server import TritonServer


def test_without_a_language_whisper_detects_one_of_its_own(triton_server: TritonServer) -> None:
    params = parameters(triton_server.grpc_url, "whisper")
    languages = params["language_codes"].split(",") if params["language_codes"] else None
    result = recognize(triton_server.grpc_url, "whisper", speech_like(3.0, seed=5))
    assert result.language and result.language.isalpha() and result.language.islower()
    if languages:
        assert result.language in languages
    forced = recognize(triton_server.grpc_url, "whisper", speech_like(3.0, seed=5), language="de")
    assert forced.language == "de"


def test_word_timings_are_given_in_order_and_only_when_asked(triton_server: TritonServer) -> None:
    assert parameters(triton_server.grpc_url, "whisper")["word_time_offsets"] == "true"
    audio = speech_like(40.0, seed=6)
    plain = recognize(triton_server.grpc_url, "whisper", audio, language="en")
    assert plain.words == []
    timed = recognize(triton_server.grpc_url, "whisper", audio, language="en", word_timestamps=True)
    assert timed.transcript == plain.transcript
    words = timed.words
    assert words, "the tiny model always emits tokens, so there are words"
    assert set(words[0]) == {"word", "start_s", "end_s", "confidence"}
    assert all(isinstance(w["word"], str) and w["word"] and 0.0 <= w["confidence"] <= 1.0 for w in words)
    starts = [w["start_s"] for w in words]
    assert starts == sorted(starts) and all(w["start_s"] <= w["end_s"] <= 40.0 for w in words)
    # Two windows (0-30 s, 30-40 s): the second window's words are offset by its start.
    assert any(w["start_s"] >= 30.0 for w in words)
