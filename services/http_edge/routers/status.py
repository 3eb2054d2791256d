"""Health, status and discovery: `GET /health`, `GET /status`, `GET /v1/voices` (with the voice aliases)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import grpc
from fastapi import APIRouter
from fastapi.responses import JSONResponse
from google.protobuf.json_format import MessageToDict

from services.common.contract import CLONING_MODE_NAMES
from services.http_edge.dependencies import CallsDep, RequestIdDep, UpstreamsDep
from services.http_edge.errors import from_rpc_error
from services.http_edge.upstream import CONVERSION_SERVICE, GATEWAY_SERVICE
from services.http_edge.voices import VoicesDep
from voice.v1 import tts_gateway_pb2, voice_conversion_pb2

log = logging.getLogger(__name__)

CLONING_MODES = frozenset(
    tts_gateway_pb2.SynthesisMode.Value(f"SYNTHESIS_MODE_{n.upper()}") for n in CLONING_MODE_NAMES
)

router = APIRouter(tags=["status"])


@router.get("/health")
async def health(up: UpstreamsDep) -> JSONResponse:
    gateway, conversion = await asyncio.gather(
        up.health(up.gateway_channel, GATEWAY_SERVICE), up.health(up.rvc_channel, CONVERSION_SERVICE)
    )
    if gateway != "SERVING":
        status, code = "unavailable", 503
    else:
        status, code = ("ok" if conversion == "SERVING" else "degraded"), 200
    return JSONResponse({"status": status, "gateway": gateway, "conversion": conversion}, status_code=code)


@router.get("/status")
async def status(rid: RequestIdDep, calls: CallsDep) -> JSONResponse:
    try:
        gateway = await calls.gateway.GetStatus(
            tts_gateway_pb2.TtsGatewayServiceGetStatusRequest(),
            metadata=calls.gateway_md(rid),
            timeout=calls.unary_timeout_s,
        )
    except grpc.aio.AioRpcError as error:
        raise from_rpc_error(error) from None
    conversion: dict[str, Any]
    try:
        reply = await calls.conversion.GetStatus(
            voice_conversion_pb2.VoiceConversionServiceGetStatusRequest(),
            metadata=calls.rvc_md(rid),
            timeout=calls.unary_timeout_s,
        )
        conversion = MessageToDict(reply)
    except grpc.aio.AioRpcError as error:
        conversion = {"error": {"code": error.code().name.lower(), "message": error.details()}}
    return JSONResponse({"gateway": MessageToDict(gateway), "conversion": conversion})


def voice_object(voice: tts_gateway_pb2.Voice) -> dict[str, Any]:
    return {
        "id": voice.name,
        "object": "voice",
        "name": voice.name,
        "description": voice.description,
        "language": voice.language_code,
        "sample_rate": voice.native_sample_rate_hz,
        "streaming": voice.streaming,
        "streams_text_input": voice.streams_text_input,
        "available": voice.available,
        "supports_cloning": any(mode in CLONING_MODES for mode in voice.supported_modes),
        "default_conversion": voice.default_conversion.model if voice.HasField("default_conversion") else None,
    }


def conversion_model_object(model: voice_conversion_pb2.ModelInfo) -> dict[str, Any]:
    engine = voice_conversion_pb2.ConversionEngine.Name(model.engine).removeprefix("CONVERSION_ENGINE_").lower()
    return {
        "id": model.name,
        "object": "conversion_model",
        "engine": engine,
        "sample_rate": model.sample_rate_hz,
        "loaded": model.loaded,
    }


@router.get("/v1/voices")
async def voices(rid: RequestIdDep, calls: CallsDep, directory: VoicesDep) -> JSONResponse:
    """The gateway's voices, the conversion models, and `aliases`: the other names the OpenAI routes accept."""
    results: tuple[Any, Any] = await asyncio.gather(
        directory.listing(calls, rid, fresh=True),
        calls.conversion.ListModels(
            voice_conversion_pb2.ListModelsRequest(), metadata=calls.rvc_md(rid), timeout=calls.unary_timeout_s
        ),
        return_exceptions=True,
    )
    listing, models = results
    if isinstance(listing, BaseException):
        raise listing
    conversion_models: list[dict[str, Any]] = []
    if isinstance(models, voice_conversion_pb2.ListModelsResponse):
        conversion_models = [conversion_model_object(model) for model in models.models]
    else:
        log.info("conversion models unavailable for /v1/voices: %s", models)
    aliases = [
        {"id": name, "object": "voice_alias", "voice": voice} for name, voice in directory.aliases(listing).items()
    ]
    return JSONResponse(
        {
            "object": "list",
            "data": [voice_object(voice) for voice in listing],
            "conversion_models": conversion_models,
            "aliases": aliases,
        }
    )
