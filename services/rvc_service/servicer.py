"""voice.v1.VoiceConversionService: a thin layer that validates requests, maps engine errors to gRPC statuses and
hands the work to the worker pool (pool.py) and the streaming stitcher (streaming.py)."""

from __future__ import annotations

import asyncio
import contextlib
import platform
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
import numpy as np
from numpy.typing import NDArray

from services.common import audio as A
from services.common.contract import MAX_CONVERSION_MESSAGE_BYTES
from services.common.conversion_settings import F0_METHOD_NAMES, fields_set
from services.common.durations import duration_from_seconds
from services.common.errors import FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted
from services.common.request_id import REQUEST_ID_METADATA_KEY, resolve_request_id
from services.rvc_service import metrics
from services.rvc_service.capacity import CapacityEstimator, StreamQueue
from services.rvc_service.engines import ConversionParams, InvalidParameters, MethodUnavailable, VoiceModel
from services.rvc_service.engines.f0 import SR as RVC_INPUT_HZ
from services.rvc_service.pool import CancelToken, WorkerPool
from services.rvc_service.registry import InvalidModelName, ModelInfo, ModelLoadError, ModelNotFound, ModelRegistry
from services.rvc_service.streaming import BlockSettings, ConversionStream, ConvertFn, EngineRates
from voice.v1 import audio_pb2, conversion_pb2, voice_conversion_pb2, voice_conversion_pb2_grpc

T = TypeVar("T")

MAX_AUDIO_MESSAGE_BYTES = MAX_CONVERSION_MESSAGE_BYTES
MAX_CLIP_BYTES = 64 << 20
MAX_CLIP_SECONDS = 600.0
RAW_INPUT_RATES = (8000, 48000)  # Convert input_format.sample_rate_hz range (contract)

ENGINES = {"rvc": voice_conversion_pb2.CONVERSION_ENGINE_RVC, "world": voice_conversion_pb2.CONVERSION_ENGINE_WORLD}

# Streams: ~0.5 s of new audio per block keeps latency low. Clips: long blocks amortize the context, and the job
# boundary is where a cancelled clip stops.
# The first block is short (0.06 s: its window, with the look-ahead, is 0.115 s) so converted speech starts almost as
# early as unconverted speech; blocks then double up to 0.5 s, where each window's fixed cost is amortized. (A
# previous round kept 0.12 s because a test read the 4-semitone shift as 2.9 with 0.06 s; the shift was right in
# every frame, the test's ratio of two Harvest medians was not: tests/gateway/test_gateway.py median_shift_semitones.)
STREAM_BLOCKS = BlockSettings(block_s=0.5, context_s=0.5, crossfade_s=0.04, search_s=0.015, first_block_s=0.06)
CLIP_BLOCKS = BlockSettings(block_s=8.0, context_s=1.0, crossfade_s=0.05, search_s=0.015)


@dataclass(frozen=True)
class DeviceDescription:
    kind: str
    name: str
    index: int | None


def describe_device(device: str) -> DeviceDescription:
    if device.startswith("cuda"):
        import torch

        index = torch.device(device).index or 0
        return DeviceDescription("cuda", torch.cuda.get_device_name(index), index)
    return DeviceDescription("cpu", _cpu_name(), None)


def _cpu_name() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "cpu"


def engine_rates(model: VoiceModel) -> EngineRates:
    """Feed RVC 16 kHz (its content encoder's rate: no per-block resampling) and WORLD its own working rate."""
    return EngineRates(RVC_INPUT_HZ if model.engine == "rvc" else model.sample_rate, model.sample_rate)


def block_converter(model: VoiceModel, params: ConversionParams, rates: EngineRates) -> ConvertFn:
    """The pool job for one window: the engine's streaming step (context in, block out)."""

    def convert(audio: NDArray[np.float32], context: int, token: CancelToken) -> NDArray[np.float32]:
        token.raise_if_cancelled()  # a window whose stream is gone is not worth starting
        # The engine checks the token inside the block too, so a cancelled window stops within one step.
        return model.convert_block(audio, rates.input_hz, params, context=context, should_stop=token)

    return convert


