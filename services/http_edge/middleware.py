"""Request context for every HTTP request: request id, auth, body limit, metrics. One pure ASGI middleware, so
streaming bodies pass untouched."""

from __future__ import annotations

import logging
import time
import uuid

from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.common.contract import MiB
from services.common.request_id import (
    MAX_REQUEST_ID_LENGTH,
    REQUEST_ID_METADATA_KEY,
    bind_request_id,
    is_valid_request_id,
)
from services.http_edge import metrics
from services.http_edge.context import bearer_token
from services.http_edge.errors import EdgeError, error_response, invalid
from services.http_edge.settings import Settings

log = logging.getLogger(__name__)

# Paths served without a token: the page itself holds no data, and probes must not need secrets.
PUBLIC_PATHS = ("/", "/health", "/favicon.ico")
PUBLIC_PREFIXES = ("/static/",)
_REQUEST_ID_HEADER = REQUEST_ID_METADATA_KEY.encode("latin-1")


class BodyTooLarge(StarletteHTTPException):
    """Raised from `receive` when a body without a (truthful) Content-Length grows past the limit. An HTTPException
    so FastAPI's body parsing re-raises it instead of turning it into a generic 400."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is over this edge's limit of {limit / MiB:g} MiB (--max-body-mb)")


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
        request_id = headers.get(REQUEST_ID_METADATA_KEY, "") or uuid.uuid4().hex
        refusal = self._refusal(scope, headers)
        if refusal is not None:
            if not is_valid_request_id(request_id):
                request_id = uuid.uuid4().hex
            await self._reject(scope, send, refusal, request_id, started)
            return
        bind_request_id(request_id)
        scope.setdefault("state", {})["request_id"] = request_id
        await self._serve(scope, receive, send, request_id, started)

    def _refusal(self, scope: Scope, headers: dict[str, str]) -> EdgeError | None:
        """Why the request is refused before routing (bad request id, missing token, declared body too large)."""
        client_id = headers.get(REQUEST_ID_METADATA_KEY, "")
        if client_id and not is_valid_request_id(client_id):
            return invalid(
                f"X-Request-Id must be 1..{MAX_REQUEST_ID_LENGTH} printable ASCII characters without spaces",
                "X-Request-Id",
            )
        path = str(scope.get("path", ""))
        public = path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)
        if self.settings.auth_token and not public and bearer_token(headers) != self.settings.auth_token:
            return EdgeError(
                401, "missing or invalid bearer token: send 'Authorization: Bearer <token>'", "unauthenticated"
            )
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self.settings.max_body_bytes:
            return EdgeError(413, BodyTooLarge(self.settings.max_body_bytes).detail, "request_too_large")
        return None

    async def _serve(self, scope: Scope, receive: Receive, send: Send, request_id: str, started: float) -> None:
        limit = self.settings.max_body_bytes
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
                    *[(k, v) for k, v in message.get("headers", []) if k.lower() != _REQUEST_ID_HEADER],
                    (_REQUEST_ID_HEADER, request_id.encode("latin-1")),
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
                log.warning("%s %s -> %d", scope.get("method"), scope.get("path"), status)

    async def _reject(self, scope: Scope, send: Send, error: EdgeError, request_id: str, started: float) -> None:
        response = error_response(error, request_id)
        await response({**scope, "type": "http"}, _no_body, send)
        metrics.REQUESTS.labels("unmatched", scope.get("method", ""), str(error.status)).inc()
        metrics.DURATION.labels("unmatched").observe(time.perf_counter() - started)


async def _no_body() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}
