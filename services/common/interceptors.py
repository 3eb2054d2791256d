"""Server interceptor: auth, request-id logging context, per-RPC metrics and ServiceError -> rich status.

One interceptor wraps every handler so that each RPC is counted exactly once with its final status code, whatever
way it ends (returned, aborted, raised ServiceError, crashed, or cancelled by the client). It also guards every RPC
against what a client can do wrong without the handler noticing:

* Request bytes that do not parse (garbage, invalid UTF-8 in a string field) become INVALID_ARGUMENT at once. gRPC's
  own handling of a failing deserializer leaves a server-streaming call open forever, so the deserializer is wrapped
  to hand over a marker instead of raising, and the marker is turned into the error where the handler would read it.
* Response-streaming RPCs end with DEADLINE_EXCEEDED after `idle_timeout_s` without a client message or a response,
  and after `max_stream_s` in all, so no stream holds a server slot forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import hmac
import inspect
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc

from services.common import metrics
from services.common.access_log import AccessLog
from services.common.errors import DeadlineExceeded, InvalidArgument, ServiceError
from services.common.request_id import REQUEST_ID_METADATA_KEY, bind_request_id, current_request_id

log = logging.getLogger(__name__)

# Kubernetes gRPC probes and grpc_health_probe send no credentials.
AUTH_EXEMPT_SERVICES = frozenset({"grpc.health.v1.Health"})


def _rpc_type(handler: grpc.RpcMethodHandler[Any, Any]) -> str:
    if handler.request_streaming and handler.response_streaming:
        return "bidi_stream"
    if handler.request_streaming:
        return "client_stream"
    if handler.response_streaming:
        return "server_stream"
    return "unary"


def _split_method(full_method: str) -> tuple[str, str]:
    _, service, method = full_method.split("/", 2)
    return service, method


class Unparseable:
    """Stands in for a request message whose bytes did not parse."""

    __slots__ = ("type_name",)

    def __init__(self, type_name: str) -> None:
        self.type_name = type_name

    def error(self) -> InvalidArgument:
        return InvalidArgument(
            [
                (
                    "request",
                    f"the message bytes are not a valid {self.type_name}: encode it from the voice.v1 .proto "
                    "files, with valid UTF-8 in every string field",
                )
            ]
        )


def _tolerant_deserializer(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None
    owner = getattr(deserializer, "__self__", None)
    descriptor = getattr(owner, "DESCRIPTOR", None)
    type_name = getattr(descriptor, "full_name", "request message")

    def parse(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception:  # DecodeError, UnicodeDecodeError, RuntimeWarning-as-error: all mean "not parseable"
            return Unparseable(type_name)

    return parse


class _Activity:
    """When the RPC last moved: a client message arrived or a response left."""

    def __init__(self) -> None:
        self.started = self.last = time.monotonic()

    def touch(self) -> None:
        self.last = time.monotonic()


async def _parsed_requests(requests: AsyncIterator[Any], activity: _Activity) -> AsyncIterator[Any]:
    async for request in requests:
        activity.touch()
        if isinstance(request, Unparseable):
            raise request.error()
        yield request


async def _watched(
    responses: AsyncGenerator[Any, Any],
    activity: _Activity,
    *,
    idle_timeout_s: float | None,
    max_stream_s: float | None,
) -> AsyncGenerator[Any, None]:
    """Yield `responses`, ending with DEADLINE_EXCEEDED when the stream idles or runs too long.

    Each step of the handler runs as a task (all steps in one context, so request-id bindings made by the handler
    persist), which lets the timer cancel a handler parked on an upstream or on a silent client.
    """
    context = contextvars.copy_context()

    async def step_once() -> Any:
        return await responses.__anext__()

    try:
        while True:
            step = asyncio.create_task(step_once(), context=context)
            try:
                while True:
                    limits = []
                    if idle_timeout_s is not None:
                        limits.append(activity.last + idle_timeout_s)
                    if max_stream_s is not None:
                        limits.append(activity.started + max_stream_s)
                    timeout = max(0.0, min(limits) - time.monotonic()) if limits else None
                    await asyncio.wait({step}, timeout=timeout)
                    if step.done():
                        break
                    now = time.monotonic()
                    if max_stream_s is not None and now >= activity.started + max_stream_s:
                        raise DeadlineExceeded(
                            f"the stream reached the server's limit of {max_stream_s:g} s; split the work into "
                            "shorter calls"
                        )
                    if idle_timeout_s is not None and now >= activity.last + idle_timeout_s:
                        raise DeadlineExceeded(
                            f"the stream was idle for {idle_timeout_s:g} s (no request message and no response); "
                            "send messages or close the stream sooner"
                        )
            except BaseException:
                step.cancel()
                with contextlib.suppress(BaseException):
                    await step
                raise
            try:
                message = step.result()
            except StopAsyncIteration:
                return
            finally:
                del step  # a finished step holds its exception's traceback, which holds this frame: no cycle
            activity.touch()
            yield message
    finally:
        with contextlib.suppress(BaseException):
            await responses.aclose()


def _context_code(context: grpc.aio.ServicerContext[Any, Any]) -> grpc.StatusCode | int | None:
    """The code set on `context` so far. The stubs say StatusCode, but grpc.aio returns None until a code is set
    (and a raw int from some paths, see _CallObserver.finish)."""
    code: grpc.StatusCode | int | None = context.code()
    return code


async def abort_with_service_error(context: grpc.aio.ServicerContext[Any, Any], error: ServiceError) -> None:
    status = error.to_grpc_status()
    await context.abort(status.code, status.details, trailing_metadata=status.trailing_metadata)


class _CallObserver:
    """Tracks one RPC: binds its request id to the log context and records metrics when it ends."""

    def __init__(
        self,
        service: str,
        method: str,
        rpc_type: str,
        context: grpc.aio.ServicerContext[Any, Any],
        access_log: AccessLog,
    ) -> None:
        self.service, self.method, self.rpc_type = service, method, rpc_type
        self.access_log = access_log
        self.context = context
        self.code: grpc.StatusCode | int | None = None
        self.started = time.perf_counter()
        metadata = dict(context.invocation_metadata() or ())
        request_id = metadata.get(REQUEST_ID_METADATA_KEY)
        self.token = bind_request_id(request_id if isinstance(request_id, str) and request_id else "-")
        metrics.RPC_STARTED.labels(service, method, rpc_type).inc()

    @property
    def request_id(self) -> str:
        return current_request_id.get()

    async def fail(self, exc: BaseException) -> None:
        """Translate an exception escaping the handler into a status; re-raises as gRPC expects."""
        if isinstance(exc, ServiceError):
            self.code = exc.code
            await abort_with_service_error(self.context, exc)
        if isinstance(exc, asyncio.CancelledError | GeneratorExit):
            self.code = grpc.StatusCode.CANCELLED
            raise exc
        if isinstance(exc, grpc.aio.AbortError):
            self.code = _context_code(self.context) or grpc.StatusCode.UNKNOWN
            raise exc
        log.exception("unhandled error in %s/%s", self.service, self.method, exc_info=exc)
        self.code = grpc.StatusCode.INTERNAL
        where = f" under request id {self.request_id}" if self.request_id != "-" else ""
        await self.context.abort(grpc.StatusCode.INTERNAL, f"internal error; the server log has the details{where}")

    def finish(self) -> None:
        code = self.code or _context_code(self.context) or grpc.StatusCode.OK
        if isinstance(code, int):  # context.code() may hold a raw int after set_code from some paths
            code = next((c for c in grpc.StatusCode if c.value[0] == code), grpc.StatusCode.UNKNOWN)
        elapsed = time.perf_counter() - self.started
        metrics.RPC_HANDLED.labels(self.service, self.method, self.rpc_type, code.name).inc()
        metrics.RPC_LATENCY.labels(self.service, self.method, self.rpc_type).observe(elapsed)
        self.access_log.record(self.service, self.method, code, elapsed)
        current_request_id.reset(self.token)


class ServerInterceptor(grpc.aio.ServerInterceptor):
    def __init__(
        self,
        *,
        auth_token: str | None = None,
        idle_timeout_s: float | None = None,
        max_stream_s: float | None = None,
        access_log: AccessLog | None = None,
    ) -> None:
        self._auth_token = auth_token.encode() if auth_token else None
        self.access_log = access_log or AccessLog()
        # Set on SIGTERM: new RPCs (health excepted) get UNAVAILABLE while the listener stays open, so a call that
        # races the shutdown is refused in a way clients retry instead of being cancelled by the closing listener.
        self.draining = False
        self._in_flight = 0
        self._drained = asyncio.Event()
        self._drained.set()
        self._idle_timeout_s = idle_timeout_s if idle_timeout_s and idle_timeout_s > 0 else None
        self._max_stream_s = max_stream_s if max_stream_s and max_stream_s > 0 else None

    def _enter(self, tracked: bool) -> None:
        if tracked:
            self._in_flight += 1
            self._drained.clear()

    def _leave(self, tracked: bool) -> None:
        if tracked:
            self._in_flight -= 1
            if self._in_flight == 0:
                self._drained.set()

    async def wait_drained(self, limit_s: float) -> bool:
        """Wait until no RPC but health checks is in flight; False when `limit_s` passed first."""
        try:
            await asyncio.wait_for(self._drained.wait(), limit_s)
        except TimeoutError:
            return False
        return True

    def _authorized(self, details: grpc.HandlerCallDetails, service: str) -> bool:
        if self._auth_token is None or service in AUTH_EXEMPT_SERVICES:
            return True
        metadata = dict(details.invocation_metadata or ())
        header = metadata.get("authorization", "")
        if not isinstance(header, str) or not header.startswith("Bearer "):
            return False
        return hmac.compare_digest(header[len("Bearer ") :].encode(), self._auth_token)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        service, method = _split_method(handler_call_details.method)
        # Typed loosely: the stubs give the sync API's signatures, grpc.aio's behaviours are coroutine functions and
        # async generator functions taking an aio context.
        behavior: Callable[..., Any] | None = (
            handler.unary_unary or handler.unary_stream or handler.stream_unary or handler.stream_stream
        )
        assert behavior is not None  # grpc's handlers carry exactly one of the four
        authorized = self._authorized(handler_call_details, service)
        if not authorized:
            behavior = _unauthenticated_behavior(handler.response_streaming)
        elif self.draining and service not in AUTH_EXEMPT_SERVICES:
            behavior = _draining_behavior(handler.response_streaming)
        rpc = _InterceptedRpc(
            service=service,
            method=method,
            rpc_type=_rpc_type(handler),
            behavior=behavior,
            authorized=authorized,
            request_streaming=handler.request_streaming,
            tracked=service not in AUTH_EXEMPT_SERVICES,  # long-lived health watches must not hold up a drain
        )
        wrapped = self._streaming(rpc) if handler.response_streaming else self._unary(rpc)
        factory = {
            "unary": grpc.unary_unary_rpc_method_handler,
            "server_stream": grpc.unary_stream_rpc_method_handler,
            "client_stream": grpc.stream_unary_rpc_method_handler,
            "bidi_stream": grpc.stream_stream_rpc_method_handler,
        }[rpc.rpc_type]
        return factory(
            wrapped,
            request_deserializer=_tolerant_deserializer(handler.request_deserializer),
            response_serializer=handler.response_serializer,
        )

    def _streaming(self, rpc: _InterceptedRpc) -> Callable[..., AsyncIterator[Any]]:
        idle_timeout_s, max_stream_s = self._idle_timeout_s, self._max_stream_s

        async def streaming(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
            call = _CallObserver(rpc.service, rpc.method, rpc.rpc_type, context, self.access_log)
            sent = metrics.STREAM_MESSAGES_SENT.labels(rpc.service, rpc.method)
            activity = _Activity()
            watched: AsyncGenerator[Any, None] | None = None
            self._enter(rpc.tracked)
            try:
                result = rpc.behavior(rpc.parsed(request, activity), context)
                if inspect.isasyncgen(result):
                    watched = _watched(result, activity, idle_timeout_s=idle_timeout_s, max_stream_s=max_stream_s)
                    async for message in watched:
                        sent.inc()
                        yield message
                else:
                    await result
            except BaseException as exc:  # every ending is translated and counted
                await call.fail(exc)
            finally:
                # A client cancel closes this generator at its yield: close the handler's now (its `finally`
                # frees admission slots and upstream calls) rather than whenever the garbage collector gets to it.
                if watched is not None:
                    with contextlib.suppress(BaseException):
                        await watched.aclose()
                self._leave(rpc.tracked)
                call.finish()

        return streaming

    def _unary(self, rpc: _InterceptedRpc) -> Callable[..., Awaitable[Any]]:
        async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            call = _CallObserver(rpc.service, rpc.method, rpc.rpc_type, context, self.access_log)
            self._enter(rpc.tracked)
            try:
                return await rpc.behavior(rpc.parsed(request, _Activity()), context)
            except BaseException as exc:
                await call.fail(exc)
            finally:
                self._leave(rpc.tracked)
                call.finish()

        return unary


@dataclass(frozen=True)
class _InterceptedRpc:
    """One method's handler as the interceptor wraps it."""

    service: str
    method: str
    rpc_type: str
    behavior: Callable[..., Any]
    authorized: bool
    request_streaming: bool
    tracked: bool

    def parsed(self, request: Any, activity: _Activity) -> Any:
        """The request the behaviour sees: a stream whose messages are parsed lazily (and count as activity), or
        the one message; a unary message that did not parse fails here, unless the call is refused anyway."""
        if self.request_streaming:
            return _parsed_requests(request, activity)
        if self.authorized and isinstance(request, Unparseable):
            raise request.error()
        return request


def _unauthenticated_behavior(response_streaming: bool) -> Callable[..., Any]:
    return _rejecting_behavior(
        response_streaming,
        grpc.StatusCode.UNAUTHENTICATED,
        "missing or invalid bearer token: send metadata 'authorization: Bearer <token>'",
    )


def _draining_behavior(response_streaming: bool) -> Callable[..., Any]:
    return _rejecting_behavior(
        response_streaming,
        grpc.StatusCode.UNAVAILABLE,
        "the server is shutting down; retry (another replica, or this one after its restart)",
    )


def _rejecting_behavior(response_streaming: bool, code: grpc.StatusCode, message: str) -> Callable[..., Any]:
    async def reject(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await context.abort(code, message)

    if not response_streaming:
        return reject

    async def reject_stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
        await reject(request, context)
        yield  # pragma: no cover - makes this an async generator

    return reject_stream
