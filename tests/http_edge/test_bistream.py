"""The CosyVoice2 bi-streaming runtime's HTTP API at the edge (services/http_edge/bistream.py): JSON `POST /tts` and
the `/stream` WebSocket, against the real edge, gateway and Triton (Piper `joe`, which does not clone and takes text
sentence by sentence: enough to check the framing, the session references and the turn protocol).

Audio lengths are compared with a direct gRPC Synthesize of the same text (an independent path to the same audio);
that a cached reference really reaches the gateway is seen from the gateway's own refusal: `joe` answers
FAILED_PRECONDITION naming the cloning mode it was asked for.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Callable
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import soundfile as sf
from websockets.sync.client import connect

from services.http_edge.bistream import ReferenceCache, choose_voice
from tests.http_edge.test_edge import (
    LONG_TEXT,
    TEXT,
    VOICE,
    assert_error,
    assert_serving,
    gateway_active_streams,
    grpc_seconds,
)
from tests.waiting import wait_until
from voice.v1 import audio_pb2, tts_gateway_pb2, tts_gateway_pb2_grpc

JOE_RATE = 22_050
TURN_TEXTS = ("The first turn says this.", "And the second turn says something else entirely.")


def post_tts(edge: Any, body: Any, **kwargs: Any) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Content-Type": "application/json", **kwargs.pop("headers", {})}
    return httpx.post(edge.http("/tts"), content=content, headers=headers, timeout=120, **kwargs)


def reference_wav(seconds: float = 2.0, rate: int = 16_000) -> bytes:
    t = np.arange(int(rate * seconds)) / rate
    clip = io.BytesIO()
    sf.write(clip, (0.3 * np.sin(2 * np.pi * 180 * t)).astype("float32"), rate, format="WAV", subtype="PCM_16")
    return clip.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def stream_url(edge: Any) -> str:
    return f"ws://127.0.0.1:{edge.port}/stream"


def read_turn(socket: Any) -> tuple[bytes, str | dict[str, Any]]:
    """Binary frames up to the next text frame: the audio, then "END" or the error object."""
    audio = bytearray()
    while True:
        message = socket.recv(timeout=120)
        if isinstance(message, bytes):
            audio += message
            continue
        return bytes(audio), (message if message == "END" else json.loads(message))


@pytest.fixture(scope="module")
def turn_seconds(gateway: Any) -> list[float]:
    return [grpc_seconds(gateway, text) for text in TURN_TEXTS]


# --------------------------------------------------------------------------------------------------------------------
# POST /tts (JSON)
# --------------------------------------------------------------------------------------------------------------------


def test_json_tts_streams_raw_pcm(http_edge: Any, gateway: Any) -> None:
    expected = grpc_seconds(gateway, TEXT)
    reply = post_tts(http_edge, {"text": TEXT, "voice": VOICE, "seed": 7}, headers={"X-Request-Id": "bistream-1"})
    assert reply.status_code == 200, reply.text
    assert reply.headers["x-sample-rate"] == str(JOE_RATE)
    assert reply.headers["x-format"] == "pcm_s16le"
    assert reply.headers["x-request-id"] == "bistream-1"
    assert reply.headers["transfer-encoding"] == "chunked"
    assert len(reply.content) > 0 and len(reply.content) % 2 == 0
    assert len(reply.content) / 2 / JOE_RATE == pytest.approx(expected, rel=0.1)
    assert reply.content[:4] != b"RIFF"  # raw samples, no container


def test_json_tts_default_voice_is_the_gateways_text_streaming_or_first_available(http_edge: Any, gateway: Any) -> None:
    with grpc.insecure_channel(gateway.address) as channel:
        listed = tts_gateway_pb2_grpc.TtsGatewayServiceStub(channel).ListVoices(
            tts_gateway_pb2.ListVoicesRequest(), timeout=30
        )
    expected = choose_voice(list(listed.voices))
    reply = post_tts(http_edge, {"text": "Hello there."})
    if expected is None or not next(v for v in listed.voices if v.name == expected).available:
        pytest.skip("the stack lists no available voice to default to")
    assert reply.status_code == 200, reply.text
    assert reply.headers["x-voice"] == expected
    rate = next(v.native_sample_rate_hz for v in listed.voices if v.name == expected)
    assert reply.headers["x-sample-rate"] == str(rate)
    assert len(reply.content) > 0 and len(reply.content) % 2 == 0


def test_bistream_voice_setting(http_edge_factory: Callable[..., Any], gateway: Any) -> None:
    edge = http_edge_factory(gateway.address, "--bistream-voice=joe-world-high", "--bistream-session-ttl=30")
    reply = post_tts(edge, {"text": "Hello."})
    assert reply.status_code == 200, reply.text
    assert reply.headers["x-voice"] == "joe-world-high"
    assert post_tts(edge, {"text": "Hello.", "voice": VOICE}).headers["x-voice"] == VOICE


def test_session_reference_is_cached_and_sent_again(http_edge: Any) -> None:
    # joe does not clone, so the gateway refuses a request that carries a reference and names the mode: the second
    # request of the session sends no reference of its own, and is refused the same way.
    first = post_tts(
        http_edge,
        {
            "text": "Hi.",
            "voice": VOICE,
            "session_id": "cached-1",
            "reference": b64(reference_wav()),
            "reference_text": "A",
        },
    )
    assert_error(first, 412, "failed_precondition", mentions="zero_shot")
    again = post_tts(http_edge, {"text": "Hi.", "voice": VOICE, "session_id": "cached-1"})
    assert_error(again, 412, "failed_precondition", mentions="zero_shot")
    # Another session has no reference: the voice's own speaker.
    other = post_tts(http_edge, {"text": "Hi.", "voice": VOICE, "session_id": "cached-2"})
    assert other.status_code == 200, other.text
    assert len(other.content) > 0
    # A reference given again replaces the cached one (here: no transcript, so cross-lingual), also as raw PCM16.
    pcm = (np.sin(np.arange(24_000 * 2) / 9) * 8000).astype("<i2").tobytes()
    replaced = post_tts(
        http_edge,
        {"text": "Hi.", "voice": VOICE, "session_id": "cached-1", "reference": b64(pcm), "reference_format": "pcm16"},
    )
    assert_error(replaced, 412, "failed_precondition", mentions="cross_lingual")
    assert_error(
        post_tts(http_edge, {"text": "Hi.", "voice": VOICE, "session_id": "cached-1"}),
        412,
        "failed_precondition",
        mentions="cross_lingual",
    )


def test_json_tts_errors(http_edge: Any) -> None:
    bad = assert_error(
        post_tts(http_edge, {"text": "Hi.", "voice": VOICE, "reference": "not base64!"}), 400, "invalid_argument"
    )
    assert "reference" in bad["message"] and bad["param"] == "reference"
    missing = assert_error(post_tts(http_edge, {"voice": VOICE}), 400, "invalid_argument")
    assert missing["param"] == "text"
    assert assert_error(post_tts(http_edge, {"text": "Hi.", "seed": "7"}), 400, "invalid_argument")["param"] == "seed"
    assert_error(post_tts(http_edge, b"{not json"), 400, "invalid_argument")
    assert_error(post_tts(http_edge, [1, 2]), 400, "invalid_argument")
    odd = post_tts(http_edge, {"text": "Hi.", "reference": b64(b"\x00\x01\x02"), "reference_format": "pcm16"})
    assert assert_error(odd, 400, "invalid_argument", mentions="PCM16")["param"] == "reference"
    garbage = post_tts(http_edge, {"text": "Hi.", "reference": b64(b"RIFF" + b"\x00" * 200)})
    assert_error(garbage, 400, "invalid_argument", mentions="reference")
    orphan = post_tts(http_edge, {"text": "Hi.", "voice": VOICE, "session_id": "never-seen", "reference_text": "A"})
    assert assert_error(orphan, 400, "invalid_argument")["param"] == "reference_text"
    unknown = post_tts(http_edge, {"text": "Hi.", "voice": "no-such-voice"})
    assert_error(unknown, 404, "not_found")


def test_form_tts_is_still_the_whole_wav(http_edge: Any) -> None:
    reply = httpx.post(http_edge.http("/tts"), data={"text": "Hello there.", "voice": VOICE}, timeout=60)
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"] == "audio/wav" and reply.content[:4] == b"RIFF"
    assert "x-format" not in reply.headers


# --------------------------------------------------------------------------------------------------------------------
# WebSocket /stream
# --------------------------------------------------------------------------------------------------------------------


def test_stream_two_turns_on_one_connection(http_edge: Any, turn_seconds: list[float]) -> None:
    with connect(stream_url(http_edge), open_timeout=30) as socket:
        for text in TURN_TEXTS:  # both sent at once: the second waits for the first
            socket.send(json.dumps({"session_id": "turns", "text": text, "voice": VOICE}))
        for expected in turn_seconds:
            audio, end = read_turn(socket)
            assert end == "END"
            assert len(audio) > 0 and len(audio) % 2 == 0
            assert len(audio) / 2 / JOE_RATE == pytest.approx(expected, rel=0.12)


def test_stream_partial_turn(http_edge: Any, gateway: Any) -> None:
    expected = grpc_seconds(gateway, TEXT)
    words = TEXT.split(" ")
    with connect(stream_url(http_edge), open_timeout=30) as socket:
        for word in words[:-1]:
            socket.send(json.dumps({"session_id": "typing", "text": word + " ", "partial": True, "voice": VOICE}))
        socket.send(json.dumps({"session_id": "typing", "text": words[-1]}))
        audio, end = read_turn(socket)
        assert end == "END"
        assert len(audio) % 2 == 0
        assert len(audio) / 2 / JOE_RATE == pytest.approx(expected, rel=0.12)
        # An empty final frame ends a turn whose text came in partial frames.
        socket.send(json.dumps({"text": "Short one.", "partial": True, "voice": VOICE}))
        socket.send(json.dumps({"text": ""}))
        audio, end = read_turn(socket)
        assert end == "END" and len(audio) > 0


def test_stream_errors_leave_the_connection_usable(http_edge: Any) -> None:
    with connect(stream_url(http_edge), open_timeout=30) as socket:
        socket.send("not json")
        audio, error = read_turn(socket)
        assert audio == b"" and isinstance(error, dict)
        assert (error["type"], error["status"], error["code"]) == ("error", 400, "invalid_argument")
        socket.send(json.dumps({"session_id": "x"}))  # no text
        _, error = read_turn(socket)
        assert isinstance(error, dict) and error["param"] == "text"
        socket.send(json.dumps({"text": "Hi.", "reference": "%%%"}))
        _, error = read_turn(socket)
        assert isinstance(error, dict) and error["param"] == "reference"
        # A turn the gateway refuses, sent in pieces: one error, its other frames dropped.
        socket.send(json.dumps({"text": "Hello ", "partial": True, "voice": "no-such-voice"}))
        socket.send(json.dumps({"text": "there ", "partial": True}))
        socket.send(json.dumps({"text": "friend."}))
        _, error = read_turn(socket)
        assert isinstance(error, dict) and error["status"] == 404
        # A bad frame inside a partial turn ends that turn with its error.
        socket.send(json.dumps({"text": "Half a ", "partial": True, "voice": VOICE}))
        socket.send(json.dumps({"text": 42}))
        _, error = read_turn(socket)
        assert isinstance(error, dict) and error["status"] == 400 and error["param"] == "text"
        # The reference of a frame is kept for the session's later turns.
        socket.send(
            json.dumps({"session_id": "ws-ref", "text": "Hi.", "voice": VOICE, "reference": b64(reference_wav())})
        )
        _, error = read_turn(socket)
        assert isinstance(error, dict) and error["status"] == 412 and "cross_lingual" in error["message"]
        socket.send(json.dumps({"session_id": "ws-ref", "text": "Hi.", "voice": VOICE}))
        _, error = read_turn(socket)
        assert isinstance(error, dict) and error["status"] == 412
        # And a good turn still works after all that.
        socket.send(json.dumps({"text": "Still here.", "voice": VOICE}))
        audio, end = read_turn(socket)
        assert end == "END" and len(audio) > 0


def test_stream_disconnect_cancels_the_gateway_stream(http_edge: Any, gateway: Any) -> None:
    with connect(stream_url(http_edge), open_timeout=30) as socket:
        socket.send(json.dumps({"text": LONG_TEXT * 3, "voice": VOICE}))
        assert isinstance(socket.recv(timeout=60), bytes)
        assert gateway_active_streams(gateway) >= 1
    wait_until(lambda: gateway_active_streams(gateway) == 0, within=15, what="the gateway's stream was cancelled")
    assert_serving(http_edge)


def test_speech_socket_takes_a_text_input_mode(http_edge: Any) -> None:
    with connect(http_edge.ws_url, open_timeout=30) as socket:
        socket.send(json.dumps({"voice": VOICE, "text_input_mode": "sideways"}))
        error = json.loads(socket.recv(timeout=60))
        assert (error["type"], error["status"]) == ("error", 400) and "text_input_mode" in error["message"]
    events: list[dict[str, Any]] = []
    with connect(http_edge.ws_url, open_timeout=30) as socket:
        socket.send(json.dumps({"voice": VOICE, "text_input_mode": "sentences"}))
        socket.send(json.dumps({"text": "Hello there."}))
        socket.send(json.dumps({"type": "end"}))
        events = [json.loads(message) for message in socket if isinstance(message, str)]
    assert events[0]["type"] == "start" and events[-1]["type"] == "done"


def test_voices_say_which_stream_text_input(http_edge: Any) -> None:
    voices = {voice["id"]: voice for voice in httpx.get(http_edge.http("/v1/voices"), timeout=30).json()["data"]}
    assert voices[VOICE]["streams_text_input"] is False


# --------------------------------------------------------------------------------------------------------------------
# The session cache on its own
# --------------------------------------------------------------------------------------------------------------------


def test_reference_cache_is_a_bounded_lru_with_an_idle_ttl() -> None:
    now = [0.0]
    cache = ReferenceCache(max_sessions=2, ttl_s=10.0, clock=lambda: now[0])
    clip = audio_pb2.AudioInput(audio=b"\x00\x00")
    cache.put("a", clip, "")
    cache.put("b", clip, "")
    assert cache.get("a") is not None  # "a" is now the most recently used
    cache.put("c", clip, "")
    assert cache.get("b") is None and cache.get("a") is not None and len(cache) == 2
    now[0] = 9.0
    assert cache.get("c") is not None  # used at 9: stays until 19
    now[0] = 15.0
    assert cache.get("a") is None and cache.get("c") is not None
    now[0] = 100.0
    assert len(cache) == 0
    small = ReferenceCache(max_sessions=10, ttl_s=0, max_bytes=5)
    small.put("a", audio_pb2.AudioInput(audio=b"123"), "")
    small.put("b", audio_pb2.AudioInput(audio=b"456"), "")  # 6 bytes in all: "a" goes
    assert small.get("a") is None and small.get("b") is not None
    small.put("b", audio_pb2.AudioInput(audio=b"1234567"), "")  # one entry is kept even over the budget
    assert small.get("b") is not None and len(small) == 1
