"""The one internal form of a synthesis request, read from either wire message in one place.

`SynthesizeRequest` and `StreamingSynthesizeConfig` carry the same settings (voice, mode, output format, conversion,
speaking rate, seed, request id) as separate top-level fields of two messages: the proto cannot move them into one
shared message without changing their wire encoding (see the comment on StreamingSynthesizeConfig). Validation reads
this type instead, so a setting added to both messages is read here once.
"""

from __future__ import annotations

from dataclasses import dataclass

from services.tts_gateway.domain import MODE_PRESET
from voice.v1 import audio_pb2, conversion_pb2, tts_gateway_pb2

WireRequest = tts_gateway_pb2.SynthesizeRequest | tts_gateway_pb2.StreamingSynthesizeConfig


@dataclass(frozen=True)
class SynthesisRequest:
    """A request's settings as the client sent them, not yet validated. Unset sub-messages are the proto's default
    instances (as reading the field would give), so every accessor is safe."""

    request_id: str
    text: str | None  # None for a streaming config: its text arrives in later messages
    voice: str
    mode_field: str | None  # the member of the `mode` oneof that is set; None when unset (the preset speaker)
    preset_speaker: tts_gateway_pb2.PresetSpeaker
    zero_shot: tts_gateway_pb2.ZeroShot
    cross_lingual: tts_gateway_pb2.CrossLingual
    instruct: tts_gateway_pb2.Instruct
    voice_design: tts_gateway_pb2.VoiceDesign
    output_format: audio_pb2.AudioFormat
    conversion: conversion_pb2.ConversionSettings | None  # None when the request sets none
    disable_conversion: bool
    speaking_rate: float
    seed: int
    # StreamingSynthesizeConfig.text_input_mode (a TextInputMode value); UNSPECIFIED for Synthesize (whole text).
    text_input_mode: int = tts_gateway_pb2.TEXT_INPUT_MODE_UNSPECIFIED

    @property
    def mode(self) -> str:
        """The synthesis mode asked for; an unset oneof means the voice's preset speaker."""
        return self.mode_field or MODE_PRESET

    @classmethod
    def from_wire(cls, message: WireRequest) -> SynthesisRequest:
        text = message.text if isinstance(message, tts_gateway_pb2.SynthesizeRequest) else None
        text_input_mode = (
            message.text_input_mode
            if isinstance(message, tts_gateway_pb2.StreamingSynthesizeConfig)
            else tts_gateway_pb2.TEXT_INPUT_MODE_UNSPECIFIED
        )
        return cls(
            request_id=message.request_id,
            text=text,
            voice=message.voice,
            mode_field=message.WhichOneof("mode"),
            preset_speaker=message.preset_speaker,
            zero_shot=message.zero_shot,
            cross_lingual=message.cross_lingual,
            instruct=message.instruct,
            voice_design=message.voice_design,
            output_format=message.output_format,
            conversion=message.conversion if message.HasField("conversion") else None,
            disable_conversion=message.disable_conversion,
            speaking_rate=message.speaking_rate,
            seed=message.seed,
            text_input_mode=text_input_mode,
        )
