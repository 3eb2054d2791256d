"""Request errors of the models and their Triton error codes."""

from __future__ import annotations

from typing import Any


class RequestError(ValueError):
    """The request cannot be served as sent; the message, saying what to fix, goes back as INVALID_ARG."""

    code = "INVALID_ARG"


class Unavailable(RuntimeError):
    """The model cannot serve now (unloading); the caller may retry elsewhere."""

    code = "UNAVAILABLE"


class Cancelled(Exception):
    """The client cancelled the request."""

    code = "CANCELLED"


class BlsError(RuntimeError):
    """A model called through BLS answered with an error; the message is prefixed with that model's name. The python
    backend of Triton 2.51 hands a BLS caller every error as INTERNAL (the called model's INVALID_ARG too), so no code
    is carried: the caller decides from what it called whether the request or the server is at fault."""


def triton_error(message: str, code: str = "INTERNAL") -> Any:
    """A pb_utils.TritonError with the named code (INVALID_ARG, UNAVAILABLE, CANCELLED, INTERNAL, ...)."""
    import triton_python_backend_utils as pb_utils

    # Older python backends have no error codes; the message is what matters to the caller.
    value = getattr(pb_utils.TritonError, code, None)
    return pb_utils.TritonError(message) if value is None else pb_utils.TritonError(message, value)


def error_response(exc: BaseException | str, code: str | None = None) -> Any:
    """An InferenceResponse carrying `exc` as a Triton error: its class's code unless `code` is given."""
    import triton_python_backend_utils as pb_utils

    message = str(exc)
    code = code or getattr(exc, "code", "INTERNAL")
    return pb_utils.InferenceResponse(error=triton_error(message, code))
