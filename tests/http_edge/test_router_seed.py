"""routers/seed.py: the form API's own checks and the whole-WAV framing (the audio itself: test_edge.py)."""

from __future__ import annotations

import io
from typing import Any

import httpx
import numpy as np
import soundfile as sf

from services.http_edge.routers.seed import wav_file
from tests.http_edge.test_edge import VOICE, assert_error


def test_wav_file_is_a_complete_wav() -> None:
    pcm = (np.arange(-500, 500, dtype="<i2") * 30).tobytes()
    samples, rate = sf.read(io.BytesIO(wav_file(pcm, 16_000)), dtype="int16")
    assert rate == 16_000 and samples.tobytes() == pcm


def test_form_checks(http_edge: Any) -> None:
    url = http_edge.http("/synthesize")
    assert_error(httpx.post(url, data={"voice": VOICE}, timeout=30), 400, "invalid_argument", mentions="text")
    json_body = httpx.post(url, json={"text": "Hi.", "voice": VOICE}, timeout=30)
    assert_error(json_body, 400, "invalid_argument", mentions="multipart/form-data")
    wrong = httpx.post(url, data={"text": "Hi.", "voice": VOICE, "response_format": "mp3"}, timeout=30)
    assert assert_error(wrong, 400, "invalid_argument")["param"] == "response_format"
    pitch = httpx.post(url, data={"text": "Hi.", "voice": VOICE, "pitch_shift": "high"}, timeout=30)
    assert assert_error(pitch, 400, "invalid_argument")["param"] == "pitch_shift"
    orphan = httpx.post(url, data={"text": "Hi.", "voice": VOICE, "reference_text": "A"}, timeout=30)
    assert assert_error(orphan, 400, "invalid_argument")["param"] == "reference_text"
    no_clip = httpx.post(http_edge.http("/rvc"), data={"model": "world-default"}, timeout=30)
    assert assert_error(no_clip, 400, "invalid_argument")["param"] == "audio"


def test_stream_in_a_compressed_format(http_edge: Any) -> None:
    reply = httpx.post(
        http_edge.http("/synthesize/stream"),
        data={"text": "Hello.", "voice": VOICE, "response_format": "mp3"},
        timeout=60,
    )
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"] == "audio/mpeg" and len(reply.content) > 100
