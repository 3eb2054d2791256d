"""routers/speech_socket.py: the config frame's model (pydantic), aliases and OpenAI's speed range on the socket."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError
from websockets.sync.client import connect

from services.http_edge.errors import invalid_from
from services.http_edge.models import SocketTextMessage, SpeechSocketConfig
from services.http_edge.routers.speech_socket import streaming_config
from voice.v1 import audio_pb2, tts_gateway_pb2


def test_config_frame_model() -> None:
    config = SpeechSocketConfig.model_validate(
        {"voice": "joe", "response_format": "wav", "speed": 3, "pitch_shift": 2, "text_input_mode": "sentences"}
    )
    pb = streaming_config(config, "joe", "rid-1")
    assert pb.voice == "joe" and pb.request_id == "rid-1" and pb.speaking_rate == 3.0
    assert pb.output_format.encoding == audio_pb2.AUDIO_ENCODING_WAV
    assert pb.conversion.pitch_shift_semitones == 2.0
    assert pb.text_input_mode == tts_gateway_pb2.TEXT_INPUT_MODE_SENTENCES
    assert not streaming_config(SpeechSocketConfig.model_validate({"voice": "joe"}), "joe", "r").HasField("conversion")


@pytest.mark.parametrize(
    ("frame", "param", "words"),
    [
        ({}, "voice", "must name a voice"),
        ({"voice": "joe", "response_format": "mp3"}, "response_format", "pcm, wav, opus"),
        ({"voice": "joe", "sample_rate": "16000"}, "sample_rate", "sample_rate"),
        ({"voice": "joe", "sample_rate": True}, "sample_rate", "sample_rate"),
        ({"voice": "joe", "speed": 5}, "speed", "0.25 and 4"),
        ({"voice": "joe", "pitch_shift": False}, "pitch_shift", "pitch_shift"),
        ({"voice": "joe", "conversion_model": 3}, "conversion_model", "conversion_model"),
        ({"voice": "joe", "text_input_mode": "sideways"}, "text_input_mode", "text_input_mode"),
    ],
)
def test_config_frame_problems(frame: dict[str, Any], param: str, words: str) -> None:
    with pytest.raises(ValidationError) as raised:
        SpeechSocketConfig.model_validate(frame)
    error = invalid_from(raised.value)
    assert (error.status, error.param) == (400, param) and words in error.message, error


def test_text_messages() -> None:
    assert SocketTextMessage.model_validate({"text": "Hi"}).text == "Hi"
    assert SocketTextMessage.model_validate({"type": "flush"}).type == "flush"
    assert SocketTextMessage.model_validate({"type": "end"}).type == "end"
    for bad in ({"text": 42}, {"type": "sing"}, {}):
        with pytest.raises(ValidationError):
            SocketTextMessage.model_validate(bad)


def events_of(url: str, config: dict[str, Any], text: str) -> list[dict[str, Any]]:
    with connect(url, open_timeout=30) as socket:
        socket.send(json.dumps(config))
        socket.send(json.dumps({"text": text}))
        socket.send(json.dumps({"type": "end"}))
        return [json.loads(message) for message in socket if isinstance(message, str)]


def test_alias_and_a_fast_pace_on_the_socket(http_edge: Any) -> None:
    normal = events_of(http_edge.ws_url, {"voice": "alloy"}, "Hello there, how are you today?")
    fast = events_of(http_edge.ws_url, {"voice": "alloy", "speed": 3.5}, "Hello there, how are you today?")
    assert normal[0]["type"] == "start" and normal[-1]["type"] == "done"
    assert fast[-1]["type"] == "done"
    assert fast[-1]["audio_seconds"] < 0.7 * normal[-1]["audio_seconds"]  # short pauses do not scale


def test_bad_speed_closes_with_4400(http_edge: Any) -> None:
    with connect(http_edge.ws_url, open_timeout=30) as socket:
        socket.send(json.dumps({"voice": "joe", "speed": 0.1}))
        error = json.loads(socket.recv(timeout=60))
        assert (error["type"], error["status"], error["code"]) == ("error", 400, "invalid_argument")
        assert "speed" in error["message"]
    assert socket.close_code == 4400
