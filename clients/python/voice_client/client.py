"""Typed wrappers around the voice.v1 gRPC services, in the spirit of NVIDIA Riva's python-clients.

`TtsClient` talks to `voice.v1.TtsGatewayService`, `RecognitionClient` to `voice.v1.RecognitionService` (served by
the gateway process, on the same port), `ConversionClient` to `voice.v1.VoiceConversionService`. All take
a target ("host:port") plus optional TLS, bearer token and per-call timeout, return the generated protobuf messages
unchanged (so every field of the contract is available), and raise `grpc.RpcError` on failure; `describe_rpc_error`
turns such an error into one readable line, `exit_code_for` into a process exit status.

A call refused with RESOURCE_EXHAUSTED or UNAVAILABLE whose status carries a RetryInfo detail (the gateway's
admission control, an upstream that is briefly down) is retried after the delay the server asks for, as long as no
response message has arrived yet: at most `max_retries` times, each wait capped at `max_retry_delay` seconds, and
never past the call's deadline (`timeout` covers all attempts together). The wait is jittered, never shorter than the
server asked: "full jitter" over an exponential window on top of the RetryInfo delay (`jittered_delay`), so clients
refused in the same instant do not all come back in the same instant.
"""

from __future__ import annotations

import random
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Generic, Literal, Self, TypeVar, cast

import grpc
import numpy as np
import numpy.typing as npt
import soundfile as sf

from voice.v1 import (
    audio_pb2,
    conversion_pb2,
    recognition_pb2,
    recognition_pb2_grpc,
    tts_gateway_pb2,
    tts_gateway_pb2_grpc,
    voice_conversion_pb2,
    voice_conversion_pb2_grpc,
)
from voice_client import rpc_details
from voice_client.rpc_details import is_a, retry_delay_seconds, status_details

DEFAULT_TTS_TARGET = "127.0.0.1:50051"
DEFAULT_RVC_TARGET = "127.0.0.1:50052"

# Retries of calls the server refused with a RetryInfo delay (see the module docstring).
DEFAULT_MAX_RETRIES = 3
MAX_RETRY_DELAY_S = 10.0
RETRYABLE_CODES = frozenset({grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE})
DEFAULT_RETRY_JITTER = 1.0


def jittered_delay(
    asked_s: float, retry: int, *, cap_s: float, jitter: float = DEFAULT_RETRY_JITTER, rng: random.Random | None = None
) -> float:
    """The wait before retry number `retry` (1 for the first) of a call refused with a RetryInfo delay `asked_s`:
    the delay asked for plus a uniformly random share of a window that doubles with each retry
    (asked * 2**(retry-1) * jitter), all capped at `cap_s`. Never shorter than asked (the server knows when room is
    likely), spread so that clients refused together do not retry together."""
    window = asked_s * (2.0 ** max(0, retry - 1)) * max(0.0, jitter)
    draw: float = (rng or _RETRY_RANDOM).random()
    return min(cap_s, asked_s + draw * window)


_RETRY_RANDOM = random.Random()

PCM16 = audio_pb2.AUDIO_ENCODING_PCM16
WAV = audio_pb2.AUDIO_ENCODING_WAV
OGG_OPUS = audio_pb2.AUDIO_ENCODING_OGG_OPUS
FLOAT32 = audio_pb2.AUDIO_ENCODING_FLOAT32
MULAW = audio_pb2.AUDIO_ENCODING_MULAW
ALAW = audio_pb2.AUDIO_ENCODING_ALAW

# Names accepted by the CLI's --format and by `output_format(...)`.
ENCODINGS: dict[str, audio_pb2.AudioEncoding] = {"wav": WAV, "pcm16": PCM16, "opus": OGG_OPUS, "float32": FLOAT32}

# Raw (headerless) encodings a recognition stream (and the CLI's transcribe --encoding) takes, with bytes per sample.
RAW_ENCODINGS: dict[str, audio_pb2.AudioEncoding] = {"pcm16": PCM16, "float32": FLOAT32, "mulaw": MULAW, "alaw": ALAW}
RAW_SAMPLE_BYTES: dict[int, int] = {PCM16: 2, FLOAT32: 4, MULAW: 1, ALAW: 1}

# Names accepted by the CLI's --text-input and by `streaming_synthesize(text_input_mode=...)`: how StreamingSynthesize
# hands the text to the model. "auto" is the voice's default (Voice.streams_text_input says which), "sentences"
# buffers deltas into sentences, "incremental" hands each delta on as it arrives (FAILED_PRECONDITION on a voice
# that cannot take text in increments).
TextInputModeName = Literal["auto", "sentences", "incremental"]
TEXT_INPUT_MODES: dict[str, tts_gateway_pb2.TextInputMode] = {
    "auto": tts_gateway_pb2.TEXT_INPUT_MODE_UNSPECIFIED,
    "sentences": tts_gateway_pb2.TEXT_INPUT_MODE_SENTENCES,
    "incremental": tts_gateway_pb2.TEXT_INPUT_MODE_INCREMENTAL,
}

F0_METHODS: dict[str, conversion_pb2.F0Method] = {
    name.removeprefix("F0_METHOD_").lower().replace("_", "-"): cast(conversion_pb2.F0Method, value)
    for name, value in conversion_pb2.F0Method.items()
    if value != conversion_pb2.F0_METHOD_UNSPECIFIED
}

