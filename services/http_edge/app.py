"""The HTTP edge: OpenAI-compatible speech, the seed's HTTP API, WebSocket streaming and the web page, all as a
client of the gRPC services (the gateway for synthesis, the conversion service for /rvc). No synthesis here: audio
bytes come from the gateway; the edge only re-frames them (and encodes MP3/AAC/FLAC from PCM, see encode.py).

Wiring: flags -> `create_app` (routes, middleware) -> uvicorn on a socket bound here (so port 0 works and the ready
line can name the port). docs/http_edge.md describes the API.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import socket
import struct
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import grpc
import uvicorn
from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from google.protobuf.json_format import MessageToDict
from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.common.channels import add_upstream_credential_options
from services.common.config import EnvArgumentParser
from services.common.logs import configure_logging
from services.common.metrics import MetricsExporter, publish_build_info
from services.common.ready import ready_line
from services.common.request_id import MAX_REQUEST_ID_LENGTH, bind_request_id
from services.http_edge import metrics
from services.http_edge.encode import FORMATS, OutputFormat, StreamEncoder, supported_formats
from services.http_edge.errors import EdgeError, from_rpc_error, invalid
from services.http_edge.uploads import audio_input
from services.http_edge.upstream import CONVERSION_SERVICE, GATEWAY_SERVICE, Upstreams
from voice.v1 import audio_pb2, conversion_pb2, tts_gateway_pb2, voice_conversion_pb2

log = logging.getLogger(__name__)

SERVICE_NAME = "http_edge"
STATIC_DIR = Path(__file__).resolve().parent / "static"
MiB = 1024 * 1024
# OpenAI's speech API answers at 24 kHz (its `pcm` is documented as 24 kHz s16le); /v1/audio/speech asks the gateway
# for that rate in every format so clients written for OpenAI play it right.
OPENAI_SAMPLE_RATE = 24_000
MIN_SPEED, MAX_SPEED = 0.5, 2.0  # the gateway's speaking_rate range
# Paths served without a token: the page itself holds no data, and probes must not need secrets.
PUBLIC_PATHS = ("/", "/health", "/favicon.ico")
PUBLIC_PREFIXES = ("/static/",)
WS_FORMATS = ("pcm", "wav", "opus")
WS_TEXT_INPUT_MODES = {
    "sentences": tts_gateway_pb2.TEXT_INPUT_MODE_SENTENCES,
    "incremental": tts_gateway_pb2.TEXT_INPUT_MODE_INCREMENTAL,
}
CLONING_MODES = {tts_gateway_pb2.SYNTHESIS_MODE_ZERO_SHOT, tts_gateway_pb2.SYNTHESIS_MODE_CROSS_LINGUAL}


def make_parser() -> EnvArgumentParser:
    parser = EnvArgumentParser(
        description="HTTP edge: OpenAI-compatible speech API, HTTP/WebSocket streaming and a web page over the gRPC "
        "services",
        env_prefix="EDGE",
    )
    parser.add_option("--host", default="127.0.0.1", help="address to listen on for HTTP (0.0.0.0 in containers)")
    parser.add_option("--port", type=int, default=8080, help="HTTP port (0 picks a free port)")
    parser.add_option("--metrics-host", default="127.0.0.1", help="address for the Prometheus /metrics endpoint")
    parser.add_option("--metrics-port", type=int, default=9103, help="Prometheus port (0 free port, -1 off)")
    parser.add_option("--gateway-url", default="127.0.0.1:50051", help="TTS gateway gRPC address")
    parser.add_option("--rvc-url", default="127.0.0.1:50052", help="voice-conversion service gRPC address (/rvc)")
    add_upstream_credential_options(parser, "gateway", "the gateway")
    add_upstream_credential_options(parser, "rvc", "the voice-conversion service")
    parser.add_option(
        "--auth-token",
        default=None,
        help="when set, every request except /, /static/, /health needs 'Authorization: Bearer <token>' "
        "(WebSocket: the header or ?token=)",
    )
    parser.add_option(
        "--upstream-token",
        default=None,
        help="bearer token sent to both upstreams unless --gateway-auth-token/--rvc-auth-token say otherwise; "
        "without any, the client's own bearer token is forwarded",
    )
    parser.add_option("--max-body-mb", type=float, default=32.0, help="largest request body, MiB (413 above)")
    parser.add_option("--max-upload-seconds", type=float, default=60.0, help="longest uploaded audio, seconds")
    parser.add_option("--upstream-timeout", type=float, default=10.0, help="deadline of unary upstream calls, s")
    parser.add_option(
        "--synthesis-timeout", type=float, default=600.0, help="deadline of one synthesis or conversion call, s"
    )
    parser.add_option(
        "--grace-seconds", type=float, default=10.0, help="on SIGTERM, how long open responses may run before close"
    )
    parser.add_option(
        "--bistream-voice",
        default=None,
        help="voice of the CosyVoice2 runtime API (JSON /tts, /stream) when a request names none; default: the first "
        "voice that streams text input, else the first available one",
    )
    parser.add_option(
        "--bistream-session-ttl",
        type=float,
        default=600.0,
        help="idle seconds a /tts or /stream session's reference is kept",
    )
    parser.add_option("--bistream-max-sessions", type=int, default=256, help="session references kept (LRU)")
    parser.add_option(
        "--chat-url",
        default=None,
        help="OpenAI-compatible chat-completions URL (e.g. http://127.0.0.1:11434/v1/chat/completions) that answers "
        "/v1/talk utterances; without it /v1/talk echoes the transcript",
    )
    parser.add_option("--chat-model", default="", help="model named in chat requests (empty: the endpoint's default)")
    parser.add_option(
        "--chat-system-prompt",
        default="You are a helpful voice assistant. Answer briefly, in plain spoken sentences without markup.",
        help="system message of every /v1/talk conversation (empty: none)",
    )
    parser.add_option("--chat-api-key", default=None, help="bearer token for the chat endpoint (env EDGE_CHAT_API_KEY)")
    parser.add_option("--chat-timeout", type=float, default=60.0, help="deadline of one chat answer, s")
    parser.add_option(
        "--chat-max-history", type=int, default=20, help="messages of a /v1/talk conversation kept as context"
    )
    parser.add_option("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="log level")
    parser.add_option("--log-format", default="json", choices=["json", "text"], help="log line format")
    return parser


@dataclass
class Settings:
    auth_token: str | None = None
    max_body_bytes: int = 32 * MiB
    max_upload_seconds: float = 60.0
    synthesis_timeout_s: float = 600.0
    static_dir: Path = STATIC_DIR
    bistream_voice: str | None = None
    bistream_session_ttl_s: float = 600.0
    bistream_max_sessions: int = 256
    chat_url: str | None = None
    chat_model: str = ""
    chat_system_prompt: str = ""
    chat_api_key: str | None = None
    chat_timeout_s: float = 60.0
    chat_max_history: int = 20

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Settings:
        return cls(
            auth_token=args.auth_token or None,
            max_body_bytes=int(args.max_body_mb * MiB),
            max_upload_seconds=args.max_upload_seconds,
            synthesis_timeout_s=args.synthesis_timeout,
            bistream_voice=args.bistream_voice or None,
            bistream_session_ttl_s=args.bistream_session_ttl,
            bistream_max_sessions=args.bistream_max_sessions,
            chat_url=args.chat_url or None,
            chat_model=args.chat_model,
            chat_system_prompt=args.chat_system_prompt,
            chat_api_key=args.chat_api_key or None,
            chat_timeout_s=args.chat_timeout,
            chat_max_history=args.chat_max_history,
        )


# --------------------------------------------------------------------------------------------------------------------
# Request context: request id, auth, body limit, metrics (one pure ASGI middleware, so streaming is untouched)
# --------------------------------------------------------------------------------------------------------------------


class BodyTooLarge(StarletteHTTPException):
    """Raised from `receive` when a body without a (truthful) Content-Length grows past the limit. An HTTPException
    so FastAPI's body parsing re-raises it instead of turning it into a generic 400."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is over this edge's limit of {limit / MiB:g} MiB (--max-body-mb)")


