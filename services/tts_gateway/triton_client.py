"""Triton client for TTS models that follow the Spark-TTS / CosyVoice tensor interface.

Model facts (rate, modes, speakers, decoupled or not) are read from Triton's model config, never assumed. Decoupled
models are driven over one ModelStreamInfer stream per gateway request, one piece in flight at a time (the model
interleaves requests of one stream otherwise, and we want the pieces in order); other models get one ModelInfer call
per piece.

Text-input streaming (models whose TtsModelInfo.streams_text_input): one utterance is one model session on the same
stream. Its first request carries everything `build_request` sends plus `session_id` and `session_start`; later ones
only the session id and the next text increment; the last one `session_end`. A session abandoned between requests is
dropped with a `session_cancel` request on a short call of its own (see `build_session_request`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import struct
import time
import uuid
from collections.abc import AsyncGenerator
from typing import Any, TypeAlias, cast

import grpc
import numpy as np
from google.protobuf.json_format import MessageToDict
from numpy.typing import NDArray
from tritonclient.grpc import service_pb2, service_pb2_grpc

from services.common import tracing
from services.common.channels import UpstreamCredentials, open_channel
from services.common.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    ResourceExhausted,
    ServiceError,
    Unavailable,
    upstream_message,
)
from services.common.request_id import REQUEST_ID_METADATA_KEY
from services.tts_gateway.channel_options import TRITON_CHANNEL_OPTIONS
from services.tts_gateway.domain import MODE_PRESET, SESSION_ID_INPUT, TtsInputs, TtsModelInfo
from services.tts_gateway.upstream_protocols import TextIncrements

log = logging.getLogger(__name__)

TRITON_SERVICE = "inference.GRPCInferenceService"  # KServe v2, as Triton names it
SESSION_CANCEL_TIMEOUT_S = 2.0  # the fire-and-forget session_cancel call gives up after this

_StreamCall: TypeAlias = grpc.aio.StreamStreamCall[service_pb2.ModelInferRequest, service_pb2.ModelStreamInferResponse]
_UnaryCall: TypeAlias = grpc.aio.UnaryUnaryCall[service_pb2.ModelInferRequest, service_pb2.ModelInferResponse]


def parse_model_config(config: dict[str, Any]) -> TtsModelInfo:
    """Build TtsModelInfo from the JSON form of a Triton model config; raise ValueError when it lacks the facts."""
    params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
    name = config.get("name", "")
    rate_text = params.get("sample_rate_hz", "")
    if not rate_text.isdigit() or int(rate_text) <= 0:
        raise ValueError(f"model {name} declares no sample_rate_hz parameter; the gateway never assumes a rate")
    modes = tuple(m.strip() for m in params.get("supported_modes", MODE_PRESET).split(",") if m.strip())
    speakers = tuple(s.strip() for s in params.get("speakers", "").split(",") if s.strip())
    language = params.get("language_code", "").replace("_", "-")
    return TtsModelInfo(
        name=name,
        sample_rate_hz=int(rate_text),
        decoupled=bool(config.get("model_transaction_policy", {}).get("decoupled", False)),
        supported_modes=modes,
        language_code=language,
        speakers=speakers,
        max_text_chars=int(params.get("max_text_chars", "2000") or 2000),
        inputs=frozenset(i["name"] for i in config.get("input", [])),
        reference_sample_rate_hz=int(params.get("reference_sample_rate_hz", "16000") or 16000),
        parameters=params,
    )


def _add_tensor(request: service_pb2.ModelInferRequest, name: str, datatype: str, shape: list[int], raw: bytes) -> None:
    tensor = request.inputs.add()
    tensor.name = name
    tensor.datatype = datatype
    tensor.shape.extend(shape)
    request.raw_input_contents.append(raw)


def _add_string(request: service_pb2.ModelInferRequest, name: str, text: str) -> None:
    data = text.encode("utf-8")
    _add_tensor(request, name, "BYTES", [1, 1], struct.pack("<I", len(data)) + data)


def build_request(
    model: TtsModelInfo,
    text: str,
    inputs: TtsInputs,
    request_id: str,
    *,
    final_flag: bool,
    playback_ahead_s: float | None = None,
) -> service_pb2.ModelInferRequest:
    """One inference request for one piece of text (max_batch_size 1: every tensor has a leading batch dim of 1)."""
    request = service_pb2.ModelInferRequest(model_name=model.name, id=request_id)
    _add_string(request, "target_text", text)
    if inputs.reference_wav is not None:
        wav = np.ascontiguousarray(inputs.reference_wav, dtype="<f4")
        _add_tensor(request, "reference_wav", "FP32", [1, wav.size], wav.tobytes())
        _add_tensor(request, "reference_wav_len", "INT32", [1, 1], struct.pack("<i", wav.size))
    if inputs.reference_text is not None:
        _add_string(request, "reference_text", inputs.reference_text)
    if inputs.instruction is not None:
        name = "instruct_text" if "instruct_text" in model.inputs else "instruction"
        _add_string(request, name, inputs.instruction)
    for control in ("length_scale", "noise_scale", "noise_w"):
        value = getattr(inputs, control)
        if value is not None and control in model.inputs:
            _add_tensor(request, control, "FP32", [1, 1], struct.pack("<f", value))
    for attribute in ("gender", "pitch_level", "speed_level"):
        value = getattr(inputs, attribute)
        if value is not None and attribute in model.inputs:
            _add_string(request, attribute, value)
    if inputs.seed is not None and "seed" in model.inputs:
        _add_tensor(request, "seed", "UINT64", [1, 1], struct.pack("<Q", inputs.seed))
    if inputs.speaker_id is not None and "speaker_id" in model.inputs:
        _add_tensor(request, "speaker_id", "INT32", [1, 1], struct.pack("<i", inputs.speaker_id))
    if playback_ahead_s is not None and "playback_ahead_s" in model.inputs:
        # Lets the model's scheduler serve new streams before this one's next sentence while we are ahead.
        _add_tensor(request, "playback_ahead_s", "FP32", [1, 1], struct.pack("<f", playback_ahead_s))
    if final_flag:
        # Ask for the empty final response so we know when a piece is complete on the shared stream.
        request.parameters["triton_enable_empty_final_response"].bool_param = True
    return request


def _add_bool(request: service_pb2.ModelInferRequest, name: str) -> None:
    _add_tensor(request, name, "BOOL", [1, 1], b"\x01")


def build_session_request(
    model: TtsModelInfo,
    text: str,
    request_id: str,
    session_id: str,
    *,
    inputs: TtsInputs | None = None,
    end: bool = False,
    cancel: bool = False,
) -> service_pb2.ModelInferRequest:
    """One request of a text-input session. With `inputs`, the session's first: everything `build_request` sends
    plus `session_start`; without, only `target_text` (the increment, possibly "") and the session id. `end` marks
    the utterance's last request, `cancel` drops the session. Every one asks for the empty final response."""
    if inputs is not None:
        request = build_request(model, text, inputs, request_id, final_flag=True)
    else:
        request = service_pb2.ModelInferRequest(model_name=model.name, id=request_id)
        _add_string(request, "target_text", text)
        request.parameters["triton_enable_empty_final_response"].bool_param = True
    _add_string(request, SESSION_ID_INPUT, session_id)
    for name, flag in (("session_start", inputs is not None), ("session_end", end), ("session_cancel", cancel)):
        if flag:
            _add_bool(request, name)
    return request