# Process exit statuses for failed calls; documented in clients/python/README.md. 2 is also argparse's usage error,
# so "2" always means "the request was wrong, fix it".
EXIT_OK = 0
EXIT_LOCAL_ERROR = 1
EXIT_CODES: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.INVALID_ARGUMENT: 2,
    grpc.StatusCode.OUT_OF_RANGE: 2,
    grpc.StatusCode.NOT_FOUND: 3,
    grpc.StatusCode.FAILED_PRECONDITION: 4,
    grpc.StatusCode.UNAVAILABLE: 5,
    grpc.StatusCode.DEADLINE_EXCEEDED: 5,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 6,
    grpc.StatusCode.UNAUTHENTICATED: 7,
    grpc.StatusCode.PERMISSION_DENIED: 7,
    grpc.StatusCode.CANCELLED: 130,
}
EXIT_OTHER_RPC_ERROR = 8


def exit_code_for(error: grpc.RpcError) -> int:
    code = error.code() if isinstance(error, grpc.Call) else None
    return EXIT_CODES.get(code, EXIT_OTHER_RPC_ERROR) if code is not None else EXIT_OTHER_RPC_ERROR


def describe_rpc_error(error: grpc.RpcError) -> str:
    """One line: status code, server message, BadRequest / PreconditionFailure / QuotaFailure violations, ErrorInfo
    reason, retry hint, request id."""
    if not isinstance(error, grpc.Call):
        return f"RPC failed: {error}"
    code = error.code()
    head = f"{code.name if code else 'UNKNOWN'}: {(error.details() or '').strip() or 'no details'}"
    parts = [head]

    def add(text: str) -> None:
        # The services often repeat a detail as their message; do not print it twice.
        if text and text not in head:
            parts.append(f"[{text}]")

    for detail in status_details(error):
        if is_a(detail, "google.rpc.BadRequest"):
            add("; ".join(f"{v.field}: {v.description}" for v in detail.field_violations))
        elif is_a(detail, "google.rpc.PreconditionFailure") or is_a(detail, "google.rpc.QuotaFailure"):
            add("; ".join(f"{v.subject}: {v.description}" for v in detail.violations))
        elif is_a(detail, "google.rpc.ErrorInfo") and detail.reason:
            add(f"reason {detail.reason}" + (f" ({detail.domain})" if detail.domain else ""))
        elif is_a(detail, "google.rpc.RetryInfo"):
            delay = detail.retry_delay.ToTimedelta().total_seconds()
            parts.append(f"(retry after {delay:g} s)")
    request_id = _metadata_value(error, "x-request-id")
    if request_id:
        parts.append(f"(request_id={request_id})")
    return " ".join(parts).replace("\n", " ")


def _metadata_value(call: grpc.Call, key: str) -> str | None:
    for getter in (call.initial_metadata, call.trailing_metadata):
        try:
            for item in getter() or ():
                if item[0] == key and isinstance(item[1], str):
                    return item[1]
        except Exception:  # metadata is unavailable on some failure paths (e.g. connection refused)
            continue
    return None


# --------------------------------------------------------------------------------------------------------------------
# Request builders
# --------------------------------------------------------------------------------------------------------------------