def valid_request_id(value: str) -> bool:
    return 0 < len(value) <= MAX_REQUEST_ID_LENGTH and all(33 <= ord(c) <= 126 for c in value)


def bearer_token(headers: Any) -> str | None:
    header = headers.get("authorization") or ""
    scheme, _, token = header.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def route_label(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    if isinstance(path, str):
        return path
    return "/static" if str(scope.get("path", "")).startswith("/static/") else "unmatched"


class EdgeMiddleware:
    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        client_id = headers.get("x-request-id", "")
        request_id = client_id or uuid.uuid4().hex
        if client_id and not valid_request_id(client_id):
            request_id = uuid.uuid4().hex
            error = invalid(
                f"X-Request-Id must be 1..{MAX_REQUEST_ID_LENGTH} printable ASCII characters without spaces",
                "X-Request-Id",
            )
            await self._reject(scope, send, error, request_id, started)
            return
        bind_request_id(request_id)
        scope.setdefault("state", {})["request_id"] = request_id
        path = str(scope.get("path", ""))
        public = path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)
        if self.settings.auth_token and not public and bearer_token(headers) != self.settings.auth_token:
            error = EdgeError(
                401, "missing or invalid bearer token: send 'Authorization: Bearer <token>'", "unauthenticated"
            )
            await self._reject(scope, send, error, request_id, started)
            return
        limit = self.settings.max_body_bytes
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > limit:
            await self._reject(
                scope, send, EdgeError(413, BodyTooLarge(limit).detail, "request_too_large"), request_id, started
            )
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        status = 500
        first_byte = False

        async def tracked_send(message: Message) -> None:
            nonlocal status, first_byte
            if message["type"] == "http.response.start":
                status = int(message["status"])
                message["headers"] = [
                    *[(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"],
                    (b"x-request-id", request_id.encode("latin-1")),
                ]
            elif message["type"] == "http.response.body" and message.get("body") and not first_byte:
                first_byte = True
                metrics.TIME_TO_FIRST_BYTE.labels(route_label(scope)).observe(time.perf_counter() - started)
            await send(message)

        try:
            await self.app(scope, limited_receive, tracked_send)
        finally:
            route = route_label(scope)
            metrics.REQUESTS.labels(route, scope.get("method", ""), str(status)).inc()
            metrics.DURATION.labels(route).observe(time.perf_counter() - started)
            if status >= 500:
                log.warning("%s %s -> %d", scope.get("method"), path, status)

    async def _reject(self, scope: Scope, send: Send, error: EdgeError, request_id: str, started: float) -> None:
        response = error_response(error, request_id)
        await response({**scope, "type": "http"}, _no_body, send)
        metrics.REQUESTS.labels("unmatched", scope.get("method", ""), str(error.status)).inc()
        metrics.DURATION.labels("unmatched").observe(time.perf_counter() - started)


async def _no_body() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


def error_response(error: EdgeError, request_id: str) -> JSONResponse:
    headers = {**error.headers(), "X-Request-Id": request_id}
    return JSONResponse(error.body(request_id), status_code=error.status, headers=headers)


def request_id_of(request: Request) -> str:
    return str(getattr(request.state, "request_id", "")) or uuid.uuid4().hex


# --------------------------------------------------------------------------------------------------------------------
# Streaming responses
# --------------------------------------------------------------------------------------------------------------------


class AudioStream(Response):
    """A chunked body from an async iterator that also watches for the client going away: a disconnect cancels the
    body task at once (even while the gateway has not produced the next chunk), and `on_close` always runs, so the
    upstream call is cancelled deterministically. An error after the first byte aborts the connection: the body ends
    without its final chunk, which HTTP clients report as an incomplete read."""

    def __init__(
        self,
        chunks: AsyncIterator[bytes],
        on_close: Callable[[], Awaitable[None]],
        *,
        media_type: str,
        headers: dict[str, str],
        route: str,
    ) -> None:
        super().__init__(media_type=media_type, headers=headers)
        # Response sets Content-Length: 0 for an empty `content`; without one the server sends a chunked body.
        self.raw_headers = [(k, v) for k, v in self.raw_headers if k != b"content-length"]
        self.chunks = chunks
        self.on_close = on_close
        self.route = route

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        metrics.ACTIVE_STREAMS.labels(self.route).inc()
        try:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            body = asyncio.ensure_future(self._send_body(send))
            watcher = asyncio.ensure_future(_wait_disconnect(receive))
            try:
                done, _ = await asyncio.wait({body, watcher}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (body, watcher):
                    task.cancel()
                await asyncio.gather(body, watcher, return_exceptions=True)
            if body in done and not body.cancelled() and (exc := body.exception()) is not None:
                raise exc
        finally:
            metrics.ACTIVE_STREAMS.labels(self.route).dec()
            await self.on_close()

    async def _send_body(self, send: Send) -> None:
        async for chunk in self.chunks:
            if chunk:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _wait_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


class StreamBroken(Exception):
    """The gateway failed after audio had been sent: the only signal left is to end the body early."""


@dataclass
class OpenSynthesis:
    """A Synthesize call whose first chunk has arrived (so errors before audio already became HTTP statuses)."""

    call: Any
    first: audio_pb2.AudioChunk
    started: float
    first_audio_s: float
    summary: audio_pb2.SynthesisSummary | None = None
    chunks_seen: list[int] = field(default_factory=list)

    @property
    def sample_rate(self) -> int:
        return int(self.first.format.sample_rate_hz)

    async def rest(self) -> AsyncIterator[audio_pb2.AudioChunk]:
        chunk = self.first
        while True:
            if chunk.is_final:
                self.summary = chunk.summary
            yield chunk
            if chunk.is_final:
                return
            try:
                message = await self.call.read()
            except grpc.aio.AioRpcError as error:
                raise StreamBroken(f"{error.code().name}: {error.details()}") from error
            if message is grpc.aio.EOF:
                return
            chunk = message

    async def cancel(self) -> None:
        self.call.cancel()


async def start_synthesis(
    gateway: Any, pb: tts_gateway_pb2.SynthesizeRequest, metadata: Any, deadline_s: float
) -> OpenSynthesis:
    """Start a Synthesize call and wait for its first chunk: an error before audio becomes an EdgeError (HTTP
    status), one after it is the caller's to handle while streaming."""
    started = time.perf_counter()
    call = gateway.Synthesize(pb, metadata=metadata, timeout=deadline_s)
    try:
        first = await call.read()
    except grpc.aio.AioRpcError as error:
        raise from_rpc_error(error) from None
    except BaseException:
        call.cancel()
        raise
    if first is grpc.aio.EOF:
        raise EdgeError(502, "the gateway ended the stream without audio", "unknown")
    return OpenSynthesis(call, first, started, time.perf_counter() - started)


# --------------------------------------------------------------------------------------------------------------------
# Request bodies
# --------------------------------------------------------------------------------------------------------------------


class SpeechRequest(BaseModel):
    """OpenAI's speech request plus the edge's extensions; unknown fields are ignored (newer OpenAI clients)."""

    model_config = ConfigDict(extra="ignore")

    model: str
    input: str
    voice: str
    response_format: Literal["mp3", "opus", "aac", "flac", "wav", "pcm"] = "mp3"
    speed: float = 1.0
    instructions: str | None = None
    conversion_model: str | None = None
    pitch_shift: float | None = None
    stream_format: Literal["audio"] = "audio"


def validation_message(error: ValidationError | RequestValidationError) -> tuple[str, str | None]:
    problems = []
    first_param: str | None = None
    for item in error.errors():
        loc = ".".join(str(part) for part in item.get("loc", ()) if part != "body")
        first_param = first_param or loc or None
        problems.append(f"{loc}: {item.get('msg', 'invalid')}" if loc else str(item.get("msg", "invalid")))
    return "; ".join(problems) or "invalid request", first_param


def conversion_settings(model: str | None, pitch_shift: float | None) -> conversion_pb2.ConversionSettings | None:
    if not model and pitch_shift is None:
        return None
    settings = conversion_pb2.ConversionSettings(model=model or "")
    if pitch_shift is not None:
        settings.pitch_shift_semitones = pitch_shift
    return settings


@dataclass
class FormFields:
    text: str
    voice: str
    conversion_model: str | None
    pitch_shift: float | None
    reference: bytes | None
    reference_text: str
    response_format: str


def _text_field(form: Any, name: str, *, required: bool = False) -> str | None:
    value = form.get(name)
    if isinstance(value, UploadFile):
        raise invalid(f"{name} must be a plain form field, not a file", name)
    if value is None or value == "":
        if required:
            raise invalid(f"{name} is required", name)
        return None
    return str(value)


def _float_field(form: Any, name: str) -> float | None:
    text = _text_field(form, name)
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        raise invalid(f"{name} must be a number, got {text[:40]!r}", name) from None
    if not math.isfinite(value):
        raise invalid(f"{name} must be a finite number", name)
    return value


async def _file_field(form: Any, name: str) -> bytes | None:
    value = form.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, UploadFile):
        raise invalid(f"{name} must be a file upload (multipart/form-data)", name)
    data = await value.read()
    return data or None


async def read_form(request: Request, max_body: int) -> Any:
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
        raise invalid("send the fields as multipart/form-data (or application/x-www-form-urlencoded)")
    try:
        return await request.form(max_files=4, max_fields=32, max_part_size=max_body)
    except StarletteHTTPException:
        raise
    except Exception as error:  # python-multipart's parse errors: a malformed body is the client's error
        raise invalid(f"the form body could not be parsed: {error}") from error


# --------------------------------------------------------------------------------------------------------------------
# The app
# --------------------------------------------------------------------------------------------------------------------


def create_app(settings: Settings, upstreams_factory: Callable[[], Upstreams]) -> FastAPI:
    from services.http_edge.bistream import Bistream, is_json  # imports this module's helpers
    from services.http_edge.talk import Talk

    state: dict[str, Upstreams] = {}

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        state["up"] = upstreams_factory()  # inside the serving loop: grpc.aio channels bind to it
        try:
            yield
        finally:
            await state["up"].close()

    app = FastAPI(title="voice HTTP edge", lifespan=lifespan, docs_url="/docs", redoc_url=None)
    app.add_middleware(EdgeMiddleware, settings=settings)

    def up() -> Upstreams:
        return state["up"]

    def gateway_md(request: Request | WebSocket, request_id: str) -> tuple[tuple[str, str], ...]:
        return up().metadata(up().gateway_channel, request_id, bearer_token(request.headers))

    def rvc_md(request: Request, request_id: str) -> tuple[tuple[str, str], ...]:
        return up().metadata(up().rvc_channel, request_id, bearer_token(request.headers))

    bistream = Bistream(settings, up, gateway_md)
    app.include_router(bistream.router)
    app.include_router(Talk(settings, up, gateway_md).router)

    @app.exception_handler(EdgeError)
    async def on_edge_error(request: Request, error: EdgeError) -> JSONResponse:
        return error_response(error, request_id_of(request))

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        codes = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}
        edge = EdgeError(error.status_code, str(error.detail), codes.get(error.status_code, "invalid_argument"))
        return error_response(edge, request_id_of(request))

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        message, param = validation_message(error)
        return error_response(invalid(message, param), request_id_of(request))

    async def open_synthesis(request: Request, pb: tts_gateway_pb2.SynthesizeRequest) -> OpenSynthesis:
        return await start_synthesis(up().gateway, pb, gateway_md(request, pb.request_id), settings.synthesis_timeout_s)

    def stream_response(
        opened: OpenSynthesis, fmt: OutputFormat, request_id: str, route: str, extra: dict[str, str]
    ) -> AudioStream:
        encoder = StreamEncoder(fmt, opened.sample_rate) if fmt.container else None

        async def body() -> AsyncIterator[bytes]:
            try:
                async for chunk in opened.rest():
                    if encoder is None:
                        yield chunk.audio
                    else:
                        yield await asyncio.to_thread(encoder.encode, chunk.audio)
                if encoder is not None:
                    yield await asyncio.to_thread(encoder.finish)
            except StreamBroken as error:
                log.warning("synthesis failed after the response began; ending the body early: %s", error)
                raise

        async def close() -> None:
            await opened.cancel()
            if encoder is not None:
                encoder.close()

        headers = {
            "X-Sample-Rate": str(opened.sample_rate),
            "X-Request-Id": request_id,
            "X-Time-To-First-Audio-Ms": f"{opened.first_audio_s * 1000:.1f}",
            "Cache-Control": "no-store",
            **extra,
        }
        return AudioStream(body(), close, media_type=fmt.content_type, headers=headers, route=route)

    # ---------------------------------------------------------------- static page, health, status, discovery

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(settings.static_dir / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=settings.static_dir, check_dir=False), name="static")

    @app.get("/health")
    async def health() -> JSONResponse:
        gateway, conversion = await asyncio.gather(
            up().health(up().gateway_channel, GATEWAY_SERVICE), up().health(up().rvc_channel, CONVERSION_SERVICE)
        )
        if gateway != "SERVING":
            status, code = "unavailable", 503
        else:
            status, code = ("ok" if conversion == "SERVING" else "degraded"), 200
        return JSONResponse({"status": status, "gateway": gateway, "conversion": conversion}, status_code=code)

    @app.get("/status")
    async def status(request: Request) -> JSONResponse:
        rid = request_id_of(request)
        try:
            gateway = await up().gateway.GetStatus(
                tts_gateway_pb2.TtsGatewayServiceGetStatusRequest(),
                metadata=gateway_md(request, rid),
                timeout=up().unary_timeout_s,
            )
        except grpc.aio.AioRpcError as error:
            raise from_rpc_error(error) from None
        conversion: dict[str, Any]
        try:
            reply = await up().conversion.GetStatus(
                voice_conversion_pb2.VoiceConversionServiceGetStatusRequest(),
                metadata=rvc_md(request, rid),
                timeout=up().unary_timeout_s,
            )
            conversion = MessageToDict(reply)
        except grpc.aio.AioRpcError as error:
            conversion = {"error": {"code": error.code().name.lower(), "message": error.details()}}
        return JSONResponse({"gateway": MessageToDict(gateway), "conversion": conversion})

    @app.get("/v1/voices")
    async def voices(request: Request) -> JSONResponse:
        rid = request_id_of(request)
        results: tuple[Any, Any] = await asyncio.gather(
            up().gateway.ListVoices(
                tts_gateway_pb2.ListVoicesRequest(), metadata=gateway_md(request, rid), timeout=up().unary_timeout_s
            ),
            up().conversion.ListModels(
                voice_conversion_pb2.ListModelsRequest(), metadata=rvc_md(request, rid), timeout=up().unary_timeout_s
            ),
            return_exceptions=True,
        )
        listing, models = results
        if isinstance(listing, grpc.aio.AioRpcError):
            raise from_rpc_error(listing)
        if isinstance(listing, BaseException):
            raise listing
        data = [
            {
                "id": voice.name,
                "object": "voice",
                "name": voice.name,
                "description": voice.description,
                "language": voice.language_code,
                "sample_rate": voice.native_sample_rate_hz,
                "streaming": voice.streaming,
                "streams_text_input": voice.streams_text_input,
                "available": voice.available,
                "supports_cloning": any(mode in CLONING_MODES for mode in voice.supported_modes),
                "default_conversion": voice.default_conversion.model if voice.HasField("default_conversion") else None,
            }
            for voice in listing.voices
        ]
        conversion_models: list[dict[str, Any]] = []
        if isinstance(models, voice_conversion_pb2.ListModelsResponse):
            conversion_models = [
                {
                    "id": model.name,
                    "object": "conversion_model",
                    "engine": voice_conversion_pb2.ConversionEngine.Name(model.engine)
                    .removeprefix("CONVERSION_ENGINE_")
                    .lower(),
                    "sample_rate": model.sample_rate_hz,
                    "loaded": model.loaded,
                }
                for model in models.models
            ]
        else:
            log.info("conversion models unavailable for /v1/voices: %s", models)
        return JSONResponse({"object": "list", "data": data, "conversion_models": conversion_models})

    # ---------------------------------------------------------------- OpenAI speech

    @app.post("/v1/audio/speech")
    async def speech(request: Request) -> Response:
        rid = request_id_of(request)
        raw = await request.body()
        try:
            payload = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise invalid(f"the body must be a JSON object: {error}") from None
        if not isinstance(payload, dict):
            raise invalid("the body must be a JSON object")
        try:
            body = SpeechRequest.model_validate(payload)
        except ValidationError as error:
            message, param = validation_message(error)
            if param == "response_format":
                message = f"response_format must be one of {supported_formats()}"
            raise invalid(message, param) from None
        if not math.isfinite(body.speed) or not MIN_SPEED <= body.speed <= MAX_SPEED:
            raise invalid(
                f"speed must be between {MIN_SPEED} and {MAX_SPEED} on this server (the gateway's speaking-rate "
                f"range; OpenAI allows 0.25..4.0), got {body.speed}",
                "speed",
            )
        fmt = FORMATS[body.response_format]
        pb = tts_gateway_pb2.SynthesizeRequest(
            request_id=rid,
            text=body.input,
            voice=body.voice,
            output_format=audio_pb2.AudioFormat(
                encoding=fmt.gateway_encoding, sample_rate_hz=OPENAI_SAMPLE_RATE, channels=1
            ),
            speaking_rate=body.speed,
        )
        settings_pb = conversion_settings(body.conversion_model, body.pitch_shift)
        if settings_pb is not None:
            pb.conversion.CopyFrom(settings_pb)
        if body.instructions:
            pb.instruct.CopyFrom(tts_gateway_pb2.Instruct(instruction=body.instructions))
        opened = await open_synthesis(request, pb)
        return stream_response(opened, fmt, rid, "/v1/audio/speech", {"X-Model": body.model})

    # ---------------------------------------------------------------- the seed's API (the page uses these)

    async def form_fields(request: Request, *, default_format: str) -> FormFields:
        form = await read_form(request, settings.max_body_bytes)
        response_format = _text_field(form, "response_format") or default_format
        if response_format not in FORMATS:
            raise invalid(f"response_format must be one of {supported_formats()}", "response_format")
        return FormFields(
            text=_text_field(form, "text", required=True) or "",
            voice=_text_field(form, "voice", required=True) or "",
            conversion_model=_text_field(form, "conversion_model"),
            pitch_shift=_float_field(form, "pitch_shift"),
            reference=await _file_field(form, "reference"),
            reference_text=_text_field(form, "reference_text") or "",
            response_format=response_format,
        )

    async def synthesize_request(
        fields: FormFields, rid: str, encoding: audio_pb2.AudioEncoding, *, tts_only: bool
    ) -> tts_gateway_pb2.SynthesizeRequest:
        pb = tts_gateway_pb2.SynthesizeRequest(
            request_id=rid,
            text=fields.text,
            voice=fields.voice,
            output_format=audio_pb2.AudioFormat(encoding=encoding, channels=1),
        )
        settings_pb = conversion_settings(fields.conversion_model, fields.pitch_shift)
        if tts_only:
            if settings_pb is not None:
                raise invalid("/tts does no voice conversion: use /synthesize for conversion_model and pitch_shift")
            pb.disable_conversion = True
        elif settings_pb is not None:
            pb.conversion.CopyFrom(settings_pb)
        if fields.reference is not None:
            reference = await asyncio.to_thread(audio_input, fields.reference, "reference", settings.max_upload_seconds)
            if fields.reference_text:
                pb.zero_shot.CopyFrom(
                    tts_gateway_pb2.ZeroShot(reference_audio=reference, reference_text=fields.reference_text)
                )
            else:
                pb.cross_lingual.CopyFrom(tts_gateway_pb2.CrossLingual(reference_audio=reference))
        elif fields.reference_text:
            raise invalid("reference_text needs a reference audio upload", "reference_text")
        return pb

    @app.post("/synthesize/stream")
    async def synthesize_stream(request: Request) -> Response:
        rid = request_id_of(request)
        fields = await form_fields(request, default_format="pcm")
        fmt = FORMATS[fields.response_format]
        pb = await synthesize_request(fields, rid, fmt.gateway_encoding, tts_only=False)
        opened = await open_synthesis(request, pb)
        return stream_response(opened, fmt, rid, "/synthesize/stream", {})

    async def whole_wav(request: Request, *, tts_only: bool) -> Response:
        rid = request_id_of(request)
        fields = await form_fields(request, default_format="wav")
        if fields.response_format != "wav":
            raise invalid(
                "this endpoint answers a whole WAV file; use /synthesize/stream for other formats", "response_format"
            )
        pb = await synthesize_request(fields, rid, audio_pb2.AUDIO_ENCODING_PCM16, tts_only=tts_only)
        opened = await open_synthesis(request, pb)
        pcm = bytearray()
        try:
            async for chunk in opened.rest():
                pcm += chunk.audio
        except StreamBroken as error:
            cause = error.__cause__
            raise (
                from_rpc_error(cause) if isinstance(cause, grpc.RpcError) else EdgeError(502, str(error), "unknown")
            ) from None
        finally:
            await opened.cancel()
        total_s = time.perf_counter() - opened.started
        summary = opened.summary or audio_pb2.SynthesisSummary()
        headers = timing_headers(
            ttfa_ms=_ms(summary.time_to_first_audio) if opened.summary else opened.first_audio_s * 1000,
            tts_ms=_ms(summary.tts_time),
            conversion_ms=_ms(summary.conversion_time),
            audio_s=len(pcm) / 2 / opened.sample_rate,
            total_ms=total_s * 1000,
        )
        headers |= {"X-Sample-Rate": str(opened.sample_rate), "X-Request-Id": rid}
        return Response(wav_file(bytes(pcm), opened.sample_rate), media_type="audio/wav", headers=headers)

    @app.post("/synthesize")
    async def synthesize(request: Request) -> Response:
        return await whole_wav(request, tts_only=False)

    @app.post("/tts")
    async def tts(request: Request) -> Response:
        if is_json(request):  # the CosyVoice2 runtime's API (bistream.py); forms stay the seed's whole-WAV /tts
            return await bistream.tts(request)
        return await whole_wav(request, tts_only=True)

    @app.post("/rvc")
    async def rvc(request: Request) -> Response:
        rid = request_id_of(request)
        form = await read_form(request, settings.max_body_bytes)
        data = await _file_field(form, "audio")
        if data is None:
            raise invalid("audio is required: the clip to convert, as a file upload", "audio")
        model = _text_field(form, "model", required=True) or ""
        pitch_shift = _float_field(form, "pitch_shift")
        clip = await asyncio.to_thread(audio_input, data, "audio", settings.max_upload_seconds)
        settings_pb = conversion_settings(model, pitch_shift) or conversion_pb2.ConversionSettings(model=model)
        started = time.perf_counter()
        try:
            reply = await up().conversion.ConvertClip(
                voice_conversion_pb2.ConvertClipRequest(
                    request_id=rid,
                    settings=settings_pb,
                    audio=clip,
                    output_format=audio_pb2.AudioFormat(encoding=audio_pb2.AUDIO_ENCODING_WAV, channels=1),
                ),
                metadata=rvc_md(request, rid),
                timeout=settings.synthesis_timeout_s,
            )
        except grpc.aio.AioRpcError as error:
            raise from_rpc_error(error) from None
        total_ms = (time.perf_counter() - started) * 1000
        headers = timing_headers(
            ttfa_ms=None,
            tts_ms=0.0,
            conversion_ms=_ms(reply.conversion_time),
            audio_s=_ms(reply.audio_duration) / 1000,
            total_ms=total_ms,
        )
        headers |= {"X-Sample-Rate": str(reply.format.sample_rate_hz), "X-Request-Id": rid}
        if reply.real_time_factor:
            headers["X-Real-Time-Factor"] = f"{reply.real_time_factor:.4f}"
        return Response(reply.audio, media_type="audio/wav", headers=headers)

    # ---------------------------------------------------------------- WebSocket text in, audio out

    @app.websocket("/v1/audio/speech/stream")
    async def speech_socket(websocket: WebSocket) -> None:
        await speech_session(websocket, settings, up(), gateway_md)

    return app


