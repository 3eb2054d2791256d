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
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import httpx
from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from services.common.request_id import bind_request_id
from services.http_edge import metrics
from services.http_edge.app import Settings, _ms, _send_error, bearer_token, valid_request_id
from services.http_edge.errors import EdgeError, from_rpc_error, invalid
from services.http_edge.upstream import Upstreams
from voice.v1 import audio_pb2, recognition_pb2, tts_gateway_pb2

log = logging.getLogger(__name__)

TALK_ROUTE = "/v1/talk"
REPLY_KINDS = ("echo", "chat")
MIN_RATE, MAX_RATE = 8000, 48000
MAX_FRAME_BYTES = 1024 * 1024  # one binary frame: 32 s of 16 kHz PCM16
MAX_RECEIPTS = 20_000  # frame receipt times kept per session (minutes of audio at the page's frame rate)
Event = recognition_pb2.StreamingRecognizeResponse.SpeechEventType
GatewayMetadata = Callable[[WebSocket, str], tuple[tuple[str, str], ...]]


@dataclass
class TalkConfig:
    voice: str
    sample_rate: int
    reply: str
    language: str = ""
    recognition_model: str = ""


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
    voice = message.get("voice")
    if not isinstance(voice, str) or not voice:
        raise invalid('the config frame must name a voice: {"voice": "...", "sample_rate": 16000}', "voice")
    rate = message.get("sample_rate")
    if not isinstance(rate, int) or isinstance(rate, bool) or not MIN_RATE <= rate <= MAX_RATE:
        raise invalid(
            f"sample_rate must be the integer rate of the PCM16 audio you send ({MIN_RATE}..{MAX_RATE})", "sample_rate"
        )
    reply = message.get("reply", "chat" if chat_configured else "echo")
    if reply not in REPLY_KINDS:
        raise invalid(f"reply must be one of {', '.join(REPLY_KINDS)}", "reply")
    if reply == "chat" and not chat_configured:
        raise invalid('reply "chat" needs a chat endpoint: start the edge with --chat-url', "reply")
    language, model = message.get("language", ""), message.get("recognition_model", "")
    if not isinstance(language, str):
        raise invalid("language must be a BCP-47 string such as en-US", "language")
    if not isinstance(model, str):
        raise invalid("recognition_model must be a string", "recognition_model")
    return TalkConfig(voice=voice, sample_rate=rate, reply=reply, language=language, recognition_model=model)


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
                try:
                    event = json.loads(data)
                    choices = event.get("choices") or []
                    content = (choices[0].get("delta") or {}).get("content") if choices else None
                except (json.JSONDecodeError, AttributeError, IndexError):
                    raise EdgeError(502, f"the chat endpoint sent a malformed event: {data[:200]}", "unknown") from None
                if isinstance(content, str) and content:
                    yield content
    except httpx.HTTPError as error:
        raise EdgeError(503, f"the chat endpoint {settings.chat_url} failed: {error!r}", "unavailable") from None