class UnreadableAudioError(ValueError):
    """A local audio file that cannot be used: missing, a directory, unreadable, empty, or not audio."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"cannot read {path}: {reason}")
        self.path = str(path)
        self.reason = reason


def _read_file(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as error:
        raise UnreadableAudioError(path, error.strerror or type(error).__name__) from error
    if not data:
        raise UnreadableAudioError(path, "the file is empty")
    return data


def read_mono(path: str | Path) -> tuple[npt.NDArray[np.float32], int]:
    """Float32 mono samples and rate of any file libsndfile reads (WAV, FLAC, Ogg, AIFF, ...)."""
    path = Path(path)
    _read_file(path)  # the common failures (missing, directory, empty) with a plain reason
    try:
        samples, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as error:
        reason = getattr(error, "error_string", "") or str(error)
        raise UnreadableAudioError(path, f"not an audio file libsndfile can read ({reason.rstrip('.')})") from error
    if not len(samples):
        raise UnreadableAudioError(path, "the file holds no audio samples")
    return samples.mean(axis=1).astype("<f4"), int(rate)


def text_input_mode_value(mode: TextInputModeName | str | int) -> tts_gateway_pb2.TextInputMode:
    """The TextInputMode value of a name in TEXT_INPUT_MODES or of an enum value (ValueError if neither)."""
    if isinstance(mode, str):
        if mode not in TEXT_INPUT_MODES:
            raise ValueError(f"unknown text input mode {mode!r}; choose one of {', '.join(TEXT_INPUT_MODES)}")
        return TEXT_INPUT_MODES[mode]
    if mode not in tts_gateway_pb2.TextInputMode.values():
        raise ValueError(f"unknown TextInputMode value {mode}")
    return cast(tts_gateway_pb2.TextInputMode, mode)


def output_format(encoding: str | int = "wav", sample_rate_hz: int = 0) -> audio_pb2.AudioFormat:
    value = ENCODINGS[encoding] if isinstance(encoding, str) else cast(audio_pb2.AudioEncoding, encoding)
    return audio_pb2.AudioFormat(encoding=value, sample_rate_hz=sample_rate_hz, channels=1)


def audio_input_from_file(path: str | Path) -> audio_pb2.AudioInput:
    """WAV and Ogg-Opus files travel as they are (the server decodes them); anything else libsndfile reads (FLAC,
    AIFF, ...) is decoded here and sent as lossless FLOAT32 mono. Raises UnreadableAudioError."""
    path = Path(path)
    data = _read_file(path)
    if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        return audio_pb2.AudioInput(audio=data, format=audio_pb2.AudioFormat(encoding=WAV))
    if data[:4] == b"OggS":
        return audio_pb2.AudioInput(audio=data, format=audio_pb2.AudioFormat(encoding=OGG_OPUS))
    mono, rate = read_mono(path)
    return audio_pb2.AudioInput(
        audio=mono.tobytes(), format=audio_pb2.AudioFormat(encoding=FLOAT32, sample_rate_hz=rate, channels=1)
    )


def conversion_settings(
    model: str | None = None,
    *,
    pitch_shift_semitones: float | None = None,
    formant_shift_semitones: float | None = None,
    f0_method: str | int | None = None,
    index_rate: float | None = None,
    protect: float | None = None,
    rms_mix_rate: float | None = None,
    filter_radius: int | None = None,
    speaker_id: int | None = None,
) -> conversion_pb2.ConversionSettings | None:
    """ConversionSettings with only the given fields set (unset ones keep the server's defaults); None if empty."""
    settings = conversion_pb2.ConversionSettings(model=model or "")
    if f0_method is not None:
        settings.f0_method = (
            F0_METHODS[f0_method] if isinstance(f0_method, str) else cast(conversion_pb2.F0Method, f0_method)
        )
    optional = {
        "pitch_shift_semitones": pitch_shift_semitones,
        "formant_shift_semitones": formant_shift_semitones,
        "index_rate": index_rate,
        "protect": protect,
        "rms_mix_rate": rms_mix_rate,
        "filter_radius": filter_radius,
        "speaker_id": speaker_id,
    }
    for name, value in optional.items():
        if value is not None:
            setattr(settings, name, value)
    return settings if settings.ByteSize() else None


@dataclass
class SynthesisOptions:
    """Everything of a synthesis request except the text; shared by Synthesize and StreamingSynthesize."""

    voice: str
    encoding: str | int = "wav"
    sample_rate_hz: int = 0
    speaker: str | None = None
    reference: audio_pb2.AudioInput | None = None
    reference_text: str | None = None
    instruction: str | None = None
    conversion: conversion_pb2.ConversionSettings | None = None
    disable_conversion: bool = False
    speaking_rate: float = 0.0
    request_id: str = ""
    # Voice design (Spark-TTS): "female"/"male", levels "very_low" .. "very_high" (None: moderate).
    gender: str | None = None
    pitch: str | None = None
    speed: str | None = None
    seed: int = 0  # 0: a fresh random seed per request

    def apply(self, message: tts_gateway_pb2.SynthesizeRequest | tts_gateway_pb2.StreamingSynthesizeConfig) -> None:
        message.voice = self.voice
        message.request_id = self.request_id
        message.output_format.CopyFrom(output_format(self.encoding, self.sample_rate_hz))
        message.speaking_rate = self.speaking_rate
        message.disable_conversion = self.disable_conversion
        message.seed = self.seed
        if self.conversion is not None:
            message.conversion.CopyFrom(self.conversion)
        # The mode follows from what was given, as in CosyVoice: reference + transcript is zero-shot, reference
        # alone is cross-lingual, an instruction is instruct, a speaker name alone is a preset speaker.
        if self.reference is not None:
            if self.instruction:
                raise ValueError("reference audio and an instruction cannot be combined")
            if self.reference_text:
                message.zero_shot.reference_audio.CopyFrom(self.reference)
                message.zero_shot.reference_text = self.reference_text
            else:
                message.cross_lingual.reference_audio.CopyFrom(self.reference)
        elif self.reference_text:
            raise ValueError("a reference transcript needs reference audio")
        elif self.gender:
            design = message.voice_design
            gender = tts_gateway_pb2.VoiceGender.Value(f"VOICE_GENDER_{self.gender.upper()}")
            design.gender = cast(tts_gateway_pb2.VoiceGender, gender)
            for field, level in (("pitch", self.pitch), ("speed", self.speed)):
                if level:
                    setattr(design, field, tts_gateway_pb2.VoiceLevel.Value(f"VOICE_LEVEL_{level.upper()}"))
        elif self.instruction:
            message.instruct.instruction = self.instruction
            message.instruct.speaker = self.speaker or ""
        elif self.speaker:
            message.preset_speaker.speaker = self.speaker


# --------------------------------------------------------------------------------------------------------------------
# Stream statistics
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class StreamStats:
    """Client-side view of one audio stream: time to first audio and real-time factor as the caller experiences them
    (network included), next to the server's own summary from the final chunk."""

    started: float = field(default_factory=time.monotonic)
    first_audio_at: float | None = None
    finished_at: float | None = None
    chunks: int = 0
    audio_bytes: int = 0
    audio_seconds: float = 0.0
    segments: int = 0
    sample_rate_hz: int = 0
    encoding: int = 0
    request_id: str = ""
    summary: audio_pb2.SynthesisSummary | None = None

    def observe(self, chunk: audio_pb2.AudioChunk) -> None:
        now = time.monotonic()
        self.chunks += 1
        self.audio_bytes += len(chunk.audio)
        self.audio_seconds += chunk.duration.ToTimedelta().total_seconds()
        self.segments = max(self.segments, chunk.segment_index + 1)
        self.sample_rate_hz = chunk.format.sample_rate_hz or self.sample_rate_hz
        self.encoding = chunk.format.encoding or self.encoding
        self.request_id = chunk.request_id or self.request_id
        if self.first_audio_at is None and chunk.duration.ToNanoseconds() > 0:
            self.first_audio_at = now
        if chunk.is_final:
            self.finished_at = now
            if chunk.HasField("summary"):
                self.summary = chunk.summary

    @property
    def time_to_first_audio(self) -> float | None:
        return None if self.first_audio_at is None else self.first_audio_at - self.started

    @property
    def elapsed(self) -> float:
        return (self.finished_at or time.monotonic()) - self.started

    @property
    def real_time_factor(self) -> float | None:
        return self.elapsed / self.audio_seconds if self.audio_seconds > 0 else None


# --------------------------------------------------------------------------------------------------------------------
# Retries
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RetryNotice:
    """Passed to a client's `on_retry` callback before it waits `delay_s` and tries the call again."""

    method: str
    code: grpc.StatusCode
    message: str
    delay_s: float
    retry: int  # 1 for the first retry
    max_retries: int


RetryCallback = Callable[[RetryNotice], None]
_T = TypeVar("_T")
_R = TypeVar("_R")


class _Deadline:
    def __init__(self, timeout: float | None) -> None:
        self.at = None if timeout is None else time.monotonic() + timeout

    def remaining(self) -> float | None:
        return None if self.at is None else max(0.0, self.at - time.monotonic())


class _Replayable(Generic[_T]):
    """A request stream that a retry can send again from its start.

    gRPC reads request iterators on a thread of its own, so an attempt that was refused may have taken items from
    the source (text pieces of a live token stream, audio blocks) that the server never used. Items are recorded
    as they are taken, and each attempt replays them before it reads on. Once the server has answered, no retry
    can happen (`stop_recording`), and the live attempt forgets what it has sent. A superseded attempt's reader
    gets no more items, so it cannot take one from the next attempt."""

    def __init__(self, source: Iterable[_T]) -> None:
        self._source = iter(source)
        self._items: deque[_T] = deque()
        self._base = 0  # index, in the whole stream, of _items[0]
        self._exhausted = False
        self._recording = True
        self._generation = 0
        self._lock = threading.Lock()

    def stop_recording(self) -> None:
        self._recording = False  # a plain store: must never wait for a reader blocked on a slow source

    def attempt(self) -> Iterator[_T]:
        with self._lock:
            self._generation += 1
            generation = self._generation
        return self._read(generation)

    def _read(self, generation: int) -> Iterator[_T]:
        index = 0
        while True:
            with self._lock:
                if generation != self._generation:
                    return
                offset = index - self._base
                if offset < len(self._items):
                    item = self._items[offset]
                elif self._exhausted:
                    return
                else:
                    try:
                        item = next(self._source)
                    except StopIteration:
                        self._exhausted = True
                        return
                    self._items.append(item)
                if not self._recording:
                    while self._items and self._base <= index:
                        self._items.popleft()
                        self._base += 1
            index += 1
            yield item


# --------------------------------------------------------------------------------------------------------------------
# Clients
# --------------------------------------------------------------------------------------------------------------------


class _BaseClient:
    DEFAULT_TARGET = ""

    def __init__(
        self,
        target: str | None = None,
        *,
        tls: bool = False,
        root_certificates: bytes | None = None,
        token: str | None = None,
        timeout: float | None = None,
        max_message_mb: int = 64,
        max_retries: int = DEFAULT_MAX_RETRIES,
        max_retry_delay: float = MAX_RETRY_DELAY_S,
        on_retry: RetryCallback | None = None,
        retry_jitter: float = DEFAULT_RETRY_JITTER,
    ) -> None:
        """`tls` uses the system roots unless `root_certificates` (PEM) is given; `token` is sent as
        'authorization: Bearer <token>'; `timeout` is the default deadline of every call, whole streams and retries
        included. A refused call is retried at most `max_retries` times (0: never), waiting what its RetryInfo
        says (plus jitter, `retry_jitter` 0 turns it off; see `jittered_delay`) but at most `max_retry_delay` seconds;
        `on_retry` hears of each retry before the wait."""
        if max_retries < 0:
            raise ValueError("max_retries must be 0 or more")
        self.target = target or self.DEFAULT_TARGET
        self.timeout = timeout
        self.max_retries = max_retries
        self.max_retry_delay = max_retry_delay
        self.retry_jitter = retry_jitter
        self.on_retry = on_retry
        self._metadata: tuple[tuple[str, str], ...] = (("authorization", f"Bearer {token}"),) if token else ()
        # Whole clips and their converted audio can be tens of MiB; match the services' 64 MiB default.
        options = [
            ("grpc.max_receive_message_length", max_message_mb * 1024 * 1024),
            ("grpc.max_send_message_length", max_message_mb * 1024 * 1024),
        ]
        if tls or root_certificates is not None:
            credentials = grpc.ssl_channel_credentials(root_certificates=root_certificates)
            self.channel = grpc.secure_channel(self.target, credentials, options=options)
        else:
            self.channel = grpc.insecure_channel(self.target, options=options)
        # grpc.health.v1.Health/Check on this client's channel, with its interceptors and timeouts.
        self._health_check = self.channel.unary_unary(
            rpc_details.HEALTH_CHECK_METHOD,
            request_serializer=rpc_details.HealthCheckRequest.SerializeToString,
            response_deserializer=rpc_details.HealthCheckResponse.FromString,
        )

    # ---- calls with retries ----------------------------------------------------------------------------------

    def _deadline(self, timeout: float | None) -> _Deadline:
        return _Deadline(timeout if timeout is not None else self.timeout)

    def _retry_delay(self, method: str, error: grpc.RpcError, retry: int, deadline: _Deadline) -> float | None:
        """How long to wait before retry number `retry` of a refused call, or None to give up and raise."""
        if retry > self.max_retries or not isinstance(error, grpc.Call) or error.code() not in RETRYABLE_CODES:
            return None
        asked = retry_delay_seconds(error)
        if asked is None:
            return None
        delay = jittered_delay(asked, retry, cap_s=self.max_retry_delay, jitter=self.retry_jitter)
        remaining = deadline.remaining()
        if remaining is not None and delay >= remaining:
            delay = min(asked, self.max_retry_delay)  # no jitter past the deadline; the asked delay may still fit
            if delay >= remaining:
                return None  # the retry could not even start before the deadline
        if self.on_retry is not None:
            code = error.code()
            message = (error.details() or "").strip()
            self.on_retry(RetryNotice(method, code, message, delay, retry, self.max_retries))
        return delay

    def _unary(self, method: str, call: Callable[..., _R], request: Any, timeout: float | None) -> _R:
        deadline = self._deadline(timeout)
        retry = 0
        while True:
            try:
                return call(request, metadata=self._metadata, timeout=deadline.remaining())
            except grpc.RpcError as error:
                retry += 1
                delay = self._retry_delay(method, error, retry, deadline)
                if delay is None:
                    raise
            time.sleep(delay)

    def _stream(
        self,
        method: str,
        start: Callable[[Iterator[_T] | None, float | None], grpc.Call],
        timeout: float | None,
        requests: _Replayable[_T] | None = None,
    ) -> Iterator[Any]:
        """Iterate a response stream, retrying a refusal that came before any response message. If the consumer
        stops early (break, exception, GC), the RPC is cancelled so the server stops working for nobody."""
        deadline = self._deadline(timeout)
        retry = 0
        while True:
            call = start(requests.attempt() if requests is not None else None, deadline.remaining())
            received = False
            try:
                for chunk in call:  # type: ignore[attr-defined]
                    if not received:
                        received = True
                        if requests is not None:
                            requests.stop_recording()
                    yield chunk
                return
            except grpc.RpcError as error:
                retry += 1
                delay = None if received else self._retry_delay(method, error, retry, deadline)
                if delay is None:
                    raise
            finally:
                call.cancel()
            time.sleep(delay)

    # ---- shared RPCs -----------------------------------------------------------------------------------------

    def health(self, service: str = "", *, timeout: float | None = None) -> str:
        """grpc.health.v1 status name ("SERVING", "NOT_SERVING", ...) of `service` ("" is the whole server)."""
        request = rpc_details.HealthCheckRequest(service=service)
        response = self._unary("Health/Check", self._health_check, request, timeout)
        return rpc_details.serving_status_name(response.status)

    def wait_ready(self, timeout: float = 10.0) -> None:
        """Block until the channel is connected (raises grpc.FutureTimeoutError otherwise)."""
        grpc.channel_ready_future(self.channel).result(timeout=timeout)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class TtsClient(_BaseClient):
    """Client of voice.v1.TtsGatewayService.

    >>> with TtsClient("127.0.0.1:50051") as tts:
    ...     for chunk in tts.synthesize("Hello there.", "joe", encoding="pcm16"):
    ...         player.write(chunk.audio)
    """

    DEFAULT_TARGET = DEFAULT_TTS_TARGET
    SERVICE = tts_gateway_pb2.DESCRIPTOR.services_by_name["TtsGatewayService"].full_name

    def __init__(self, target: str | None = None, **kwargs: Any) -> None:
        super().__init__(target, **kwargs)
        self.stub = tts_gateway_pb2_grpc.TtsGatewayServiceStub(self.channel)

    def synthesize(
        self,
        text: str,
        voice: str,
        *,
        encoding: str | int = "wav",
        sample_rate_hz: int = 0,
        speaker: str | None = None,
        reference: audio_pb2.AudioInput | None = None,
        reference_text: str | None = None,
        instruction: str | None = None,
        conversion: conversion_pb2.ConversionSettings | None = None,
        disable_conversion: bool = False,
        speaking_rate: float = 0.0,
        request_id: str = "",
        timeout: float | None = None,
    ) -> Iterator[audio_pb2.AudioChunk]:
        """Streams the audio of `text` as ordered AudioChunks; the last has is_final and the summary.

        The synthesis mode follows from the arguments (see SynthesisOptions). Leaving the loop early cancels the
        call, so the server stops synthesizing."""
        options = SynthesisOptions(
            voice=voice,
            encoding=encoding,
            sample_rate_hz=sample_rate_hz,
            speaker=speaker,
            reference=reference,
            reference_text=reference_text,
            instruction=instruction,
            conversion=conversion,
            disable_conversion=disable_conversion,
            speaking_rate=speaking_rate,
            request_id=request_id,
        )
        return self.synthesize_with(text, options, timeout=timeout)

    def synthesize_with(
        self, text: str, options: SynthesisOptions, *, timeout: float | None = None
    ) -> Iterator[audio_pb2.AudioChunk]:
        request = tts_gateway_pb2.SynthesizeRequest(text=text)
        options.apply(request)

        def start(_: Iterator[Any] | None, remaining: float | None) -> grpc.Call:
            return self.stub.Synthesize(request, metadata=self._metadata, timeout=remaining)  # type: ignore[no-any-return]

        return self._stream("Synthesize", start, timeout)

    def streaming_synthesize(
        self,
        text_pieces: Iterable[str],
        options: SynthesisOptions,
        *,
        flush_after_each: bool = False,
        text_input_mode: TextInputModeName | int = "auto",
        timeout: float | None = None,
    ) -> Iterator[audio_pb2.AudioChunk]:
        """Sends text incrementally (e.g. LLM tokens) while the audio streams back. `text_pieces` is read lazily,
        on gRPC's own thread, so a live source (a token stream, a pipe) is sent piece by piece as it yields.

        `text_input_mode` (see TEXT_INPUT_MODES) says how the gateway hands the text to the model: "sentences"
        synthesizes each complete sentence while more text arrives; "incremental" gives every piece to the model at
        once, so audio can start before the first sentence is complete (voices whose `streams_text_input` is true;
        others refuse it with FAILED_PRECONDITION); "auto" (the default) is the voice's own default. The end of
        `text_pieces` flushes whatever is buffered; `flush_after_each` forces a flush after every piece. A refused
        call is retried with the pieces taken so far sent again."""
        config = tts_gateway_pb2.StreamingSynthesizeConfig()
        options.apply(config)
        config.text_input_mode = text_input_mode_value(text_input_mode)
        pieces = _Replayable(text_pieces)

        def requests(attempt: Iterator[str]) -> Iterator[tts_gateway_pb2.StreamingSynthesizeRequest]:
            yield tts_gateway_pb2.StreamingSynthesizeRequest(config=config)
            for piece in attempt:
                yield tts_gateway_pb2.StreamingSynthesizeRequest(text=piece)
                if flush_after_each:
                    yield tts_gateway_pb2.StreamingSynthesizeRequest(
                        flush=tts_gateway_pb2.StreamingSynthesizeRequest.Flush()
                    )

        def start(attempt: Iterator[str] | None, remaining: float | None) -> grpc.Call:
            assert attempt is not None
            call = self.stub.StreamingSynthesize(requests(attempt), metadata=self._metadata, timeout=remaining)
            return call  # type: ignore[no-any-return]

        return self._stream("StreamingSynthesize", start, timeout, pieces)

    def list_voices(self, language_code: str = "", *, timeout: float | None = None) -> list[tts_gateway_pb2.Voice]:
        request = tts_gateway_pb2.ListVoicesRequest(language_code=language_code)
        return list(self._unary("ListVoices", self.stub.ListVoices, request, timeout).voices)

    def status(self, *, timeout: float | None = None) -> tts_gateway_pb2.TtsGatewayServiceGetStatusResponse:
        request = tts_gateway_pb2.TtsGatewayServiceGetStatusRequest()
        response: tts_gateway_pb2.TtsGatewayServiceGetStatusResponse = self._unary(
            "GetStatus", self.stub.GetStatus, request, timeout
        )
        return response

    def create_voice(
        self,
        name: str,
        base_voice: str,
        reference: audio_pb2.AudioInput,
        reference_text: str = "",
        description: str = "",
        *,
        timeout: float | None = None,
    ) -> tts_gateway_pb2.Voice:
        """Save a cloned voice under `name`; afterwards synthesize with voice=name and no reference."""
        request = tts_gateway_pb2.CreateVoiceRequest(
            name=name,
            base_voice=base_voice,
            reference_audio=reference,
            reference_text=reference_text,
            description=description,
        )
        voice: tts_gateway_pb2.Voice = self._unary("CreateVoice", self.stub.CreateVoice, request, timeout).voice
        return voice

    def get_voice(self, name: str, *, timeout: float | None = None) -> tts_gateway_pb2.Voice:
        request = tts_gateway_pb2.GetVoiceRequest(name=name)
        voice: tts_gateway_pb2.Voice = self._unary("GetVoice", self.stub.GetVoice, request, timeout).voice
        return voice

    def delete_voice(self, name: str, *, timeout: float | None = None) -> tts_gateway_pb2.Voice:
        request = tts_gateway_pb2.DeleteVoiceRequest(name=name)
        voice: tts_gateway_pb2.Voice = self._unary("DeleteVoice", self.stub.DeleteVoice, request, timeout).voice
        return voice


def recognition_config(
    model: str = "", language_code: str = "", *, word_time_offsets: bool = False
) -> recognition_pb2.RecognitionConfig:
    """A RecognitionConfig: `model` "" is the server's default model, `language_code` "" the model's default."""
    return recognition_pb2.RecognitionConfig(
        model=model, language_code=language_code, enable_word_time_offsets=word_time_offsets
    )


def raw_format(encoding: str | int, sample_rate_hz: int) -> audio_pb2.AudioFormat:
    """The AudioFormat of raw mono audio: `encoding` a name in RAW_ENCODINGS or an AudioEncoding value."""
    value = RAW_ENCODINGS[encoding] if isinstance(encoding, str) else cast(audio_pb2.AudioEncoding, encoding)
    return audio_pb2.AudioFormat(encoding=value, sample_rate_hz=sample_rate_hz, channels=1)


class RecognitionClient(_BaseClient):
    """Client of voice.v1.RecognitionService (speech to text), served by the gateway process on its port.

    >>> with RecognitionClient("127.0.0.1:50051") as asr:
    ...     response = asr.recognize(audio_input_from_file("hello.wav"))
    ...     print([r.alternatives[0].transcript for r in response.results])
    """

    DEFAULT_TARGET = DEFAULT_TTS_TARGET
    SERVICE = recognition_pb2.DESCRIPTOR.services_by_name["RecognitionService"].full_name

    def __init__(self, target: str | None = None, **kwargs: Any) -> None:
        super().__init__(target, **kwargs)
        self.stub = recognition_pb2_grpc.RecognitionServiceStub(self.channel)

    def recognize(
        self,
        audio: audio_pb2.AudioInput,
        *,
        model: str = "",
        language_code: str = "",
        word_time_offsets: bool = False,
        request_id: str = "",
        timeout: float | None = None,
    ) -> recognition_pb2.RecognizeResponse:
        """Transcribes a whole clip (WAV, Ogg-Opus, or raw PCM16/FLOAT32/MULAW/ALAW with its rate): one final result
        per utterance, in order. A refusal with a RetryInfo delay is retried (the call is idempotent)."""
        request = recognition_pb2.RecognizeRequest(
            request_id=request_id,
            config=recognition_config(model, language_code, word_time_offsets=word_time_offsets),
            audio=audio,
        )
        response: recognition_pb2.RecognizeResponse = self._unary("Recognize", self.stub.Recognize, request, timeout)
        return response

    def streaming_recognize(
        self,
        chunks: Iterable[bytes],
        *,
        input_format: audio_pb2.AudioFormat,
        model: str = "",
        language_code: str = "",
        word_time_offsets: bool = False,
        interim_results: bool = False,
        single_utterance: bool = False,
        request_id: str = "",
        timeout: float | None = None,
    ) -> Iterator[recognition_pb2.StreamingRecognizeResponse]:
        """Sends raw audio `chunks` in `input_format` (see `raw_format`) while results stream back: SPEECH_START
        events, interim results (with `interim_results`), and a final result at each END_OF_UTTERANCE. `chunks` is
        read lazily on gRPC's own thread, so a live source (a microphone, a pipe) is sent as it yields; its end
        half-closes the call, which finalises the utterance in progress. As for the other streaming calls, a refusal
        that comes before any response is retried with the chunks taken so far sent again. Leaving the loop early
        cancels the call."""
        config = recognition_pb2.StreamingRecognitionConfig(
            request_id=request_id,
            config=recognition_config(model, language_code, word_time_offsets=word_time_offsets),
            audio_format=input_format,
            interim_results=interim_results,
            single_utterance=single_utterance,
        )
        replayable = _Replayable(chunks)

        def requests(attempt: Iterator[bytes]) -> Iterator[recognition_pb2.StreamingRecognizeRequest]:
            yield recognition_pb2.StreamingRecognizeRequest(config=config)
            for chunk in attempt:
                if chunk:
                    yield recognition_pb2.StreamingRecognizeRequest(audio=chunk)

        def start(attempt: Iterator[bytes] | None, remaining: float | None) -> grpc.Call:
            assert attempt is not None
            call = self.stub.StreamingRecognize(requests(attempt), metadata=self._metadata, timeout=remaining)
            return call  # type: ignore[no-any-return]

        return self._stream("StreamingRecognize", start, timeout, replayable)

    def list_models(self, *, timeout: float | None = None) -> list[recognition_pb2.RecognitionModel]:
        """The recognition models the server serves, its default first."""
        request = recognition_pb2.ListRecognitionModelsRequest()
        return list(self._unary("ListRecognitionModels", self.stub.ListRecognitionModels, request, timeout).models)


class ConversionClient(_BaseClient):
    """Client of voice.v1.VoiceConversionService (RVC checkpoints and the built-in WORLD voices)."""

    DEFAULT_TARGET = DEFAULT_RVC_TARGET
    SERVICE = voice_conversion_pb2.DESCRIPTOR.services_by_name["VoiceConversionService"].full_name

    def __init__(self, target: str | None = None, **kwargs: Any) -> None:
        super().__init__(target, **kwargs)
        self.stub = voice_conversion_pb2_grpc.VoiceConversionServiceStub(self.channel)

    def convert_clip(
        self,
        audio: audio_pb2.AudioInput,
        settings: conversion_pb2.ConversionSettings,
        *,
        encoding: str | int = "wav",
        sample_rate_hz: int = 0,
        request_id: str = "",
        timeout: float | None = None,
    ) -> voice_conversion_pb2.ConvertClipResponse:
        """Converts a whole clip; the response holds the complete output file (WAV/Ogg-Opus) or raw PCM."""
        request = voice_conversion_pb2.ConvertClipRequest(
            request_id=request_id,
            settings=settings,
            audio=audio,
            output_format=output_format(encoding, sample_rate_hz),
        )
        response: voice_conversion_pb2.ConvertClipResponse = self._unary(
            "ConvertClip", self.stub.ConvertClip, request, timeout
        )
        return response

    def convert(
        self,
        blocks: Iterable[bytes],
        settings: conversion_pb2.ConversionSettings,
        *,
        input_format: audio_pb2.AudioFormat,
        encoding: str | int = "wav",
        sample_rate_hz: int = 0,
        request_id: str = "",
        timeout: float | None = None,
    ) -> Iterator[audio_pb2.AudioChunk]:
        """Streaming conversion: raw PCM16/FLOAT32 `blocks` in `input_format` go up while converted chunks come back."""
        config = voice_conversion_pb2.ConvertConfig(
            request_id=request_id,
            settings=settings,
            input_format=input_format,
            output_format=output_format(encoding, sample_rate_hz),
        )
        replayable = _Replayable(blocks)

        def requests(attempt: Iterator[bytes]) -> Iterator[voice_conversion_pb2.ConvertRequest]:
            yield voice_conversion_pb2.ConvertRequest(config=config)
            for block in attempt:
                yield voice_conversion_pb2.ConvertRequest(audio=block)

        def start(attempt: Iterator[bytes] | None, remaining: float | None) -> grpc.Call:
            assert attempt is not None
            return self.stub.Convert(requests(attempt), metadata=self._metadata, timeout=remaining)  # type: ignore[no-any-return]

        return self._stream("Convert", start, timeout, replayable)

    def list_models(self, *, timeout: float | None = None) -> list[voice_conversion_pb2.ModelInfo]:
        request = voice_conversion_pb2.ListModelsRequest()
        return list(self._unary("ListModels", self.stub.ListModels, request, timeout).models)

    def load_model(self, name: str, *, timeout: float | None = None) -> voice_conversion_pb2.LoadModelResponse:
        request = voice_conversion_pb2.LoadModelRequest(name=name)
        response: voice_conversion_pb2.LoadModelResponse = self._unary(
            "LoadModel", self.stub.LoadModel, request, timeout
        )
        return response

    def unload_model(self, name: str, *, timeout: float | None = None) -> bool:
        """Frees the model; False when it was not loaded."""
        request = voice_conversion_pb2.UnloadModelRequest(name=name)
        return bool(self._unary("UnloadModel", self.stub.UnloadModel, request, timeout).was_loaded)

    def status(self, *, timeout: float | None = None) -> voice_conversion_pb2.VoiceConversionServiceGetStatusResponse:
        request = voice_conversion_pb2.VoiceConversionServiceGetStatusRequest()
        response: voice_conversion_pb2.VoiceConversionServiceGetStatusResponse = self._unary(
            "GetStatus", self.stub.GetStatus, request, timeout
        )
        return response


def pcm_blocks(samples: npt.NDArray[np.float32], rate: int, block_seconds: float = 0.5) -> Iterator[bytes]:
    """Float mono samples as PCM16 blocks of `block_seconds`, the shape a live source would stream them in."""
    pcm = (np.clip(samples, -1.0, 1.0) * 32767.0).round().astype("<i2")
    step = max(1, int(rate * block_seconds))
    for start in range(0, len(pcm), step):
        yield pcm[start : start + step].tobytes()


def raw_blocks(data: bytes, encoding: str | int, rate: int, block_seconds: float = 0.1) -> Iterator[bytes]:
    """Raw audio bytes in `encoding` (see RAW_ENCODINGS) cut into blocks of `block_seconds` (whole samples)."""
    value = RAW_ENCODINGS[encoding] if isinstance(encoding, str) else int(encoding)
    step = max(1, int(rate * block_seconds)) * RAW_SAMPLE_BYTES[value]
    for start in range(0, len(data), step):
        yield data[start : start + step]


__all__: Sequence[str] = [
    "DEFAULT_MAX_RETRIES",
    "DEFAULT_RVC_TARGET",
    "DEFAULT_TTS_TARGET",
    "ENCODINGS",
    "EXIT_CODES",
    "EXIT_LOCAL_ERROR",
    "EXIT_OK",
    "EXIT_OTHER_RPC_ERROR",
    "F0_METHODS",
    "MAX_RETRY_DELAY_S",
    "RAW_ENCODINGS",
    "RAW_SAMPLE_BYTES",
    "RETRYABLE_CODES",
    "TEXT_INPUT_MODES",
    "ConversionClient",
    "RecognitionClient",
    "RetryNotice",
    "StreamStats",
    "SynthesisOptions",
    "TextInputModeName",
    "TtsClient",
    "UnreadableAudioError",
    "audio_input_from_file",
    "conversion_settings",
    "describe_rpc_error",
    "exit_code_for",
    "jittered_delay",
    "output_format",
    "pcm_blocks",
    "raw_blocks",
    "raw_format",
    "read_mono",
    "recognition_config",
    "status_details",
    "text_input_mode_value",
]