def _ms(duration: Any) -> float:
    return float(duration.seconds * 1000 + duration.nanos / 1e6)


def timing_headers(
    *, ttfa_ms: float | None, tts_ms: float, conversion_ms: float, audio_s: float, total_ms: float
) -> dict[str, str]:
    headers = {
        "X-TTS-Time-Ms": f"{tts_ms:.1f}",
        "X-Conversion-Time-Ms": f"{conversion_ms:.1f}",
        "X-Audio-Seconds": f"{audio_s:.3f}",
    }
    timing = [f"tts;dur={tts_ms:.1f}", f"conversion;dur={conversion_ms:.1f}", f"total;dur={total_ms:.1f}"]
    if ttfa_ms is not None:
        headers["X-Time-To-First-Audio-Ms"] = f"{ttfa_ms:.1f}"
        timing.insert(0, f"ttfa;dur={ttfa_ms:.1f}")
    headers["Server-Timing"] = ", ".join(timing)
    return headers


def wav_file(pcm16: bytes, rate: int) -> bytes:
    """A complete mono 16-bit WAV (sizes filled in: the whole audio is known here)."""
    header = struct.pack(
        "<4sI4s4sIHHIIHH4sI",
        b"RIFF",
        36 + len(pcm16),
        b"WAVE",
        b"fmt ",
        16,
        1,
        1,
        rate,
        rate * 2,
        2,
        16,
        b"data",
        len(pcm16),
    )
    return header + pcm16