# Models may begin an error message with one of these gRPC code names and ": " to say what kind of failure it is.
_MODEL_ERROR_PREFIXES = ("RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED")
_TRITON_REQUEST_PREFIX = re.compile(r"^\s*\[request id: [^\]]*\]\s*")  # Triton may put this before a message


def model_stream_error(model: str, request_id: str, message: str) -> ServiceError:
    """The error a model's stream response reports, as the client's status: a message that begins with a known code
    name and ": " (RESOURCE_EXHAUSTED: too many open sessions; FAILED_PRECONDITION: e.g. the session expired;
    INVALID_ARGUMENT; DEADLINE_EXCEEDED) gets that code, the rest of the message and the request id; anything else
    is INTERNAL. The client sees the message's first line without paths or tracebacks."""
    code, sep, rest = _TRITON_REQUEST_PREFIX.sub("", message, count=1).partition(": ")
    if not sep or code not in _MODEL_ERROR_PREFIXES:
        return Internal(f"triton model {model} failed: {upstream_message(message)} (request id {request_id})")
    text = f"triton model {model}: {upstream_message(rest)} (request id {request_id})"
    if code == "RESOURCE_EXHAUSTED":
        return ResourceExhausted(text, retry_after_s=1.0)
    if code == "FAILED_PRECONDITION":
        return FailedPrecondition(text)
    if code == "INVALID_ARGUMENT":
        return InvalidArgument([("text", upstream_message(rest))], message=text)
    return DeadlineExceeded(text)


