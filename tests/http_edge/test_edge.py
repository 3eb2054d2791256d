"""The HTTP edge as a real process in front of the real gateway, conversion service and Triton.

Audio is checked by decoding it (soundfile for WAV/FLAC, PyAV for MP3/Opus/AAC) and comparing its length with a
direct gRPC Synthesize of the same text, decoded the same way: an independent path to the same audio.
"""

from __future__ import annotations

import io
import json
import threading
import time
from collections.abc import Callable
from typing import Any

import av
import grpc
import httpx
import numpy as np
import openai
import pytest
import soundfile as sf
from websockets.sync.client import connect

from tests.prometheus import metric, scrape
from tests.waiting import wait_until
from voice.v1 import audio_pb2, tts_gateway_pb2, tts_gateway_pb2_grpc

VOICE = "joe"
TEXT = "The quick brown fox jumps over the lazy dog. It was a sunny day."
LONG_TEXT = " ".join(
    f"Sentence number {i} is here to make the synthesis take a while, so streaming can be seen." for i in range(12)
)


def grpc_seconds(gateway: Any, text: str, voice: str = VOICE) -> float:
    """Length of a direct gRPC Synthesize of `text` (WAV, decoded with soundfile)."""
    with grpc.insecure_channel(gateway.address) as channel:
        stub = tts_gateway_pb2_grpc.TtsGatewayServiceStub(channel)
        request = tts_gateway_pb2.SynthesizeRequest(
            text=text, voice=voice, output_format=audio_pb2.AudioFormat(encoding=audio_pb2.AUDIO_ENCODING_WAV)
        )
        data = b"".join(chunk.audio for chunk in stub.Synthesize(request, timeout=120))
    samples, rate = sf.read(io.BytesIO(data), dtype="float32")
    return len(samples) / rate


def decode_av(data: bytes) -> tuple[float, int]:
    with av.open(io.BytesIO(data)) as container:
        frames = list(container.decode(audio=0))
    assert frames, "no audio frames decoded"
    rate = frames[0].sample_rate
    return sum(frame.samples for frame in frames) / rate, rate


def client_for(edge: Any, token: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=edge.http("/v1"), api_key=token, max_retries=0, timeout=120)


def gateway_active_streams(gateway: Any) -> float:
    return metric(scrape(gateway.metrics_url), "tts_gateway_active_streams")


def assert_serving(edge: Any) -> None:
    reply = httpx.get(edge.http("/v1/voices"), timeout=30)
    assert reply.status_code == 200, reply.text
    assert any(voice["id"] == VOICE for voice in reply.json()["data"])


# Piper samples phoneme durations (noise_w), so two syntheses of one text differ by a few percent: compare within 10%.
@pytest.fixture(scope="module")
def reference_seconds(gateway: Any) -> float:
    return grpc_seconds(gateway, TEXT)


# --------------------------------------------------------------------------------------------------------------------
# OpenAI client
# --------------------------------------------------------------------------------------------------------------------


def read_streamed(data: bytes) -> tuple[Any, int]:
    """soundfile, block by block: a streamed WAV/FLAC header cannot state the length (see docs/http_edge.md)."""
    with sf.SoundFile(io.BytesIO(data)) as audio:
        blocks = (
            [block for block in audio.blocks(blocksize=4096, dtype="float32")]
            if audio.frames > 2**31
            else [audio.read(dtype="float32")]
        )
        return np.concatenate(blocks), audio.samplerate


@pytest.mark.parametrize("response_format", ["wav", "flac"])
def test_openai_client_lossless_formats(http_edge: Any, reference_seconds: float, response_format: Any) -> None:
    reply = client_for(http_edge).audio.speech.create(
        model="tts-1", voice=VOICE, input=TEXT, response_format=response_format
    )
    if response_format == "wav":
        samples, rate = read_streamed(reply.content)
        seconds = len(samples) / rate
    else:  # a streamed FLAC cannot go back to write its sample count: libsndfile refuses it, FFmpeg reads it
        seconds, rate = decode_av(reply.content)
    assert rate == 24_000
    assert seconds == pytest.approx(reference_seconds, rel=0.1)
    assert reply.response.headers["x-sample-rate"] == "24000"
    assert reply.response.headers["x-model"] == "tts-1"


