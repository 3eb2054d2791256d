"""routers/bistream.py: the /stream frame model and the JSON /tts dispatch (end to end: test_bistream.py)."""

from __future__ import annotations

import base64
from typing import Any

import httpx
import pytest

from services.http_edge.bistream import decode_reference, parse_request
from services.http_edge.errors import EdgeError
from tests.http_edge.test_edge import VOICE


def test_frames_parse_strictly() -> None:
    request = parse_request({"text": "Hi.", "seed": 3, "partial": True, "extra": "ignored"})
    assert (request.text, request.seed, request.partial, request.reference_format) == ("Hi.", 3, True, "audio")
    for frame, param in (({"seed": 1}, "text"), ({"text": "Hi.", "seed": -1}, "seed"), ({"text": 1}, "text")):
        with pytest.raises(EdgeError) as raised:
            parse_request(frame)
        assert raised.value.param == param
    with pytest.raises(EdgeError):
        parse_request(["not", "an", "object"])


def test_pcm16_reference_decodes() -> None:
    pcm = b"\x01\x00" * 24_000
    request = parse_request({"text": "Hi.", "reference": base64.b64encode(pcm).decode(), "reference_format": "pcm16"})
    reference = decode_reference(request, max_seconds=5)
    assert reference is not None and reference.audio == pcm and reference.format.sample_rate_hz == 24_000
    with pytest.raises(EdgeError) as raised:
        decode_reference(request, max_seconds=0.5)
    assert raised.value.code == "out_of_range"


def test_json_tts_with_a_charset_goes_to_the_runtime_api(http_edge: Any) -> None:
    reply = httpx.post(
        http_edge.http("/tts"),
        content=b'{"text": "Hello.", "voice": "joe"}',
        headers={"Content-Type": "application/json; charset=utf-8"},
        timeout=60,
    )
    assert reply.status_code == 200, reply.text
    assert reply.headers["x-format"] == "pcm_s16le" and reply.headers["x-voice"] == VOICE
