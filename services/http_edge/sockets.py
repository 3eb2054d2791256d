"""What the edge's WebSockets share: the request id, the token check, the JSON reader, the error frame and close
code (4000 + the HTTP status), and the session metrics."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import WebSocket, WebSocketDisconnect

from services.common.request_id import bind_request_id
from services.http_edge import metrics
from services.http_edge.context import bearer_token, socket_request_id
from services.http_edge.errors import EdgeError, invalid
from services.http_edge.settings import Settings

# Close codes: 1000 after a normal end; 4000 + the HTTP status otherwise (4400, 4401, 4404, 4429, 4503...).
WS_NORMAL_CLOSE = 1000
CLIENT_LEFT = 499


class SocketProtocolError(Exception):
    """The client sent something that is not a JSON object frame."""


def socket_token_error(websocket: WebSocket, settings: Settings) -> EdgeError | None:
    if not settings.auth_token:
        return None
    token = bearer_token(websocket.headers) or websocket.query_params.get("token")
    if token == settings.auth_token:
        return None
    return EdgeError(
        401, "missing or invalid token: send 'Authorization: Bearer <token>' or ?token=", "unauthenticated"
    )


async def serve_socket(
    websocket: WebSocket, route: str, settings: Settings, session: Callable[[str], Awaitable[int]]
) -> None:
    """Accepts the socket, refuses a bad request id or token with an error frame, else runs `session(request_id)`,
    which answers the final status (200, 499 when the client left, else the error's) for the metrics."""
    rid, bad_id = socket_request_id(websocket)
    bind_request_id(rid)
    await websocket.accept()
    metrics.ACTIVE_STREAMS.labels(route).inc()
    status = 200
    try:
        if bad_id:
            status = await send_error(websocket, invalid("request id must be printable ASCII without spaces"), rid)
        elif (refusal := socket_token_error(websocket, settings)) is not None:
            status = await send_error(websocket, refusal, rid)
        else:
            status = await session(rid)
    finally:
        metrics.ACTIVE_STREAMS.labels(route).dec()
        metrics.REQUESTS.labels(route, "WS", str(status)).inc()


async def send_error(websocket: WebSocket, error: EdgeError, rid: str) -> int:
    """The error frame, then close 4000 + status; answers the status."""
    with contextlib.suppress(Exception):  # the client may already be gone
        await websocket.send_json(error.frame(rid))
        await websocket.close(code=4000 + error.status if error.status < 1000 else 4500)
    return error.status


async def receive_json(
    websocket: WebSocket,
    *,
    binary_problem: str = "send JSON text messages; binary frames are not accepted from the client",
) -> dict[str, Any] | None:
    """The next client message as a JSON object; None when the client went away."""
    try:
        message = await websocket.receive()
    except WebSocketDisconnect:
        return None
    if message["type"] == "websocket.disconnect":
        return None
    text = message.get("text")
    if text is None:
        raise SocketProtocolError(binary_problem)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise SocketProtocolError(f"not JSON: {error}") from None
    if not isinstance(data, dict):
        raise SocketProtocolError("each message must be a JSON object")
    return data
