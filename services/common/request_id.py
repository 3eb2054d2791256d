"""Request ids: accepted from the client (field or `x-request-id` metadata), generated otherwise, logged everywhere."""

from __future__ import annotations

import contextvars
import uuid

from services.common.errors import InvalidArgument

REQUEST_ID_METADATA_KEY = "x-request-id"
MAX_REQUEST_ID_LENGTH = 128

current_request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


def resolve_request_id(client_value: str, *, field: str = "request_id") -> str:
    """Return the client's id if it is acceptable, a new UUID if it is empty; raise InvalidArgument otherwise."""
    if not client_value:
        return uuid.uuid4().hex
    if len(client_value) > MAX_REQUEST_ID_LENGTH or not all(33 <= ord(c) <= 126 for c in client_value):
        raise InvalidArgument(
            [(field, f"must be at most {MAX_REQUEST_ID_LENGTH} printable ASCII characters without spaces")]
        )
    return client_value


def bind_request_id(request_id: str) -> contextvars.Token[str]:
    """Make `request_id` appear in every log record of the current task."""
    return current_request_id.set(request_id)