def cost_class(model: VoiceModel, params: ConversionParams, default_f0: str) -> tuple[str, str]:
    """(model, F0 method actually run): what a stream's cost depends on most (WORLD's Harvest costs ~5x its DIO)."""
    if model.engine == "world":  # harvest and dio on request; anything else runs Praat's autocorrelation (pm)
        return model.name, params.f0_method if params.f0_method in ("harvest", "dio") else "pm"
    return model.name, (params.f0_method or default_f0) if model.uses_f0 else "none"


def model_info_proto(info: ModelInfo) -> voice_conversion_pb2.ModelInfo:
    return voice_conversion_pb2.ModelInfo(
        name=info.name,
        engine=ENGINES.get(info.engine, voice_conversion_pb2.CONVERSION_ENGINE_UNSPECIFIED),
        loaded=info.loaded,
        version=info.version,
        sample_rate_hz=info.sample_rate_hz,
        uses_f0=info.uses_f0,
        has_index=info.has_index,
        speaker_count=info.speaker_count,
        size_bytes=info.size_bytes,
        memory_bytes=info.memory_bytes,
    )


@contextlib.contextmanager
def engine_errors(model_field: str, settings_field: str) -> Iterator[None]:
    """Engine/registry exceptions -> service errors, with field paths as the request spells them."""
    try:
        yield
    except InvalidModelName as exc:
        raise InvalidArgument([(model_field, str(exc))]) from exc
    except ModelNotFound as exc:
        raise NotFound(str(exc), resource_type="voice.v1.ModelInfo", resource_name=str(exc)) from exc
    except InvalidParameters as exc:
        raise InvalidArgument([(f"{settings_field}.{field}", msg) for field, msg in exc.violations]) from exc
    except MethodUnavailable as exc:
        raise FailedPrecondition(str(exc), violations=[("F0_METHOD", f"{settings_field}.f0_method", str(exc))]) from exc
    except ModelLoadError as exc:
        raise FailedPrecondition(str(exc), violations=[("MODEL", model_field, str(exc))]) from exc


def params_from_settings(settings: conversion_pb2.ConversionSettings, field: str) -> ConversionParams:
    """Proto settings -> engine params (unset fields keep the contract's defaults)."""
    if settings.f0_method not in F0_METHOD_NAMES:
        raise InvalidArgument([(f"{field}.f0_method", f"unknown F0 method {settings.f0_method}")])
    # Each field's type (float or int) is its CONVERSION_SETTINGS row's, which a dict's value type cannot say per key.
    fields: dict[str, Any] = fields_set(settings)
    return ConversionParams(f0_method=F0_METHOD_NAMES[settings.f0_method], **fields)


def caller_share(context: grpc.aio.ServicerContext[Any, Any]) -> str | None:
    """Whose turn a stream's blocks take in the worker pool: the authenticated peer (mTLS identity) where there is
    one, else None (the pool shares by model)."""
    identities = context.peer_identities()
    return "caller:" + b",".join(identities).decode(errors="replace") if identities else None


