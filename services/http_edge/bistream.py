"""The CosyVoice2 bi-streaming Triton runtime's own small HTTP API, spoken at the edge over the gateway.

Clients written against that runtime keep working unchanged:

* ``POST /tts`` with a JSON body (``application/json``; form bodies still go to the seed's ``/tts``):
  ``{"text", "session_id"?, "reference"? (base64), "reference_text"?, "reference_format"? ("audio" | "pcm16"),
  "reference_sample_rate"? (pcm16 only, default 24000), "voice"?, "seed"?}``. The answer is raw PCM16 mono
  little-endian at the voice's own rate, chunked, with ``X-Sample-Rate`` and ``X-Format: pcm_s16le``.
* WebSocket ``/stream``: JSON text frames ``{"session_id", "text", ...the same optional fields..., "partial"?}``.
  Each frame is one turn (one gateway StreamingSynthesize); a frame with ``"partial": true`` starts or continues a
  turn whose text arrives in pieces, and the next frame without it ends that turn (its text is the last delta).
  Each turn answers binary PCM16 frames and then the text frame ``END``; a failed turn or a bad frame answers an
  error object (the shape of the ``/v1/audio/speech/stream`` errors) instead, and the connection stays open.
  Turns run one after another, so one turn's audio never mixes with another's. A turn's config (voice, seed,
  reference) comes from its first frame; a reference on a later frame of the turn is kept for the session's next
  turns. When the gateway refuses a turn, the turn's remaining frames (up to the one without "partial") are dropped;
  a bad frame inside a partial turn ends that turn at once with its error (its remaining audio is not sent).
  Without ``session_id`` a frame's reference belongs to the connection.

A reference (decoded once, as the gateway's AudioInput) is kept per ``session_id`` in a bounded LRU with an idle
TTL (``--bistream-max-sessions``, ``--bistream-session-ttl``): later requests of the session may leave it out; one
given again replaces it. With a reference and a ``reference_text`` the request is zero-shot, with a reference alone
cross-lingual, without any the voice's own speaker. Without ``voice``: ``--bistream-voice``, else the first voice the
gateway lists with ``streams_text_input``, else its first available voice.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Annotated, Any, cast

import grpc
from fastapi import Depends, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import Response
from pydantic import ValidationError
from starlette.requests import HTTPConnection

from services.common.contract import MiB
from services.common.request_id import MAX_REQUEST_ID_LENGTH, REQUEST_ID_METADATA_KEY
from services.http_edge.dependencies import Calls, get_calls, get_settings
from services.http_edge.errors import EdgeError, from_rpc_error, invalid, invalid_from
from services.http_edge.models import BistreamRequest
from services.http_edge.settings import Settings
from services.http_edge.sockets import CLIENT_LEFT, SocketProtocolError, receive_json
from services.http_edge.streaming import AudioStream, start_synthesis
from services.http_edge.uploads import audio_input
from services.http_edge.voices import VoiceDirectory, choose_voice, get_voices
from voice.v1 import audio_pb2, tts_gateway_pb2

__all__ = ["Bistream", "BistreamDep", "ReferenceCache", "StreamSession", "choose_voice", "is_json"]

log = logging.getLogger(__name__)

STREAM_ROUTE = "/stream"
TTS_ROUTE = "/tts"
END_FRAME = "END"
PCM_FORMAT = "pcm_s16le"
# The cached references together stay under this many bytes (least recently used out first): 256 sessions of 60 s
# decoded to FLOAT32 would otherwise be gigabytes.
MAX_CACHE_BYTES = 256 * MiB


def is_json(request: Request) -> bool:
    """Whether `/tts` carries this API's JSON body (anything else goes to the seed's form handler, unchanged)."""
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    return media_type == "application/json" or (media_type.startswith("application/") and media_type.endswith("+json"))


# --------------------------------------------------------------------------------------------------------------------
# Requests
# --------------------------------------------------------------------------------------------------------------------


def parse_request(payload: Any) -> BistreamRequest:
    if not isinstance(payload, dict):
        raise invalid("the body must be a JSON object")
    try:
        return BistreamRequest.model_validate(payload)
    except ValidationError as error:
        raise invalid_from(error) from None


def decode_reference(request: BistreamRequest, max_seconds: float) -> audio_pb2.AudioInput | None:
    """The request's reference as the gateway's AudioInput (None without one). Blocking: run it in a thread."""
    if not request.reference:
        return None
    try:
        data = base64.b64decode("".join(request.reference.split()), validate=True)
    except (binascii.Error, ValueError) as error:
        raise invalid(f"reference: not valid base64 ({error})", "reference") from None
    if request.reference_format == "audio":
        return audio_input(data, "reference", max_seconds)
    if not data or len(data) % 2:
        raise invalid("reference: PCM16 needs a whole, nonzero number of 2-byte samples", "reference")
    rate = request.reference_sample_rate
    seconds = len(data) / 2 / rate
    if seconds > max_seconds:
        raise EdgeError(
            400, f"reference: {seconds:.1f} s of audio is over this edge's limit of {max_seconds:g} s", "out_of_range"
        )
    return audio_pb2.AudioInput(
        audio=data,
        format=audio_pb2.AudioFormat(encoding=audio_pb2.AUDIO_ENCODING_PCM16, sample_rate_hz=rate, channels=1),
    )


# --------------------------------------------------------------------------------------------------------------------
# Session references
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class CachedReference:
    audio: audio_pb2.AudioInput
    text: str
    used: float


class ReferenceCache:
    """References by session id: least recently used first out above `max_sessions` (or `max_bytes` of audio in all),
    dropped after `ttl_s` idle (0: never)."""

    def __init__(
        self,
        max_sessions: int,
        ttl_s: float,
        clock: Callable[[], float] = time.monotonic,
        max_bytes: int = MAX_CACHE_BYTES,
    ) -> None:
        self.max_sessions = max(1, max_sessions)
        self.ttl_s = ttl_s
        self.clock = clock
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, CachedReference] = OrderedDict()
        self._bytes = 0

    def __len__(self) -> int:
        self._expire()
        return len(self._entries)

    def put(self, session_id: str, audio: audio_pb2.AudioInput, text: str) -> None:
        self._drop(session_id)
        self._entries[session_id] = CachedReference(audio, text, self.clock())
        self._bytes += len(audio.audio)
        self._expire()
        while len(self._entries) > 1 and (len(self._entries) > self.max_sessions or self._bytes > self.max_bytes):
            self._drop(next(iter(self._entries)))

    def get(self, session_id: str) -> CachedReference | None:
        self._expire()
        entry = self._entries.get(session_id)
        if entry is not None:
            entry.used = self.clock()
            self._entries.move_to_end(session_id)
        return entry

    def _expire(self) -> None:
        if self.ttl_s <= 0:
            return
        horizon = self.clock() - self.ttl_s
        while self._entries:
            session_id, entry = next(iter(self._entries.items()))
            if entry.used > horizon:
                break
            self._drop(session_id)

    def _drop(self, session_id: str) -> None:
        entry = self._entries.pop(session_id, None)
        if entry is not None:
            self._bytes -= len(entry.audio.audio)


def mode_fields(
    request: BistreamRequest, reference: audio_pb2.AudioInput | None, cache: ReferenceCache, session_key: str | None
) -> tuple[audio_pb2.AudioInput | None, str]:
    """The reference and transcript this request synthesizes with: its own reference (cached for the session), else
    the session's cached one. `reference_text` applies to this request; without one, the cached transcript."""
    if reference is not None:
        text = request.reference_text or ""
        if session_key:
            cache.put(session_key, reference, text)
        return reference, text
    cached = cache.get(session_key) if session_key else None
    if cached is None:
        if request.reference_text:
            raise invalid(
                "reference_text needs a reference: send one (base64 audio) on this request or an earlier one of the "
                "same session_id",
                "reference_text",
            )
        return None, ""
    return cached.audio, request.reference_text or cached.text


