"""voice.v1.RecognitionService: speech in. Thin servicer over the endpointer (endpointing.py), the voice-activity
detector (vad.py) and the Triton recognition client (asr_client.py).

Recognize decodes the whole clip, cuts it into utterances by voice activity and recognises each one. StreamingRecognize
reads the config, then raw audio: the audio is resampled to the VAD rate and cut into utterances as it arrives; while
an utterance is being spoken (with interim_results) the utterance so far is re-recognised every `interim_interval_s`
of new audio and sent as an interim result; at each end of utterance (a pause, the utterance length cap, or the
client's half-close) its final result goes out with END_OF_UTTERANCE (END_OF_SINGLE_UTTERANCE with single_utterance,
which then ends the call). One worker per call runs the recognitions in order, so no interim result of an utterance
follows its final result; a cancelled call cancels the reader, the worker and the Triton call in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np
from numpy.typing import NDArray
from prometheus_client import Counter, Histogram

from services.common import g711
from services.common.audio import (
    ALAW,
    FLOAT32,
    MULAW,
    PCM16,
    AudioDecodeError,
    StreamResampler,
    decode_audio,
    encoding_name,
    pcm16_to_float,
    resample,
)
from services.common.contract import MiB
from services.common.durations import duration_from_seconds
from services.common.errors import InvalidArgument, NotFound, ServiceError, Unavailable, clip, status_code_of
from services.common.request_id import resolve_request_id
from services.tts_gateway.asr_client import AsrModelInfo, AsrResult, TritonAsr
from services.tts_gateway.endpointing import EndpointerSettings, Segmenter, SpeechStart, Utterance
from services.tts_gateway.vad import VAD_RATE_HZ, make_vad
from voice.v1 import recognition_pb2, recognition_pb2_grpc

log = logging.getLogger(__name__)


_RTF_BUCKETS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 5.0)
REQUESTS = Counter(
    "tts_gateway_recognition_requests_total",
    "Recognition calls by model, method and final status code.",
    ["model", "method", "code"],
)
AUDIO_SECONDS = Counter(
    "tts_gateway_recognition_audio_seconds_total", "Seconds of audio received for recognition.", ["model"]
)
RECOGNITIONS = Counter(
    "tts_gateway_recognition_model_calls_total",
    "Calls to a recognition model by kind (final, interim).",
    ["model", "kind"],
)
REAL_TIME_FACTOR = Histogram(
    "tts_gateway_recognition_real_time_factor",
    "Model time divided by the audio duration of each final recognition.",
    ["model"],
    buckets=_RTF_BUCKETS,
)

EventType = recognition_pb2.StreamingRecognizeResponse.SpeechEventType
_STREAM_ENCODINGS = {PCM16: 2, FLOAT32: 4, MULAW: 1, ALAW: 1}
_STREAM_RATES = (8000, 48000)


@dataclass(frozen=True)
class RecognitionSettings:
    default_model: str = "pocketsphinx"
    vad: str = "silero"
    endpointer: EndpointerSettings = field(default_factory=EndpointerSettings)
    interim_interval_s: float = 0.5
    max_recognize_seconds: float = 600.0
    max_recognize_bytes: int = 8 * MiB


def _raw_to_float(data: bytes, encoding: int) -> NDArray[np.float32]:
    if encoding == PCM16:
        return pcm16_to_float(data)
    if encoding == MULAW:
        return g711.decode_ulaw(data)
    if encoding == ALAW:
        return g711.decode_alaw(data)
    samples = np.frombuffer(data, dtype="<f4").astype(np.float32)
    if not np.all(np.isfinite(samples)):
        raise InvalidArgument([("audio", "FLOAT32 audio contains NaN or infinite samples")])
    return np.clip(samples, -1.0, 1.0)


def _result(
    result: AsrResult, *, final: bool, index: int, start_s: float, end_s: float, words: bool
) -> recognition_pb2.SpeechRecognitionResult:
    alternative = recognition_pb2.SpeechRecognitionAlternative(
        transcript=result.transcript, confidence=result.confidence
    )
    if words:
        for word in result.words:
            alternative.words.append(
                recognition_pb2.WordInfo(
                    word=word.word,
                    start_offset=duration_from_seconds(start_s + word.start_s),
                    end_offset=duration_from_seconds(start_s + word.end_s),
                    confidence=word.confidence,
                )
            )
    return recognition_pb2.SpeechRecognitionResult(
        alternatives=[alternative],
        is_final=final,
        utterance_index=index,
        utterance_start_offset=duration_from_seconds(start_s),
        result_end_offset=duration_from_seconds(end_s),
        language_code=result.language,
    )


class _Stream:
    """One StreamingRecognize call: a reader (audio -> utterances) and a worker (recognitions, in order)."""

    def __init__(
        self,
        servicer: RecognitionServicer,
        config: recognition_pb2.StreamingRecognitionConfig,
        model: AsrModelInfo,
        language: str,
        request_id: str,
    ) -> None:
        self.servicer = servicer
        self.config = config
        self.model = model
        self.language = language
        self.request_id = request_id
        self.encoding = config.audio_format.encoding
        self.width = _STREAM_ENCODINGS[self.encoding]
        self.resampler = StreamResampler(config.audio_format.sample_rate_hz, VAD_RATE_HZ)
        vad = make_vad(servicer.settings.vad)
        self.segmenter = Segmenter(VAD_RATE_HZ, vad.frame_samples, vad, servicer.settings.endpointer)
        self.remainder = b""
        self.received_samples = 0
        self.out: asyncio.Queue[recognition_pb2.StreamingRecognizeResponse | BaseException | None] = asyncio.Queue()
        self.jobs: asyncio.Queue[tuple[str, int, NDArray[np.float32], float, float] | None] = asyncio.Queue()
        self.interim_pending = False
        self.interim_at_samples = 0  # utterance length (VAD-rate samples) at the last interim
        self.stop_reading = asyncio.Event()

    def response(self, **fields: Any) -> recognition_pb2.StreamingRecognizeResponse:
        received = self.received_samples / self.config.audio_format.sample_rate_hz
        return recognition_pb2.StreamingRecognizeResponse(
            request_id=self.request_id, total_audio_received=duration_from_seconds(received), **fields
        )

    async def read(self, messages: AsyncIterator[recognition_pb2.StreamingRecognizeRequest]) -> None:
        try:
            async for message in messages:
                if self.stop_reading.is_set():
                    break
                kind = message.WhichOneof("request")
                if kind == "config":
                    raise InvalidArgument([("config", "must be sent only once, on the first message")])
                if kind == "audio" and message.audio:
                    self._feed(message.audio)
                if self.stop_reading.is_set():
                    break
            else:
                self._finish()
        except ServiceError as exc:
            await self.out.put(exc)
        except grpc.aio.AioRpcError:
            pass  # the client went away; the call's cancellation ends everything
        finally:
            await self.jobs.put(None)

    def _feed(self, data: bytes) -> None:
        data = self.remainder + data
        whole = len(data) - len(data) % self.width
        self.remainder = data[whole:]
        if not whole:
            return
        samples = _raw_to_float(data[:whole], self.encoding)
        self.received_samples += samples.size
        AUDIO_SECONDS.labels(self.model.name).inc(samples.size / self.config.audio_format.sample_rate_hz)
        self._events(self.segmenter.feed(self.resampler.process(samples)))
        if self.config.interim_results and self.segmenter.in_speech and not self.interim_pending:
            audio, start_s = self.segmenter.current()
            interval = self.servicer.settings.interim_interval_s * VAD_RATE_HZ
            if audio.size - self.interim_at_samples >= interval:
                self.interim_pending = True
                self.interim_at_samples = audio.size
                end_s = start_s + audio.size / VAD_RATE_HZ
                self.jobs.put_nowait(("interim", self.segmenter.utterances, audio, start_s, end_s))

    def _finish(self) -> None:
        tail = self.resampler.flush()
        events = self.segmenter.feed(tail) if tail.size else []
        self._events(events + self.segmenter.finish())

    def _events(self, events: list[SpeechStart | Utterance]) -> None:
        for event in events:
            if isinstance(event, SpeechStart):
                self.out.put_nowait(self.response(speech_event_type=EventType.SPEECH_EVENT_TYPE_SPEECH_START))
                continue
            self.interim_at_samples = 0
            self.jobs.put_nowait(("final", event.index, event.samples, event.start_s, event.end_s))
            if self.config.single_utterance:
                self.stop_reading.set()
                return

    async def work(self) -> None:
        """Recognise the queued utterances in order; an interim whose utterance already ended is skipped."""
        settings = self.config.config
        try:
            while (job := await self.jobs.get()) is not None:
                kind, index, audio, start_s, end_s = job
                if kind == "interim":
                    self.interim_pending = False
                    if index != self.segmenter.utterances or not self.segmenter.in_speech:
                        continue  # its utterance ended meanwhile: the final result is on its way
                result = await self.servicer.recognize(
                    self.model,
                    audio,
                    VAD_RATE_HZ,
                    self.language,
                    settings.enable_word_time_offsets,
                    self.request_id,
                    kind,
                )
                final = kind == "final"
                if final and not result.transcript:
                    continue  # a noise burst the VAD took for speech: nothing to report
                event = EventType.SPEECH_EVENT_TYPE_UNSPECIFIED
                if final:
                    single = self.config.single_utterance
                    event = (
                        EventType.SPEECH_EVENT_TYPE_END_OF_SINGLE_UTTERANCE
                        if single
                        else EventType.SPEECH_EVENT_TYPE_END_OF_UTTERANCE
                    )
                message = _result(
                    result,
                    final=final,
                    index=index,
                    start_s=start_s,
                    end_s=end_s,
                    words=settings.enable_word_time_offsets and final,
                )
                await self.out.put(self.response(results=[message], speech_event_type=event))
                if final and self.config.single_utterance:
                    break
        except ServiceError as exc:
            await self.out.put(exc)
        finally:
            await self.out.put(None)


class RecognitionServicer(recognition_pb2_grpc.RecognitionServiceServicer):
    def __init__(self, asr: TritonAsr, settings: RecognitionSettings | None = None) -> None:
        self.asr = asr
        self.settings = settings or RecognitionSettings()

    # ---- helpers -----------------------------------------------------------------------------------------------

    async def resolve_model(self, name: str) -> AsrModelInfo:
        models = await self.asr.models()
        if not models:
            models = await self.asr.models(fresh=True)
        if not models:
            raise Unavailable(
                f"Triton at {self.asr.triton.url} serves no recognition model now (none declares task=recognition)",
                retry_after_s=1.0,
            )
        if not name:
            for model in models:
                if model.name == self.settings.default_model:
                    return model
            return models[0]
        for model in models:
            if model.name == name:
                return model
        fresh = await self.asr.models(fresh=True)
        for model in fresh:
            if model.name == name:
                return model
        raise NotFound(
            f"unknown recognition model {clip(name)!r}; served: {', '.join(m.name for m in fresh) or 'none'}",
            resource_type="model",
            resource_name=name,
        )

    async def recognize(
        self,
        model: AsrModelInfo,
        audio: NDArray[np.float32],
        rate: int,
        language: str,
        words: bool,
        request_id: str,
        kind: str,
    ) -> AsrResult:
        samples = resample(audio, rate, model.sample_rate_hz) if rate != model.sample_rate_hz else audio
        result = await self.asr.recognize(model, samples, language, words, request_id)
        RECOGNITIONS.labels(model.name, kind).inc()
        if kind == "final" and samples.size:
            REAL_TIME_FACTOR.labels(model.name).observe(result.busy_s / (samples.size / model.sample_rate_hz))
        return result

    @contextlib.contextmanager
    def _counted(self, method: str) -> Any:
        holder = {"model": ""}
        code = grpc.StatusCode.OK
        try:
            yield holder
        except BaseException as exc:
            code = status_code_of(exc)
            raise
        finally:
            REQUESTS.labels(holder["model"] or "-", method, code.name).inc()

    # ---- RPCs ------------------------------------------------------------------------------------------------

    async def Recognize(
        self,
        request: recognition_pb2.RecognizeRequest,
        context: grpc.aio.ServicerContext[recognition_pb2.RecognizeRequest, recognition_pb2.RecognizeResponse],
    ) -> recognition_pb2.RecognizeResponse:
        with self._counted("Recognize") as counted:
            request_id = resolve_request_id(request.request_id)
            if not request.HasField("audio") or not request.audio.audio:
                raise InvalidArgument([("audio.audio", "is required: the clip to recognise (it is empty)")])
            limit = self.settings.max_recognize_bytes
            if len(request.audio.audio) > limit:
                raise InvalidArgument(
                    [("audio.audio", f"is {len(request.audio.audio)} bytes, over the {limit / MiB:g} MiB limit")]
                )
            model = await self.resolve_model(request.config.model)
            counted["model"] = model.name
            language = model.language(request.config.language_code)
            max_s = min(self.settings.max_recognize_seconds, model.max_audio_seconds)
            fmt = request.audio.format
            try:
                audio, rate = await asyncio.to_thread(
                    decode_audio, request.audio.audio, fmt.encoding, fmt.sample_rate_hz, fmt.channels, max_seconds=max_s
                )
            except AudioDecodeError as exc:
                raise InvalidArgument([("audio.audio", str(exc))]) from None
            AUDIO_SECONDS.labels(model.name).inc(audio.size / rate)
            utterances = await asyncio.to_thread(self._cut, audio, rate)
            response = recognition_pb2.RecognizeResponse(
                request_id=request_id, audio_duration=duration_from_seconds(audio.size / rate), model=model.name
            )
            words = request.config.enable_word_time_offsets
            for utterance in utterances:
                result = await self.recognize(
                    model, utterance.samples, VAD_RATE_HZ, language, words, request_id, "final"
                )
                if result.transcript:
                    response.results.append(
                        _result(
                            result,
                            final=True,
                            index=len(response.results),
                            start_s=utterance.start_s,
                            end_s=utterance.end_s,
                            words=words,
                        )
                    )
            return response

    def _cut(self, audio: NDArray[np.float32], rate: int) -> list[Utterance]:
        vad = make_vad(self.settings.vad)
        segmenter = Segmenter(VAD_RATE_HZ, vad.frame_samples, vad, self.settings.endpointer)
        events = segmenter.feed(resample(audio, rate, VAD_RATE_HZ)) + segmenter.finish()
        return [event for event in events if isinstance(event, Utterance)]

    async def StreamingRecognize(
        self,
        request_iterator: AsyncIterator[recognition_pb2.StreamingRecognizeRequest],
        context: grpc.aio.ServicerContext[
            recognition_pb2.StreamingRecognizeRequest, recognition_pb2.StreamingRecognizeResponse
        ],
    ) -> AsyncIterator[recognition_pb2.StreamingRecognizeResponse]:
        with self._counted("StreamingRecognize") as counted:
            first = None
            async for message in request_iterator:
                first = message
                break
            if first is None or first.WhichOneof("request") != "config":
                raise InvalidArgument([("config", "the first message must carry the config")])
            config = first.config
            request_id = resolve_request_id(config.request_id, field="config.request_id")
            self._check_stream_format(config)
            model = await self.resolve_model(config.config.model)
            counted["model"] = model.name
            language = model.language(config.config.language_code)
            stream = _Stream(self, config, model, language, request_id)
            tasks = [
                asyncio.create_task(stream.read(request_iterator), name=f"asr-read:{request_id}"),
                asyncio.create_task(stream.work(), name=f"asr-work:{request_id}"),
            ]
            try:
                while (item := await stream.out.get()) is not None:
                    if isinstance(item, BaseException):
                        raise item
                    yield item
            finally:
                for task in tasks:
                    task.cancel()
                for task in tasks:
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await task

    def _check_stream_format(self, config: recognition_pb2.StreamingRecognitionConfig) -> None:
        violations: list[tuple[str, str]] = []
        fmt = config.audio_format
        if fmt.encoding not in _STREAM_ENCODINGS:
            violations.append(
                (
                    "config.audio_format.encoding",
                    f"{encoding_name(fmt.encoding)} cannot be streamed: use PCM16, FLOAT32, MULAW or ALAW (raw bytes)",
                )
            )
        low, high = _STREAM_RATES
        if not low <= fmt.sample_rate_hz <= high:
            violations.append(
                ("config.audio_format.sample_rate_hz", f"must be {low}..{high} (got {fmt.sample_rate_hz})")
            )
        if fmt.channels not in (0, 1):
            violations.append(("config.audio_format.channels", "streamed audio must be mono (0 or 1)"))
        if violations:
            raise InvalidArgument(violations)

    async def ListRecognitionModels(
        self,
        request: recognition_pb2.ListRecognitionModelsRequest,
        context: grpc.aio.ServicerContext[
            recognition_pb2.ListRecognitionModelsRequest, recognition_pb2.ListRecognitionModelsResponse
        ],
    ) -> recognition_pb2.ListRecognitionModelsResponse:
        models = await self.asr.models(fresh=True)
        default = next((m.name for m in models if m.name == self.settings.default_model), "")
        ordered = sorted(models, key=lambda m: (m.name != default, m.name))
        return recognition_pb2.ListRecognitionModelsResponse(
            models=[
                recognition_pb2.RecognitionModel(
                    name=m.name,
                    description=m.description,
                    language_codes=list(m.language_codes),
                    sample_rate_hz=m.sample_rate_hz,
                    word_time_offsets=m.word_time_offsets,
                    available=True,
                )
                for m in ordered
            ]
        )