def _is_final(response: service_pb2.ModelStreamInferResponse) -> bool:
    return bool(response.infer_response.parameters["triton_final_response"].bool_param)


def _waveform(response: service_pb2.ModelInferResponse) -> NDArray[np.float32]:
    for index, output in enumerate(response.outputs):
        if output.name == "waveform":
            if index < len(response.raw_output_contents):
                return np.frombuffer(response.raw_output_contents[index], dtype="<f4").astype(np.float32)
            return np.asarray(output.contents.fp32_contents, dtype=np.float32)
    return np.zeros(0, dtype=np.float32)


class TritonTts:
    """One gRPC channel to Triton (keepalive, fast reconnect) shared by all requests.

    It talks to Triton through the generated KServe-v2 stub that tritonclient ships (tritonclient.grpc.service_pb2
    _grpc) rather than tritonclient's aio wrapper: the wrapper's stream_infer refuses the reserved
    `triton_enable_empty_final_response` parameter, without which a client cannot tell when a decoupled request is
    complete, and owning the channel lets us set its keepalive and reconnect options.
    """

    def __init__(self, url: str, credentials: UpstreamCredentials | None = None) -> None:
        self.url = url
        self.upstream = open_channel("Triton", url, TRITON_CHANNEL_OPTIONS, credentials)
        self.channel = self.upstream.channel
        # The token as metadata on a plaintext channel (with TLS it rides as call credentials): every call adds it.
        self.call_metadata = self.upstream.call_metadata
        self.stub = service_pb2_grpc.GRPCInferenceServiceStub(self.channel)
        self._background: set[asyncio.Task[None]] = set()  # session_cancel calls in flight

    def unavailable(self, detail: str) -> Unavailable:
        return Unavailable(f"triton unavailable at {self.url}: {detail}", retry_after_s=1.0)

    async def probe(self) -> str:
        """Server version if Triton is live and ready; raises otherwise."""
        try:
            ready = await self.stub.ServerReady(
                service_pb2.ServerReadyRequest(), timeout=2.0, metadata=self.call_metadata
            )
            if not ready.ready:
                raise self.unavailable("server not ready")
            metadata = await self.stub.ServerMetadata(
                service_pb2.ServerMetadataRequest(), timeout=2.0, metadata=self.call_metadata
            )
        except grpc.aio.AioRpcError as exc:
            raise (self.upstream.refused(exc) or self.unavailable(exc.details() or exc.code().name)) from None
        version: str = metadata.version
        return version

    async def model_info(self, model: str) -> TtsModelInfo:
        try:
            response = await self.stub.ModelConfig(
                service_pb2.ModelConfigRequest(name=model), timeout=5.0, metadata=self.call_metadata
            )
        except grpc.aio.AioRpcError as exc:
            if refused := self.upstream.refused(exc):
                raise refused from None
            raise self.unavailable(f"model {model}: {exc.details() or exc.code().name}") from None
        return parse_model_config(MessageToDict(response.config, preserving_proto_field_name=True))

    def open(self, model: TtsModelInfo, request_id: str) -> TtsSession:
        return TtsSession(self, model, request_id)

    def drop_session(self, model: TtsModelInfo, session_id: str, request_id: str) -> None:
        """Fire and forget: tell the model to drop an open text-input session (no request of it in flight)."""
        try:
            task = asyncio.get_running_loop().create_task(
                self.cancel_session(model, session_id, request_id), name=f"session-cancel:{request_id}"
            )
        except RuntimeError:  # no event loop (interpreter shutdown): the model's idle timeout frees the session
            log.debug("cannot cancel session %s of request %s: no event loop", session_id, request_id)
            return
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def cancel_session(self, model: TtsModelInfo, session_id: str, request_id: str) -> None:
        """Send `session_cancel` for a session on a short stream of its own and read its final response; bounded by
        SESSION_CANCEL_TIMEOUT_S, failures only logged (at debug: the model also frees idle sessions itself)."""
        request = build_session_request(model, "", request_id, session_id, cancel=True)
        call: _StreamCall | None = None
        try:
            async with asyncio.timeout(SESSION_CANCEL_TIMEOUT_S):
                call = self.stub.ModelStreamInfer(
                    metadata=(*self.call_metadata, (REQUEST_ID_METADATA_KEY, request_id)),
                    timeout=SESSION_CANCEL_TIMEOUT_S,
                )
                await call.write(request)
                while (received := await call.read()) is not grpc.aio.EOF:
                    response = cast(service_pb2.ModelStreamInferResponse, received)
                    if response.error_message:
                        log.debug(
                            "cancelling session %s of request %s: %s", session_id, request_id, response.error_message
                        )
                        break
                    if _is_final(response):
                        break
                await call.done_writing()
        except Exception as exc:  # fire and forget: nothing waits for this call
            log.debug("cancelling session %s of request %s failed: %r", session_id, request_id, exc)
        finally:
            if call is not None:
                call.cancel()

    async def close(self) -> None:
        for task in list(self._background):
            task.cancel()
        await self.channel.close()