# --------------------------------------------------------------------------------------------------------------------
# WebSocket session
# --------------------------------------------------------------------------------------------------------------------

WS_ROUTE = "/v1/audio/speech/stream"
# Close codes: 1000 after "done"; 4000 + the HTTP status otherwise (4400, 4401, 4404, 4429, 4503...).
WS_NORMAL_CLOSE = 1000


class SocketProtocolError(Exception):
    pass


async def speech_session(
    websocket: WebSocket,
    settings: Settings,
    up: Upstreams,
    gateway_md: Callable[[WebSocket, str], tuple[tuple[str, str], ...]],
) -> None:
    client_id = websocket.headers.get("x-request-id") or websocket.query_params.get("request_id") or ""
    rid = client_id if valid_request_id(client_id) else uuid.uuid4().hex
    bind_request_id(rid)
    await websocket.accept()
    metrics.ACTIVE_STREAMS.labels(WS_ROUTE).inc()
    status = 200
    try:
        status = await _run_session(websocket, settings, up, gateway_md, rid, bool(client_id) and rid != client_id)
    finally:
        metrics.ACTIVE_STREAMS.labels(WS_ROUTE).dec()
        metrics.REQUESTS.labels(WS_ROUTE, "WS", str(status)).inc()


async def _send_error(websocket: WebSocket, error: EdgeError, rid: str) -> int:
    with contextlib.suppress(Exception):  # the client may already be gone
        await websocket.send_json(
            {"type": "error", "status": error.status, "code": error.code, "message": error.message, "request_id": rid}
        )
        await websocket.close(code=4000 + error.status if error.status < 1000 else 4500)
    return error.status