@pytest.mark.parametrize(
    ("response_format", "content_type"), [("mp3", "audio/mpeg"), ("opus", "audio/ogg"), ("aac", "audio/aac")]
)
def test_openai_client_compressed_formats(
    http_edge: Any, reference_seconds: float, response_format: Any, content_type: str
) -> None:
    reply = client_for(http_edge).audio.speech.create(
        model="tts-1", voice=VOICE, input=TEXT, response_format=response_format
    )
    assert reply.response.headers["content-type"] == content_type
    seconds, rate = decode_av(reply.content)
    assert rate in (24_000, 48_000)  # the Opus decoder reports 48 kHz whatever the input rate
    # Encoders add priming/padding frames: allow a few of them.
    assert seconds == pytest.approx(reference_seconds, rel=0.1)


def test_openai_pcm_is_24khz_s16le(http_edge: Any, reference_seconds: float) -> None:
    reply = client_for(http_edge).audio.speech.create(model="tts-1", voice=VOICE, input=TEXT, response_format="pcm")
    assert reply.response.headers["content-type"] == "audio/pcm"
    assert len(reply.content) % 2 == 0
    assert len(reply.content) / 2 / 24_000 == pytest.approx(reference_seconds, rel=0.1)


def test_speed_changes_the_duration(http_edge: Any, reference_seconds: float) -> None:
    reply = client_for(http_edge).audio.speech.create(
        model="tts-1", voice=VOICE, input=TEXT, response_format="wav", speed=2.0
    )
    samples, rate = sf.read(io.BytesIO(reply.content), dtype="float32")
    assert len(samples) / rate < 0.75 * reference_seconds


def test_streaming_response_arrives_before_synthesis_ends(http_edge: Any) -> None:
    client = client_for(http_edge)
    arrivals: list[float] = []
    total = 0
    started = time.perf_counter()
    with client.audio.speech.with_streaming_response.create(
        model="tts-1", voice=VOICE, input=LONG_TEXT, response_format="pcm"
    ) as response:
        assert response.headers.get("transfer-encoding") == "chunked"
        for piece in response.iter_bytes():
            arrivals.append(time.perf_counter() - started)
            total += len(piece)
    assert total > 24_000 * 2 * 5  # over 5 s of audio
    assert len(arrivals) > 3
    # The first bytes come well before the whole multi-sentence synthesis is done.
    assert arrivals[0] < 0.5 * arrivals[-1]


# --------------------------------------------------------------------------------------------------------------------
# Error mapping
# --------------------------------------------------------------------------------------------------------------------


def post_speech(edge: Any, body: Any, **kwargs: Any) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Content-Type": "application/json", **kwargs.pop("headers", {})}
    return httpx.post(edge.http("/v1/audio/speech"), content=content, headers=headers, timeout=60, **kwargs)


def assert_error(reply: httpx.Response, status: int, code: str, *, mentions: str = "") -> dict[str, Any]:
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert error["code"] == code
    assert error["request_id"] == reply.headers["x-request-id"]
    assert isinstance(error["type"], str) and error["type"]
    if mentions:
        assert mentions in error["message"]
    return dict(error)


def test_unknown_voice_is_404_with_the_gateways_message(http_edge: Any, gateway: Any) -> None:
    reply = post_speech(http_edge, {"model": "m", "voice": "no-such-voice", "input": "Hello."})
    error = assert_error(reply, 404, "not_found")
    with grpc.insecure_channel(gateway.address) as channel:
        stub = tts_gateway_pb2_grpc.TtsGatewayServiceStub(channel)
        with pytest.raises(grpc.RpcError) as raised:
            list(
                stub.Synthesize(
                    tts_gateway_pb2.SynthesizeRequest(
                        text="Hello.",
                        voice="no-such-voice",
                        output_format=audio_pb2.AudioFormat(encoding=audio_pb2.AUDIO_ENCODING_PCM16),
                    )
                )
            )
    assert error["message"] == raised.value.details()


def test_empty_input_is_400(http_edge: Any) -> None:
    error = assert_error(
        post_speech(http_edge, {"model": "m", "voice": VOICE, "input": "   "}), 400, "invalid_argument"
    )
    assert error["param"] == "text"


