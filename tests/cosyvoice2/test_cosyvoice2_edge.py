"""The bi-streaming runtime's own HTTP API at the edge, on a voice that really takes text in increments (CosyVoice2,
tiny checkpoint): `/stream` answers audio while a partial turn's text is still arriving, and `POST /tts` clones from a
base64 24 kHz PCM16 reference kept per session."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from websockets.sync.client import connect

from tests.fixtures.cosyvoice2 import voiced
from tests.fixtures.gateway import GatewayProcess
from tests.fixtures.http_edge import EdgeProcess, start_http_edge

pytestmark = pytest.mark.timeout(600)
WORDS = [
    "The",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "the",
    "lazy",
    "dog",
    "while",
    "the",
    "farmer",
    "watches",
    "from",
    "his",
    "old",
    "wooden",
    "porch",
]


@pytest.fixture(scope="module")
def edge(cosyvoice2_gateway: GatewayProcess, rvc_service: object) -> Iterator[EdgeProcess]:
    process = start_http_edge(cosyvoice2_gateway.address, rvc_service.address)  # type: ignore[attr-defined]
    yield process
    process.stop()


def test_stream_speaks_while_a_partial_turn_is_written(edge: EdgeProcess) -> None:
    url = f"ws://127.0.0.1:{edge.port}/stream"
    with connect(url, open_timeout=30) as socket:
        first_audio_at = None
        sent_last_at = None
        for index, word in enumerate(WORDS):
            last = index == len(WORDS) - 1
            frame = {"session_id": "s1", "text": word + " ", "voice": "cosyvoice2", "seed": 3}
            if not last:
                frame["partial"] = True
            else:
                sent_last_at = time.perf_counter()
            socket.send(json.dumps(frame))
            deadline = time.perf_counter() + 0.25
            while first_audio_at is None and time.perf_counter() < deadline:
                try:
                    message = socket.recv(timeout=max(0.0, deadline - time.perf_counter()))
                except TimeoutError:
                    break
                assert isinstance(message, bytes), message
                first_audio_at = time.perf_counter()
        pcm = bytearray()
        while True:
            message = socket.recv(timeout=120)
            if message == "END":
                break
            assert isinstance(message, bytes), message
            pcm += message
            first_audio_at = first_audio_at or time.perf_counter()
    assert first_audio_at is not None and sent_last_at is not None
    assert first_audio_at < sent_last_at  # audio before the turn's text was complete
    assert len(pcm) > 0 and len(pcm) % 2 == 0


def test_tts_json_clones_from_a_session_reference(edge: EdgeProcess) -> None:
    reference = (voiced(2.0, f0=130.0, seed=5) * 32767).astype("<i2").tobytes()
    body = {
        "text": "Hello from the bi-streaming API.",
        "session_id": "clone-1",
        "reference": base64.b64encode(reference).decode(),
        "reference_format": "pcm16",
        "reference_text": "A reference clip.",
        "voice": "cosyvoice2",
        "seed": 4,
    }
    first = httpx.post(edge.http("/tts"), json=body, timeout=120)
    assert first.status_code == 200, first.text
    assert first.headers["x-sample-rate"] == "24000" and first.headers["x-format"] == "pcm_s16le"
    again = httpx.post(
        edge.http("/tts"),
        json={"text": body["text"], "session_id": "clone-1", "voice": "cosyvoice2", "seed": 4},
        timeout=120,
    )
    assert again.status_code == 200, again.text
    # The cached reference, the same text and seed: the same audio.
    assert len(first.content) > 0 and np.array_equal(
        np.frombuffer(first.content, "<i2"), np.frombuffer(again.content, "<i2")
    )
