"""A decoupled python-backend model that serves each request on a thread of its own.

`execute` hands every request to a thread (at most `max_concurrent_requests` run at once; torch releases the GIL)
and returns, so Triton keeps feeding requests and a long request does not hold up a short one. Every call into
Triton (sending a response, asking whether a request was cancelled, a BLS call, a metric update) goes through one
lock per instance: the python backend of Triton 2.51 crashed the server (SIGSEGV in libtriton_python.so) when
several request threads made such calls at once. The model's own work runs outside it.

A subclass implements `setup(params)` (load weights, read parameters) and `serve(ctx)` (one request: send audio with
`ctx.send_waveform`, raise RequestError for a bad request, Cancelled when `ctx.cancelled()` says so). The base sends
exactly one final flag per request, carrying the error when serve raised one.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from voice_triton.errors import BlsError, Cancelled, RequestError, Unavailable, error_response
from voice_triton.metrics import MetricSet
from voice_triton.params import ConfigError, ModelParams

_FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL


class RequestContext:
    """One request as its serving thread sees it; every Triton call made through it holds the instance's lock."""

    def __init__(self, request: Any, ipc: threading.Lock, cancel_poll_s: float) -> None:
        self.request = request
        self._ipc = ipc
        self._cancel_poll_s = cancel_poll_s
        self._last_poll = 0.0
        self.finished = False
        # The model's own record of the request (set in serve), for its on_cancelled / before_final hooks.
        self.state: Any = None
        with ipc:
            self._sender = request.get_response_sender()

    # ---- inputs ---------------------------------------------------------------------------------------------------

    def array(self, name: str) -> np.ndarray | None:
        """The input flattened, or None when the optional input was not sent."""
        tensor = pb_utils.get_input_tensor_by_name(self.request, name)
        return None if tensor is None else tensor.as_numpy().reshape(-1)

    def scalar(self, name: str) -> Any:
        """The first value of an input, or None when it was not sent (or sent empty)."""
        values = self.array(name)
        return None if values is None or values.size == 0 else values[0]

    def text(self, name: str) -> str | None:
        """A BYTES input decoded as UTF-8 (RequestError when it is not), or None when absent."""
        value = self.scalar(name)
        if value is None:
            return None
        if isinstance(value, bytes | bytearray | np.bytes_):
            try:
                return bytes(value).decode("utf-8")
            except UnicodeDecodeError as exc:
                raise RequestError(
                    f"{name} is not valid UTF-8 (offset {exc.start}): encode the text as UTF-8"
                ) from None
        return str(value)

    def required_text(self, name: str, max_chars: int) -> str:
        """A text input stripped of surrounding blanks; RequestError when it is empty or over `max_chars`."""
        text = (self.text(name) or "").strip()
        if not text:
            raise RequestError(f"{name} is empty")
        if len(text) > max_chars:
            raise RequestError(f"{name} has {len(text)} characters; at most {max_chars} per request")
        return text

    # ---- cancellation ---------------------------------------------------------------------------------------------

    def is_cancelled(self) -> bool:
        with self._ipc:
            return bool(self.request.is_cancelled())

    def cancelled(self) -> bool:
        """Rate-limited `is_cancelled` for tight loops: asks Triton at most every cancel_poll_ms."""
        now = time.monotonic()
        if now - self._last_poll < self._cancel_poll_s:
            return False
        self._last_poll = now
        return self.is_cancelled()

    def raise_if_cancelled(self) -> None:
        if self.is_cancelled():
            raise Cancelled

    # ---- responses ------------------------------------------------------------------------------------------------

    def send(self, response: Any = None, final: bool = False) -> None:
        if self.finished:
            return
        flags = _FINAL if final else 0
        with self._ipc:
            if response is None:
                self._sender.send(flags=flags)
            else:
                self._sender.send(response, flags=flags)
        self.finished = final

    def send_waveform(self, audio: np.ndarray, name: str = "waveform") -> None:
        tensor = pb_utils.Tensor(name, np.ascontiguousarray(audio, dtype=np.float32).reshape(1, -1))
        self.send(pb_utils.InferenceResponse(output_tensors=[tensor]))

    def bls(self, model_name: str, inputs: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
        """A synchronous call of another model in this server; its error becomes a BlsError naming that model."""
        call = pb_utils.InferenceRequest(
            model_name=model_name,
            requested_output_names=outputs,
            inputs=[pb_utils.Tensor(name, value) for name, value in inputs.items()],
        )
        with self._ipc:
            response = call.exec()
        if response.has_error():
            raise BlsError(f"{model_name}: {response.error().message()}")
        return {name: pb_utils.get_output_tensor_by_name(response, name).as_numpy().copy() for name in outputs}


class ThreadedDecoupledModel:
    """Base of the decoupled torch models (initialize/execute/finalize as Triton calls them)."""

    model_name: str
    params: ModelParams

    def initialize(self, args: dict[str, str]) -> None:
        self.params = ModelParams.from_args(args)
        self.model_name = self.params.model_name
        if not self.params.decoupled:
            raise ConfigError(
                f"{self.model_name} streams its audio: set model_transaction_policy {{ decoupled: true }}"
            )
        self.ipc = threading.Lock()  # one thread at a time talks to Triton (see the module docstring)
        self.metrics = MetricSet(self.model_name, self.ipc)
        self.cancel_poll_s = self.params.number("cancel_poll_ms", 40, 0, 10_000) / 1000.0
        self._slots = threading.Semaphore(self.params.integer("max_concurrent_requests", 4, 1, 256))
        self._threads: set[threading.Thread] = set()
        self._threads_lock = threading.Lock()
        self._closing = False
        self.setup(self.params)

    # ---- subclass hooks -------------------------------------------------------------------------------------------

    def setup(self, params: ModelParams) -> None:
        raise NotImplementedError

    def serve(self, ctx: RequestContext) -> None:
        raise NotImplementedError

    def on_cancelled(self, ctx: RequestContext) -> None:
        """Called once for a request that ended by cancellation (count it)."""

    def before_final(self, ctx: RequestContext) -> None:
        """Called before the final flag of every request, however it ended (account for it)."""

    # ---- Triton entry points --------------------------------------------------------------------------------------

    def log_info(self, message: str) -> None:
        with self.ipc:
            pb_utils.Logger.log_info(f"{self.model_name}: {message}")

    def log_warn(self, message: str) -> None:
        with self.ipc:
            pb_utils.Logger.log_warn(f"{self.model_name}: {message}")

    def _serve_one(self, request: Any) -> None:
        ctx = RequestContext(request, self.ipc, self.cancel_poll_s)
        error: Any = None
        try:
            if self._closing:
                raise Unavailable(f"{self.model_name} is unloading: retry")
            self.serve(ctx)
        except Cancelled:
            self.on_cancelled(ctx)
        except (RequestError, Unavailable) as exc:
            error = error_response(exc)
        except Exception as exc:  # the client must get an error, never a stream that does not end
            with self.ipc:
                pb_utils.Logger.log_error(f"{self.model_name}: request {request.request_id()} failed: {exc!r}")
            error = error_response(f"{self.model_name} failed: {exc}", "INTERNAL")
        try:
            self.before_final(ctx)
        finally:
            ctx.send(error, final=True)

    def _run(self, request: Any) -> None:
        try:
            with self._slots:
                self._serve_one(request)
        finally:
            with self._threads_lock:
                self._threads.discard(threading.current_thread())

    def execute(self, requests: list[Any]) -> None:
        for request in requests:
            thread = threading.Thread(target=self._run, args=(request,), name=f"{self.model_name}-request", daemon=True)
            with self._threads_lock:
                self._threads.add(thread)
            thread.start()
        return None

    def finalize(self) -> None:
        self._closing = True
        with self._threads_lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(timeout=10.0)
