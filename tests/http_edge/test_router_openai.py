"""routers/openai.py: what an OpenAI client meets at the edge, with the official `openai` package against the real
edge, gateway and Triton: `GET /v1/models`, OpenAI's voice names, OpenAI's whole speed range; and the gateway's
"this voice cannot change pace" refusal mapped to a 400 that says why."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import grpc
import httpx
import openai
import pytest
import soundfile as sf
from grpc.aio import AioRpcError, Metadata

from services.common.errors import FailedPrecondition
from services.http_edge.errors import from_rpc_error
from services.http_edge.routers.openai import SPEECH_MODELS
from services.http_edge.settings import OPENAI_VOICES
from tests.http_edge.test_edge import TEXT, VOICE, assert_error, client_for, post_speech


def test_models_list_and_retrieve(http_edge: Any) -> None:
    client = client_for(http_edge)
    listed = client.models.list()
    ids = [model.id for model in listed.data]
    assert ids == list(SPEECH_MODELS) and "tts-1" in ids and "gpt-4o-mini-tts" in ids
    assert all(model.object == "model" and model.owned_by and model.created > 0 for model in listed.data)
    raw = httpx.get(http_edge.http("/v1/models"), timeout=30).json()
    assert raw["object"] == "list" and set(raw["data"][0]) == {"id", "object", "created", "owned_by"}
    assert client.models.retrieve("tts-1-hd").id == "tts-1-hd"
    with pytest.raises(openai.NotFoundError) as raised:
        client.models.retrieve("no-such-model")
    error = assert_error(raised.value.response, 404, "not_found", mentions="no-such-model")
    assert error["param"] == "model"


@pytest.mark.parametrize("voice", ["alloy", "shimmer"])
def test_openai_voice_names_speak_with_the_default_voice(http_edge: Any, voice: Any) -> None:
    reply = client_for(http_edge).audio.speech.create(model="tts-1", voice=voice, input="Hello.", response_format="wav")
    assert reply.response.headers["x-voice"] == VOICE  # the first available configured voice
    samples, rate = sf.read(io.BytesIO(reply.content), dtype="float32")
    assert rate == 24_000 and len(samples) / rate > 0.3


def test_voice_alias_flag_and_a_configured_voice_winning(http_edge_factory: Callable[..., Any], gateway: Any) -> None:
    edge = http_edge_factory(
        gateway.address, "--voice-alias=alloy=joe-world-high", "--voice-alias=narrator=joe-whole,joe=joe-whole"
    )
    client = client_for(edge)
    alloy = client.audio.speech.create(model="tts-1", voice="alloy", input="Hi.", response_format="pcm")
    assert alloy.response.headers["x-voice"] == "joe-world-high"
    narrator = client.audio.speech.create(model="tts-1", voice="narrator", input="Hi.", response_format="pcm")
    assert narrator.response.headers["x-voice"] == "joe-whole"
    own = client.audio.speech.create(model="tts-1", voice=VOICE, input="Hi.", response_format="pcm")
    assert "x-voice" not in own.response.headers  # the configured voice "joe" wins over the alias joe=joe-whole
    aliases = {a["id"]: a["voice"] for a in httpx.get(edge.http("/v1/voices"), timeout=30).json()["aliases"]}
    assert aliases["alloy"] == "joe-world-high" and aliases["narrator"] == "joe-whole" and aliases["echo"] == VOICE
    assert VOICE not in aliases
    assert set(OPENAI_VOICES) <= set(aliases)


def test_default_voice_flag(http_edge_factory: Callable[..., Any], gateway: Any) -> None:
    edge = http_edge_factory(gateway.address, "--default-voice=joe-whole")
    reply = client_for(edge).audio.speech.create(model="tts-1", voice="nova", input="Hi.", response_format="pcm")
    assert reply.response.headers["x-voice"] == "joe-whole"


@pytest.mark.parametrize("speed", [0.25, 4.0])
def test_openais_whole_speed_range_is_accepted(http_edge: Any, speed: float) -> None:
    normal = client_for(http_edge).audio.speech.create(model="tts-1", voice=VOICE, input=TEXT, response_format="pcm")
    paced = client_for(http_edge).audio.speech.create(
        model="tts-1", voice=VOICE, input=TEXT, response_format="pcm", speed=speed
    )
    ratio = len(paced.content) / len(normal.content)
    assert (ratio > 1.8) if speed < 1 else (ratio < 0.6), ratio  # pauses and short phonemes scale less


def test_speed_one_and_an_unknown_voice_keep_their_answers(http_edge: Any) -> None:
    reply = post_speech(
        http_edge, {"model": "m", "voice": VOICE, "input": "Hi.", "speed": 1.0, "response_format": "wav"}
    )
    assert reply.status_code == 200, reply.text
    assert_error(post_speech(http_edge, {"model": "m", "voice": "nope", "input": "Hi."}), 404, "not_found")


def test_json_sent_as_a_form_still_reads(http_edge: Any) -> None:
    body = b'{"model": "m", "voice": "joe", "input": "Hi.", "response_format": "pcm"}'
    reply = httpx.post(
        http_edge.http("/v1/audio/speech"),
        content=body,
        headers={"Content-Type": "application/x-www-form-urlencoded"},  # what `curl -d` sends
        timeout=60,
    )
    assert reply.status_code == 200, reply.text


def rpc_error(error: Any) -> AioRpcError:
    status = error.to_status_proto()
    trailing = Metadata(("grpc-status-details-bin", status.SerializeToString()))
    return AioRpcError(error.code, Metadata(), trailing, details=error.message)


def test_a_pace_the_voice_cannot_do_is_400_naming_why() -> None:
    refusal = FailedPrecondition(
        "voice 'spark' (model spark_tts) cannot change its speaking rate: send speaking_rate 0 or 1, or pick a voice "
        "whose model takes length_scale (the Piper voices)",
        violations=[("SPEAKING_RATE", "spark", "the voice's model has no length_scale input")],
    )
    mapped = from_rpc_error(rpc_error(refusal))
    assert (mapped.status, mapped.param, mapped.type) == (400, "speed", "invalid_request_error")
    assert "cannot change its speaking rate" in mapped.message and "spark" in mapped.message
    other = FailedPrecondition("voice 'joe' has no zero_shot", violations=[("MODE", "joe", "no zero_shot")])
    assert from_rpc_error(rpc_error(other)).status == 412


def test_retry_after_is_whole_seconds_at_least_one() -> None:
    from services.common.errors import ResourceExhausted

    for delay, expected in ((0.2, "1"), (1.0, "1"), (2.3, "3")):
        mapped = from_rpc_error(rpc_error(ResourceExhausted("busy", retry_after_s=delay)))
        assert (mapped.status, mapped.headers()) == (429, {"Retry-After": expected})
    assert from_rpc_error(AioRpcError(grpc.StatusCode.UNAVAILABLE, Metadata(), Metadata(), "down")).headers() == {
        "Retry-After": "1"
    }