def _ws_config(message: dict[str, Any], rid: str) -> tts_gateway_pb2.StreamingSynthesizeConfig:
    voice = message.get("voice")
    if not isinstance(voice, str) or not voice:
        raise invalid('the first message must name a voice: {"voice": "..."}', "voice")
    response_format = message.get("response_format", "pcm")
    if response_format not in WS_FORMATS:
        raise invalid(f"response_format must be one of {', '.join(WS_FORMATS)} on the WebSocket", "response_format")
    fmt = FORMATS[response_format]
    rate = message.get("sample_rate", 0)
    if not isinstance(rate, int) or isinstance(rate, bool):
        raise invalid("sample_rate must be an integer (0: the voice's own rate)", "sample_rate")
    config = tts_gateway_pb2.StreamingSynthesizeConfig(
        request_id=rid,
        voice=voice,
        output_format=audio_pb2.AudioFormat(encoding=fmt.gateway_encoding, sample_rate_hz=rate, channels=1),
    )
    speed = message.get("speed")
    if speed is not None:
        if not isinstance(speed, int | float) or not MIN_SPEED <= float(speed) <= MAX_SPEED:
            raise invalid(f"speed must be a number between {MIN_SPEED} and {MAX_SPEED}", "speed")
        config.speaking_rate = float(speed)
    model, pitch = message.get("conversion_model"), message.get("pitch_shift")
    if model is not None and not isinstance(model, str):
        raise invalid("conversion_model must be a string", "conversion_model")
    if pitch is not None and (not isinstance(pitch, int | float) or isinstance(pitch, bool)):
        raise invalid("pitch_shift must be a number of semitones", "pitch_shift")
    settings_pb = conversion_settings(model, float(pitch) if pitch is not None else None)
    if settings_pb is not None:
        config.conversion.CopyFrom(settings_pb)
    text_input_mode = message.get("text_input_mode")
    if text_input_mode is not None:  # unset: the voice's default (incremental where it streams text input)
        if not isinstance(text_input_mode, str) or text_input_mode not in WS_TEXT_INPUT_MODES:
            raise invalid(f"text_input_mode must be one of {', '.join(WS_TEXT_INPUT_MODES)}", "text_input_mode")
        config.text_input_mode = WS_TEXT_INPUT_MODES[text_input_mode]
    return config


