"""The HTTP edge: OpenAI-compatible speech, the seed's HTTP API, WebSocket streaming and the web page, all as a
client of the gRPC services (the gateway for synthesis, the conversion service for /rvc). No synthesis here: audio
bytes come from the gateway; the edge only re-frames them (and encodes MP3/AAC/FLAC from PCM, see encode.py).

Wiring: flags (settings.py) -> `create_app` (app state: settings, upstream clients, caches; middleware; error
handlers; one router per concern under routers/) -> uvicorn on a socket bound here (so port 0 works and the ready
line can name the port). docs/http_edge.md describes the API.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import socket
from collections.abc import AsyncIterator, Callable

import uvicorn
from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from services.common.logs import configure_logging
from services.common.metrics import MetricsExporter, publish_build_info
from services.common.ready import ready_line
from services.http_edge.bistream import new_reference_cache
from services.http_edge.errors import install_error_handlers
from services.http_edge.middleware import EdgeMiddleware
from services.http_edge.routers import bistream, openai, pages, seed, speech_socket, status, talk
from services.http_edge.settings import Settings, make_parser
from services.http_edge.upstream import Upstreams
from services.http_edge.voices import VoiceDirectory

SERVICE_NAME = "http_edge"
ROUTERS = (openai.router, seed.router, status.router, speech_socket.router, bistream.router, talk.router, pages.router)


def create_app(settings: Settings, upstreams_factory: Callable[[], Upstreams]) -> FastAPI:
    """The app: its state (settings, voice directory, session references; the upstream clients are opened by the
    lifespan, inside the serving loop: grpc.aio channels bind to it), middleware, error handlers and routers."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.upstreams = upstreams_factory()
        try:
            yield
        finally:
            await app.state.upstreams.close()

    app = FastAPI(title="voice HTTP edge", lifespan=lifespan, docs_url="/docs", redoc_url=None)
    app.state.settings = settings
    app.state.voices = VoiceDirectory(settings)
    app.state.references = new_reference_cache(settings)
    app.add_middleware(EdgeMiddleware, settings=settings)
    install_error_handlers(app)
    for router in ROUTERS:
        app.include_router(router)
    app.mount("/static", StaticFiles(directory=settings.static_dir, check_dir=False), name="static")
    return app


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
    parser = make_parser()
    args = parser.parse_args(argv)
    configure_logging(SERVICE_NAME, args.log_level, args.log_format)
    publish_build_info(SERVICE_NAME)
    try:
        settings = Settings.from_args(args)
    except ValueError as error:
        parser.error(str(error))
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
