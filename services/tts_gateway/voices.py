"""Voices: the config file format, and the catalogue resolved against Triton's model configs.

Config file (TOML, or JSON with the same shape):

    [[voice]]
    name = "joe"                       # unique, used in requests
    description = "Piper en_US joe"    # optional
    tts_model = "piper_tts"            # Triton model
    speaker = "joe"                    # optional default preset speaker (else the model's first)
    language_code = "en-US"            # optional; else the model's `language_code` parameter
    noise_scale = 0.667                # optional model controls, sent when the model declares the input
    noise_w = 0.8                      # (0 and 0 make Piper deterministic)

    [voice.conversion]                 # optional default conversion; omit for none
    model = "world-default"            # a model of the voice-conversion service (ListModels)
    pitch_shift_semitones = 4.0        # any ConversionSettings field, by its proto name
    formant_shift_semitones = 2.0
    f0_method = "harvest"              # F0Method name: "crepe-tiny", "CREPE_TINY" or "F0_METHOD_CREPE_TINY"

Sample rate, modes, speakers and streaming come from the model's Triton config at start-up, never from this file.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from google.protobuf import timestamp_pb2

from services.common.conversion_settings import f0_method_value
from services.common.durations import duration_from_seconds
from services.common.errors import FailedPrecondition, NotFound, clip
from services.tts_gateway.domain import (
    MODE_CROSS_LINGUAL,
    MODE_INSTRUCT,
    MODE_PRESET,
    MODE_VOICE_DESIGN,
    MODE_ZERO_SHOT,
    TtsModelInfo,
)
from services.tts_gateway.saved_voices import SavedVoice, SavedVoiceStore
from services.tts_gateway.upstream_protocols import TtsModelSource
from voice.v1 import conversion_pb2, tts_gateway_pb2

DEFAULT_VOICES_PATH = Path(__file__).with_name("voices.toml")

MODE_TO_PROTO: dict[str, tts_gateway_pb2.SynthesisMode] = {
    MODE_PRESET: tts_gateway_pb2.SYNTHESIS_MODE_PRESET_SPEAKER,
    MODE_ZERO_SHOT: tts_gateway_pb2.SYNTHESIS_MODE_ZERO_SHOT,
    MODE_CROSS_LINGUAL: tts_gateway_pb2.SYNTHESIS_MODE_CROSS_LINGUAL,
    MODE_INSTRUCT: tts_gateway_pb2.SYNTHESIS_MODE_INSTRUCT,
    MODE_VOICE_DESIGN: tts_gateway_pb2.SYNTHESIS_MODE_VOICE_DESIGN,
}
_CONVERSION_FIELDS = {f.name for f in conversion_pb2.ConversionSettings.DESCRIPTOR.fields}
_NOISE_KEYS = ("noise_scale", "noise_w")  # Piper-style model controls a voice may fix


class VoiceConfigError(ValueError):
    """The voices file is malformed; the message names the voice and key."""


@dataclass(frozen=True)
class VoiceSpec:
    name: str
    tts_model: str
    description: str = ""
    speaker: str = ""
    language_code: str = ""
    conversion: conversion_pb2.ConversionSettings | None = None
    noise_scale: float | None = None
    noise_w: float | None = None


@dataclass(frozen=True)
class Voice:
    spec: VoiceSpec
    model: TtsModelInfo
    saved: SavedVoice | None = None  # set for a voice made with CreateVoice: its spec is the base voice's, renamed

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def supported_modes(self) -> tuple[str, ...]:
        """The model's modes; a saved voice has exactly one, the cloning its reference was saved for."""
        if self.saved is not None:
            return (MODE_ZERO_SHOT if self.saved.reference_text else MODE_CROSS_LINGUAL,)
        return self.model.supported_modes

    @property
    def language_code(self) -> str:
        return self.spec.language_code or self.model.language_code

    @property
    def speakers(self) -> tuple[str, ...]:
        speakers = list(self.model.speakers)
        if self.spec.speaker in speakers:  # the configured default goes first, as ListVoices promises
            speakers.remove(self.spec.speaker)
            speakers.insert(0, self.spec.speaker)
        return tuple(speakers)

    def to_proto(self) -> tts_gateway_pb2.Voice:
        voice = tts_gateway_pb2.Voice(
            name=self.name,
            description=self.spec.description,
            language_code=self.language_code,
            tts_model=self.model.name,
            native_sample_rate_hz=self.model.sample_rate_hz,
            supported_modes=[MODE_TO_PROTO[m] for m in self.supported_modes if m in MODE_TO_PROTO],
            speakers=() if self.saved is not None else self.speakers,
            streaming=self.model.decoupled,
            streams_text_input=self.model.streams_text_input,  # a saved voice's model is its base voice's
        )
        if self.spec.conversion is not None:
            voice.default_conversion.CopyFrom(self.spec.conversion)
        if self.saved is not None:
            saved = self.saved
            created = timestamp_pb2.Timestamp()
            created.FromNanoseconds(round(saved.create_time * 1e9))
            voice.saved.CopyFrom(
                tts_gateway_pb2.SavedVoice(
                    base_voice=saved.base_voice,
                    reference_text=saved.reference_text,
                    reference_duration=duration_from_seconds(saved.duration_s),
                    create_time=created,
                    size_bytes=saved.size_bytes,
                )
            )
        return voice


