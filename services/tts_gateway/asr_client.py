"""Triton client for recognition models (the ASR tensor interface, triton/README.md).

Recognition models are found, not configured: every ready model in Triton's repository index whose config declares
the parameter `task` = "recognition" (TTS models declare none). Their facts (rate, languages, word timings, audio
limit, description) come from the config's parameters. Each recognition is one ModelInfer call on the gateway's
Triton channel (shared with synthesis).
"""

from __future__ import annotations

import asyncio
import json
import logging
import struct
import time
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np
from google.protobuf.json_format import MessageToDict
from numpy.typing import NDArray
from tritonclient.grpc import service_pb2

from services.common.errors import Internal, InvalidArgument, NotFound, ServiceError, upstream_message
from services.common.request_id import REQUEST_ID_METADATA_KEY
from services.tts_gateway.triton_client import TritonTts

log = logging.getLogger(__name__)

TASK_RECOGNITION = "recognition"
MODELS_TTL_S = 5.0  # how long a listing of the repository is reused before asking Triton again


@dataclass(frozen=True)
class AsrModelInfo:
    name: str
    sample_rate_hz: int
    language_codes: tuple[str, ...]
    word_time_offsets: bool
    max_audio_seconds: float
    description: str

    def language(self, requested: str) -> str:
        """The model's language for a requested BCP-47 code ("" = its default); raises InvalidArgument."""
        if not requested:
            return self.language_codes[0] if self.language_codes else ""
        wanted = requested.replace("_", "-").lower()
        for code in self.language_codes:
            if wanted == code.lower():
                return code
        for code in self.language_codes:
            if wanted.split("-")[0] == code.lower().split("-")[0]:
                return code
        raise InvalidArgument(
            [
                (
                    "config.language_code",
                    f"{requested!r} is not a language of model {self.name}: {list(self.language_codes)}",
                )
            ]
        )


def parse_asr_config(config: dict[str, Any]) -> AsrModelInfo | None:
    """AsrModelInfo from the JSON form of a model config; None for a model that is not a recognition model."""
    params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
    if params.get("task", "").strip() != TASK_RECOGNITION:
        return None
    name = config.get("name", "")
    rate = params.get("sample_rate_hz", "")
    if not rate.isdigit() or int(rate) <= 0:
        log.warning("recognition model %s declares no sample_rate_hz; left out", name)
        return None
    try:
        max_seconds = float(params.get("max_audio_seconds", "") or 600.0)
    except ValueError:
        max_seconds = 600.0
    return AsrModelInfo(
        name=name,
        sample_rate_hz=int(rate),
        language_codes=tuple(
            c.strip().replace("_", "-") for c in params.get("language_codes", "").split(",") if c.strip()
        ),
        word_time_offsets=params.get("word_time_offsets", "").strip().lower() == "true",
        max_audio_seconds=max_seconds,
        description=params.get("description", ""),
    )


@dataclass
class WordTiming:
    word: str
    start_s: float
    end_s: float
    confidence: float


@dataclass
class AsrResult:
    transcript: str
    language: str
    confidence: float
    words: list[WordTiming] = field(default_factory=list)
    busy_s: float = 0.0


def _add_tensor(request: service_pb2.ModelInferRequest, name: str, datatype: str, shape: list[int], raw: bytes) -> None:
    tensor = request.inputs.add()
    tensor.name = name
    tensor.datatype = datatype
    tensor.shape.extend(shape)
    request.raw_input_contents.append(raw)


def build_asr_request(
    model: str, audio: NDArray[np.float32], language: str, word_timestamps: bool, request_id: str
) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name=model, id=request_id)
    wav = np.ascontiguousarray(audio, dtype="<f4")
    _add_tensor(request, "audio", "FP32", [1, wav.size], wav.tobytes())
    _add_tensor(request, "audio_len", "INT32", [1, 1], struct.pack("<i", wav.size))
    if language:
        data = language.encode()
        _add_tensor(request, "language", "BYTES", [1, 1], struct.pack("<I", len(data)) + data)
    _add_tensor(request, "word_timestamps", "BOOL", [1, 1], b"\x01" if word_timestamps else b"\x00")
    return request


def _outputs(response: service_pb2.ModelInferResponse) -> dict[str, bytes]:
    return {
        output.name: response.raw_output_contents[index]
        for index, output in enumerate(response.outputs)
        if index < len(response.raw_output_contents)
    }


