"""Request validation: field checks (INVALID_ARGUMENT), then voice (NOT_FOUND), then capabilities
(FAILED_PRECONDITION); the result is a SynthesisPlan. Reference audio is decoded once per content hash."""

from __future__ import annotations

import asyncio
import collections
import hashlib
import math
import threading
from dataclasses import dataclass

import numpy as np

from services.common.audio import AudioDecodeError, decode_audio, resample, resolve_output_rate, validate_output_format
from services.common.errors import FailedPrecondition, InvalidArgument
from services.common.request_id import resolve_request_id
from services.tts_gateway.pipeline import SynthesisPlan
from services.tts_gateway.saved_voices import reference_problems
from services.tts_gateway.text import NOTHING_TO_SPEAK, control_character_problem, is_pronounceable
from services.tts_gateway.triton_client import (
    MODE_CROSS_LINGUAL,
    MODE_INSTRUCT,
    MODE_PRESET,
    MODE_VOICE_DESIGN,
    MODE_ZERO_SHOT,
    TtsInputs,
)
from services.tts_gateway.voices import VoiceCatalog
from voice.v1 import audio_pb2, conversion_pb2, tts_gateway_pb2

MiB = 1024 * 1024

# (field, low, high) for the optional ConversionSettings fields; ranges from conversion.proto.
CONVERSION_RANGES: tuple[tuple[str, float, float], ...] = (
    ("pitch_shift_semitones", -24.0, 24.0),
    ("index_rate", 0.0, 1.0),
    ("protect", 0.0, 0.5),
    ("rms_mix_rate", 0.0, 1.0),
    ("filter_radius", 0, 7),
    ("speaker_id", 0, 10_000),
    ("formant_shift_semitones", -12.0, 12.0),
)


@dataclass(frozen=True)
class Limits:
    max_text_chars: int = 5000
    max_stream_text_chars: int = 50_000
    max_reference_bytes: int = 8 * MiB
    min_reference_s: float = 1.0
    max_reference_s: float = 30.0
    max_reference_text_chars: int = 1000
    max_instruction_chars: int = 500


class ReferenceCache:
    """Decoded reference audio keyed by a hash of its bytes and format, so repeated requests skip decoding and
    resampling. Bounded LRU; thread-safe because decoding runs in a worker thread."""

    def __init__(self, capacity: int = 64) -> None:
        self.capacity = capacity
        # (content hash, target rate or 0 for "as decoded") -> (samples, their rate)
        self._items: collections.OrderedDict[tuple[str, int], tuple[np.ndarray, int]] = collections.OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(audio: audio_pb2.AudioInput) -> str:
        digest = hashlib.sha256(audio.audio)
        fmt = audio.format
        digest.update(f"|{fmt.encoding}|{fmt.sample_rate_hz}|{fmt.channels}".encode())
        return digest.hexdigest()

    def get(self, key: str, rate: int) -> tuple[np.ndarray, int] | None:
        with self._lock:
            value = self._items.get((key, rate))
            if value is not None:
                self._items.move_to_end((key, rate))
                self.hits += 1
            else:
                self.misses += 1
            return value

    def put(self, key: str, rate: int, samples: np.ndarray, samples_rate: int) -> None:
        with self._lock:
            samples.setflags(write=False)  # shared between requests
            self._items[(key, rate)] = (samples, samples_rate)
            self._items.move_to_end((key, rate))
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)


def text_violations(text: str, field: str) -> list[tuple[str, str]]:
    """Text a TTS model cannot speak: control characters (NUL, ESC, ...) or nothing but symbols and punctuation."""
    problem = control_character_problem(text)
    if problem is not None:
        return [(field, problem)]
    if not is_pronounceable(text):
        return [(field, NOTHING_TO_SPEAK)]
    return []


def _mode_of(message: tts_gateway_pb2.SynthesizeRequest | tts_gateway_pb2.StreamingSynthesizeConfig) -> str:
    which = message.WhichOneof("mode")
    return {
        None: MODE_PRESET,
        "preset_speaker": MODE_PRESET,
        "zero_shot": MODE_ZERO_SHOT,
        "cross_lingual": MODE_CROSS_LINGUAL,
        "instruct": MODE_INSTRUCT,
        "voice_design": MODE_VOICE_DESIGN,
    }[which]


# Spark-TTS's names for the designed voice's attributes (VoiceGender / VoiceLevel enum values -> model inputs).
GENDER_NAMES = {tts_gateway_pb2.VOICE_GENDER_FEMALE: "female", tts_gateway_pb2.VOICE_GENDER_MALE: "male"}
LEVEL_NAMES = {
    tts_gateway_pb2.VOICE_LEVEL_UNSPECIFIED: "moderate",
    tts_gateway_pb2.VOICE_LEVEL_VERY_LOW: "very_low",
    tts_gateway_pb2.VOICE_LEVEL_LOW: "low",
    tts_gateway_pb2.VOICE_LEVEL_MODERATE: "moderate",
    tts_gateway_pb2.VOICE_LEVEL_HIGH: "high",
    tts_gateway_pb2.VOICE_LEVEL_VERY_HIGH: "very_high",
}