class VoiceConversionServicer(voice_conversion_pb2_grpc.VoiceConversionServiceServicer):
    def __init__(
        self,
        registry: ModelRegistry,
        pool: WorkerPool,
        *,
        device: str = "cpu",
        version: str = "",
        stream_blocks: BlockSettings = STREAM_BLOCKS,
        clip_blocks: BlockSettings = CLIP_BLOCKS,
        max_stream_seconds: float = 3600.0,
        capacity: CapacityEstimator | None = None,
        queue: StreamQueue | None = None,
    ) -> None:
        self.registry = registry
        self.pool = pool
        self.capacity = capacity if capacity is not None else CapacityEstimator(pool.workers)
        self.queue = queue if queue is not None else StreamQueue(self.capacity)
        metrics.ADMISSION_CAPACITY.set(self.capacity.capacity)
        self.device = device
        self.device_description = describe_device(device)
        self.version = version
        self.stream_blocks = stream_blocks
        self.clip_blocks = clip_blocks
        self.max_stream_seconds = max_stream_seconds
        self.active_streams = 0

    # ------------------------------------------------------------------------------------------------ helpers

    @staticmethod
    async def _send_request_id(context: grpc.aio.ServicerContext[Any, Any], client_value: str, field: str) -> str:
        """Resolve the id (field, else x-request-id metadata, else new) and send it as initial metadata."""
        try:
            request_id = resolve_request_id(client_value, field=field)
        except InvalidArgument:
            await context.send_initial_metadata(((REQUEST_ID_METADATA_KEY, uuid.uuid4().hex),))
            raise
        await context.send_initial_metadata(((REQUEST_ID_METADATA_KEY, request_id),))
        return request_id

    async def _in_thread(self, fn: Callable[[], T]) -> T:
        # Registry calls may wait on a model load (its lock); keep them off the event loop.
        return await asyncio.to_thread(fn)

    async def _prepare(
        self,
        settings: conversion_pb2.ConversionSettings,
        output_format: audio_pb2.AudioFormat,
        prefix: str,
        violations: list[tuple[str, str]],
    ) -> tuple[VoiceModel, ConversionParams]:
        """Shared validation for Convert and ConvertClip: settings, output format, model, F0 method."""
        settings_field = f"{prefix}settings"
        model_field = f"{settings_field}.model"
        if not settings.model:
            violations.append((model_field, "is required: a name from ListModels"))
        violations += A.validate_output_format(
            output_format.encoding, output_format.sample_rate_hz, field=f"{prefix}output_format"
        )
        if output_format.channels not in (0, 1):
            violations.append((f"{prefix}output_format.channels", "output is mono: use 0 or 1"))
        params: ConversionParams | None = None
        try:
            params = params_from_settings(settings, settings_field).validate()
        except InvalidParameters as exc:
            violations += [(f"{settings_field}.{field}", msg) for field, msg in exc.violations]
        except InvalidArgument as exc:
            violations += exc.violations
        if violations:
            raise InvalidArgument(violations)
        assert params is not None
        if params.f0_method == "rmvpe" and not self.registry.f0.has_rmvpe:
            message = "f0_method RMVPE needs rmvpe.pt in the models directory; use another method or install it"
            raise FailedPrecondition(message, violations=[("F0_METHOD", f"{settings_field}.f0_method", message)])
        with engine_errors(model_field, settings_field):
            model = await self._in_thread(lambda: self.registry.get(settings.model))
            model.validate(params)  # model-specific ranges (speaker_id) and method availability
        return model, params

    # ------------------------------------------------------------------------------------------------ Convert

    async def Convert(
        self,
        request_iterator: AsyncIterator[voice_conversion_pb2.ConvertRequest],
        context: grpc.aio.ServicerContext[voice_conversion_pb2.ConvertRequest, audio_pb2.AudioChunk],
    ) -> AsyncIterator[audio_pb2.AudioChunk]:
        iterator = aiter(request_iterator)
        first = await anext(iterator, None)
        config = first.config if first is not None and first.WhichOneof("request") == "config" else None
        request_id = await self._send_request_id(context, config.request_id if config else "", "config.request_id")
        if config is None:
            raise InvalidArgument([("config", "the first message of a Convert call must carry the config")])
        stream, (model_name, f0_label) = await self._open_stream(config, request_id, context)
        await self._admit(stream, model_name, f0_label, context.time_remaining())
        metrics.ACTIVE_STREAMS.inc()
        self.active_streams += 1
        try:
            async for request in iterator:
                kind = request.WhichOneof("request")
                if kind == "audio":
                    samples = self._decode_block(request.audio, config.input_format)
                    if (stream.received_samples + samples.size) / stream.input_rate > self.max_stream_seconds:
                        raise InvalidArgument([("audio", f"stream is longer than {self.max_stream_seconds:g} s")])
                    async for chunk in stream.push(samples):
                        yield chunk
                elif kind == "flush":
                    async for chunk in stream.flush():
                        yield chunk
                elif kind == "config":
                    raise InvalidArgument([("config", "config may be sent only once, on the first message")])
                else:
                    raise InvalidArgument([("request", "set one of config, audio or flush")])
            if stream.received_samples == 0:
                raise InvalidArgument([("audio", "the stream ended without any audio")])
            async for chunk in stream.finish():
                yield chunk
        finally:
            stream.close()  # stops queued/running blocks of an abandoned stream
            self.queue.release(stream.key)
            metrics.ADMITTED_LOAD.set(self.capacity.load())
            self.active_streams -= 1
            metrics.ACTIVE_STREAMS.dec()

    async def _admit(
        self, stream: ConversionStream, model_name: str, f0_label: str, time_remaining: float | None
    ) -> None:
        """Admit the stream when the pool can keep it and the admitted ones in real time at the measured costs, after
        a bounded first-come wait in the stream queue; refuse it (RESOURCE_EXHAUSTED + RetryInfo) when the queue is
        full or the wait would outlast the call's deadline or the queue's limit."""
        admission = await self.queue.admit(stream.key, f"{model_name}|{f0_label}", time_remaining)
        if admission.admitted:
            metrics.ADMITTED_LOAD.set(admission.load)
            return
        stream.close()
        metrics.ADMISSION_REFUSALS.labels(model_name).inc()
        raise ResourceExhausted(
            f"voice conversion is at its real-time capacity: the open streams need {admission.load:.2f} of "
            f"{admission.capacity:.2f} worker-seconds per second and a {model_name!r} stream needs "
            f"{admission.cost:.2f} more; retry later",
            retry_after_s=admission.retry_after_s,
        )

    def _observe_job(self, model_name: str, f0_label: str, run_seconds: float, audio_seconds: float) -> None:
        cls = f"{model_name}|{f0_label}"
        self.capacity.observe(cls, run_seconds, audio_seconds)
        metrics.STREAM_COST.labels(model_name, f0_label).set(self.capacity.cost(cls))
        metrics.ADMITTED_LOAD.set(self.capacity.load())

    async def _open_stream(
        self,
        config: voice_conversion_pb2.ConvertConfig,
        request_id: str,
        context: grpc.aio.ServicerContext[voice_conversion_pb2.ConvertRequest, audio_pb2.AudioChunk],
    ) -> tuple[ConversionStream, tuple[str, str]]:
        violations: list[tuple[str, str]] = []
        fmt = config.input_format
        if fmt.encoding not in (A.PCM16, A.FLOAT32):
            violations.append(("config.input_format.encoding", "must be PCM16 or FLOAT32"))
        lo, hi = RAW_INPUT_RATES
        if not lo <= fmt.sample_rate_hz <= hi:
            violations.append(("config.input_format.sample_rate_hz", f"must be {lo}..{hi}, got {fmt.sample_rate_hz}"))
        if fmt.channels < 0 or fmt.channels > 8:
            violations.append(("config.input_format.channels", f"must be 0..8 (0 means 1), got {fmt.channels}"))
        if not config.HasField("output_format"):
            violations.append(("config.output_format", "is required (encoding; sample_rate_hz 0 = model rate)"))
        model, params = await self._prepare(config.settings, config.output_format, "config.", violations)
        rates = engine_rates(model)
        out = config.output_format
        model_name, f0_label = cost_class(model, params, self.registry.f0.default_method())
        stream = ConversionStream(
            pool=self.pool,
            convert=block_converter(model, params, rates),
            model=model.name,
            key=f"stream-{request_id}-{uuid.uuid4().hex[:8]}",
            request_id=request_id,
            input_rate=fmt.sample_rate_hz,
            engine=rates,
            output_encoding=out.encoding,
            output_rate=A.resolve_output_rate(out.encoding, out.sample_rate_hz, model.sample_rate),
            settings=self.stream_blocks,
            on_job=lambda run_s, audio_s: self._observe_job(model_name, f0_label, run_s, audio_s),
            engine_name=model.engine,
            share=caller_share(context),
            time_remaining=context.time_remaining,
        )
        return stream, (model_name, f0_label)

    @staticmethod
    def _decode_block(data: bytes, fmt: audio_pb2.AudioFormat) -> NDArray[np.float32]:
        if len(data) > MAX_AUDIO_MESSAGE_BYTES:
            raise InvalidArgument([("audio", f"at most {MAX_AUDIO_MESSAGE_BYTES} bytes per message, got {len(data)}")])
        if not data:
            return np.zeros(0, dtype=np.float32)
        try:
            samples, _ = A.decode_audio(data, fmt.encoding, fmt.sample_rate_hz, fmt.channels)
        except A.AudioDecodeError as exc:
            raise InvalidArgument([("audio", str(exc))]) from exc
        return samples

    # ------------------------------------------------------------------------------------------------ ConvertClip

    async def ConvertClip(
        self,
        request: voice_conversion_pb2.ConvertClipRequest,
        context: grpc.aio.ServicerContext[
            voice_conversion_pb2.ConvertClipRequest, voice_conversion_pb2.ConvertClipResponse
        ],
    ) -> voice_conversion_pb2.ConvertClipResponse:
        request_id = await self._send_request_id(context, request.request_id, "request_id")
        violations: list[tuple[str, str]] = []
        clip = request.audio
        if not clip.audio:
            violations.append(("audio.audio", "is empty"))
        elif len(clip.audio) > MAX_CLIP_BYTES:
            violations.append(("audio.audio", f"at most {MAX_CLIP_BYTES} bytes, got {len(clip.audio)}"))
        if not request.HasField("output_format"):
            violations.append(("output_format", "is required (encoding; sample_rate_hz 0 = model rate)"))
        samples = np.zeros(0, dtype=np.float32)
        rate = 0
        if not violations:
            try:
                samples, rate = A.decode_audio(
                    clip.audio,
                    clip.format.encoding,
                    clip.format.sample_rate_hz,
                    clip.format.channels,
                    max_seconds=MAX_CLIP_SECONDS,
                )
            except A.AudioDecodeError as exc:
                violations.append(("audio", str(exc)))
        model, params = await self._prepare(request.settings, request.output_format, "", violations)
        rates = engine_rates(model)
        out = request.output_format
        out_rate = A.resolve_output_rate(out.encoding, out.sample_rate_hz, model.sample_rate)
        stream = ConversionStream(
            pool=self.pool,
            convert=block_converter(model, params, rates),
            model=model.name,
            key=f"clip-{request_id}-{uuid.uuid4().hex[:8]}",
            request_id=request_id,
            input_rate=rate,
            engine=rates,
            output_encoding=out.encoding,
            output_rate=out_rate,
            settings=self.clip_blocks,
            engine_name=model.engine,
        )
        parts: list[bytes] = []
        try:
            async for chunk in stream.push(samples):
                parts.append(chunk.audio)
            async for chunk in stream.finish():
                parts.append(chunk.audio)
        finally:
            stream.close()
        data = b"".join(parts)
        if request.output_format.encoding == A.WAV:
            data = A.finalize_wav_header(data)  # a complete file: real sizes instead of the streaming 0xFFFFFFFF
        seconds = stream.samples_sent / out_rate
        return voice_conversion_pb2.ConvertClipResponse(
            request_id=request_id,
            audio=data,
            format=stream.format,
            audio_duration=duration_from_seconds(seconds),
            conversion_time=duration_from_seconds(stream.conversion_seconds),
            real_time_factor=stream.conversion_seconds / seconds if seconds else 0.0,
        )

    # ------------------------------------------------------------------------------------------------ models

    async def ListModels(
        self,
        request: voice_conversion_pb2.ListModelsRequest,
        context: grpc.aio.ServicerContext[
            voice_conversion_pb2.ListModelsRequest, voice_conversion_pb2.ListModelsResponse
        ],
    ) -> voice_conversion_pb2.ListModelsResponse:
        infos = await self._in_thread(self.registry.list)
        return voice_conversion_pb2.ListModelsResponse(
            models=[model_info_proto(i) for i in sorted(infos, key=lambda i: i.name)]
        )

    async def LoadModel(
        self,
        request: voice_conversion_pb2.LoadModelRequest,
        context: grpc.aio.ServicerContext[
            voice_conversion_pb2.LoadModelRequest, voice_conversion_pb2.LoadModelResponse
        ],
    ) -> voice_conversion_pb2.LoadModelResponse:
        if not request.name:
            raise InvalidArgument([("name", "is required: a name from ListModels")])
        with engine_errors("name", "settings"):
            was_loaded = (await self._in_thread(lambda: self.registry.info(request.name))).loaded
            started = time.perf_counter()
            await self._in_thread(lambda: self.registry.load(request.name))
            elapsed = 0.0 if was_loaded else time.perf_counter() - started
            info = await self._in_thread(lambda: self.registry.info(request.name))
        return voice_conversion_pb2.LoadModelResponse(
            model=model_info_proto(info), load_time=duration_from_seconds(elapsed)
        )

    async def UnloadModel(
        self,
        request: voice_conversion_pb2.UnloadModelRequest,
        context: grpc.aio.ServicerContext[
            voice_conversion_pb2.UnloadModelRequest, voice_conversion_pb2.UnloadModelResponse
        ],
    ) -> voice_conversion_pb2.UnloadModelResponse:
        if not request.name:
            raise InvalidArgument([("name", "is required: a name from ListModels")])
        with engine_errors("name", "settings"):
            was_loaded = await self._in_thread(lambda: self.registry.unload(request.name))
        return voice_conversion_pb2.UnloadModelResponse(was_loaded=was_loaded)

    # ------------------------------------------------------------------------------------------------ status

    def device_info(self) -> voice_conversion_pb2.DeviceInfo:
        d = self.device_description
        info = voice_conversion_pb2.DeviceInfo(kind=d.kind, name=d.name)
        if d.kind == "cuda":
            import torch

            info.memory_used_bytes = int(torch.cuda.memory_allocated(d.index))
            info.memory_total_bytes = int(torch.cuda.get_device_properties(d.index).total_memory)
            info.cuda_streams = self.pool.stats().cuda_streams
        return info

    async def GetStatus(
        self,
        request: voice_conversion_pb2.VoiceConversionServiceGetStatusRequest,
        context: grpc.aio.ServicerContext[
            voice_conversion_pb2.VoiceConversionServiceGetStatusRequest,
            voice_conversion_pb2.VoiceConversionServiceGetStatusResponse,
        ],
    ) -> voice_conversion_pb2.VoiceConversionServiceGetStatusResponse:
        stats = self.pool.stats()
        infos = await self._in_thread(self.registry.list)
        return voice_conversion_pb2.VoiceConversionServiceGetStatusResponse(
            version=self.version,
            device=self.device_info(),
            workers=stats.workers,
            busy_workers=stats.busy,
            queue_depth=stats.queue_depth,
            queue_capacity=stats.queue_capacity,
            loaded_models=[model_info_proto(i) for i in infos if i.loaded],
            active_streams=self.active_streams,
        )


__all__ = ["ENGINES", "VoiceConversionServicer", "describe_device", "params_from_settings"]
