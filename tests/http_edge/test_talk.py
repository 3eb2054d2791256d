"""The live voice loop, WebSocket /v1/talk, as a real edge in front of the real gateway (PocketSphinx recognition,
Piper synthesis). The "microphone" is Piper joe speaking known sentences through the gateway, resampled to 16 kHz;
what the loop heard is judged by word error rate against the text that was spoken, and the reply audio against a
direct gRPC synthesis of the reply's text.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from tests.http_edge.talk_session import ChatStandIn, speak_pcm16, talk
from tests.recognition.wer import corpus_wer, wer

SENTENCE = "The weather is going to be sunny and warm tomorrow."
SECOND = "I would like a cup of coffee with milk please."
WER_BOUND = 0.4
TIMING_KEYS = {
    "end_of_speech_to_final_ms",
    "queued_ms",
    "final_to_first_text_ms",
    "final_to_first_audio_ms",
    "end_of_speech_to_first_audio_ms",
    "total_ms",
}


def talk_url(edge: Any) -> str:
    return f"ws://127.0.0.1:{edge.port}/v1/talk"


@pytest.fixture(scope="module")
def spoken(gateway: Any) -> dict[str, bytes]:
    return {text: speak_pcm16(gateway.address, text) for text in (SENTENCE, SECOND)}


@pytest.fixture
def chat_stand_in() -> Iterator[ChatStandIn]:
    stand_in = ChatStandIn(["Sure. ", "It will be ", "a lovely day ", "for a walk."])
    yield stand_in
    stand_in.stop()


def direct_seconds(gateway: Any, text: str) -> float:
    return len(speak_pcm16(gateway.address, text, rate=16_000)) / 2 / 16_000


def test_echo_loop_transcribes_and_speaks_the_sentence_back(http_edge: Any, gateway: Any, spoken: Any) -> None:
    result = talk(talk_url(http_edge), [spoken[SENTENCE]], pace=0.5)
    assert result.close_code == 1000, result.events[-3:]
    assert result.events[0]["type"] == "ready" and result.events[0]["reply"] == "echo"
    assert result.events[-1]["type"] == "done"
    finals = result.finals()
    assert len(finals) == 1, result.events
    assert wer(SENTENCE, finals[0]) < WER_BOUND, finals
    transcripts = result.of_type("transcript")
    assert any(not event["final"] for event in transcripts), "no interim transcript"
    assert all(event["utterance"] == 0 for event in transcripts)
    # Interim results come before the final one.
    assert transcripts[-1]["final"]
    (reply,) = result.replies
    assert reply.utterance == 0 and reply.start["text"] == finals[0]
    assert reply.start["sample_rate"] == 22050
    assert reply.end is not None and reply.end["text"] == finals[0]
    # The reply's audio is the transcript spoken: as long as a direct synthesis of it (Piper varies a few %).
    expected = direct_seconds(gateway, finals[0])
    assert reply.seconds == pytest.approx(expected, rel=0.25), (reply.seconds, expected)
    assert reply.end["audio_seconds"] == pytest.approx(reply.seconds, abs=0.01)
    timing = reply.end["timing"]
    assert set(timing) == TIMING_KEYS
    assert timing["final_to_first_text_ms"] is None  # echo: no chat model
    assert 0 <= timing["end_of_speech_to_final_ms"] < 10_000
    assert 0 <= timing["final_to_first_audio_ms"] <= timing["end_of_speech_to_first_audio_ms"] <= timing["total_ms"]
    # The transcript is sent before the reply starts.
    assert result.events.index(transcripts[-1]) < result.events.index(reply.start)


def test_chat_loop_speaks_the_models_streamed_answer_and_keeps_history(
    http_edge_factory: Callable[..., Any], gateway: Any, spoken: Any, chat_stand_in: ChatStandIn
) -> None:
    edge = http_edge_factory(
        gateway.address,
        f"--chat-url={chat_stand_in.url}",
        "--chat-model=stand-in-model",
        "--chat-system-prompt=Be brief.",
        "--chat-api-key=sk-test",
    )
    result = talk(talk_url(edge), [spoken[SENTENCE], spoken[SECOND]], pace=0.5)
    assert result.close_code == 1000, result.events[-3:]
    assert result.events[0]["reply"] == "chat"  # the default once a chat URL is configured
    finals = result.finals()
    assert len(finals) == 2, result.events
    assert corpus_wer([(SENTENCE, finals[0]), (SECOND, finals[1])]) < WER_BOUND, finals
    assert [reply.utterance for reply in result.replies] == [0, 1]
    for reply in result.replies:
        assert reply.end is not None and reply.end["text"] == chat_stand_in.answer
        assert reply.deltas == chat_stand_in.answer_pieces  # forwarded as they arrived
        assert "text" not in reply.start
        timing = reply.end["timing"]
        assert timing["final_to_first_text_ms"] is not None
        assert timing["final_to_first_text_ms"] <= timing["final_to_first_audio_ms"]
    expected = direct_seconds(gateway, chat_stand_in.answer)
    assert result.replies[0].seconds == pytest.approx(expected, rel=0.25), (result.replies[0].seconds, expected)
    # The requests: streamed, the transcript as the user message, the conversation so far before it.
    first, second = chat_stand_in.requests
    assert first["stream"] is True and first["model"] == "stand-in-model"
    assert first["_path"] == "/v1/chat/completions" and first["_authorization"] == "Bearer sk-test"
    assert first["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": finals[0]}]
    assert second["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": finals[0]},
        {"role": "assistant", "content": chat_stand_in.answer},
        {"role": "user", "content": finals[1]},
    ]


def test_a_failing_chat_endpoint_answers_an_error_frame_and_the_session_goes_on(
    http_edge_factory: Callable[..., Any], gateway: Any, spoken: Any
) -> None:
    edge = http_edge_factory(gateway.address, "--chat-url=http://127.0.0.1:9/v1/chat/completions")
    result = talk(talk_url(edge), [spoken[SENTENCE]], pace=0.25)
    errors = result.of_type("error")
    assert len(errors) == 1 and errors[0]["status"] == 503 and errors[0]["utterance"] == 0, result.events
    assert result.events[-1]["type"] == "done" and result.close_code == 1000
    # Echo can still be asked for on the same edge.
    echoed = talk(talk_url(edge), [spoken[SENTENCE]], pace=0.25, extra_config={"reply": "echo"})
    assert len(echoed.replies) == 1 and echoed.replies[0].seconds > 1.0


def first_error(url: str, *messages: str | bytes) -> tuple[dict[str, Any], int | None]:
    with connect(url, open_timeout=30) as socket:
        for message in messages:
            try:
                socket.send(message)
            except ConnectionClosed:
                break
        reply = json.loads(socket.recv(timeout=60))
        while reply["type"] != "error":  # an error found once the session runs comes after its ready frame
            reply = json.loads(socket.recv(timeout=60))
        with pytest.raises(ConnectionClosed):
            socket.recv(timeout=30)
        return reply, socket.close_code


@pytest.mark.parametrize(
    ("messages", "status", "words"),
    [
        ((b"\x00\x01" * 800,), 400, "config frame first"),
        (("not json",), 400, "not JSON"),
        ((json.dumps({"sample_rate": 16000}),), 400, "voice"),
        ((json.dumps({"voice": "joe"}),), 400, "sample_rate"),
        ((json.dumps({"voice": "joe", "sample_rate": 4000}),), 400, "sample_rate"),
        ((json.dumps({"voice": "joe", "sample_rate": 16000, "reply": "chat"}),), 400, "--chat-url"),
        ((json.dumps({"voice": "joe", "sample_rate": 16000, "reply": "sing"}),), 400, "reply"),
        ((json.dumps({"voice": "no-such-voice", "sample_rate": 16000}),), 404, "unknown voice"),
        ((json.dumps({"voice": "joe", "sample_rate": 16000, "recognition_model": "nope"}),), 404, "nope"),
        ((json.dumps({"voice": "joe", "sample_rate": 16000}), json.dumps({"text": "hi"})), 400, "binary PCM16"),
    ],
)
def test_talk_errors(http_edge: Any, messages: tuple[str | bytes, ...], status: int, words: str) -> None:
    error, code = first_error(talk_url(http_edge), *messages)
    assert error["type"] == "error", error
    assert error["status"] == status and words in error["message"], error
    assert code == 4000 + status and error["request_id"]


def test_talk_needs_the_token_when_the_edge_has_one(http_edge_factory: Callable[..., Any], gateway: Any) -> None:
    edge = http_edge_factory(gateway.address, "--auth-token=tok")
    config = json.dumps({"voice": "joe", "sample_rate": 16000})
    error, code = first_error(talk_url(edge), config)
    assert error["status"] == 401 and code == 4401
    with connect(talk_url(edge) + "?token=tok", open_timeout=30) as socket:
        socket.send(config)
        assert json.loads(socket.recv(timeout=60))["type"] == "ready"