def design_violations(design: tts_gateway_pb2.VoiceDesign, inputs: TtsInputs) -> list[tuple[str, str]]:
    """Check a VoiceDesign and put its attributes into `inputs`."""
    violations = []
    gender = GENDER_NAMES.get(design.gender)
    if gender is None:
        violations.append(("voice_design.gender", "is required: VOICE_GENDER_FEMALE or VOICE_GENDER_MALE"))
    inputs.gender = gender
    for field in ("pitch", "speed"):
        level = LEVEL_NAMES.get(getattr(design, field))
        if level is None:
            violations.append((f"voice_design.{field}", "must be a VoiceLevel value (or unset for moderate)"))
        setattr(inputs, f"{field}_level", level)
    return violations


def conversion_violations(settings: conversion_pb2.ConversionSettings, field: str) -> list[tuple[str, str]]:
    violations = []
    for name, low, high in CONVERSION_RANGES:
        if not settings.HasField(name):
            continue
        value = getattr(settings, name)
        if isinstance(value, float) and not math.isfinite(value):
            violations.append((f"{field}.{name}", "must be a finite number"))
        elif not low <= value <= high:
            violations.append((f"{field}.{name}", f"must be in {low}..{high}, got {value}"))
    if settings.f0_method not in conversion_pb2.F0Method.values():
        violations.append((f"{field}.f0_method", f"unknown value {settings.f0_method}"))
    return violations


def merge_conversion(
    default: conversion_pb2.ConversionSettings | None, override: conversion_pb2.ConversionSettings
) -> conversion_pb2.ConversionSettings:
    """The voice's default with every field the request set laid over it."""
    merged = conversion_pb2.ConversionSettings()
    if default is not None:
        merged.CopyFrom(default)
    if override.model:
        merged.model = override.model
    if override.f0_method:
        merged.f0_method = override.f0_method
    for name, _, _ in CONVERSION_RANGES:
        if override.HasField(name):
            setattr(merged, name, getattr(override, name))
    return merged


