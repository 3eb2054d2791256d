"""A client of the edge's /v1/talk socket for tests and benchmarks/voice_loop_bench.py: speaks PCM16 into it as a
microphone would and collects what comes back."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
import numpy as np
import soxr
from websockets.sync.client import connect

from voice.v1 import audio_pb2, tts_gateway_pb2, tts_gateway_pb2_grpc

MIC_RATE = 16_000


@dataclass
class Reply:
    utterance: int
    start: dict[str, Any]
    end: dict[str, Any] | None = None
    audio: bytearray = field(default_factory=bytearray)
    deltas: list[str] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        rate = int(self.start.get("sample_rate") or 0)
        return len(self.audio) / 2 / rate if rate else 0.0


@dataclass
class TalkResult:
    events: list[dict[str, Any]] = field(default_factory=list)
    replies: list[Reply] = field(default_factory=list)
    close_code: int | None = None
    speech_sent_at: list[float] = field(default_factory=list)  # perf_counter when each utterance's speech was sent

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [event for event in self.events if event.get("type") == kind]

    def finals(self) -> list[str]:
        return [event["text"] for event in self.of_type("transcript") if event["final"]]


def speak_pcm16(gateway_address: str, text: str, voice: str = "joe", rate: int = MIC_RATE) -> bytes:
    """`text` spoken by the gateway, resampled to `rate` (what a microphone would capture), as PCM16 bytes."""
    with grpc.insecure_channel(gateway_address) as channel:
        stub = tts_gateway_pb2_grpc.TtsGatewayServiceStub(channel)
        request = tts_gateway_pb2.SynthesizeRequest(
            text=text, voice=voice, output_format=audio_pb2.AudioFormat(encoding=audio_pb2.AUDIO_ENCODING_PCM16)
        )
        chunks = list(stub.Synthesize(request, timeout=120))
    native = next(chunk.format.sample_rate_hz for chunk in chunks if chunk.format.sample_rate_hz)
    samples = np.frombuffer(b"".join(chunk.audio for chunk in chunks), dtype="<i2").astype(np.float32) / 32768.0
    resampled = soxr.resample(samples, native, rate) if native != rate else samples
    return np.rint(np.clip(resampled, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()


def silence(seconds: float, rate: int = MIC_RATE) -> bytes:
    return bytes(int(seconds * rate) * 2)


def talk(
    url: str,
    utterances: list[bytes],
    *,
    voice: str = "joe",
    rate: int = MIC_RATE,
    pace: float = 0.5,
    gap_s: float = 1.2,
    tail_s: float = 1.0,
    chunk_s: float = 0.05,
    extra_config: dict[str, Any] | None = None,
    timeout_s: float = 180.0,
) -> TalkResult:
    """Sends the config, then each utterance followed by `gap_s` of silence (`tail_s` after the last), in `chunk_s`
    frames with `pace` seconds of sleep per audio second (1 = real time), then {"type": "end"}; reads until the
    socket closes. Frames are read concurrently, so the replies' timings are not held up by the sending."""
    result = TalkResult()
    with connect(url, open_timeout=30, max_size=None) as socket:
        socket.send(json.dumps({"voice": voice, "sample_rate": rate, **(extra_config or {})}))

        def send_audio() -> None:
            step = int(rate * chunk_s) * 2
            for i, speech in enumerate(utterances):
                pause = silence(tail_s if i == len(utterances) - 1 else gap_s, rate)
                for part, is_speech in ((speech, True), (pause, False)):
                    for offset in range(0, len(part), step):
                        socket.send(part[offset : offset + step])
                        if pace:
                            time.sleep(chunk_s * pace)
                    if is_speech:
                        result.speech_sent_at.append(time.perf_counter())
            socket.send(json.dumps({"type": "end"}))

        sender = threading.Thread(target=send_audio, daemon=True)
        sender.start()
        current: Reply | None = None
        deadline = time.monotonic() + timeout_s
        try:
            for message in socket:
                if time.monotonic() > deadline:
                    raise TimeoutError("the talk session did not end in time")
                if isinstance(message, bytes):
                    assert current is not None, "reply audio before reply_start"
                    current.audio += message
                    continue
                event = json.loads(message)
                event["_at"] = time.perf_counter()
                result.events.append(event)
                if event["type"] == "reply_start":
                    current = Reply(event["utterance"], event)
                    result.replies.append(current)
                elif event["type"] == "reply_text":
                    assert current is None or current.end is not None or current.utterance == event["utterance"]
                elif event["type"] == "reply_end":
                    assert current is not None and current.utterance == event["utterance"]
                    current.end = event
        finally:
            sender.join(timeout=timeout_s)
        for event in result.of_type("reply_text"):
            for reply in result.replies:
                if reply.utterance == event["utterance"]:
                    reply.deltas.append(event["delta"])
        result.close_code = socket.close_code
    return result


@dataclass
class ChatStandIn:
    """An OpenAI-compatible chat-completions endpoint on loopback that streams `answer` in SSE chunks (like OpenAI's
    `stream: true`) and records each request body it gets."""

    answer_pieces: list[str]
    requests: list[dict[str, Any]] = field(default_factory=list)
    delay_s: float = 0.02

    def __post_init__(self) -> None:
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
                body["_path"] = self.path
                body["_authorization"] = self.headers.get("Authorization")
                stand_in.requests.append(body)
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Cache-Control", "no-cache")
                self.send_header("Connection", "close")
                self.end_headers()
                first = {"id": "c1", "object": "chat.completion.chunk", "model": body.get("model", "")}
                self._event({**first, "choices": [{"index": 0, "delta": {"role": "assistant"}}]})
                for piece in stand_in.answer_pieces:
                    time.sleep(stand_in.delay_s)
                    self._event({**first, "choices": [{"index": 0, "delta": {"content": piece}}]})
                self._event({**first, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
                self.wfile.write(b"data: [DONE]\n\n")
                self.wfile.flush()
                self.close_connection = True

            def _event(self, data: dict[str, Any]) -> None:
                self.wfile.write(f"data: {json.dumps(data)}\n\n".encode())
                self.wfile.flush()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1/chat/completions"

    @property
    def answer(self) -> str:
        return "".join(self.answer_pieces)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