@pytest.mark.parametrize("speed", [0.1, 4.5, 10.0])
def test_speed_outside_the_gateways_range_is_400(http_edge: Any, speed: float) -> None:
    reply = post_speech(http_edge, {"model": "m", "voice": VOICE, "input": "Hi.", "speed": speed})
    error = assert_error(reply, 400, "invalid_argument", mentions="0.25 and 4")
    assert error["param"] == "speed"


def test_unsupported_format_lists_the_supported_ones(http_edge: Any) -> None:
    reply = post_speech(http_edge, {"model": "m", "voice": VOICE, "input": "Hi.", "response_format": "ogg"})
    error = assert_error(reply, 400, "invalid_argument")
    assert all(name in error["message"] for name in ("mp3", "opus", "aac", "flac", "wav", "pcm"))


def test_hostile_bodies_are_400_and_the_edge_keeps_serving(http_edge: Any) -> None:
    for body in (b"not json", b"[1, 2]", b"\xff\xfe\x00", json.dumps({"voice": VOICE}).encode()):
        assert_error(post_speech(http_edge, body), 400, "invalid_argument")
    # A long text passes the edge and is refused by the gateway with its own limit.
    reply = post_speech(http_edge, {"model": "m", "voice": VOICE, "input": "word " * 3000})
    assert_error(reply, 400, "invalid_argument")
    assert_serving(http_edge)


def test_oversize_body_is_413(http_edge_factory: Callable[..., Any], gateway: Any) -> None:
    edge = http_edge_factory(gateway.address, "--max-body-mb=0.01")
    big = {"model": "m", "voice": VOICE, "input": "x" * 20_000}
    assert_error(post_speech(edge, big), 413, "request_too_large")

    def chunked() -> Any:  # no Content-Length: the limit is enforced while reading
        yield json.dumps(big).encode()

    reply = httpx.post(edge.http("/v1/audio/speech"), content=chunked(), timeout=30)
    assert_error(reply, 413, "request_too_large")
    assert_serving(edge)


def test_auth_token(http_edge_factory: Callable[..., Any], gateway: Any) -> None:
    edge = http_edge_factory(gateway.address, "--auth-token=s3cret")
    assert_error(httpx.get(edge.http("/v1/voices"), timeout=30), 401, "unauthenticated")
    bad = httpx.get(edge.http("/v1/voices"), headers={"Authorization": "Bearer wrong"}, timeout=30)
    assert_error(bad, 401, "unauthenticated")
    good = httpx.get(edge.http("/v1/voices"), headers={"Authorization": "Bearer s3cret"}, timeout=30)
    assert good.status_code == 200
    assert httpx.get(edge.http("/health"), timeout=30).status_code == 200  # probes need no token
    assert httpx.get(edge.url, timeout=30).status_code == 200  # nor the page
    with pytest.raises(openai.AuthenticationError):
        client_for(edge, "wrong").audio.speech.create(model="m", voice=VOICE, input="Hi.")
    reply = client_for(edge, "s3cret").audio.speech.create(model="m", voice=VOICE, input="Hi.", response_format="wav")
    assert len(reply.content) > 44


def test_gateway_down_is_503_and_health_says_so(
    http_edge_factory: Callable[..., Any], gateway_factory: Callable[..., Any]
) -> None:
    own_gateway = gateway_factory()
    edge = http_edge_factory(own_gateway.address)
    assert httpx.get(edge.http("/health"), timeout=30).json()["gateway"] == "SERVING"
    own_gateway.stop()
    reply = post_speech(edge, {"model": "m", "voice": VOICE, "input": "Hello."})
    assert_error(reply, 503, "unavailable")
    assert int(reply.headers["retry-after"]) >= 1
    health = httpx.get(edge.http("/health"), timeout=30)
    assert health.status_code == 503
    assert health.json()["gateway"] != "SERVING"
    assert httpx.get(edge.http("/status"), timeout=30).status_code == 503