async def _receive_json(websocket: WebSocket) -> dict[str, Any] | None:
    """The next client message as a JSON object; None when the client went away."""
    try:
        message = await websocket.receive()
    except WebSocketDisconnect:
        return None
    if message["type"] == "websocket.disconnect":
        return None
    text = message.get("text")
    if text is None:
        raise SocketProtocolError("send JSON text messages; binary frames are not accepted from the client")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise SocketProtocolError(f"not JSON: {error}") from None
    if not isinstance(data, dict):
        raise SocketProtocolError("each message must be a JSON object")
    return data


async def _run_session(
    websocket: WebSocket,
    settings: Settings,
    up: Upstreams,
    gateway_md: Callable[[WebSocket, str], tuple[tuple[str, str], ...]],
    rid: str,
    bad_request_id: bool,
) -> int:
    if bad_request_id:
        return await _send_error(websocket, invalid("request id must be printable ASCII without spaces"), rid)
    if settings.auth_token:
        token = bearer_token(websocket.headers) or websocket.query_params.get("token")
        if token != settings.auth_token:
            error = EdgeError(
                401, "missing or invalid token: send 'Authorization: Bearer <token>' or ?token=", "unauthenticated"
            )
            return await _send_error(websocket, error, rid)
    try:
        first = await _receive_json(websocket)
        if first is None:
            return 499
        config = _ws_config(first, rid)
    except SocketProtocolError as error:
        return await _send_error(websocket, invalid(str(error)), rid)
    except EdgeError as error:
        return await _send_error(websocket, error, rid)

    requests: asyncio.Queue[tts_gateway_pb2.StreamingSynthesizeRequest | None] = asyncio.Queue()

    async def request_stream() -> AsyncIterator[tts_gateway_pb2.StreamingSynthesizeRequest]:
        yield tts_gateway_pb2.StreamingSynthesizeRequest(config=config)
        while (item := await requests.get()) is not None:
            yield item

    started = time.perf_counter()
    call = up.gateway.StreamingSynthesize(
        request_stream(), metadata=gateway_md(websocket, rid), timeout=settings.synthesis_timeout_s
    )
    client_problem: list[EdgeError] = []

    async def read_client() -> None:
        while True:
            try:
                message = await _receive_json(websocket)
            except SocketProtocolError as error:
                client_problem.append(invalid(str(error)))
                call.cancel()
                return
            if message is None:
                call.cancel()  # the client left: stop the synthesis
                return
            kind = message.get("type")
            if kind == "end":
                await requests.put(None)
                return
            if kind == "flush":
                await requests.put(
                    tts_gateway_pb2.StreamingSynthesizeRequest(flush=tts_gateway_pb2.StreamingSynthesizeRequest.Flush())
                )
                continue
            text = message.get("text")
            if kind not in (None, "text") or not isinstance(text, str):
                client_problem.append(invalid('expected {"text": "..."}, {"type": "flush"} or {"type": "end"}', "text"))
                call.cancel()
                return
            if text:
                await requests.put(tts_gateway_pb2.StreamingSynthesizeRequest(text=text))

    reader = asyncio.ensure_future(read_client())
    first_audio_ms: float | None = None
    try:
        while True:
            try:
                chunk = await call.read()
            except grpc.aio.AioRpcError as error:
                if client_problem:
                    return await _send_error(websocket, client_problem[0], rid)
                if error.code() == grpc.StatusCode.CANCELLED and reader.done():
                    return 499
                return await _send_error(websocket, from_rpc_error(error), rid)
            if chunk is grpc.aio.EOF:
                break
            if first_audio_ms is None:
                first_audio_ms = (time.perf_counter() - started) * 1000
                await websocket.send_json(
                    {"type": "start", "sample_rate": chunk.format.sample_rate_hz, "request_id": rid}
                )
            if chunk.segment_text:
                await websocket.send_json({"type": "segment", "index": chunk.segment_index, "text": chunk.segment_text})
            if chunk.audio:
                await websocket.send_bytes(chunk.audio)
            if chunk.is_final:
                summary = chunk.summary
                await websocket.send_json(
                    {
                        "type": "done",
                        "audio_seconds": _ms(summary.audio_duration) / 1000,
                        "time_to_first_audio_ms": _ms(summary.time_to_first_audio),
                        "edge_time_to_first_audio_ms": first_audio_ms,
                        "segments": summary.segment_count,
                        "real_time_factor": summary.real_time_factor,
                        "request_id": rid,
                    }
                )
                await websocket.close(code=WS_NORMAL_CLOSE)
                return 200
        return await _send_error(websocket, EdgeError(502, "the gateway ended without a final chunk", "unknown"), rid)
    except (WebSocketDisconnect, RuntimeError):
        return 499  # sending to a closed socket: the client left mid-stream
    finally:
        call.cancel()
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)