class Talk:
    def __init__(self, settings: Settings, up: Callable[[], Upstreams], gateway_md: GatewayMetadata) -> None:
        self.settings = settings
        self.up = up
        self.gateway_md = gateway_md
        self.router = APIRouter()
        self.router.add_api_websocket_route(TALK_ROUTE, self.talk_socket)

    async def talk_socket(self, websocket: WebSocket) -> None:
        client_id = websocket.headers.get("x-request-id") or websocket.query_params.get("request_id") or ""
        rid = client_id if valid_request_id(client_id) else uuid.uuid4().hex
        bind_request_id(rid)
        await websocket.accept()
        metrics.ACTIVE_STREAMS.labels(TALK_ROUTE).inc()
        status = 200
        try:
            if client_id and rid != client_id:
                status = await _send_error(websocket, invalid("request id must be printable ASCII without spaces"), rid)
            else:
                status = await self._run(websocket, rid)
        finally:
            metrics.ACTIVE_STREAMS.labels(TALK_ROUTE).dec()
            metrics.REQUESTS.labels(TALK_ROUTE, "WS", str(status)).inc()

    async def _config(self, websocket: WebSocket, rid: str) -> TalkConfig | None:
        try:
            message = await websocket.receive()
        except WebSocketDisconnect:
            return None
        if message["type"] == "websocket.disconnect":
            return None
        text = message.get("text")
        if text is None:
            raise invalid('send the JSON config frame first ({"voice", "sample_rate", ...}), then the audio')
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise invalid(f"the config frame is not JSON: {error}") from None
        if not isinstance(data, dict):
            raise invalid("the config frame must be a JSON object")
        config = parse_config(data, bool(self.settings.chat_url))
        up = self.up()
        try:
            listed = await up.gateway.ListVoices(
                tts_gateway_pb2.ListVoicesRequest(),
                metadata=self.gateway_md(websocket, rid),
                timeout=up.unary_timeout_s,
            )
        except grpc.aio.AioRpcError as error:
            raise from_rpc_error(error) from None
        names = [voice.name for voice in listed.voices]
        if config.voice not in names:
            raise EdgeError(404, f"unknown voice {config.voice!r}; the gateway serves: {', '.join(names)}", "not_found")
        return config

    async def _run(self, websocket: WebSocket, rid: str) -> int:
        settings = self.settings
        if settings.auth_token:
            token = bearer_token(websocket.headers) or websocket.query_params.get("token")
            if token != settings.auth_token:
                error = EdgeError(
                    401, "missing or invalid token: send 'Authorization: Bearer <token>' or ?token=", "unauthenticated"
                )
                return await _send_error(websocket, error, rid)
        try:
            config = await self._config(websocket, rid)
        except EdgeError as error:
            return await _send_error(websocket, error, rid)
        if config is None:
            return 499
        session = Session(websocket, rid, config)
        if settings.chat_system_prompt:
            session.history.append({"role": "system", "content": settings.chat_system_prompt})
        up = self.up()
        audio: asyncio.Queue[bytes | None] = asyncio.Queue()

        async def recognize_requests() -> AsyncIterator[recognition_pb2.StreamingRecognizeRequest]:
            yield recognition_pb2.StreamingRecognizeRequest(
                config=recognition_pb2.StreamingRecognitionConfig(
                    request_id=rid,
                    config=recognition_pb2.RecognitionConfig(
                        model=config.recognition_model, language_code=config.language
                    ),
                    audio_format=audio_pb2.AudioFormat(
                        encoding=audio_pb2.AUDIO_ENCODING_PCM16, sample_rate_hz=config.sample_rate, channels=1
                    ),
                    interim_results=True,
                )
            )
            while (chunk := await audio.get()) is not None:
                yield recognition_pb2.StreamingRecognizeRequest(audio=chunk)

        call = up.recognition.StreamingRecognize(recognize_requests(), metadata=self.gateway_md(websocket, rid))
        replies: asyncio.Queue[Utterance | None] = asyncio.Queue()
        problems: list[EdgeError] = []
        client_gone = asyncio.Event()

        async def read_client() -> None:
            received_bytes = 0
            carry = b""
            while True:
                try:
                    message = await websocket.receive()
                except WebSocketDisconnect:
                    message = {"type": "websocket.disconnect"}
                if message["type"] == "websocket.disconnect":
                    client_gone.set()
                    return
                data = message.get("bytes")
                if data is not None:
                    if len(data) > MAX_FRAME_BYTES:
                        problems.append(invalid(f"an audio frame is over {MAX_FRAME_BYTES} bytes; send smaller ones"))
                        return
                    data = carry + data
                    even = len(data) - len(data) % 2
                    carry = data[even:]
                    if even:
                        received_bytes += even
                        session.received.append((received_bytes / 2 / config.sample_rate, time.perf_counter()))
                        if len(session.received) > MAX_RECEIPTS:  # only recent audio ends utterances
                            del session.received[: MAX_RECEIPTS // 2]
                        await audio.put(data[:even])
                    continue
                try:
                    control = json.loads(message.get("text") or "")
                except json.JSONDecodeError:
                    control = None
                if isinstance(control, dict) and control.get("type") == "end":
                    await audio.put(None)  # half-close: the utterance in progress is finalised
                    return
                problems.append(invalid('after the config frame send binary PCM16 audio frames or {"type": "end"}'))
                return

        async def read_results() -> None:
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
                            end_s = _ms(result.result_end_offset) / 1000
                            await replies.put(Utterance(index, text, session.received_at(end_s), time.perf_counter()))
            finally:
                await replies.put(None)

        reader = asyncio.ensure_future(read_client())
        results = asyncio.ensure_future(read_results())
        speaker = asyncio.ensure_future(self._speak_replies(session, replies))
        await session.send_json({"type": "ready", "request_id": rid, "reply": config.reply})
        try:
            # The client's reader ends first on a bad frame or a disconnect (the call is not cancelled from there:
            # grpc.aio answers a locally cancelled call's read() with CancelledError); else the recognition ends.
            await asyncio.wait({reader, results}, return_when=asyncio.FIRST_COMPLETED)
            if problems:
                return await _send_error(websocket, problems[0], rid)
            if client_gone.is_set() or (reader.done() and not reader.cancelled() and reader.exception()):
                return 499
            try:
                await results
            except grpc.aio.AioRpcError as error:
                if client_gone.is_set():
                    return 499
                return await _send_error(websocket, from_rpc_error(error), rid)
            if problems:
                return await _send_error(websocket, problems[0], rid)
            await speaker  # the recognition ended (after {"type": "end"}): speak what is queued, then close
            await session.send_json({"type": "done", "request_id": rid})
            await websocket.close(code=1000)
            return 200
        except (WebSocketDisconnect, RuntimeError):
            return 499
        finally:
            call.cancel()
            for task in (reader, results, speaker):
                task.cancel()
            await asyncio.gather(reader, results, speaker, return_exceptions=True)

    async def _speak_replies(self, session: Session, replies: asyncio.Queue[Utterance | None]) -> None:
        while (utterance := await replies.get()) is not None:
            try:
                await self._speak(session, utterance)
            except EdgeError as error:
                log.warning("reply to utterance %d failed: %s", utterance.index, error.message)
                with contextlib.suppress(Exception):
                    await session.send_json(
                        {
                            "type": "error",
                            "status": error.status,
                            "code": error.code,
                            "message": error.message,
                            "request_id": session.rid,
                            "utterance": utterance.index,
                        }
                    )

    async def _speak(self, session: Session, utterance: Utterance) -> None:
        settings, config = self.settings, session.config
        started = time.perf_counter()
        chat = config.reply == "chat"
        if chat:
            messages = [*session.history, {"role": "user", "content": utterance.text}]
            deltas: AsyncIterator[str] = chat_deltas(settings, messages)
        else:
            deltas = _single(utterance.text)
        requests: asyncio.Queue[tts_gateway_pb2.StreamingSynthesizeRequest | None] = asyncio.Queue()
        synth_config = tts_gateway_pb2.StreamingSynthesizeConfig(
            request_id=f"{session.rid}-{utterance.index}",
            voice=config.voice,
            output_format=audio_pb2.AudioFormat(encoding=audio_pb2.AUDIO_ENCODING_PCM16, channels=1),
        )

        async def synth_requests() -> AsyncIterator[tts_gateway_pb2.StreamingSynthesizeRequest]:
            yield tts_gateway_pb2.StreamingSynthesizeRequest(config=synth_config)
            while (item := await requests.get()) is not None:
                yield item

        reply_text: list[str] = []
        first_text_at: float | None = None
        text_ready = asyncio.Event()

        async def feed() -> None:
            nonlocal first_text_at
            try:
                async for delta in deltas:
                    if first_text_at is None:
                        first_text_at = time.perf_counter()
                    reply_text.append(delta)
                    if chat:
                        await session.send_json({"type": "reply_text", "utterance": utterance.index, "delta": delta})
                    await requests.put(tts_gateway_pb2.StreamingSynthesizeRequest(text=delta))
                    text_ready.set()
            finally:
                await requests.put(None)

        feeder = asyncio.ensure_future(feed())
        # The gateway call opens with the first text: an empty answer never reaches it.
        has_text = asyncio.ensure_future(text_ready.wait())
        await asyncio.wait({feeder, has_text}, return_when=asyncio.FIRST_COMPLETED)
        has_text.cancel()
        await asyncio.gather(has_text, return_exceptions=True)
        if not text_ready.is_set():
            await feeder  # raises the chat endpoint's error, if any
            await session.send_json({"type": "reply_start", "utterance": utterance.index, "sample_rate": 0})
            await self._reply_end(session, utterance, "", 0.0, started, first_text_at, None)
            return

        up = self.up()
        call = up.gateway.StreamingSynthesize(
            synth_requests(),
            metadata=self.gateway_md(session.websocket, session.rid),
            timeout=settings.synthesis_timeout_s,
        )
        first_audio_at: float | None = None
        samples = 0
        rate = 0
        try:
            while True:
                try:
                    chunk = await call.read()
                except grpc.aio.AioRpcError as error:
                    if feeder.done() and not feeder.cancelled() and (exc := feeder.exception()) is not None:
                        raise exc from None
                    raise from_rpc_error(error) from None
                if chunk is grpc.aio.EOF:
                    break
                if first_audio_at is None and (chunk.audio or chunk.is_final):
                    first_audio_at = time.perf_counter()
                    rate = int(chunk.format.sample_rate_hz)
                    start: dict[str, Any] = {"type": "reply_start", "utterance": utterance.index, "sample_rate": rate}
                    if not chat:
                        start["text"] = utterance.text
                    await session.send_json(start)
                if chunk.audio:
                    samples += len(chunk.audio) // 2
                    await session.send_bytes(chunk.audio)
                if chunk.is_final:
                    break
            if feeder.done() and (exc := feeder.exception()) is not None:
                raise exc
        finally:
            call.cancel()
            feeder.cancel()
            await asyncio.gather(feeder, return_exceptions=True)
        text = "".join(reply_text)
        if chat:
            session.history += [{"role": "user", "content": utterance.text}, {"role": "assistant", "content": text}]
            keep = max(0, settings.chat_max_history)
            system = [m for m in session.history[:1] if m["role"] == "system"]
            rest = session.history[len(system) :]
            session.history = system + (rest[-keep:] if keep else [])
        await self._reply_end(
            session, utterance, text, samples / rate if rate else 0.0, started, first_text_at, first_audio_at
        )

    async def _reply_end(
        self,
        session: Session,
        utterance: Utterance,
        text: str,
        audio_seconds: float,
        started: float,
        first_text_at: float | None,
        first_audio_at: float | None,
    ) -> None:
        now = time.perf_counter()

        def ms(later: float | None, earlier: float) -> float | None:
            return round((later - earlier) * 1000, 1) if later is not None else None

        chat = session.config.reply == "chat"
        timing = {
            "end_of_speech_to_final_ms": ms(utterance.final_at, utterance.speech_end),
            "queued_ms": ms(started, utterance.final_at),
            "final_to_first_text_ms": ms(first_text_at, utterance.final_at) if chat else None,
            "final_to_first_audio_ms": ms(first_audio_at, utterance.final_at),
            "end_of_speech_to_first_audio_ms": ms(first_audio_at, utterance.speech_end),
            "total_ms": ms(now, utterance.speech_end),
        }
        await session.send_json(
            {
                "type": "reply_end",
                "utterance": utterance.index,
                "text": text,
                "audio_seconds": round(audio_seconds, 3),
                "timing": timing,
            }
        )


async def _single(text: str) -> AsyncIterator[str]:
    yield text