def test_429_carries_retry_after_from_the_gateway(
    http_edge_factory: Callable[..., Any], gateway_factory: Callable[..., Any]
) -> None:
    own_gateway = gateway_factory("--max-concurrent-streams=1", "--admission-target-load=0")
    edge = http_edge_factory(own_gateway.address)
    with (
        httpx.Client(timeout=120) as client,
        client.stream(
            "POST",
            edge.http("/v1/audio/speech"),
            json={"model": "m", "voice": VOICE, "input": LONG_TEXT, "response_format": "pcm"},
        ) as holding,
    ):
        assert holding.status_code == 200
        pieces = holding.iter_bytes()  # kept: a dropped iterator would close the response
        next(pieces)  # the one slot is taken while this stream is open
        reply = post_speech(edge, {"model": "m", "voice": VOICE, "input": "Hello."})
        assert_error(reply, 429, "resource_exhausted", mentions="concurrent streams")
        assert int(reply.headers["retry-after"]) >= 1
    assert_serving(edge)


def test_client_disconnect_cancels_the_gateway_stream(http_edge: Any, gateway: Any) -> None:
    with (
        httpx.Client(timeout=120) as client,
        client.stream(
            "POST",
            edge_speech := http_edge.http("/v1/audio/speech"),
            json={"model": "m", "voice": VOICE, "input": LONG_TEXT * 3, "response_format": "pcm"},
        ) as response,
    ):
        assert response.status_code == 200
        pieces = response.iter_bytes()  # kept: a dropped iterator would close the response
        next(pieces)
        assert gateway_active_streams(gateway) >= 1
    # Leaving the block closed the connection mid-body.
    wait_until(lambda: gateway_active_streams(gateway) == 0, within=15, what="the gateway's stream was cancelled")
    wait_until(
        lambda: metric(scrape(http_edge.metrics_url), "http_edge_active_streams", route="/v1/audio/speech") == 0,
        within=15,
        what="the edge's stream gauge returns to 0",
    )
    assert edge_speech
    assert_serving(http_edge)


def test_request_id_round_trip(http_edge: Any) -> None:
    reply = post_speech(
        http_edge,
        {"model": "m", "voice": VOICE, "input": "Hi.", "response_format": "wav"},
        headers={"X-Request-Id": "edge-test-123"},
    )
    assert reply.status_code == 200
    assert reply.headers["x-request-id"] == "edge-test-123"
    generated = post_speech(http_edge, {"model": "m", "voice": "nope", "input": "Hi."})
    assert generated.headers["x-request-id"] == generated.json()["error"]["request_id"]
    assert len(generated.headers["x-request-id"]) >= 16
    bad = post_speech(
        http_edge, {"model": "m", "voice": VOICE, "input": "Hi."}, headers={"X-Request-Id": "has spaces in it"}
    )
    assert_error(bad, 400, "invalid_argument")


# --------------------------------------------------------------------------------------------------------------------
# Discovery, health, status
# --------------------------------------------------------------------------------------------------------------------


def test_voices_health_status(http_edge: Any, gateway: Any) -> None:
    voices = httpx.get(http_edge.http("/v1/voices"), timeout=30).json()
    assert voices["object"] == "list"
    by_id = {voice["id"]: voice for voice in voices["data"]}
    assert by_id[VOICE]["sample_rate"] == 22050 and by_id[VOICE]["streaming"] is True
    assert by_id["joe-world-high"]["default_conversion"] == "world-default"
    assert by_id[VOICE]["default_conversion"] is None
    assert "world-default" in {model["id"] for model in voices["conversion_models"]}
    health = httpx.get(http_edge.http("/health"), timeout=30)
    assert health.status_code == 200 and health.json() == {
        "status": "ok",
        "gateway": "SERVING",
        "conversion": "SERVING",
    }
    status = httpx.get(http_edge.http("/status"), timeout=30).json()
    assert {upstream["name"] for upstream in status["gateway"]["upstreams"]} >= {"triton"}
    assert "workers" in status["conversion"]


def test_page_and_static_files(http_edge: Any) -> None:
    page = httpx.get(http_edge.url, timeout=30)
    assert page.status_code == 200 and "<html" in page.text.lower()
    assert httpx.get(http_edge.http("/static/app.js"), timeout=30).status_code == 200
    assert_error(httpx.get(http_edge.http("/static/nope.js"), timeout=30), 404, "not_found")


# --------------------------------------------------------------------------------------------------------------------
# The seed's API
# --------------------------------------------------------------------------------------------------------------------