def _string(raw: bytes | None) -> str:
    if not raw or len(raw) < 4:
        return ""
    (length,) = struct.unpack_from("<I", raw)
    return raw[4 : 4 + length].decode("utf-8", "replace")


def parse_asr_response(response: service_pb2.ModelInferResponse) -> AsrResult:
    outputs = _outputs(response)
    confidence_raw = outputs.get("confidence", b"")
    confidence = float(np.frombuffer(confidence_raw[:4], dtype="<f4")[0]) if len(confidence_raw) >= 4 else 0.0
    words = []
    try:
        for item in json.loads(_string(outputs.get("words")) or "[]"):
            words.append(
                WordTiming(
                    str(item["word"]),
                    float(item["start_s"]),
                    float(item["end_s"]),
                    float(item.get("confidence", 0.0)),
                )
            )
    except (ValueError, KeyError, TypeError) as exc:
        raise Internal(f"recognition model {response.model_name} sent malformed word timings: {exc}") from None
    return AsrResult(
        transcript=_string(outputs.get("transcript")).strip(),
        language=_string(outputs.get("language")),
        confidence=min(1.0, max(0.0, confidence)),
        words=words,
    )


class TritonAsr:
    """Recognition over the gateway's Triton channel."""

    def __init__(self, triton: TritonTts) -> None:
        self.triton = triton
        self._models: list[AsrModelInfo] = []
        self._listed_at = -1e9
        self._lock = asyncio.Lock()

    def _rpc_error(self, exc: grpc.aio.AioRpcError, what: str) -> ServiceError:
        if refused := self.triton.upstream.refused(exc):
            return refused
        return self.triton.unavailable(f"{what}: {upstream_message(exc.details() or exc.code().name)}")

    async def models(self, *, fresh: bool = False) -> list[AsrModelInfo]:
        """The ready recognition models (cached for MODELS_TTL_S); raises Unavailable when Triton does not answer."""
        async with self._lock:
            if not fresh and time.monotonic() - self._listed_at < MODELS_TTL_S:
                return self._models
            metadata = self.triton.call_metadata
            try:
                index = await self.triton.stub.RepositoryIndex(
                    service_pb2.RepositoryIndexRequest(ready=True), timeout=5.0, metadata=metadata
                )
                found = []
                for entry in index.models:
                    if entry.state and entry.state != "READY":
                        continue
                    response = await self.triton.stub.ModelConfig(
                        service_pb2.ModelConfigRequest(name=entry.name), timeout=5.0, metadata=metadata
                    )
                    info = parse_asr_config(MessageToDict(response.config, preserving_proto_field_name=True))
                    if info is not None:
                        found.append(info)
            except grpc.aio.AioRpcError as exc:
                raise self._rpc_error(exc, "listing models") from None
            self._models = sorted(found, key=lambda m: m.name)
            self._listed_at = time.monotonic()
            return self._models

    async def recognize(
        self, model: AsrModelInfo, audio: NDArray[np.float32], language: str, word_timestamps: bool, request_id: str
    ) -> AsrResult:
        request = build_asr_request(model.name, audio, language, word_timestamps, request_id)
        started = time.perf_counter()
        try:
            response = await self.triton.stub.ModelInfer(
                request, metadata=(*self.triton.call_metadata, (REQUEST_ID_METADATA_KEY, request_id))
            )
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            if code == grpc.StatusCode.CANCELLED:
                raise
            if code == grpc.StatusCode.INVALID_ARGUMENT:
                detail = upstream_message(exc.details() or "")
                raise InvalidArgument([("audio", detail)], message=f"model {model.name}: {detail}") from None
            if code == grpc.StatusCode.NOT_FOUND or "unknown model" in (exc.details() or ""):
                self._listed_at = -1e9  # the model went away: list again next time
                raise NotFound(
                    f"recognition model {model.name!r} is not loaded in Triton any more",
                    resource_type="model",
                    resource_name=model.name,
                ) from None
            if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise self._rpc_error(exc, f"model {model.name}") from None
            log.error("recognition model %s failed for request %s: %s", model.name, request_id, exc.details())
            raise Internal(
                f"recognition model {model.name} failed: {upstream_message(exc.details() or code.name)} "
                f"(request id {request_id})"
            ) from None
        result = parse_asr_response(response)
        result.busy_s = time.perf_counter() - started
        return result