def _conversion_from_table(voice: str, table: dict[str, Any]) -> conversion_pb2.ConversionSettings:
    unknown = set(table) - _CONVERSION_FIELDS
    if unknown:
        raise VoiceConfigError(f"voice {voice!r}: unknown conversion keys {sorted(unknown)}")
    values = dict(table)
    if not values.get("model"):
        raise VoiceConfigError(f"voice {voice!r}: conversion needs a `model`")
    method = values.get("f0_method")
    if isinstance(method, str):
        value = f0_method_value(method)
        if value is None:
            raise VoiceConfigError(f"voice {voice!r}: unknown f0_method {method!r}")
        values["f0_method"] = value
    try:
        return conversion_pb2.ConversionSettings(**values)
    except (TypeError, ValueError) as exc:
        raise VoiceConfigError(f"voice {voice!r}: bad conversion value: {exc}") from None


def parse_voice_specs(data: dict[str, Any]) -> list[VoiceSpec]:
    entries = data.get("voice", data.get("voices"))
    if not isinstance(entries, list) or not entries:
        raise VoiceConfigError("the voices file needs at least one [[voice]] entry")
    specs: list[VoiceSpec] = []
    seen: set[str] = set()
    allowed = {"name", "description", "tts_model", "speaker", "language_code", "conversion", *_NOISE_KEYS}
    for entry in entries:
        name = str(entry.get("name", "")).strip()
        if not name:
            raise VoiceConfigError("every voice needs a `name`")
        if name in seen:
            raise VoiceConfigError(f"voice {name!r} is listed twice")
        seen.add(name)
        unknown = set(entry) - allowed
        if unknown:
            raise VoiceConfigError(f"voice {name!r}: unknown keys {sorted(unknown)}")
        if not entry.get("tts_model"):
            raise VoiceConfigError(f"voice {name!r} needs a `tts_model` (a Triton model name)")
        conversion = entry.get("conversion")
        specs.append(
            VoiceSpec(
                name=name,
                tts_model=str(entry["tts_model"]),
                description=str(entry.get("description", "")),
                speaker=str(entry.get("speaker", "")),
                language_code=str(entry.get("language_code", "")),
                conversion=_conversion_from_table(name, conversion) if conversion else None,
                **{key: _noise(name, key, entry[key]) for key in _NOISE_KEYS if key in entry},
            )
        )
    return specs


