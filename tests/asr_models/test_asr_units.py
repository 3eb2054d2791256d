"""The recognition interface's request checks and word grouping (voice_triton.asr), without a server."""

from __future__ import annotations

import numpy as np
import pytest

from voice_triton.asr import AsrSettings, Word, check_request, normalize_code, words_from_pieces
from voice_triton.errors import RequestError
from voice_triton.params import ConfigError, ModelParams

SETTINGS = AsrSettings(
    sample_rate_hz=16000, languages=("en", "de", "yue"), max_audio_seconds=2.0, word_time_offsets=True
)


def test_language_codes_accept_bcp47_and_iso() -> None:
    assert [normalize_code(c) for c in ("en-US", "en_gb", "DE", " yue ", "zh-Hant-TW")] == [
        "en",
        "en",
        "de",
        "yue",
        "zh",
    ]
    assert check_request(np.zeros(10), None, "en-US", False, SETTINGS).language == "en"
    assert check_request(np.zeros(10), None, "", False, SETTINGS).language == ""
    with pytest.raises(RequestError, match="language 'fr-FR' is not supported by this model: use one of en, de, yue"):
        check_request(np.zeros(10), None, "fr-FR", False, SETTINGS)


def test_audio_checks_say_what_to_fix() -> None:
    with pytest.raises(RequestError, match="audio is empty"):
        check_request(np.zeros(0), None, "", False, SETTINGS)
    with pytest.raises(RequestError, match=r"audio is 2\.5 s long, over this model's max_audio_seconds 2"):
        check_request(np.zeros(40000), None, "", False, SETTINGS)
    with pytest.raises(RequestError, match="NaN or infinite"):
        check_request(np.array([0.0, np.inf]), None, "", False, SETTINGS)
    with pytest.raises(RequestError, match=r"audio_len 11 is outside 0\.\.10"):
        check_request(np.zeros(10), 11, "", False, SETTINGS)
    # audio_len cuts the padding off before the length check.
    assert check_request(np.zeros(40000), 16000, "", True, SETTINGS).audio.size == 16000
    # Word timings only where the model gives them.
    off = AsrSettings(16000, ("en",), 2.0, word_time_offsets=False)
    assert not check_request(np.zeros(10), None, "", True, off).word_timestamps


def test_language_codes_parameter_narrows_the_checkpoints_languages() -> None:
    params = ModelParams("whisper", {"language_codes": "de-DE,en,yue"})
    assert AsrSettings.from_params(params, ["en", "de", "yue", "fr"]).languages == ("de", "en", "yue")
    assert AsrSettings.from_params(ModelParams("m", {}), ["en", "fr"]).languages == ("en", "fr")
    with pytest.raises(ConfigError, match="language_codes names languages the checkpoint lacks: yue"):
        AsrSettings.from_params(params, ["en", "de"])
    assert AsrSettings.from_params(params, ["en", "de"], strict=False).languages == ("de", "en")


def test_pieces_group_into_words_at_leading_spaces() -> None:
    words = words_from_pieces(
        [" Hel", "lo", " world", "!", " ok"],
        [0.0, 0.2, 0.5, 0.9, 1.0],
        [0.2, 0.4, 0.9, 1.0, 1.2],
        [1, 0.5, 0.8, 0.6, 0.9],
    )
    assert words == [Word("Hello", 0.0, 0.4, 0.75), Word("world!", 0.5, 1.0, 0.7), Word("ok", 1.0, 1.2, 0.9)]
    assert words_from_pieces([], [], [], []) == []