class RequestValidator:
    def __init__(self, catalog: VoiceCatalog, limits: Limits, references: ReferenceCache) -> None:
        self.catalog = catalog
        self.limits = limits
        self.references = references

    def decode_reference(self, audio: audio_pb2.AudioInput, field: str) -> tuple[str, np.ndarray, int]:
        """Decode and check a reference clip; (cache key, samples, rate). Raises InvalidArgument."""
        key = ReferenceCache.key(audio)
        cached = self.references.get(key, 0)
        if cached is not None:
            return key, cached[0], cached[1]
        if len(audio.audio) > self.limits.max_reference_bytes:
            raise InvalidArgument([(f"{field}.audio", f"is {len(audio.audio)} bytes, over the 8 MiB limit")])
        try:
            samples, rate = decode_audio(
                audio.audio,
                audio.format.encoding,
                audio.format.sample_rate_hz,
                audio.format.channels,
                max_seconds=self.limits.max_reference_s,
            )
        except AudioDecodeError as exc:
            raise InvalidArgument([(f"{field}.audio", str(exc))]) from None
        seconds = samples.size / rate
        if seconds < self.limits.min_reference_s:
            raise InvalidArgument(
                [
                    (
                        f"{field}.audio",
                        f"is {seconds:.2f} s; reference audio must be {self.limits.min_reference_s:g}-"
                        f"{self.limits.max_reference_s:g} s",
                    )
                ]
            )
        problems = reference_problems(samples, rate, self.limits.min_reference_s, self.limits.max_reference_s)
        if problems:  # silence: nothing of a speaker to clone
            raise InvalidArgument([(f"{field}.audio", problem) for problem in problems])
        self.references.put(key, 0, samples, rate)
        return key, samples, rate

    async def plan(
        self,
        message: tts_gateway_pb2.SynthesizeRequest | tts_gateway_pb2.StreamingSynthesizeConfig,
        *,
        text_field: str | None,
    ) -> SynthesisPlan:
        violations: list[tuple[str, str]] = []
        request_id = resolve_request_id(message.request_id)
        if text_field is not None:
            text = message.text.strip()  # type: ignore[union-attr]
            if not text:
                violations.append((text_field, "must contain at least one non-space character"))
            elif len(text) > self.limits.max_text_chars:
                violations.append(
                    (text_field, f"has {len(text)} characters, over the {self.limits.max_text_chars} limit")
                )
            else:
                violations += text_violations(text, text_field)
        if not message.voice:
            violations.append(("voice", "is required (see ListVoices)"))
        fmt = message.output_format
        violations += validate_output_format(fmt.encoding, fmt.sample_rate_hz)
        if fmt.channels not in (0, 1):
            violations.append(("output_format.channels", "output is mono: use 0 or 1"))
        rate = message.speaking_rate
        if rate != 0 and not (math.isfinite(rate) and 0.5 <= rate <= 2.0):
            violations.append(("speaking_rate", f"must be 0 (normal) or 0.5..2.0, got {rate}"))
        has_conversion = message.HasField("conversion")
        if has_conversion:
            violations += conversion_violations(message.conversion, "conversion")
            if message.disable_conversion:
                violations.append(("disable_conversion", "cannot be set together with conversion"))
        mode = _mode_of(message)
        inputs = TtsInputs(length_scale=1.0 / rate if rate else None, seed=message.seed or None)
        reference: tuple[str, np.ndarray, int] | None = None
        if mode in (MODE_ZERO_SHOT, MODE_CROSS_LINGUAL):
            sub = message.zero_shot if mode == MODE_ZERO_SHOT else message.cross_lingual
            field = f"{mode}.reference_audio"
            if not sub.HasField("reference_audio") or not sub.reference_audio.audio:
                violations.append((field, "is required"))
            else:
                try:
                    reference = await asyncio.to_thread(self.decode_reference, sub.reference_audio, field)
                except InvalidArgument as exc:
                    violations += exc.violations
            if mode == MODE_ZERO_SHOT:
                ref_text = message.zero_shot.reference_text.strip()
                if not 1 <= len(ref_text) <= self.limits.max_reference_text_chars:
                    violations.append(("zero_shot.reference_text", "must be 1..1000 characters"))
                inputs.reference_text = ref_text
        if mode == MODE_VOICE_DESIGN:
            violations += design_violations(message.voice_design, inputs)
        if mode == MODE_INSTRUCT:
            instruction = message.instruct.instruction.strip()
            if not 1 <= len(instruction) <= self.limits.max_instruction_chars:
                violations.append(("instruct.instruction", "must be 1..500 characters"))
            inputs.instruction = instruction
        if violations:
            raise InvalidArgument(violations)

        voice = self.catalog.get(message.voice)
        if voice.saved is not None:
            if message.WhichOneof("mode") not in (None, "preset_speaker") or message.preset_speaker.speaker:
                raise InvalidArgument(
                    [("mode", f"voice {voice.name!r} is a saved voice and brings its own reference: leave mode unset")]
                )
            mode = voice.supported_modes[0]
            inputs.reference_text = voice.saved.reference_text or None
            reference = (
                f"saved:{voice.name}:{voice.saved.create_time}",
                voice.saved.samples,
                voice.saved.sample_rate_hz,
            )
        if mode not in voice.supported_modes:
            others = self.catalog.with_mode(mode)
            where = f"voices that support it: {', '.join(others)}" if others else "no configured voice supports it"
            raise FailedPrecondition(
                f"voice {voice.name!r} (model {voice.model.name}) does not support mode {mode}; {where}",
                violations=[("MODE", f"voice/{voice.name}", f"{mode} not in {list(voice.model.supported_modes)}")],
            )
        inputs.noise_scale, inputs.noise_w = voice.spec.noise_scale, voice.spec.noise_w
        speaker = ""
        if mode == MODE_PRESET and message.WhichOneof("mode") == "preset_speaker":
            speaker = message.preset_speaker.speaker
        elif mode == MODE_INSTRUCT:
            speaker = message.instruct.speaker
        speaker = speaker or voice.spec.speaker
        if speaker:
            if speaker not in voice.speakers:
                field = "instruct.speaker" if mode == MODE_INSTRUCT else "preset_speaker.speaker"
                raise InvalidArgument([(field, f"voice {voice.name!r} has speakers {list(voice.speakers)}")])
            if len(voice.model.speakers) > 1:
                inputs.speaker_id = voice.model.speakers.index(speaker)
        if reference is not None:
            key, samples, base_rate = reference
            target = voice.model.reference_sample_rate_hz
            cached = self.references.get(key, target)
            if cached is None:
                processed = await asyncio.to_thread(resample, samples, base_rate, target)
                self.references.put(key, target, processed, target)
            else:
                processed = cached[0]
            inputs.reference_wav = processed

        conversion = None
        if not message.disable_conversion and (has_conversion or voice.spec.conversion is not None):
            conversion = merge_conversion(voice.spec.conversion, message.conversion)
            if not conversion.model:
                raise InvalidArgument(
                    [("conversion.model", f"is required: voice {voice.name!r} has no default conversion")]
                )
        return SynthesisPlan(
            request_id=request_id,
            voice=voice,
            mode=mode,
            tts_inputs=inputs,
            conversion=conversion,
            encoding=fmt.encoding,
            output_rate=resolve_output_rate(fmt.encoding, fmt.sample_rate_hz, voice.model.sample_rate_hz),
        )
