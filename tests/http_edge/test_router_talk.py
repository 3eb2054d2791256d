"""routers/talk.py: the /v1/talk config frame's model (the loop itself, end to end: test_talk.py)."""

from __future__ import annotations

from typing import Any

import pytest

from services.http_edge.errors import EdgeError
from services.http_edge.talk import parse_config


def test_config_defaults_follow_the_chat_endpoint() -> None:
    assert parse_config({"voice": "joe", "sample_rate": 16000}, chat_configured=False).reply == "echo"
    assert parse_config({"voice": "joe", "sample_rate": 16000}, chat_configured=True).reply == "chat"
    config = parse_config(
        {"voice": "joe", "sample_rate": 8000, "language": "en-US", "recognition_model": "whisper", "reply": "echo"},
        chat_configured=True,
    )
    assert (config.sample_rate, config.language, config.recognition_model, config.reply) == (
        8000,
        "en-US",
        "whisper",
        "echo",
    )


@pytest.mark.parametrize(
    ("frame", "param", "words"),
    [
        ({"sample_rate": 16000}, "voice", "voice"),
        ({"voice": "joe"}, "sample_rate", "sample_rate"),
        ({"voice": "joe", "sample_rate": 96000}, "sample_rate", "8000..48000"),
        ({"voice": "joe", "sample_rate": 16000.0}, "sample_rate", "sample_rate"),
        ({"voice": "joe", "sample_rate": 16000, "reply": "chat"}, "reply", "--chat-url"),
        ({"voice": "joe", "sample_rate": 16000, "reply": "sing"}, "reply", "reply"),
        ({"voice": "joe", "sample_rate": 16000, "language": 7}, "language", "language"),
    ],
)
def test_config_problems(frame: dict[str, Any], param: str, words: str) -> None:
    with pytest.raises(EdgeError) as raised:
        parse_config(frame, chat_configured=False)
    assert (raised.value.status, raised.value.param) == (400, param) and words in raised.value.message
