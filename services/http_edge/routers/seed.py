"""The seed's form API (the web page uses it): `/synthesize/stream`, `/synthesize`, `/tts`, `/rvc`.

A JSON `/tts` body is the CosyVoice2 runtime's API instead (bistream.py); forms stay the seed's whole-WAV `/tts`."""

from __future__ import annotations

import asyncio
import time

import grpc
from fastapi import APIRouter, Request
from fastapi.responses import Response

from services.common.audio import wav_header
from services.common.durations import seconds_from_duration
from services.common.request_id import REQUEST_ID_METADATA_KEY
from services.http_edge.bistream import BistreamDep, is_json
from services.http_edge.dependencies import Calls, CallsDep, RequestIdDep, SettingsDep
from services.http_edge.encode import FORMATS
from services.http_edge.errors import from_rpc_error, invalid
from services.http_edge.forms import FormFields, file_field, float_field, read_form, synthesis_fields, text_field
from services.http_edge.models import conversion_settings
from services.http_edge.settings import Settings
from services.http_edge.streaming import ms, start_synthesis, stream_response, timing_headers
from services.http_edge.uploads import audio_input
from voice.v1 import audio_pb2, conversion_pb2, tts_gateway_pb2, voice_conversion_pb2

router = APIRouter(tags=["seed API"])


def wav_file(pcm16: bytes, rate: int) -> bytes:
    """A complete mono 16-bit WAV (sizes filled in: the whole audio is known here)."""
    return wav_header(rate, len(pcm16)) + pcm16


async def synthesize_request(
    fields: FormFields, rid: str, encoding: audio_pb2.AudioEncoding, max_upload_s: float, *, tts_only: bool
) -> tts_gateway_pb2.SynthesizeRequest:
    pb = tts_gateway_pb2.SynthesizeRequest(
        request_id=rid,
        text=fields.text,
        voice=fields.voice,
        output_format=audio_pb2.AudioFormat(encoding=encoding, channels=1),
    )
    settings_pb = conversion_settings(fields.conversion_model, fields.pitch_shift)
    if tts_only:
        if settings_pb is not None:
            raise invalid("/tts does no voice conversion: use /synthesize for conversion_model and pitch_shift")
        pb.disable_conversion = True
    elif settings_pb is not None:
        pb.conversion.CopyFrom(settings_pb)
    if fields.reference is not None:
        reference = await asyncio.to_thread(audio_input, fields.reference, "reference", max_upload_s)
        if fields.reference_text:
            pb.zero_shot.CopyFrom(
                tts_gateway_pb2.ZeroShot(reference_audio=reference, reference_text=fields.reference_text)
            )
        else:
            pb.cross_lingual.CopyFrom(tts_gateway_pb2.CrossLingual(reference_audio=reference))
    elif fields.reference_text:
        raise invalid("reference_text needs a reference audio upload", "reference_text")
    return pb


@router.post("/synthesize/stream")
async def synthesize_stream(request: Request, rid: RequestIdDep, settings: SettingsDep, calls: CallsDep) -> Response:
    fields = await synthesis_fields(request, settings.max_body_bytes, default_format="pcm")
    fmt = FORMATS[fields.response_format]
    pb = await synthesize_request(fields, rid, fmt.gateway_encoding, settings.max_upload_seconds, tts_only=False)
    opened = await start_synthesis(calls.gateway, pb, calls.gateway_md(rid), settings.synthesis_timeout_s)
    return stream_response(opened, fmt, rid, "/synthesize/stream", {})


async def whole_wav(request: Request, rid: str, settings: Settings, calls: Calls, *, tts_only: bool) -> Response:
    fields = await synthesis_fields(request, settings.max_body_bytes, default_format="wav")
    if fields.response_format != "wav":
        raise invalid(
            "this endpoint answers a whole WAV file; use /synthesize/stream for other formats", "response_format"
        )
    encoding = audio_pb2.AUDIO_ENCODING_PCM16
    pb = await synthesize_request(fields, rid, encoding, settings.max_upload_seconds, tts_only=tts_only)
    opened = await start_synthesis(calls.gateway, pb, calls.gateway_md(rid), settings.synthesis_timeout_s)
    pcm = await opened.whole_pcm()
    total_s = time.perf_counter() - opened.started
    summary = opened.summary or audio_pb2.SynthesisSummary()
    headers = timing_headers(
        ttfa_ms=ms(summary.time_to_first_audio) if opened.summary else opened.first_audio_s * 1000,
        tts_ms=ms(summary.tts_time),
        conversion_ms=ms(summary.conversion_time),
        audio_s=len(pcm) / 2 / opened.sample_rate,
        total_ms=total_s * 1000,
    )
    headers |= {"X-Sample-Rate": str(opened.sample_rate), REQUEST_ID_METADATA_KEY: rid}
    return Response(wav_file(pcm, opened.sample_rate), media_type="audio/wav", headers=headers)


@router.post("/synthesize")
async def synthesize(request: Request, rid: RequestIdDep, settings: SettingsDep, calls: CallsDep) -> Response:
    return await whole_wav(request, rid, settings, calls, tts_only=False)


@router.post("/tts")
async def tts(
    request: Request, rid: RequestIdDep, settings: SettingsDep, calls: CallsDep, bistream: BistreamDep
) -> Response:
    if is_json(request):  # the CosyVoice2 runtime's API (bistream.py); forms stay the seed's whole-WAV /tts
        return await bistream.tts(request, rid)
    return await whole_wav(request, rid, settings, calls, tts_only=True)


@router.post("/rvc")
async def rvc(request: Request, rid: RequestIdDep, settings: SettingsDep, calls: CallsDep) -> Response:
    form = await read_form(request, settings.max_body_bytes)
    data = await file_field(form, "audio")
    if data is None:
        raise invalid("audio is required: the clip to convert, as a file upload", "audio")
    model = text_field(form, "model", required=True) or ""
    pitch_shift = float_field(form, "pitch_shift")
    clip = await asyncio.to_thread(audio_input, data, "audio", settings.max_upload_seconds)
    settings_pb = conversion_settings(model, pitch_shift) or conversion_pb2.ConversionSettings(model=model)
    started = time.perf_counter()
    try:
        reply = await calls.conversion.ConvertClip(
            voice_conversion_pb2.ConvertClipRequest(
                request_id=rid,
                settings=settings_pb,
                audio=clip,
                output_format=audio_pb2.AudioFormat(encoding=audio_pb2.AUDIO_ENCODING_WAV, channels=1),
            ),
            metadata=calls.rvc_md(rid),
            timeout=settings.synthesis_timeout_s,
        )
    except grpc.aio.AioRpcError as error:
        raise from_rpc_error(error) from None
    headers = timing_headers(
        ttfa_ms=None,
        tts_ms=0.0,
        conversion_ms=ms(reply.conversion_time),
        audio_s=seconds_from_duration(reply.audio_duration),
        total_ms=(time.perf_counter() - started) * 1000,
    )
    headers |= {"X-Sample-Rate": str(reply.format.sample_rate_hz), REQUEST_ID_METADATA_KEY: rid}
    if reply.real_time_factor:
        headers["X-Real-Time-Factor"] = f"{reply.real_time_factor:.4f}"
    return Response(reply.audio, media_type="audio/wav", headers=headers)
