"""Voxtral specifics: the transcription prompt built from tekken.json, and the model through the session's Triton
server (detection without a language, no word timings)."""

from __future__ import annotations

from pathlib import Path

from tests.asr_models.client import parameters, recognize, speech_like
from tests.fixtures.triton_server import TritonServer
from voice_triton.tekken import Tekken


def test_the_transcription_prompt_is_mistral_commons(tiny_checkpoints: dict[str, Path]) -> None:
    """The prompt mistral-common 1.13.1's encode_transcription gives for the tiny tekken.json (checked once against
    the package; the ids are the published control-token ranks): <s>[INST][BEGIN_AUDIO][AUDIO]x375 per 30 s
    chunk[/INST], lang:xx as text, [TRANSCRIBE]."""
    tekken = Tekken(tiny_checkpoints["voxtral"] / "tekken.json")
    assert tekken.audio_tokens(480_000) == 375 and tekken.audio_tokens(3 * 480_000) == 1125
    with_language = tekken.transcription_prompt(375, "en")
    lang = tekken.encode("lang:en")
    assert with_language == [1, 3, 25] + [24] * 375 + [4] + lang + [34]
    assert tekken.decode(lang) == "lang:en" and len(lang) == 2  # "lang", ":en" as Tekken's pattern splits it
    assert tekken.transcription_prompt(375) == [1, 3, 25] + [24] * 375 + [4, 34]
    assert tekken.decode([1, 3, 25, 24, 4, 34]) == ""  # control tokens never reach a transcript


def test_without_a_language_voxtral_detects_and_says_none(triton_server: TritonServer) -> None:
    params = parameters(triton_server.grpc_url, "voxtral")
    assert params["language_codes"].split(",")[0] == "en" and params["word_time_offsets"] == "false"
    result = recognize(triton_server.grpc_url, "voxtral", speech_like(2.0, seed=7), word_timestamps=True)
    assert result.language == "" and result.words == []
    assert recognize(triton_server.grpc_url, "voxtral", speech_like(2.0, seed=7), language="fr-FR").language == "fr"
