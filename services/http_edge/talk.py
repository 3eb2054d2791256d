"""A live voice loop at the edge: WebSocket ``/v1/talk`` (docs/http_edge.md, "Talk").

Microphone audio in (PCM16 frames) -> the gateway's RecognitionService.StreamingRecognize (interim results on) ->
at each end of utterance a reply (the transcript itself, or an OpenAI-compatible chat model's streamed answer) ->
the gateway's TtsGatewayService.StreamingSynthesize (text deltas as they arrive) -> reply audio frames out.

Protocol (client -> edge): a JSON config frame ``{"voice", "sample_rate", "language"?, "recognition_model"?,
"reply"?: "echo" | "chat"}``, then binary PCM16 mono little-endian frames at ``sample_rate``; optionally
``{"type": "end"}`` (no more audio: the utterance in progress is finalised, pending replies are spoken, then
``{"type": "done"}`` and close 1000).

Edge -> client: ``{"type": "ready", "request_id", "reply"}``; ``{"type": "speech_start", "utterance"}``;
``{"type": "transcript", "text", "final", "utterance"}``; per reply ``{"type": "reply_start", "utterance", "text"?,
"sample_rate"}``, ``{"type": "reply_text", "utterance", "delta"}`` (chat), binary PCM16 frames, ``{"type":
"reply_end", "utterance", "text", "audio_seconds", "timing": {...}}``. Errors: ``{"type": "error", "status", "code",
"message", "request_id"}`` (plus ``"utterance"`` for a failed reply, after which the session goes on; any other error
closes the socket with 4000 + status).

Recognition keeps running while a reply is produced and played: replies are queued and spoken one after another.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import httpx
from fastapi import WebSocket, WebSocketDisconnect
from pydantic import ValidationError

from services.common.contract import MiB
from services.common.durations import seconds_from_duration
from services.http_edge.dependencies import Calls
from services.http_edge.errors import EdgeError, from_rpc_error, invalid, invalid_from
from services.http_edge.models import TalkConfig
from services.http_edge.settings import Settings
from services.http_edge.sockets import CLIENT_LEFT, WS_NORMAL_CLOSE, SocketProtocolError, receive_json, send_error
from voice.v1 import audio_pb2, recognition_pb2, tts_gateway_pb2

log = logging.getLogger(__name__)

TALK_ROUTE = "/v1/talk"
MAX_FRAME_BYTES = MiB  # one binary frame: 32 s of 16 kHz PCM16
MAX_RECEIPTS = 20_000  # frame receipt times kept per session (minutes of audio at the page's frame rate)
Event = recognition_pb2.StreamingRecognizeResponse.SpeechEventType
SynthRequest = tts_gateway_pb2.StreamingSynthesizeRequest
PCM16 = audio_pb2.AUDIO_ENCODING_PCM16


@dataclass
class Utterance:
    index: int
    text: str
    speech_end: float  # perf_counter time the edge received the utterance's last speech
    final_at: float  # perf_counter time the final transcript arrived


@dataclass
class Session:
    websocket: WebSocket
    rid: str
    config: TalkConfig
    send_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # (seconds of audio received, perf_counter time of receipt) for each client frame: maps an audio offset to when
    # the edge had it.
    received: list[tuple[float, float]] = field(default_factory=list)
    history: list[dict[str, str]] = field(default_factory=list)

    async def send_json(self, data: dict[str, Any]) -> None:
        async with self.send_lock:
            await self.websocket.send_json(data)

    async def send_bytes(self, data: bytes) -> None:
        async with self.send_lock:
            await self.websocket.send_bytes(data)

    def received_at(self, offset_s: float) -> float:
        """When the edge received the audio at `offset_s` (the frame that contained it)."""
        if not self.received:
            return time.perf_counter()
        i = bisect.bisect_left(self.received, (offset_s, 0.0))
        return self.received[min(i, len(self.received) - 1)][1]


def parse_config(message: dict[str, Any], chat_configured: bool) -> TalkConfig:
    try:
        return TalkConfig.model_validate(message, context={"chat": chat_configured})
    except ValidationError as error:
        raise invalid_from(error) from None


async def read_config(websocket: WebSocket, settings: Settings, calls: Calls, rid: str) -> TalkConfig | None:
    """The config frame, checked (the voice against the gateway's ListVoices); None when the client left."""
    try:
        message = await receive_json(
            websocket, binary_problem='send the JSON config frame first ({"voice", "sample_rate", ...}), then the audio'
        )
    except SocketProtocolError as error:
        raise invalid(str(error)) from None
    if message is None:
        return None
    config = parse_config(message, bool(settings.chat_url))
    try:
        listed = await calls.gateway.ListVoices(
            tts_gateway_pb2.ListVoicesRequest(), metadata=calls.gateway_md(rid), timeout=calls.unary_timeout_s
        )
    except grpc.aio.AioRpcError as error:
        raise from_rpc_error(error) from None
    names = [voice.name for voice in listed.voices]
    if config.voice not in names:
        raise EdgeError(404, f"unknown voice {config.voice!r}; the gateway serves: {', '.join(names)}", "not_found")
    return config


async def talk_session(websocket: WebSocket, settings: Settings, calls: Calls, rid: str) -> int:
    """One `/v1/talk` connection (after the request id and token checks); answers the final status."""
    try:
        config = await read_config(websocket, settings, calls, rid)
    except EdgeError as error:
        return await send_error(websocket, error, rid)
    if config is None:
        return CLIENT_LEFT
    session = Session(websocket, rid, config)
    if settings.chat_system_prompt:
        session.history.append({"role": "system", "content": settings.chat_system_prompt})
    return await TalkLoop(session, settings, calls).run()


async def chat_deltas(settings: Settings, messages: list[dict[str, str]]) -> AsyncIterator[str]:
    """The answer of the OpenAI-compatible chat endpoint as it streams (SSE, `delta.content` pieces)."""
    assert settings.chat_url
    body: dict[str, Any] = {"messages": messages, "stream": True}
    if settings.chat_model:
        body["model"] = settings.chat_model
    headers = {"Accept": "text/event-stream"}
    if settings.chat_api_key:
        headers["Authorization"] = f"Bearer {settings.chat_api_key}"
    timeout = httpx.Timeout(settings.chat_timeout_s, connect=min(5.0, settings.chat_timeout_s))
    try:
        async with (
            httpx.AsyncClient(timeout=timeout) as client,
            client.stream("POST", settings.chat_url, json=body, headers=headers) as response,
        ):
            if response.status_code != 200:
                text = (await response.aread()).decode("utf-8", "replace")[:300]
                raise EdgeError(502, f"the chat endpoint answered HTTP {response.status_code}: {text}", "unavailable")
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    return
                content = _delta_content(data)
                if content:
                    yield content
    except httpx.HTTPError as error:
        raise EdgeError(503, f"the chat endpoint {settings.chat_url} failed: {error!r}", "unavailable") from None


def _delta_content(data: str) -> str | None:
    try:
        event = json.loads(data)
        choices = event.get("choices") or []
        content = (choices[0].get("delta") or {}).get("content") if choices else None
    except (json.JSONDecodeError, AttributeError, IndexError):
        raise EdgeError(502, f"the chat endpoint sent a malformed event: {data[:200]}", "unknown") from None
    return content if isinstance(content, str) else None


class TalkLoop:
    """Recognition of the client's audio, with each final transcript's reply queued and spoken in order."""

    def __init__(self, session: Session, settings: Settings, calls: Calls) -> None:
        self.session = session
        self.settings = settings
        self.calls = calls
        self.audio: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.replies: asyncio.Queue[Utterance | None] = asyncio.Queue()
        self.problems: list[EdgeError] = []
        self.client_gone = asyncio.Event()
        self.received_bytes = 0
        self.carry = b""

    async def run(self) -> int:
        session, rid = self.session, self.session.rid
        call = self.calls.recognition.StreamingRecognize(
            self._recognize_requests(), metadata=self.calls.gateway_md(rid)
        )
        reader = asyncio.ensure_future(self._read_client())
        results = asyncio.ensure_future(self._read_results(call))
        speaker = asyncio.ensure_future(self._speak_replies())
        await session.send_json({"type": "ready", "request_id": rid, "reply": session.config.reply})
        try:
            # The client's reader ends first on a bad frame or a disconnect (the call is not cancelled from there:
            # grpc.aio answers a locally cancelled call's read() with CancelledError); else the recognition ends.
            await asyncio.wait({reader, results}, return_when=asyncio.FIRST_COMPLETED)
            return await self._finish(reader, results, speaker)
        except (WebSocketDisconnect, RuntimeError):
            return CLIENT_LEFT
        finally:
            call.cancel()
            for task in (reader, results, speaker):
                task.cancel()
            await asyncio.gather(reader, results, speaker, return_exceptions=True)

    async def _finish(self, reader: asyncio.Future[None], results: asyncio.Future[None], speaker: Any) -> int:
        websocket, rid = self.session.websocket, self.session.rid
        if self.problems:
            return await send_error(websocket, self.problems[0], rid)
        if self.client_gone.is_set() or (reader.done() and not reader.cancelled() and reader.exception()):
            return CLIENT_LEFT
        try:
            await results
        except grpc.aio.AioRpcError as error:
            if self.client_gone.is_set():
                return CLIENT_LEFT
            return await send_error(websocket, from_rpc_error(error), rid)
        if self.problems:
            return await send_error(websocket, self.problems[0], rid)
        await speaker  # the recognition ended (after {"type": "end"}): speak what is queued, then close
        await self.session.send_json({"type": "done", "request_id": rid})
        await websocket.close(code=WS_NORMAL_CLOSE)
        return 200

    async def _recognize_requests(self) -> AsyncIterator[recognition_pb2.StreamingRecognizeRequest]:
        config = self.session.config
        yield recognition_pb2.StreamingRecognizeRequest(
            config=recognition_pb2.StreamingRecognitionConfig(
                request_id=self.session.rid,
                config=recognition_pb2.RecognitionConfig(model=config.recognition_model, language_code=config.language),
                audio_format=audio_pb2.AudioFormat(encoding=PCM16, sample_rate_hz=config.sample_rate, channels=1),
                interim_results=True,
            )
        )
        while (chunk := await self.audio.get()) is not None:
            yield recognition_pb2.StreamingRecognizeRequest(audio=chunk)

    async def _read_client(self) -> None:
        while True:
            try:
                message = await self.session.websocket.receive()
            except WebSocketDisconnect:
                message = {"type": "websocket.disconnect"}
            if message["type"] == "websocket.disconnect":
                self.client_gone.set()
                return
            data = message.get("bytes")
            if data is not None:
                if not await self._take_audio(data):
                    return
                continue
            try:
                control = json.loads(message.get("text") or "")
            except json.JSONDecodeError:
                control = None
            if isinstance(control, dict) and control.get("type") == "end":
                await self.audio.put(None)  # half-close: the utterance in progress is finalised
                return
            self.problems.append(invalid('after the config frame send binary PCM16 audio frames or {"type": "end"}'))
            return

    async def _take_audio(self, data: bytes) -> bool:
        """Queues a frame's whole samples (an odd byte waits for the next frame); False for a frame too large."""
        if len(data) > MAX_FRAME_BYTES:
            self.problems.append(invalid(f"an audio frame is over {MAX_FRAME_BYTES} bytes; send smaller ones"))
            return False
        data = self.carry + data
        even = len(data) - len(data) % 2
        self.carry = data[even:]
        if even:
            self.received_bytes += even
            received = self.session.received
            received.append((self.received_bytes / 2 / self.session.config.sample_rate, time.perf_counter()))
            if len(received) > MAX_RECEIPTS:  # only recent audio ends utterances
                del received[: MAX_RECEIPTS // 2]
            await self.audio.put(data[:even])
        return True

    async def _read_results(self, call: Any) -> None:
        session = self.session
        try:
            while (response := await call.read()) is not grpc.aio.EOF:
                # read(), not `async for`: a cancelled call then raises AioRpcError(CANCELLED), not
                # CancelledError, which would look like this task's own cancellation.
                assert isinstance(response, recognition_pb2.StreamingRecognizeResponse)
                if response.speech_event_type == Event.SPEECH_EVENT_TYPE_SPEECH_START:
                    await session.send_json({"type": "speech_start"})
                for result in response.results:
                    text = result.alternatives[0].transcript if result.alternatives else ""
                    index = int(result.utterance_index)
                    await session.send_json(
                        {"type": "transcript", "text": text, "final": result.is_final, "utterance": index}
                    )
                    if result.is_final and text.strip():
                        end_s = seconds_from_duration(result.result_end_offset)
                        await self.replies.put(Utterance(index, text, session.received_at(end_s), time.perf_counter()))
        finally:
            await self.replies.put(None)

    async def _speak_replies(self) -> None:
        while (utterance := await self.replies.get()) is not None:
            try:
                await Reply(self.session, self.settings, self.calls, utterance).speak()
            except EdgeError as error:
                log.warning("reply to utterance %d failed: %s", utterance.index, error.message)
                with contextlib.suppress(Exception):
                    await self.session.send_json(error.frame(self.session.rid, utterance=utterance.index))


class Reply:
    """One utterance's reply: its text (the transcript, or the chat model's answer as it streams) goes to the
    gateway's StreamingSynthesize as deltas; the audio goes to the client between reply_start and reply_end."""

    def __init__(self, session: Session, settings: Settings, calls: Calls, utterance: Utterance) -> None:
        self.session = session
        self.settings = settings
        self.calls = calls
        self.utterance = utterance
        self.chat = session.config.reply == "chat"
        self.started = time.perf_counter()
        self.requests: asyncio.Queue[SynthRequest | None] = asyncio.Queue()
        self.text: list[str] = []
        self.first_text_at: float | None = None
        self.first_audio_at: float | None = None
        self.text_ready = asyncio.Event()

    async def speak(self) -> None:
        feeder = asyncio.ensure_future(self._feed())
        # The gateway call opens with the first text: an empty answer never reaches it.
        has_text = asyncio.ensure_future(self.text_ready.wait())
        await asyncio.wait({feeder, has_text}, return_when=asyncio.FIRST_COMPLETED)
        has_text.cancel()
        await asyncio.gather(has_text, return_exceptions=True)
        if not self.text_ready.is_set():
            await feeder  # raises the chat endpoint's error, if any
            await self.session.send_json({"type": "reply_start", "utterance": self.utterance.index, "sample_rate": 0})
            await self._end(0.0)
            return
        call = self.calls.gateway.StreamingSynthesize(
            self._synth_requests(),
            metadata=self.calls.gateway_md(self.session.rid),
            timeout=self.settings.synthesis_timeout_s,
        )
        try:
            audio_seconds = await self._relay(call, feeder)
            if feeder.done() and (exc := feeder.exception()) is not None:
                raise exc
        finally:
            call.cancel()
            feeder.cancel()
            await asyncio.gather(feeder, return_exceptions=True)
        if self.chat:
            self._remember("".join(self.text))
        await self._end(audio_seconds)

    def _deltas(self) -> AsyncIterator[str]:
        if self.chat:
            messages = [*self.session.history, {"role": "user", "content": self.utterance.text}]
            return chat_deltas(self.settings, messages)
        return _single(self.utterance.text)

    async def _feed(self) -> None:
        try:
            async for delta in self._deltas():
                if self.first_text_at is None:
                    self.first_text_at = time.perf_counter()
                self.text.append(delta)
                if self.chat:
                    await self.session.send_json(
                        {"type": "reply_text", "utterance": self.utterance.index, "delta": delta}
                    )
                await self.requests.put(SynthRequest(text=delta))
                self.text_ready.set()
        finally:
            await self.requests.put(None)

    async def _synth_requests(self) -> AsyncIterator[SynthRequest]:
        yield SynthRequest(
            config=tts_gateway_pb2.StreamingSynthesizeConfig(
                request_id=f"{self.session.rid}-{self.utterance.index}",
                voice=self.session.config.voice,
                output_format=audio_pb2.AudioFormat(encoding=PCM16, channels=1),
            )
        )
        while (item := await self.requests.get()) is not None:
            yield item

    async def _relay(self, call: Any, feeder: asyncio.Future[None]) -> float:
        """Forwards the reply's audio; answers its length in seconds."""
        samples = rate = 0
        while True:
            try:
                chunk = await call.read()
            except grpc.aio.AioRpcError as error:
                if feeder.done() and not feeder.cancelled() and (exc := feeder.exception()) is not None:
                    raise exc from None
                raise from_rpc_error(error) from None
            if chunk is grpc.aio.EOF:
                break
            if self.first_audio_at is None and (chunk.audio or chunk.is_final):
                self.first_audio_at = time.perf_counter()
                rate = int(chunk.format.sample_rate_hz)
                start: dict[str, Any] = {"type": "reply_start", "utterance": self.utterance.index, "sample_rate": rate}
                if not self.chat:
                    start["text"] = self.utterance.text
                await self.session.send_json(start)
            if chunk.audio:
                samples += len(chunk.audio) // 2
                await self.session.send_bytes(chunk.audio)
            if chunk.is_final:
                break
        return samples / rate if rate else 0.0

    def _remember(self, answer: str) -> None:
        """The exchange joins the conversation, which keeps the system prompt and the last --chat-max-history."""
        session = self.session
        session.history += [{"role": "user", "content": self.utterance.text}, {"role": "assistant", "content": answer}]
        keep = max(0, self.settings.chat_max_history)
        system = [m for m in session.history[:1] if m["role"] == "system"]
        rest = session.history[len(system) :]
        session.history = system + (rest[-keep:] if keep else [])

    async def _end(self, audio_seconds: float) -> None:
        utterance = self.utterance

        def since(later: float | None, earlier: float) -> float | None:
            return round((later - earlier) * 1000, 1) if later is not None else None

        timing = {
            "end_of_speech_to_final_ms": since(utterance.final_at, utterance.speech_end),
            "queued_ms": since(self.started, utterance.final_at),
            "final_to_first_text_ms": since(self.first_text_at, utterance.final_at) if self.chat else None,
            "final_to_first_audio_ms": since(self.first_audio_at, utterance.final_at),
            "end_of_speech_to_first_audio_ms": since(self.first_audio_at, utterance.speech_end),
            "total_ms": since(time.perf_counter(), utterance.speech_end),
        }
        await self.session.send_json(
            {
                "type": "reply_end",
                "utterance": utterance.index,
                "text": "".join(self.text),
                "audio_seconds": round(audio_seconds, 3),
                "timing": timing,
            }
        )


async def _single(text: str) -> AsyncIterator[str]:
    yield text