def set_mode(
    message: tts_gateway_pb2.SynthesizeRequest | tts_gateway_pb2.StreamingSynthesizeConfig,
    reference: audio_pb2.AudioInput | None,
    reference_text: str,
) -> None:
    if reference is None:
        return
    if reference_text:
        message.zero_shot.CopyFrom(tts_gateway_pb2.ZeroShot(reference_audio=reference, reference_text=reference_text))
    else:
        message.cross_lingual.CopyFrom(tts_gateway_pb2.CrossLingual(reference_audio=reference))


def sub_request_id(rid: str, turn: int) -> str:
    candidate = f"{rid}-{turn}"
    return candidate if len(candidate) <= MAX_REQUEST_ID_LENGTH else uuid.uuid4().hex


def error_frame(error: EdgeError, request_id: str) -> dict[str, Any]:
    """The `/v1/audio/speech/stream` error object plus `param`; on `/stream` the connection stays open after it."""
    return error.frame(request_id, with_param=True)


# --------------------------------------------------------------------------------------------------------------------
# The API's context: what its routes get injected
# --------------------------------------------------------------------------------------------------------------------


def new_reference_cache(settings: Settings) -> ReferenceCache:
    """The app's one cache (`app.state.references`)."""
    return ReferenceCache(settings.bistream_max_sessions, settings.bistream_session_ttl_s)