# --------------------------------------------------------------------------------------------------------------------
# Process entry
# --------------------------------------------------------------------------------------------------------------------


class _Server(uvicorn.Server):
    """uvicorn's server plus an event set once it listens (uvicorn itself only has a flag)."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.started_event = asyncio.Event()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        self.started_event.set()


def bind_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.setblocking(False)
    return sock


async def main(argv: list[str]) -> None:
    args = make_parser().parse_args(argv)
    configure_logging(SERVICE_NAME, args.log_level, args.log_format)
    publish_build_info(SERVICE_NAME)
    settings = Settings.from_args(args)
    app = create_app(settings, lambda: Upstreams.open(args))
    sock = bind_socket(args.host, args.port)
    port = int(sock.getsockname()[1])
    exporter = MetricsExporter(args.metrics_host, args.metrics_port) if args.metrics_port >= 0 else None
    config = uvicorn.Config(
        app,
        log_config=None,
        access_log=False,
        ws="websockets-sansio",
        http="h11",
        lifespan="on",
        timeout_graceful_shutdown=math.ceil(args.grace_seconds),
        proxy_headers=False,
    )
    server = _Server(config)
    serving = asyncio.ensure_future(server.serve(sockets=[sock]))
    started = asyncio.ensure_future(server.started_event.wait())
    await asyncio.wait({serving, started}, return_when=asyncio.FIRST_COMPLETED)
    started.cancel()
    if serving.done():
        await serving  # raises what stopped it
        return
    print(
        ready_line(
            SERVICE_NAME,
            port,
            exporter.port if exporter else None,
            url=f"http://{args.host}:{port}/",
            gateway_url=args.gateway_url,
            rvc_url=args.rvc_url,
        ),
        flush=True,
    )
    try:
        await serving
    finally:
        if exporter is not None:
            exporter.stop()
