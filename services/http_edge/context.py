"""Per-connection facts every module reads the same way: the request id and the client's bearer token."""

from __future__ import annotations

import uuid
from collections.abc import Mapping

from starlette.requests import HTTPConnection
from starlette.websockets import WebSocket

from services.common.request_id import REQUEST_ID_METADATA_KEY, is_valid_request_id


def request_id_of(conn: HTTPConnection) -> str:
    """The id the middleware gave this HTTP request (a new one where none was given, e.g. outside the middleware)."""
    return str(getattr(conn.state, "request_id", "")) or uuid.uuid4().hex


def bearer_token(headers: Mapping[str, str]) -> str | None:
    header = headers.get("authorization") or ""
    scheme, _, token = header.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def socket_request_id(websocket: WebSocket) -> tuple[str, bool]:
    """A WebSocket's request id (header, else ?request_id=, else new) and whether the client sent an invalid one."""
    client_id = websocket.headers.get(REQUEST_ID_METADATA_KEY) or websocket.query_params.get("request_id") or ""
    if not client_id:
        return uuid.uuid4().hex, False
    if is_valid_request_id(client_id):
        return client_id, False
    return uuid.uuid4().hex, True
