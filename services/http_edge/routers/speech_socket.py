"""WebSocket `/v1/audio/speech/stream`: text in (any chunking), audio out, over the gateway's StreamingSynthesize.

Client: a config frame (`models.SpeechSocketConfig`), then `{"text"}`, `{"type": "flush"}`, `{"type": "end"}`.
Server: `{"type": "start"}` with the first audio, `{"type": "segment"}` per sentence, binary audio, `{"type":
"done"}` and close 1000; or an error frame and close 4000 + status (sockets.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from pydantic import ValidationError

from services.common.durations import seconds_from_duration
from services.http_edge.dependencies import Calls, CallsDep, SettingsDep
from services.http_edge.encode import FORMATS
from services.http_edge.errors import EdgeError, from_rpc_error, invalid, invalid_from
from services.http_edge.models import SocketTextMessage, SpeechSocketConfig, conversion_settings
from services.http_edge.settings import Settings
from services.http_edge.sockets import (
    CLIENT_LEFT,
    WS_NORMAL_CLOSE,
    SocketProtocolError,
    receive_json,
    send_error,
    serve_socket,
)
from services.http_edge.streaming import ms
from services.http_edge.voices import VoiceDirectory, VoicesDep
from voice.v1 import audio_pb2, tts_gateway_pb2

WS_ROUTE = "/v1/audio/speech/stream"
WS_TEXT_INPUT_MODES = {
    "sentences": tts_gateway_pb2.TEXT_INPUT_MODE_SENTENCES,
    "incremental": tts_gateway_pb2.TEXT_INPUT_MODE_INCREMENTAL,
}
Request = tts_gateway_pb2.StreamingSynthesizeRequest

router = APIRouter(tags=["WebSocket"])


@router.websocket(WS_ROUTE)
async def speech_socket(websocket: WebSocket, settings: SettingsDep, calls: CallsDep, voices: VoicesDep) -> None:
    async def session(rid: str) -> int:
        return await SpeechSocketSession(websocket, settings, calls, voices, rid).run()

    await serve_socket(websocket, WS_ROUTE, settings, session)


def streaming_config(config: SpeechSocketConfig, voice: str, rid: str) -> tts_gateway_pb2.StreamingSynthesizeConfig:
    fmt = FORMATS[config.response_format]
    pb = tts_gateway_pb2.StreamingSynthesizeConfig(
        request_id=rid,
        voice=voice,
        output_format=audio_pb2.AudioFormat(
            encoding=fmt.gateway_encoding, sample_rate_hz=config.sample_rate, channels=1
        ),
    )
    if config.speed is not None:
        pb.speaking_rate = config.speed
    settings_pb = conversion_settings(config.conversion_model, config.pitch_shift)
    if settings_pb is not None:
        pb.conversion.CopyFrom(settings_pb)
    if config.text_input_mode is not None:
        pb.text_input_mode = WS_TEXT_INPUT_MODES[config.text_input_mode]
    return pb


class SpeechSocketSession:
    """One connection: the config frame opens a StreamingSynthesize call; a reader task forwards the client's text
    while this task relays the gateway's chunks."""

    def __init__(
        self, websocket: WebSocket, settings: Settings, calls: Calls, voices: VoiceDirectory, rid: str
    ) -> None:
        self.websocket = websocket
        self.settings = settings
        self.calls = calls
        self.voices = voices
        self.rid = rid
        self.requests: asyncio.Queue[Request | None] = asyncio.Queue()
        self.client_problem: EdgeError | None = None
        self.call: Any = None

    async def run(self) -> int:
        try:
            first = await receive_json(self.websocket)
            if first is None:
                return CLIENT_LEFT
            config = SpeechSocketConfig.model_validate(first)
            voice = await self.voices.resolve(config.voice, self.calls, self.rid)
        except SocketProtocolError as error:
            return await send_error(self.websocket, invalid(str(error)), self.rid)
        except ValidationError as error:
            return await send_error(self.websocket, invalid_from(error), self.rid)
        except EdgeError as error:
            return await send_error(self.websocket, error, self.rid)
        started = time.perf_counter()
        self.call = self.calls.gateway.StreamingSynthesize(
            self._requests(streaming_config(config, voice, self.rid)),
            metadata=self.calls.gateway_md(self.rid),
            timeout=self.settings.synthesis_timeout_s,
        )
        reader = asyncio.ensure_future(self._read_client())
        try:
            return await self._relay(reader, started)
        except (WebSocketDisconnect, RuntimeError):
            return CLIENT_LEFT  # sending to a closed socket: the client left mid-stream
        finally:
            self.call.cancel()
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)

    async def _requests(self, config: tts_gateway_pb2.StreamingSynthesizeConfig) -> AsyncIterator[Request]:
        yield Request(config=config)
        # The gateway answers initial metadata once it has accepted the config. Writing text before that races a
        # refusal (an unknown voice): grpc then reports the call as INTERNAL instead of the gateway's status.
        await self.call.initial_metadata()
        if self.call.done():
            return
        while (item := await self.requests.get()) is not None:
            yield item

    async def _read_client(self) -> None:
        while True:
            try:
                data = await receive_json(self.websocket)
                if data is None:
                    self.call.cancel()  # the client left: stop the synthesis
                    return
                message = SocketTextMessage.model_validate(data)
            except SocketProtocolError as error:
                self.client_problem = invalid(str(error))
            except ValidationError:
                self.client_problem = invalid('expected {"text": "..."}, {"type": "flush"} or {"type": "end"}', "text")
            if self.client_problem is not None:
                self.call.cancel()
                return
            if message.type == "end":
                await self.requests.put(None)
                return
            if message.type == "flush":
                await self.requests.put(Request(flush=Request.Flush()))
            elif message.text:
                await self.requests.put(Request(text=message.text))

    async def _relay(self, reader: asyncio.Future[None], started: float) -> int:
        first_audio_ms: float | None = None
        while True:
            try:
                chunk = await self.call.read()
            except grpc.aio.AioRpcError as error:
                if self.client_problem is not None:
                    return await send_error(self.websocket, self.client_problem, self.rid)
                if error.code() == grpc.StatusCode.CANCELLED and reader.done():
                    return CLIENT_LEFT
                return await send_error(self.websocket, from_rpc_error(error), self.rid)
            if chunk is grpc.aio.EOF:
                break
            if first_audio_ms is None:
                first_audio_ms = (time.perf_counter() - started) * 1000
                start = {"type": "start", "sample_rate": chunk.format.sample_rate_hz, "request_id": self.rid}
                await self.websocket.send_json(start)
            if chunk.segment_text:
                segment = {"type": "segment", "index": chunk.segment_index, "text": chunk.segment_text}
                await self.websocket.send_json(segment)
            if chunk.audio:
                await self.websocket.send_bytes(chunk.audio)
            if chunk.is_final:
                await self.websocket.send_json(self._done(chunk.summary, first_audio_ms))
                await self.websocket.close(code=WS_NORMAL_CLOSE)
                return 200
        ended = EdgeError(502, "the gateway ended without a final chunk", "unknown")
        return await send_error(self.websocket, ended, self.rid)

    def _done(self, summary: audio_pb2.SynthesisSummary, first_audio_ms: float) -> dict[str, Any]:
        return {
            "type": "done",
            "audio_seconds": seconds_from_duration(summary.audio_duration),
            "time_to_first_audio_ms": ms(summary.time_to_first_audio),
            "edge_time_to_first_audio_ms": first_audio_ms,
            "segments": summary.segment_count,
            "real_time_factor": summary.real_time_factor,
            "request_id": self.rid,
        }