@dataclass
class Bistream:
    settings: Settings
    calls: Calls
    voices: VoiceDirectory
    references: ReferenceCache

    async def voice(self, requested: str | None, rid: str) -> str:
        return requested or await self.voices.bistream_default(self.calls, rid)

    async def reference(self, request: BistreamRequest) -> audio_pb2.AudioInput | None:
        if not request.reference:
            return None
        return await asyncio.to_thread(decode_reference, request, self.settings.max_upload_seconds)

    async def tts(self, request: Request, rid: str) -> Response:
        """`POST /tts` with a JSON body: raw PCM16 at the voice's own rate, chunked."""
        raw = await request.body()
        try:
            payload = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise invalid(f"the body must be a JSON object: {error}") from None
        body = parse_request(payload)
        decoded = await self.reference(body)
        voice = await self.voice(body.voice, rid)
        reference, reference_text = mode_fields(body, decoded, self.references, body.session_id)
        pb = tts_gateway_pb2.SynthesizeRequest(
            request_id=rid,
            text=body.text,
            voice=voice,
            output_format=audio_pb2.AudioFormat(encoding=audio_pb2.AUDIO_ENCODING_PCM16, channels=1),
        )
        if body.seed is not None:
            pb.seed = body.seed
        set_mode(pb, reference, reference_text)
        opened = await start_synthesis(
            self.calls.gateway, pb, self.calls.gateway_md(rid), self.settings.synthesis_timeout_s
        )
        headers = {
            "X-Sample-Rate": str(opened.sample_rate),
            "X-Format": PCM_FORMAT,
            "X-Voice": voice,
            REQUEST_ID_METADATA_KEY: rid,
            "X-Time-To-First-Audio-Ms": f"{opened.first_audio_s * 1000:.1f}",
            "Cache-Control": "no-store",
        }
        return AudioStream(opened.audio(), opened.cancel, media_type="audio/pcm", headers=headers, route=TTS_ROUTE)


def get_bistream(conn: HTTPConnection) -> Bistream:
    references = cast(ReferenceCache, conn.app.state.references)
    return Bistream(get_settings(conn), get_calls(conn), get_voices(conn), references)


BistreamDep = Annotated[Bistream, Depends(get_bistream)]


# --------------------------------------------------------------------------------------------------------------------
# WebSocket /stream
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class Frame:
    request: BistreamRequest
    reference: audio_pb2.AudioInput | None


