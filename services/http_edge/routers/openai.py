"""OpenAI-compatible speech: `POST /v1/audio/speech`, `GET /v1/models`, `GET /v1/models/{id}`.

`model` does not select anything (the voice selects the backend); it is echoed in `X-Model`. OpenAI's voice names
resolve through the aliases (voices.py). Every format comes at 24 kHz, what OpenAI's clients assume for `pcm`."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from services.http_edge.dependencies import CallsDep, RequestIdDep, SettingsDep
from services.http_edge.encode import FORMATS
from services.http_edge.errors import EdgeError
from services.http_edge.models import SpeechRequest, conversion_settings
from services.http_edge.streaming import start_synthesis, stream_response
from services.http_edge.voices import VoicesDep
from voice.v1 import audio_pb2, tts_gateway_pb2

SPEECH_ROUTE = "/v1/audio/speech"
# OpenAI's speech API answers at 24 kHz (its `pcm` is documented as 24 kHz s16le); /v1/audio/speech asks the gateway
# for that rate in every format so clients written for OpenAI play it right.
OPENAI_SAMPLE_RATE = 24_000
# The model ids GET /v1/models lists: OpenAI's speech models (what tools send by default) and the edge's own name.
# /v1/audio/speech accepts any id.
SPEECH_MODELS = ("tts-1", "tts-1-hd", "gpt-4o-mini-tts", "voice-edge")
MODEL_OWNER = "voice-edge"

router = APIRouter(tags=["OpenAI-compatible"])


def synthesize_request(body: SpeechRequest, voice: str, rid: str) -> tts_gateway_pb2.SynthesizeRequest:
    fmt = FORMATS[body.response_format]
    pb = tts_gateway_pb2.SynthesizeRequest(
        request_id=rid,
        text=body.input,
        voice=voice,
        output_format=audio_pb2.AudioFormat(
            encoding=fmt.gateway_encoding, sample_rate_hz=OPENAI_SAMPLE_RATE, channels=1
        ),
        speaking_rate=body.speed,  # 1.0 passes for every voice; another pace only for a model that has one
    )
    settings_pb = conversion_settings(body.conversion_model, body.pitch_shift)
    if settings_pb is not None:
        pb.conversion.CopyFrom(settings_pb)
    if body.instructions:
        pb.instruct.CopyFrom(tts_gateway_pb2.Instruct(instruction=body.instructions))
    return pb


@router.post(SPEECH_ROUTE)
async def speech(
    body: SpeechRequest, rid: RequestIdDep, settings: SettingsDep, calls: CallsDep, voices: VoicesDep
) -> Response:
    voice = await voices.resolve(body.voice, calls, rid)
    pb = synthesize_request(body, voice, rid)
    opened = await start_synthesis(calls.gateway, pb, calls.gateway_md(rid), settings.synthesis_timeout_s)
    extra = {"X-Model": body.model} | ({"X-Voice": voice} if voice != body.voice else {})
    return stream_response(opened, FORMATS[body.response_format], rid, SPEECH_ROUTE, extra)


def model_object(model_id: str, created: int) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": created, "owned_by": MODEL_OWNER}


@router.get("/v1/models")
async def list_models(settings: SettingsDep) -> JSONResponse:
    data = [model_object(model_id, settings.started_at) for model_id in SPEECH_MODELS]
    return JSONResponse({"object": "list", "data": data})


@router.get("/v1/models/{model_id}")
async def get_model(model_id: str, settings: SettingsDep) -> JSONResponse:
    if model_id not in SPEECH_MODELS:
        raise EdgeError(
            404,
            f"The model '{model_id}' does not exist; this edge lists: {', '.join(SPEECH_MODELS)}",
            "not_found",
            "model",
        )
    return JSONResponse(model_object(model_id, settings.started_at))