def _noise(voice: str, key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 2.0:
        raise VoiceConfigError(f"voice {voice!r}: {key} must be a number between 0 and 2, got {value!r}")
    return float(value)


def load_voice_specs(path: Path) -> list[VoiceSpec]:
    text = path.read_bytes()
    try:
        data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text.decode("utf-8"))
    except (json.JSONDecodeError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise VoiceConfigError(f"{path}: {exc}") from None
    return parse_voice_specs(data)


class VoiceCatalog:
    """The configured voices, usable once `resolve` has read their models' configs from Triton, and the saved voices
    (CreateVoice), which borrow the model and conversion of the configured voice they were saved from."""

    def __init__(self, specs: list[VoiceSpec], saved: SavedVoiceStore | None = None) -> None:
        self.specs = specs
        self.voices: dict[str, Voice] = {}
        self.saved = saved

    def configured_names(self) -> list[str]:
        return [spec.name for spec in self.specs]

    @property
    def resolved(self) -> bool:
        return len(self.voices) == len(self.specs)

    async def resolve(self, triton: TtsModelSource) -> None:
        models: dict[str, TtsModelInfo] = {}
        for spec in self.specs:
            if spec.tts_model not in models:
                models[spec.tts_model] = await triton.model_info(spec.tts_model)
        voices: dict[str, Voice] = {}
        for spec in self.specs:
            model = models[spec.tts_model]
            if spec.speaker and model.speakers and spec.speaker not in model.speakers:
                raise VoiceConfigError(
                    f"voice {spec.name!r}: speaker {spec.speaker!r} is not one of {model.name}'s {list(model.speakers)}"
                )
            voices[spec.name] = Voice(spec, model)
        self.voices = voices

    def get(self, name: str) -> Voice:
        voice = self.voices.get(name)
        if voice is not None:
            return voice
        if self.saved is not None:
            try:  # Unavailable when the store lost its database and does not hold the voice: it cannot say
                return self.from_saved(self.saved.get(name))
            except NotFound:
                pass
        known = ", ".join(sorted(s.name for s in self.specs)) or "none"
        saved = " (and the saved voices ListVoices shows)" if self.saved is not None and len(self.saved) else ""
        raise NotFound(
            f"unknown voice {clip(name)!r}; voices: {known}{saved}", resource_type="voice", resource_name=name
        )

    def from_saved(self, saved: SavedVoice) -> Voice:
        base = self.voices.get(saved.base_voice)
        if base is None:
            raise FailedPrecondition(
                f"saved voice {saved.name!r} clones with voice {saved.base_voice!r}, which is not configured now; "
                "delete it and create it again with a configured base voice",
                violations=[("BASE_VOICE", f"voice/{saved.name}", f"{saved.base_voice} is not configured")],
            )
        description = saved.description or f"saved voice cloned with {base.name}"
        return Voice(replace(base.spec, name=saved.name, description=description), base.model, saved)

    def saved_voices(self) -> list[Voice]:
        """Saved voices whose base voice is configured now (others are still kept in the store)."""
        if self.saved is None:
            return []
        return [self.from_saved(s) for s in self.saved.list() if s.base_voice in self.voices]

    def with_mode(self, mode: str) -> list[str]:
        return sorted(v.name for v in self.voices.values() if mode in v.model.supported_modes)

    def streaming_text_input(self) -> list[str]:
        """The configured voices whose model takes text in increments."""
        return sorted(v.name for v in self.voices.values() if v.model.streams_text_input)

    def listing(self, language_prefix: str = "", *, saved_only: bool = False) -> list[tts_gateway_pb2.Voice]:
        prefix = language_prefix.lower().replace("_", "-")
        if saved_only and self.saved is not None:
            self.saved.require_available()  # a list of only what this replica last knew would pass for the truth
        voices = ([] if saved_only else list(self.voices.values())) + self.saved_voices()
        return [
            v.to_proto()
            for v in sorted(voices, key=lambda v: v.name)
            if v.language_code.lower().replace("_", "-").startswith(prefix)
        ]
