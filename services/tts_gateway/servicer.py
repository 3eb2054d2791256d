"""voice.v1.TtsGatewayService: admission, validation, then hand the request to a SynthesisPipeline."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc

from services.common.durations import duration_from_seconds, seconds_from_duration
from services.common.errors import (
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    ServiceError,
    Unavailable,
    clip,
    status_code_of,
)
from services.common.request_id import REQUEST_ID_METADATA_KEY, resolve_request_id
from services.common.version import VERSION
from services.tts_gateway import metrics
from services.tts_gateway.admission import AdmissionQueue, RealTimeAdmission, Refused
from services.tts_gateway.domain import MODE_CROSS_LINGUAL, MODE_ZERO_SHOT
from services.tts_gateway.pipeline import SynthesisPipeline
from services.tts_gateway.plan import SynthesisPlan
from services.tts_gateway.saved_voices import SavedVoiceStore, name_problem
from services.tts_gateway.text import (
    MAX_PIECE_CHARS,
    NOTHING_TO_SPEAK,
    IncrementalSplitter,
    control_character_problem,
    is_pronounceable,
    split_text,
)
from services.tts_gateway.upstream_protocols import ConversionUpstream, SpeechUpstream
from services.tts_gateway.upstreams import UpstreamMonitor
from services.tts_gateway.validation import DecodedReference, RequestValidator
from services.tts_gateway.voices import Voice, VoiceCatalog
from voice.v1 import audio_pb2, tts_gateway_pb2, tts_gateway_pb2_grpc

log = logging.getLogger(__name__)
SUMMARY_METADATA_KEY = "x-summary-bin"


@dataclass
class _TextState:
    """What reading one text stream has seen."""

    got_text: bool = False  # a text message with something besides whitespace

    def require_spoken(self, spoken: bool) -> None:
        """Text came but none of it went to synthesis: nothing in the stream was pronounceable."""
        if self.got_text and not spoken:
            raise InvalidArgument([("text", NOTHING_TO_SPEAK)])


@dataclass
class _AdmittedStream:
    """A stream the admission queue let in; its pipeline, once planned, tells the real-time model how it went."""

    waited_s: float
    ticket: int
    pipeline: SynthesisPipeline | None = None


# A stream counts as starting (twice against the real-time capacity) until its listener has this much audio in hand.
SETTLED_AHEAD_S = 2.0

# The admission queue's name for every voice name the catalogue does not know ("?" is in no valid name): such a request
# fails validation once admitted, and must not open a share key or a cold start of its own while it waits.
UNKNOWN_VOICE = "?"


class TtsGatewayServicer(tts_gateway_pb2_grpc.TtsGatewayServiceServicer):
    def __init__(
        self,
        *,
        catalog: VoiceCatalog,
        validator: RequestValidator,
        triton: SpeechUpstream,
        rvc: ConversionUpstream,
        monitor: UpstreamMonitor,
        windows: metrics.LatencyWindows,
        max_concurrent_streams: int,
        admission: RealTimeAdmission | None = None,
        queue: AdmissionQueue | None = None,
    ) -> None:
        self.catalog = catalog
        self.validator = validator
        self.triton = triton
        self.rvc = rvc
        self.monitor = monitor
        self.windows = windows
        self.max_streams = max_concurrent_streams
        if queue is None:  # no queue asked for: refuse at once what does not fit (max_length 0)
            queue = AdmissionQueue(
                admission or RealTimeAdmission(enabled=False), max_calls=max_concurrent_streams, max_length=0
            )
        self.queue = queue
        self.admission = queue.admission
        queue.on_change = lambda: metrics.observe_queue(queue)
        queue.on_wait = metrics.observe_queue_wait
        metrics.observe_queue(queue)
        self.active = 0
        self.started = time.monotonic()

    # ---- helpers -----------------------------------------------------------------------------------------------

    @staticmethod
    def _share_key(voice: str, context: grpc.aio.ServicerContext[Any, Any]) -> str:
        """Whose share of the capacity a stream takes: the authenticated peer (mTLS identity) where there is one,
        else its voice. (The bearer token is one shared secret, so it names no caller.)"""
        identities = context.peer_identities()
        if identities:
            return "caller:" + b",".join(identities).decode(errors="replace")
        return "voice:" + voice

    def _known(self, voice: str) -> bool:
        """Whether `voice` names a configured or saved voice now (a dictionary lookup; validation says why not)."""
        try:
            self.catalog.get(voice)
        except ServiceError:
            return False
        return True

    @contextlib.asynccontextmanager
    async def _admitted(
        self, voice: str, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[_AdmittedStream]:
        """Wait in the admission queue for a stream slot (cheap: only the voice name is known yet, nothing is
        validated or decoded), or raise RESOURCE_EXHAUSTED with RetryInfo when the queue refuses. The stream teaches
        the real-time model how it went when it ends."""
        if not self._known(voice):  # every unknown name shares one turn and one cold start: names cost nothing
            voice = UNKNOWN_VOICE
        try:
            admitted = await self.queue.acquire(voice, self._share_key(voice, context), context.time_remaining())
        except Refused as refused:
            metrics.REJECTED.labels(refused.cause).inc()
            raise ResourceExhausted(refused.message, retry_after_s=refused.retry_after_s) from None
        stream = _AdmittedStream(admitted.waited_s, admitted.ticket)
        self.active += 1
        metrics.ACTIVE_STREAMS.inc()
        ok = False
        try:
            yield stream
            ok = True
        finally:
            self.active -= 1
            metrics.ACTIVE_STREAMS.dec()
            pipeline = stream.pipeline
            audio_s, busy = 0.0, None
            if pipeline is not None:
                audio_s = pipeline.audio_seconds if ok else 0.0
                totals = pipeline.totals
                busy = None if pipeline.streamed_input else totals.tts_s + totals.conversion_s
            self.queue.release(admitted.ticket, audio_s=audio_s, busy_s=busy)

    def _check_available(self, plan: SynthesisPlan) -> None:
        """Fail fast with UNAVAILABLE when an upstream this request needs is down now."""
        reason = self.monitor.unavailable_reason(plan.voice, converted=plan.conversion is not None)
        if reason:
            raise Unavailable(f"voice {plan.voice.name!r} is unavailable now: {reason}", retry_after_s=1.0)

    def _require_voices(self) -> None:
        if not self.catalog.resolved:
            detail = self.monitor.catalog_error or self.monitor.states["triton"].last_error or "starting up"
            raise Unavailable(f"voices are not loaded yet (triton at {self.triton.url}: {detail})", retry_after_s=1.0)

    def _piece_limit(self, plan: SynthesisPlan) -> int:
        return max(20, min(MAX_PIECE_CHARS, plan.voice.model.max_text_chars))

    async def _stream(
        self,
        pipeline: SynthesisPipeline,
        context: grpc.aio.ServicerContext[Any, audio_pb2.AudioChunk],
        admitted: _AdmittedStream,
    ) -> AsyncIterator[audio_pb2.AudioChunk]:
        plan = pipeline.plan
        voice = plan.voice.name
        await context.send_initial_metadata(((REQUEST_ID_METADATA_KEY, plan.request_id),))
        # gRPC may end the call (cancel, deadline) while we are parked in a yield: cancel upstream work right away.
        # grpc-stubs declare the callback type as a plain class, not a Protocol, so no function matches it.
        context.add_done_callback(lambda _: pipeline.cancel())  # type: ignore[arg-type]

        def on_first_audio(seconds: float) -> None:
            metrics.TIME_TO_FIRST_AUDIO.labels(voice).observe(seconds)
            self.windows.observe("time_to_first_audio", seconds)

        pipeline.on_first_audio = on_first_audio
        code = grpc.StatusCode.OK
        pipeline.start()
        settled = False
        try:
            async for chunk in pipeline.chunks():
                if not settled and pipeline.audio_ahead_s() >= SETTLED_AHEAD_S:
                    settled = True  # its listener has audio in hand: the stream counts once from now on
                    self.queue.settle(admitted.ticket)
                if chunk.is_final:
                    summary = chunk.summary
                    context.set_trailing_metadata(((SUMMARY_METADATA_KEY, summary.SerializeToString()),))
                    metrics.REAL_TIME_FACTOR.labels(voice).observe(summary.real_time_factor)
                    metrics.AUDIO_SECONDS.labels(voice).inc(seconds_from_duration(summary.audio_duration))
                yield chunk
        except BaseException as exc:
            code = status_code_of(exc)
            raise
        finally:
            await pipeline.aclose()
            metrics.STREAMS.labels(voice, code.name).inc()
            if code != grpc.StatusCode.OK:
                metrics.ERRORS.labels(voice, code.name).inc()

    def _pipeline(self, plan: SynthesisPlan) -> SynthesisPipeline:
        return SynthesisPipeline(plan, self.triton, self.rvc if plan.conversion else None, self.windows)

    # ---- RPCs ------------------------------------------------------------------------------------------------

    async def Synthesize(
        self,
        request: tts_gateway_pb2.SynthesizeRequest,
        context: grpc.aio.ServicerContext[tts_gateway_pb2.SynthesizeRequest, audio_pb2.AudioChunk],
    ) -> AsyncIterator[audio_pb2.AudioChunk]:
        self._require_voices()
        async with self._admitted(request.voice, context) as admitted:
            plan = await self.validator.plan(request, text_field="text")
            self._check_available(plan)
            pipeline = admitted.pipeline = self._pipeline(plan)
            for piece in split_text(request.text, max_chars=self._piece_limit(plan)):
                await pipeline.pieces.put(piece)
            await pipeline.pieces.close()
            async for chunk in self._stream(pipeline, context, admitted):
                yield chunk

    async def StreamingSynthesize(
        self,
        request_iterator: AsyncIterator[tts_gateway_pb2.StreamingSynthesizeRequest],
        context: grpc.aio.ServicerContext[tts_gateway_pb2.StreamingSynthesizeRequest, audio_pb2.AudioChunk],
    ) -> AsyncIterator[audio_pb2.AudioChunk]:
        self._require_voices()
        first = None
        async for message in request_iterator:
            first = message
            break
        if first is None or first.WhichOneof("request") != "config":
            raise InvalidArgument([("config", "the first message must carry the config")])
        async with self._admitted(first.config.voice, context) as admitted:
            plan = await self.validator.plan(first.config, text_field=None)
            self._check_available(plan)
            pipeline = admitted.pipeline = self._pipeline(plan)
            pipeline.streamed_input = True
            read = self._read_deltas if plan.incremental_text else self._read_text
            reader = asyncio.create_task(read(request_iterator, pipeline))
            try:
                async for chunk in self._stream(pipeline, context, admitted):
                    yield chunk
            finally:
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await reader

    async def _read_text(
        self, request_iterator: AsyncIterator[tts_gateway_pb2.StreamingSynthesizeRequest], pipeline: SynthesisPipeline
    ) -> None:
        """Feed complete sentences into the pipeline as text deltas arrive; flush on request and at the end."""
        splitter = IncrementalSplitter(max_chars=self._piece_limit(pipeline.plan))
        spoken = False  # a piece with something pronounceable went to synthesis
        state = _TextState()
        messages = self._text_messages(request_iterator, pipeline, state)
        async with self._text_reader(pipeline), contextlib.aclosing(messages):
            async for kind, text in messages:
                for piece in splitter.feed(text) if kind == "text" else splitter.flush():
                    await pipeline.pieces.put(piece)
                    spoken = True
            for piece in splitter.flush():
                await pipeline.pieces.put(piece)
                spoken = True
            state.require_spoken(spoken)
            await pipeline.pieces.close()

    async def _read_deltas(
        self, request_iterator: AsyncIterator[tts_gateway_pb2.StreamingSynthesizeRequest], pipeline: SynthesisPipeline
    ) -> None:
        """Incremental text input: forward every text delta into the pipeline as it arrives (no sentence splitting);
        a Flush ends the utterance (None), and the end of the stream ends the last one."""
        spoken = False  # a delta with something pronounceable went to synthesis
        open_utterance = False  # text went in since the last utterance end
        state = _TextState()
        messages = self._text_messages(request_iterator, pipeline, state)
        async with self._text_reader(pipeline), contextlib.aclosing(messages):
            async for kind, text in messages:
                if kind == "text" and text:
                    await pipeline.deltas.put(text)
                    spoken = spoken or is_pronounceable(text)
                    open_utterance = True
                elif kind == "flush" and open_utterance:
                    await pipeline.deltas.put(None)
                    open_utterance = False
            state.require_spoken(spoken)
            await pipeline.deltas.close()

    async def _text_messages(
        self,
        request_iterator: AsyncIterator[tts_gateway_pb2.StreamingSynthesizeRequest],
        pipeline: SynthesisPipeline,
        state: _TextState,
    ) -> AsyncGenerator[tuple[str, str], None]:
        """The text and flush messages after the config, checked: ("text", delta) or ("flush", ""). Starts the
        TTFA clock at the first text."""
        limit = self.validator.limits.max_stream_text_chars
        received = 0
        async for message in request_iterator:
            kind = message.WhichOneof("request")
            if kind == "config":
                raise InvalidArgument([("config", "must be sent only once, on the first message")])
            if kind == "text":
                problem = control_character_problem(message.text)
                if problem is not None:
                    raise InvalidArgument([("text", problem)])
                if not state.got_text and message.text.strip():
                    state.got_text = True
                    pipeline.started_at = time.perf_counter()  # TTFA counts from the first text
                received += len(message.text)
                if received > limit:
                    raise InvalidArgument([("text", f"the stream's text exceeds the {limit}-character limit")])
                yield kind, message.text
            elif kind == "flush":
                yield kind, ""

    @contextlib.asynccontextmanager
    async def _text_reader(self, pipeline: SynthesisPipeline) -> AsyncIterator[None]:
        """How reading the text stream ends the request when it fails."""
        try:
            yield
        except ServiceError as exc:
            await pipeline.fail(exc)
        except asyncio.CancelledError:
            raise
        except grpc.aio.AioRpcError:
            pass  # the client went away; the call's cancellation ends the pipeline
        except Exception as exc:  # anything else must still end the call, never leave it waiting for text
            log.exception("reading the text stream failed")
            await pipeline.fail(Internal(f"reading the text stream failed (request id {pipeline.plan.request_id})"))
            raise exc

    async def ListVoices(
        self,
        request: tts_gateway_pb2.ListVoicesRequest,
        context: grpc.aio.ServicerContext[tts_gateway_pb2.ListVoicesRequest, tts_gateway_pb2.ListVoicesResponse],
    ) -> tts_gateway_pb2.ListVoicesResponse:
        self._require_voices()
        voices = self.catalog.listing(request.language_code, saved_only=request.saved_only)
        for voice in voices:
            self._annotate(voice)
        return tts_gateway_pb2.ListVoicesResponse(voices=voices)

    # ---- saved voices ------------------------------------------------------------------------------------------

    def _store(self) -> SavedVoiceStore:
        if self.catalog.saved is None:
            raise FailedPrecondition(
                "this gateway keeps no saved voices (start it with --saved-voices-dir or --saved-voices-database)"
            )
        return self.catalog.saved

    async def CreateVoice(
        self,
        request: tts_gateway_pb2.CreateVoiceRequest,
        context: grpc.aio.ServicerContext[tts_gateway_pb2.CreateVoiceRequest, tts_gateway_pb2.CreateVoiceResponse],
    ) -> tts_gateway_pb2.CreateVoiceResponse:
        store = self._store()
        self._require_voices()
        store.require_available()  # before decoding and transcribing: UNAVAILABLE names the store
        violations: list[tuple[str, str]] = []
        problem = name_problem(request.name)
        if problem:
            violations.append(("name", problem))
        if not request.base_voice:
            violations.append(("base_voice", "is required: a configured voice that can clone (see ListVoices)"))
        reference = None
        if not request.reference_audio.audio:
            violations.append(("reference_audio", "is required"))
        else:
            try:
                reference = await asyncio.to_thread(
                    self.validator.decode_reference, request.reference_audio, "reference_audio"
                )
            except InvalidArgument as exc:
                violations += exc.violations
        if violations:
            raise InvalidArgument(violations)
        assert reference is not None
        base = self.catalog.voices.get(request.base_voice)
        if base is None:
            known = ", ".join(self.catalog.configured_names())
            raise NotFound(
                f"unknown base voice {clip(request.base_voice)!r}; configured voices: {known}",
                resource_type="voice",
                resource_name=request.base_voice,
            )
        reference_text = request.reference_text.strip()
        taken = request.name in store or request.name in self.catalog.configured_names()
        if not reference_text and not taken:  # a taken name is refused below (AlreadyExists): no recognition for it
            reference_text = await self._transcript_for_saved_voice(reference, base)
        mode = MODE_ZERO_SHOT if reference_text else MODE_CROSS_LINGUAL
        if mode not in base.model.supported_modes:
            able = self.catalog.with_mode(mode)
            where = f"voices that can: {', '.join(able)}" if able else "no configured voice can"
            raise FailedPrecondition(
                f"base voice {base.name!r} (model {base.model.name}) cannot clone a voice "
                f"{'with' if reference_text else 'without'} a transcript ({mode}); {where}",
                violations=[("MODE", f"voice/{base.name}", f"{mode} not in {list(base.model.supported_modes)}")],
            )
        _, samples, rate = reference
        saved = await store.create(
            request.name,
            base_voice=base.name,
            samples=samples,
            sample_rate_hz=rate,
            reference_text=reference_text,
            description=request.description.strip(),
        )
        log.info("saved voice %s created (base %s, %.1f s)", saved.name, base.name, saved.duration_s)
        voice = self._annotate(self.catalog.from_saved(saved).to_proto())
        return tts_gateway_pb2.CreateVoiceResponse(voice=voice)

    async def _transcript_for_saved_voice(self, reference: DecodedReference, base: Voice) -> str:
        """CreateVoice without reference_text on a base voice that clones zero-shot: the reference's transcript from
        the gateway's recognition. When none can be had, "" (the previous behaviour: a cross-lingual voice) if the
        base voice clones cross-lingually, else INVALID_ARGUMENT on reference_text."""
        if MODE_ZERO_SHOT not in base.model.supported_modes:
            return ""  # cross-lingual only (or no cloning at all, refused below): nothing to transcribe for
        cross_lingual = MODE_CROSS_LINGUAL in base.model.supported_modes
        if self.validator.transcripts is None and cross_lingual:
            return ""
        try:
            return await self.validator.transcribe_reference(reference, base, "reference_text", resolve_request_id(""))
        except InvalidArgument:
            if not cross_lingual:
                raise
            log.info("saved voice without a transcript: the reference could not be transcribed; cloning cross-lingual")
            return ""

    async def GetVoice(
        self,
        request: tts_gateway_pb2.GetVoiceRequest,
        context: grpc.aio.ServicerContext[tts_gateway_pb2.GetVoiceRequest, tts_gateway_pb2.GetVoiceResponse],
    ) -> tts_gateway_pb2.GetVoiceResponse:
        self._require_voices()
        if not request.name:
            raise InvalidArgument([("name", "is required")])
        return tts_gateway_pb2.GetVoiceResponse(voice=self._annotate(self.catalog.get(request.name).to_proto()))

    async def DeleteVoice(
        self,
        request: tts_gateway_pb2.DeleteVoiceRequest,
        context: grpc.aio.ServicerContext[tts_gateway_pb2.DeleteVoiceRequest, tts_gateway_pb2.DeleteVoiceResponse],
    ) -> tts_gateway_pb2.DeleteVoiceResponse:
        store = self._store()
        if not request.name:
            raise InvalidArgument([("name", "is required")])
        if request.name in self.catalog.configured_names():
            raise FailedPrecondition(
                f"voice {request.name!r} is configured in the gateway's voices file, not saved; it cannot be deleted",
                violations=[("CONFIGURED", f"voice/{request.name}", "configured voices come from the voices file")],
            )
        saved = await store.delete(request.name)
        log.info("saved voice %s deleted", saved.name)
        voice = tts_gateway_pb2.Voice(name=saved.name)
        if saved.base_voice in self.catalog.voices:
            voice = self.catalog.from_saved(saved).to_proto()
        voice.unavailable_reason = "deleted"  # available stays false: the name no longer resolves
        return tts_gateway_pb2.DeleteVoiceResponse(voice=voice)

    def _annotate(self, voice: tts_gateway_pb2.Voice) -> tts_gateway_pb2.Voice:
        reason = self.monitor.unavailable_reason(
            self.catalog.get(voice.name), converted=voice.HasField("default_conversion")
        )
        voice.available = not reason
        voice.unavailable_reason = reason
        return voice

    async def GetStatus(
        self,
        request: tts_gateway_pb2.TtsGatewayServiceGetStatusRequest,
        context: grpc.aio.ServicerContext[
            tts_gateway_pb2.TtsGatewayServiceGetStatusRequest, tts_gateway_pb2.TtsGatewayServiceGetStatusResponse
        ],
    ) -> tts_gateway_pb2.TtsGatewayServiceGetStatusResponse:
        return tts_gateway_pb2.TtsGatewayServiceGetStatusResponse(
            version=VERSION,
            uptime=duration_from_seconds(time.monotonic() - self.started),
            upstreams=[state.to_proto() for state in self.monitor.states.values()] + self._saved_voice_status(),
            active_streams=self.active,
            max_concurrent_streams=self.max_streams,
            stage_latencies=self.windows.snapshot(),
            voices=self._voice_statuses(),
            admission=self._admission_status(),
        )

    def _admission_status(self) -> tts_gateway_pb2.AdmissionStatus:
        queue = self.queue
        return tts_gateway_pb2.AdmissionStatus(
            queued_streams=queue.waiting,
            queue_capacity=queue.max_length,
            max_wait=duration_from_seconds(queue.max_wait_s),
            waiting_keys=sum(1 for n in queue.waiting_by_key().values() if n),
            host_load_source=queue.host.source,
            host_cpu_saturation=queue.host.saturation,
            target_load=queue.target_load(),
        )

    def _saved_voice_status(self) -> list[tts_gateway_pb2.UpstreamStatus]:
        """The saved-voice store as one more upstream ("saved_voices"): where it is and whether it answers."""
        if self.catalog.saved is None:
            return []
        health = self.catalog.saved.health()
        version = f"{health.kind} schema {health.schema_version}" if health.schema_version else health.kind
        return [
            tts_gateway_pb2.UpstreamStatus(
                name="saved_voices",
                target=health.target,
                serving=health.available,
                version=version,
                last_error=health.last_error,
            )
        ]

    def _voice_statuses(self) -> list[tts_gateway_pb2.VoiceStatus]:
        if not self.catalog.resolved:
            return []
        active = self.admission.active_by_voice()
        out = []
        for voice in self.catalog.listing():
            self._annotate(voice)
            out.append(
                tts_gateway_pb2.VoiceStatus(
                    name=voice.name,
                    available=voice.available,
                    unavailable_reason=voice.unavailable_reason,
                    active_streams=active.get(voice.name, 0),
                    estimated_capacity_streams=self.admission.capacity_streams(voice.name) or 0,
                )
            )
        return out