def test_synthesize_stream_pcm(http_edge: Any, reference_seconds: float) -> None:
    reply = httpx.post(http_edge.http("/synthesize/stream"), data={"text": TEXT, "voice": VOICE}, timeout=60)
    assert reply.status_code == 200, reply.text
    rate = int(reply.headers["x-sample-rate"])
    assert rate == 22050
    assert len(reply.content) / 2 / rate == pytest.approx(reference_seconds, rel=0.1)


@pytest.mark.parametrize("path", ["/synthesize", "/tts"])
def test_whole_wav_with_timing_headers(http_edge: Any, reference_seconds: float, path: str) -> None:
    reply = httpx.post(http_edge.http(path), data={"text": TEXT, "voice": VOICE}, timeout=60)
    assert reply.status_code == 200, reply.text
    samples, rate = sf.read(io.BytesIO(reply.content), dtype="float32")
    assert len(samples) / rate == pytest.approx(reference_seconds, rel=0.1)
    assert float(reply.headers["x-audio-seconds"]) == pytest.approx(len(samples) / rate, abs=0.01)
    assert 0 < float(reply.headers["x-time-to-first-audio-ms"]) <= float(reply.headers["x-tts-time-ms"]) + 1000
    assert float(reply.headers["x-conversion-time-ms"]) == 0.0
    assert "ttfa;dur=" in reply.headers["server-timing"] and "total;dur=" in reply.headers["server-timing"]


def test_synthesize_with_conversion_reports_conversion_time(http_edge: Any) -> None:
    reply = httpx.post(
        http_edge.http("/synthesize"),
        data={"text": TEXT, "voice": VOICE, "conversion_model": "world-default", "pitch_shift": "3"},
        timeout=120,
    )
    assert reply.status_code == 200, reply.text
    assert float(reply.headers["x-conversion-time-ms"]) > 0
    bad = httpx.post(http_edge.http("/tts"), data={"text": TEXT, "voice": VOICE, "conversion_model": "x"}, timeout=60)
    assert_error(bad, 400, "invalid_argument")


def test_rvc_converts_an_uploaded_clip(http_edge: Any) -> None:
    rate = 16_000
    t = np.arange(rate * 2) / rate
    clip = io.BytesIO()
    sf.write(clip, (0.3 * np.sin(2 * np.pi * 180 * t)).astype("float32"), rate, format="WAV", subtype="PCM_16")
    reply = httpx.post(
        http_edge.http("/rvc"),
        files={"audio": ("clip.wav", clip.getvalue(), "audio/wav")},
        data={"model": "world-default", "pitch_shift": "2"},
        timeout=120,
    )
    assert reply.status_code == 200, reply.text
    samples, out_rate = sf.read(io.BytesIO(reply.content), dtype="float32")
    assert len(samples) / out_rate == pytest.approx(2.0, abs=0.1)
    assert float(reply.headers["x-conversion-time-ms"]) > 0
    assert float(reply.headers["x-audio-seconds"]) == pytest.approx(2.0, abs=0.1)
    garbage = httpx.post(
        http_edge.http("/rvc"),
        files={"audio": ("x.wav", b"RIFF" + b"\x00" * 400)},
        data={"model": "world-default"},
        timeout=60,
    )
    assert_error(garbage, 400, "invalid_argument", mentions="audio")
    unknown = httpx.post(
        http_edge.http("/rvc"),
        files={"audio": ("clip.wav", clip.getvalue())},
        data={"model": "no-such-model"},
        timeout=60,
    )
    assert_error(unknown, 404, "not_found")
    assert_serving(http_edge)


def test_upload_length_limit(http_edge_factory: Callable[..., Any], gateway: Any) -> None:
    edge = http_edge_factory(gateway.address, "--max-upload-seconds=1")
    clip = io.BytesIO()
    sf.write(clip, np.zeros(16_000 * 3, dtype="float32"), 16_000, format="WAV", subtype="PCM_16")
    reply = httpx.post(
        edge.http("/rvc"),
        files={"audio": ("clip.wav", clip.getvalue())},
        data={"model": "world-default"},
        timeout=60,
    )
    assert_error(reply, 400, "out_of_range", mentions="limit of 1 s")