class TtsSession:
    """Synthesis for one gateway request. `busy_s` accumulates the time spent waiting on Triton."""

    def __init__(self, owner: TritonTts, model: TtsModelInfo, request_id: str) -> None:
        self.owner = owner
        self.model = model
        self.request_id = request_id
        self.metadata = (*owner.call_metadata, (REQUEST_ID_METADATA_KEY, request_id))
        # The request's trace context now (its server span): the stream opens later, inside a sentence's span, but
        # carries every sentence, so its span hangs off the request.
        self._trace_parent = tracing.current_context()
        self._stream_span: tracing.ClientSpan | None = None
        self._call: _StreamCall | None = None
        self._unary: _UnaryCall | None = None
        self.busy_s = 0.0
        self._in_flight = False  # a request written to the stream whose final response has not been read yet
        self._session_id: str | None = None  # the text-input session open now (start sent, end not yet answered)

    def _map_error(self, exc: grpc.aio.AioRpcError) -> ServiceError:
        if exc.code() == grpc.StatusCode.CANCELLED:
            raise exc
        if refused := self.owner.upstream.refused(exc):
            return refused
        if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            return self.owner.unavailable(upstream_message(exc.details() or exc.code().name))
        return self._model_error(f"{exc.code().name}: {exc.details()}")

    def _model_error(self, detail: str) -> ServiceError:
        """The model failed: the whole text goes to our log, a short one without paths or tracebacks to the client."""
        log.error("triton model %s failed for request %s: %s", self.model.name, self.request_id, detail)
        return Internal(
            f"triton model {self.model.name} failed: {upstream_message(detail)} (request id {self.request_id})"
        )

    async def synthesize(
        self, text: str, inputs: TtsInputs, *, playback_ahead_s: float | None = None
    ) -> AsyncGenerator[NDArray[np.float32], None]:
        """Yield the waveform(s) of one piece as Triton produces them. `playback_ahead_s`: audio the listener still
        has buffered, a scheduling hint for models that declare that input."""
        if self.model.decoupled:
            request = build_request(
                self.model, text, inputs, self.request_id, final_flag=True, playback_ahead_s=playback_ahead_s
            )
            async with contextlib.aclosing(self._stream_request(request)) as parts:
                async for audio in parts:
                    yield audio
        else:
            yield await self._infer_piece(text, inputs, playback_ahead_s)

    async def _infer_piece(self, text: str, inputs: TtsInputs, playback_ahead_s: float | None) -> NDArray[np.float32]:
        request = build_request(
            self.model, text, inputs, self.request_id, final_flag=False, playback_ahead_s=playback_ahead_s
        )
        started = time.perf_counter()
        span = tracing.ClientSpan(
            TRITON_SERVICE, "ModelInfer", parent=None, attributes={"tts.model": self.model.name, "tts.chars": len(text)}
        )
        code, details = grpc.StatusCode.OK, ""
        try:
            self._unary = self.owner.stub.ModelInfer(request, metadata=span.metadata(self.metadata))
            response = await self._unary
        except grpc.aio.AioRpcError as exc:
            code, details = exc.code(), exc.details() or ""
            raise self._map_error(exc) from None
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        finally:
            self._unary = None
            self.busy_s += time.perf_counter() - started
            span.end(code, details)
        return _waveform(response)

    def _stream(self) -> _StreamCall:
        if self._call is None:
            self._stream_span = tracing.ClientSpan(
                TRITON_SERVICE, "ModelStreamInfer", parent=self._trace_parent, attributes={"tts.model": self.model.name}
            )
            self._call = self.owner.stub.ModelStreamInfer(metadata=self._stream_span.metadata(self.metadata))
        return self._call

    async def _stream_request(
        self, request: service_pb2.ModelInferRequest
    ) -> AsyncGenerator[NDArray[np.float32], None]:
        """Write one request to the stream and yield its audio until its final response (one in flight at a time)."""
        call = self._stream()
        try:
            self._in_flight = True
            await call.write(request)
            while True:
                started = time.perf_counter()
                received = await call.read()
                self.busy_s += time.perf_counter() - started
                if received is grpc.aio.EOF:
                    raise self.owner.unavailable("stream ended before the final response")
                # grpc-stubs type read() as `object | response`, so the EOF test above cannot narrow it.
                response = cast(service_pb2.ModelStreamInferResponse, received)
                if response.error_message:
                    self._end_stream_span(grpc.StatusCode.INTERNAL, response.error_message)
                    log.error(
                        "triton model %s failed for request %s: %s",
                        self.model.name,
                        self.request_id,
                        response.error_message,
                    )
                    raise model_stream_error(self.model.name, self.request_id, response.error_message)
                audio = _waveform(response.infer_response)
                if audio.size:
                    yield audio
                if _is_final(response):
                    self._in_flight = False
                    return
        except grpc.aio.AioRpcError as exc:
            self._end_stream_span(exc.code(), exc.details() or "")
            raise self._map_error(exc) from None

    async def stream_utterance(
        self, text: TextIncrements, inputs: TtsInputs
    ) -> AsyncGenerator[NDArray[np.float32], None]:
        """Yield the audio of one utterance whose text arrives in increments, over one model session: the first
        increment with the request's inputs and `session_start`, each later one alone, the last with `session_end`.
        Closed or cancelled before the end, the session is abandoned (see `_abandon_session`)."""
        session_id = uuid.uuid4().hex  # never the client's request id: those may collide
        try:
            increment, ended = await text.take()
            self._session_id = session_id
            request = build_session_request(self.model, increment, self.request_id, session_id, inputs=inputs)
            async with contextlib.aclosing(self._stream_request(request)) as parts:
                async for audio in parts:
                    yield audio
            while True:
                # An utterance whose first take ended it still ends with a request of its own (start and end are
                # never one request).
                increment, ended = ("", True) if ended else await text.take()
                request = build_session_request(self.model, increment, self.request_id, session_id, end=ended)
                async with contextlib.aclosing(self._stream_request(request)) as parts:
                    async for audio in parts:
                        yield audio
                if ended:
                    self._session_id = None  # the model closed the session with the end request's final response
                    return
        finally:
            self._abandon_session()

    def _abandon_session(self) -> None:
        """Give up the open session, if any: with a request in flight cancelling the stream is enough (Triton
        cancels the request and the model frees the session); between requests, a `session_cancel` goes out on a
        short call of its own in the background (this runs in synchronous cancel paths too)."""
        session_id, self._session_id = self._session_id, None
        if session_id is None:
            return
        if self._in_flight:
            self._cancel_stream()
        else:
            self.owner.drop_session(self.model, session_id, self.request_id)

    def _end_stream_span(self, code: grpc.StatusCode, details: str = "") -> None:
        if self._stream_span is not None:
            span, self._stream_span = self._stream_span, None
            span.end(code, details)

    async def close(self) -> None:
        """End the stream politely (all pieces done)."""
        if self._call is not None:
            call, self._call = self._call, None
            code, details = grpc.StatusCode.OK, ""
            try:
                await call.done_writing()
                while await call.read() is not grpc.aio.EOF:
                    pass
            except grpc.aio.AioRpcError as exc:
                code, details = exc.code(), exc.details() or ""
            self._end_stream_span(code, details)

    def _cancel_stream(self) -> None:
        if self._call is not None:
            self._call.cancel()
            self._call = None
            self._end_stream_span(grpc.StatusCode.CANCELLED)
        self._in_flight = False

    def cancel(self) -> None:
        """Abort whatever is in flight; Triton sees the stream cancelled and stops synthesizing. An open text-input
        session is abandoned first."""
        self._abandon_session()
        self._cancel_stream()
        if self._unary is not None:
            self._unary.cancel()
