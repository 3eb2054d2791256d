"""Request ids: accepted from the client (field or `x-request-id` metadata), generated otherwise, logged everywhere."""

from __future__ import annotations

import contextvars
import uuid

from services.common.errors import InvalidArgument

REQUEST_ID_METADATA_KEY = "x-request-id"
MAX_REQUEST_ID_LENGTH = 128

current_request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


def resolve_request_id(client_value: str, *, field: str = "request_id") -> str:
    """The id of this request: the request's field, else the `x-request-id` metadata (bound by the server
    interceptor), else a new UUID. Raises InvalidArgument for an unacceptable client id. The result is bound to the
    log context of the current task, so every later log line of the request carries it."""
    if not client_value and current_request_id.get() != "-":
        client_value, field = current_request_id.get(), REQUEST_ID_METADATA_KEY
    if not client_value:
        request_id = uuid.uuid4().hex
    elif not is_valid_request_id(client_value):
        raise InvalidArgument(
            [(field, f"must be at most {MAX_REQUEST_ID_LENGTH} printable ASCII characters without spaces")]
        )
    else:
        request_id = client_value
    bind_request_id(request_id)
    return request_id


def bind_request_id(request_id: str) -> contextvars.Token[str]:
    """Make `request_id` appear in every log record of the current task."""
    return current_request_id.set(request_id)


def is_valid_request_id(value: str) -> bool:
    """A client's request id is kept only when it is short printable ASCII without spaces (safe in logs, headers)."""
    return 0 < len(value) <= MAX_REQUEST_ID_LENGTH and all(33 <= ord(c) <= 126 for c in value)