# --------------------------------------------------------------------------------------------------------------------
# WebSocket
# --------------------------------------------------------------------------------------------------------------------


def test_websocket_text_in_audio_out(http_edge: Any, reference_seconds: float) -> None:
    audio = bytearray()
    events: list[dict[str, Any]] = []
    with connect(http_edge.ws_url, open_timeout=30) as socket:
        socket.send(json.dumps({"voice": VOICE, "response_format": "pcm"}))
        for token in TEXT.split(" "):  # LLM-style pieces
            socket.send(json.dumps({"text": token + " "}))
        socket.send(json.dumps({"type": "end"}))
        for message in socket:
            if isinstance(message, bytes):
                audio += message
            else:
                events.append(json.loads(message))
    assert events[0]["type"] == "start" and events[0]["sample_rate"] == 22050
    assert events[-1]["type"] == "done"
    assert len(audio) / 2 / 22050 == pytest.approx(events[-1]["audio_seconds"], abs=0.01)
    assert events[-1]["audio_seconds"] == pytest.approx(reference_seconds, rel=0.1)
    assert events[-1]["time_to_first_audio_ms"] > 0


def test_websocket_errors(http_edge: Any, http_edge_factory: Callable[..., Any], gateway: Any) -> None:
    from websockets.exceptions import ConnectionClosed

    def session(url: str, *messages: str) -> tuple[dict[str, Any], int | None]:
        with connect(url, open_timeout=30) as socket:
            for message in messages:
                try:
                    socket.send(message)
                except ConnectionClosed:  # the edge may refuse (401) before it reads what we send
                    break
            reply = json.loads(socket.recv(timeout=60))
            with pytest.raises(ConnectionClosed):
                socket.recv(timeout=30)
            return reply, socket.close_code

    error, code = session(
        http_edge.ws_url,
        json.dumps({"voice": "no-such-voice"}),
        json.dumps({"text": "Hi."}),
        json.dumps({"type": "end"}),
    )
    assert (error["type"], error["status"], code) == ("error", 404, 4404)
    error, code = session(http_edge.ws_url, "not json")
    assert (error["status"], code) == (400, 4400)
    edge = http_edge_factory(gateway.address, "--auth-token=tok")
    error, code = session(edge.ws_url, json.dumps({"voice": VOICE}))
    assert (error["status"], code) == (401, 4401)
    with connect(edge.ws_url + "?token=tok", open_timeout=30) as socket:
        socket.send(json.dumps({"voice": VOICE}))
        socket.send(json.dumps({"text": "Hello there."}))
        socket.send(json.dumps({"type": "end"}))
        assert json.loads(socket.recv(timeout=60))["type"] == "start"


def test_websocket_disconnect_cancels_the_gateway_stream(http_edge: Any, gateway: Any) -> None:
    with connect(http_edge.ws_url, open_timeout=30) as socket:
        socket.send(json.dumps({"voice": VOICE}))
        socket.send(json.dumps({"text": LONG_TEXT * 3}))
        assert json.loads(socket.recv(timeout=60))["type"] == "start"
        assert gateway_active_streams(gateway) >= 1
    wait_until(lambda: gateway_active_streams(gateway) == 0, within=15, what="the gateway's stream was cancelled")
    assert_serving(http_edge)


def test_concurrent_requests_each_get_their_audio(
    http_edge_factory: Callable[..., Any], gateway_factory: Callable[..., Any]
) -> None:
    # Real-time admission off: on a 2-core machine it would (rightly) refuse some of these with 429.
    edge = http_edge_factory(gateway_factory("--admission-target-load=0").address)
    results: dict[int, float] = {}

    def one(i: int) -> None:
        body = {"model": "m", "voice": VOICE, "input": f"Request number {i}.", "response_format": "wav"}
        reply = post_speech(edge, body, headers={"X-Request-Id": f"concurrent-{i}"})
        assert reply.headers["x-request-id"] == f"concurrent-{i}"
        samples, rate = read_streamed(reply.content)
        results[i] = len(samples) / rate

    threads = [threading.Thread(target=one, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert sorted(results) == [0, 1, 2, 3]
    assert all(seconds > 0.5 for seconds in results.values())