class _Closed:
    """The client went away (queued after its last frame)."""


CLOSED = _Closed()
QueueItem = Frame | EdgeError | _Closed


@dataclass
class TurnState:
    closed: bool = False  # the client left during the turn
    problem: EdgeError | None = None  # a bad frame inside the turn: it ends the turn with this error
    reported: bool = False
    call: Any = None


class StreamSession:
    """One `/stream` connection: a reader task queues the client's frames; turns run from the queue in order."""

    def __init__(self, owner: Bistream, websocket: WebSocket, rid: str) -> None:
        self.owner = owner
        self.websocket = websocket
        self.rid = rid
        self.frames: asyncio.Queue[QueueItem] = asyncio.Queue()
        self.default_session = f"stream:{uuid.uuid4().hex}"  # a reference sent without session_id: this connection's
        self.turns = 0
        self.turn: TurnState | None = None

    async def run(self) -> int:
        reader = asyncio.ensure_future(self._read())
        try:
            while True:
                item = await self.frames.get()
                if isinstance(item, _Closed):
                    return 200
                if isinstance(item, EdgeError):
                    await self._send_json(error_frame(item, self.rid))
                    continue
                if not await self._turn(item):
                    return CLIENT_LEFT
        except (WebSocketDisconnect, RuntimeError, OSError):
            return CLIENT_LEFT  # sending to a closed socket: the client left mid-turn
        finally:
            reader.cancel()
            if self.turn is not None and self.turn.call is not None:
                self.turn.call.cancel()
            await asyncio.gather(reader, return_exceptions=True)

    async def _read(self) -> None:
        while True:
            try:
                message = await receive_json(self.websocket)
            except SocketProtocolError as error:
                await self.frames.put(invalid(str(error)))
                continue
            except Exception as error:  # the socket broke under us: treat it as the client leaving
                log.debug("/stream receive failed: %s", error)
                message = None
            if message is None:
                if self.turn is not None:
                    self.turn.closed = True
                    if self.turn.call is not None:
                        self.turn.call.cancel()  # stop the synthesis at once, even mid-audio
                await self.frames.put(CLOSED)
                return
            try:
                request = parse_request(message)
                await self.frames.put(Frame(request, await self.owner.reference(request)))
            except EdgeError as error:
                await self.frames.put(error)

    def _session_key(self, request: BistreamRequest) -> str:
        return request.session_id or self.default_session

    async def _send_json(self, data: dict[str, Any]) -> None:
        await self.websocket.send_text(json.dumps(data))

    async def _turn(self, first: Frame) -> bool:
        """Runs one turn from its first frame; False when the client left."""
        self.turns += 1
        turn_rid = sub_request_id(self.rid, self.turns)
        state = TurnState()
        self.turn = state
        try:
            try:
                voice = await self.owner.voice(first.request.voice, turn_rid)
                reference, reference_text = mode_fields(
                    first.request, first.reference, self.owner.references, self._session_key(first.request)
                )
            except EdgeError as error:
                await self._send_json(error_frame(error, turn_rid))
                return await self._drain(first, state)
            if not first.request.partial and not first.request.text:
                await self.websocket.send_text(END_FRAME)  # nothing to say
                return True
            config = tts_gateway_pb2.StreamingSynthesizeConfig(
                request_id=turn_rid,
                voice=voice,
                output_format=audio_pb2.AudioFormat(encoding=audio_pb2.AUDIO_ENCODING_PCM16, channels=1),
            )
            if first.request.seed is not None:
                config.seed = first.request.seed
            set_mode(config, reference, reference_text)
            return await self._synthesize(first, config, state, turn_rid)
        finally:
            self.turn = None

    async def _synthesize(
        self, first: Frame, config: tts_gateway_pb2.StreamingSynthesizeConfig, state: TurnState, turn_rid: str
    ) -> bool:
        if state.closed:
            return False
        deltas: asyncio.Queue[str | None] = asyncio.Queue()

        async def requests() -> AsyncIterator[tts_gateway_pb2.StreamingSynthesizeRequest]:
            yield tts_gateway_pb2.StreamingSynthesizeRequest(config=config)
            # The gateway answers initial metadata once it has accepted the config. Writing text before that races
            # a refusal: grpc then reports the call as INTERNAL ("Internal error from Core") instead of its status.
            await call.initial_metadata()
            if call.done():
                return
            while (text := await deltas.get()) is not None:
                yield tts_gateway_pb2.StreamingSynthesizeRequest(text=text)

        calls = self.owner.calls
        call = calls.gateway.StreamingSynthesize(
            requests(), metadata=calls.gateway_md(turn_rid), timeout=self.owner.settings.synthesis_timeout_s
        )
        state.call = call
        if first.request.text:
            deltas.put_nowait(first.request.text)
        feeder = asyncio.ensure_future(self._feed(first, deltas, state))
        try:
            await self._pump(call, state, turn_rid)
            await feeder  # the rest of this turn's frames (only left after a failed turn: they are dropped)
        finally:
            call.cancel()
            feeder.cancel()
            await asyncio.gather(feeder, return_exceptions=True)
        if state.closed:
            return False
        if state.problem is not None and not state.reported:
            await self._send_json(error_frame(state.problem, turn_rid))
        return True

    async def _feed(self, first: Frame, deltas: asyncio.Queue[str | None], state: TurnState) -> None:
        """Hands the turn's later frames to the call as text deltas, up to the frame without "partial"."""
        frame = first
        while frame.request.partial:
            item = await self.frames.get()
            if isinstance(item, _Closed):
                state.closed = True
                state.call.cancel()
                return
            if isinstance(item, EdgeError):
                state.problem = item
                state.call.cancel()
                return
            if item.reference is not None:  # too late for this turn: kept for the session's later turns
                mode_fields(item.request, item.reference, self.owner.references, self._session_key(item.request))
            if item.request.text:
                deltas.put_nowait(item.request.text)
            frame = item
        deltas.put_nowait(None)

    async def _pump(self, call: Any, state: TurnState, turn_rid: str) -> None:
        """Forwards the turn's audio, then END; an error frame instead when the turn fails."""
        while True:
            failure: grpc.aio.AioRpcError | None = None
            try:
                chunk = await call.read()
            except asyncio.CancelledError:
                # grpc.aio raises CancelledError from a call cancelled on this side: by this turn (the client left,
                # or a bad frame ended the turn) or by this task's own cancellation, which must go on.
                task = asyncio.current_task()
                if (task is not None and task.cancelling()) or not (state.closed or state.problem):
                    raise
            except grpc.aio.AioRpcError as error:
                failure = error
            else:
                if chunk is grpc.aio.EOF:
                    ended = EdgeError(502, "the gateway ended without a final chunk", "unknown")
                    await self._send_json(error_frame(ended, turn_rid))
                    return
                if chunk.audio:
                    await self.websocket.send_bytes(chunk.audio)
                if chunk.is_final:
                    await self.websocket.send_text(END_FRAME)
                    return
                continue
            if state.closed:
                return
            if state.problem is not None:
                state.reported = True
                await self._send_json(error_frame(state.problem, turn_rid))
                return
            assert failure is not None
            await self._send_json(error_frame(from_rpc_error(failure), turn_rid))
            return

    async def _drain(self, first: Frame, state: TurnState) -> bool:
        """Drops the rest of a failed turn's frames (up to its frame without "partial"); False when the client left."""
        frame = first
        while frame.request.partial:
            item = await self.frames.get()
            if isinstance(item, _Closed):
                return False
            if isinstance(item, EdgeError):
                await self._send_json(error_frame(item, self.rid))
                return True
            frame = item
        return not state.closed
