"""The validated plan of one request: what validation hands the pipeline. Above the catalogue (it names a Voice),
below the pipeline and the servicer; no gRPC."""

from __future__ import annotations

from dataclasses import dataclass

from services.tts_gateway.domain import TtsInputs
from services.tts_gateway.voices import Voice
from voice.v1 import conversion_pb2


@dataclass
class SynthesisPlan:
    """A validated request: everything the pipeline needs, nothing gRPC-specific."""

    request_id: str
    voice: Voice
    mode: str
    tts_inputs: TtsInputs
    conversion: conversion_pb2.ConversionSettings | None
    encoding: int
    output_rate: int
    # StreamingSynthesize hands the text deltas to the model as they arrive (text-input sessions), not sentences.
    incremental_text: bool = False

    @property
    def tts_rate(self) -> int:
        return self.voice.model.sample_rate_hz
