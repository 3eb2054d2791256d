"""Request validation: field checks (INVALID_ARGUMENT), then voice (NOT_FOUND), then capabilities
(FAILED_PRECONDITION); the result is a SynthesisPlan. Reference audio is decoded once per content hash.

`RequestValidator.plan` composes one small check per concern. The field checks all run before anything is looked up,
so one INVALID_ARGUMENT lists every bad field; the checks after the voice is known stop at the first problem.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import threading
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from cachetools import LRUCache
from numpy.typing import NDArray

from services.common.audio import AudioDecodeError, decode_audio, resample, resolve_output_rate, validate_output_format
from services.common.contract import (
    MAX_REFERENCE_BYTES,
    MAX_REFERENCE_S,
    MAX_REFERENCE_TEXT_CHARS,
    MIN_REFERENCE_S,
    MiB,
    speaking_rate_problem,
)
from services.common.conversion_settings import CONVERSION_SETTINGS, F0_METHOD_NAMES, fields_set
from services.common.errors import FailedPrecondition, InvalidArgument
from services.common.request_id import resolve_request_id
from services.tts_gateway.domain import (
    CLONING_MODES,
    MODE_CROSS_LINGUAL,
    MODE_INSTRUCT,
    MODE_PRESET,
    MODE_VOICE_DESIGN,
    MODE_ZERO_SHOT,
    TtsInputs,
)
from services.tts_gateway.plan import SynthesisPlan
from services.tts_gateway.saved_voices import reference_problems
from services.tts_gateway.synthesis_request import SynthesisRequest, WireRequest
from services.tts_gateway.text import NOTHING_TO_SPEAK, control_character_problem, is_pronounceable
from services.tts_gateway.transcripts import ReferenceTranscripts, TranscriptUnavailable, untranscribed_problem
from services.tts_gateway.voices import Voice, VoiceCatalog
from voice.v1 import audio_pb2, conversion_pb2, tts_gateway_pb2

Violations = list[tuple[str, str]]  # (field path, what to fix), as BadRequest field violations


@dataclass(frozen=True)
class Limits:
    max_text_chars: int = 5000
    max_stream_text_chars: int = 50_000
    max_reference_bytes: int = MAX_REFERENCE_BYTES
    min_reference_s: float = MIN_REFERENCE_S
    max_reference_s: float = MAX_REFERENCE_S
    max_reference_text_chars: int = MAX_REFERENCE_TEXT_CHARS
    max_instruction_chars: int = 500


class DecodedReference(NamedTuple):
    """Reference audio after decoding and checks: its cache key and samples at the rate they were decoded at."""

    key: str
    samples: NDArray[np.float32]
    sample_rate_hz: int


class ReferenceCache:
    """Decoded reference audio keyed by a hash of its bytes and format, so repeated requests skip decoding and
    resampling. Bounded LRU (cachetools); thread-safe because decoding runs in a worker thread. A capacity of 0 or
    less keeps nothing."""

    def __init__(self, capacity: int = 64) -> None:
        self.capacity = capacity
        # (content hash, target rate or 0 for "as decoded") -> (samples, their rate)
        self._items: LRUCache[tuple[str, int], tuple[NDArray[np.float32], int]] = LRUCache(maxsize=max(1, capacity))
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(audio: audio_pb2.AudioInput) -> str:
        digest = hashlib.sha256(audio.audio)
        fmt = audio.format
        digest.update(f"|{fmt.encoding}|{fmt.sample_rate_hz}|{fmt.channels}".encode())
        return digest.hexdigest()

    def get(self, key: str, rate: int) -> tuple[NDArray[np.float32], int] | None:
        with self._lock:
            value = self._items.get((key, rate))  # a hit counts as a use (most recently used)
            if value is not None:
                self.hits += 1
            else:
                self.misses += 1
            return value

    def put(self, key: str, rate: int, samples: NDArray[np.float32], samples_rate: int) -> None:
        samples.setflags(write=False)  # shared between requests
        if self.capacity <= 0:
            return
        with self._lock:
            self._items[(key, rate)] = (samples, samples_rate)  # evicts the least recently used beyond capacity

    def discard_prefix(self, prefix: str) -> int:
        """Drop every entry whose key starts with `prefix` (a saved voice that changed or went away); how many."""
        with self._lock:
            stale = [item for item in self._items if item[0].startswith(prefix)]
            for item in stale:
                del self._items[item]
        return len(stale)


# ---- field checks: each returns the violations of one concern ------------------------------------------------------


def text_violations(text: str, field: str) -> Violations:
    """Text a TTS model cannot speak: control characters (NUL, ESC, ...) or nothing but symbols and punctuation."""
    problem = control_character_problem(text)
    if problem is not None:
        return [(field, problem)]
    if not is_pronounceable(text):
        return [(field, NOTHING_TO_SPEAK)]
    return []


def input_text_violations(text: str, field: str, max_chars: int) -> Violations:
    """The text of a Synthesize request: present, within the limit, speakable."""
    text = text.strip()
    if not text:
        return [(field, "must contain at least one non-space character")]
    if len(text) > max_chars:
        return [(field, f"has {len(text)} characters, over the {max_chars} limit")]
    return text_violations(text, field)


def text_input_mode_violations(mode: int) -> Violations:
    if mode not in tts_gateway_pb2.TextInputMode.values():
        return [("text_input_mode", f"unknown value {mode}")]
    return []


def voice_name_violations(voice: str) -> Violations:
    return [] if voice else [("voice", "is required (see ListVoices)")]


def output_format_violations(fmt: audio_pb2.AudioFormat) -> Violations:
    violations = validate_output_format(fmt.encoding, fmt.sample_rate_hz)
    if fmt.channels not in (0, 1):
        violations.append(("output_format.channels", "output is mono: use 0 or 1"))
    return violations


def speaking_rate_violations(rate: float) -> Violations:
    problem = speaking_rate_problem(rate)
    if problem is not None:
        return [("speaking_rate", problem)]
    return []


def require_speaking_rate(voice: Voice, rate: float) -> None:
    """A pace other than normal needs a model with a `length_scale` input. Models that sample speech tokens have no
    such control, and stretching their streamed audio afterwards would cost quality and latency, so say so."""
    if rate not in (0.0, 1.0) and "length_scale" not in voice.model.inputs:
        raise FailedPrecondition(
            f"voice {voice.name!r} (model {voice.model.name}) cannot change its speaking rate: send speaking_rate 0 "
            "or 1, or pick a voice whose model takes length_scale (the Piper voices)",
            violations=[("SPEAKING_RATE", voice.name, "the voice's model has no length_scale input")],
        )


def conversion_violations(settings: conversion_pb2.ConversionSettings, field: str) -> Violations:
    """Ranges from the shared table; a model-bound upper end (speaker_id) is the conversion service's to check."""
    violations = []
    for spec in CONVERSION_SETTINGS:
        if not settings.HasField(spec.name):
            continue
        value = getattr(settings, spec.name)
        if isinstance(value, float) and not math.isfinite(value):
            violations.append((f"{field}.{spec.name}", "must be a finite number"))
        elif not spec.admits(value):
            violations.append((f"{field}.{spec.name}", f"must be in {spec.range_text}, got {value}"))
    if settings.f0_method not in F0_METHOD_NAMES:
        violations.append((f"{field}.f0_method", f"unknown value {settings.f0_method}"))
    return violations


def conversion_request_violations(request: SynthesisRequest) -> Violations:
    if request.conversion is None:
        return []
    violations = conversion_violations(request.conversion, "conversion")
    if request.disable_conversion:
        violations.append(("disable_conversion", "cannot be set together with conversion"))
    return violations


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


def design_violations(design: tts_gateway_pb2.VoiceDesign, inputs: TtsInputs) -> Violations:
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


def reference_text_violations(
    zero_shot: tts_gateway_pb2.ZeroShot,
    inputs: TtsInputs,
    max_chars: int,
    *,
    transcribes: bool = False,
    may_transcribe: bool = False,
) -> Violations:
    """Check the zero-shot transcript and put it into `inputs`. Empty is left for the gateway to transcribe once the
    voice is known when `may_transcribe` (the gateway `transcribes` references and this one decoded)."""
    text = zero_shot.reference_text.strip()
    inputs.reference_text = text
    if not text and may_transcribe:
        return []
    if not text and transcribes:  # the gateway would have transcribed it, but the reference audio was refused
        reason = "zero_shot.reference_audio was refused"
        return [("zero_shot.reference_text", untranscribed_problem(reason, cross_lingual=False))]
    if not 1 <= len(text) <= max_chars:
        return [("zero_shot.reference_text", f"must be 1..{max_chars} characters")]
    return []


def instruction_violations(instruct: tts_gateway_pb2.Instruct, inputs: TtsInputs, max_chars: int) -> Violations:
    """Check the style instruction and put it into `inputs`."""
    instruction = instruct.instruction.strip()
    inputs.instruction = instruction
    if not 1 <= len(instruction) <= max_chars:
        return [("instruct.instruction", f"must be 1..{max_chars} characters")]
    return []


# ---- checks once the voice is known: each raises at the first problem --------------------------------------------


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
    for name, value in fields_set(override).items():
        setattr(merged, name, value)
    return merged


def resolve_conversion(request: SynthesisRequest, voice: Voice) -> conversion_pb2.ConversionSettings | None:
    """The conversion to run: none when disabled or when neither the voice nor the request asks for one."""
    if request.disable_conversion or (request.conversion is None and voice.spec.conversion is None):
        return None
    override = request.conversion if request.conversion is not None else conversion_pb2.ConversionSettings()
    conversion = merge_conversion(voice.spec.conversion, override)
    if not conversion.model:
        raise InvalidArgument([("conversion.model", f"is required: voice {voice.name!r} has no default conversion")])
    return conversion


def saved_reference_prefix(name: str) -> str:
    """The start of every reference-cache key of saved voice `name` (what a change to the voice discards)."""
    return f"saved:{name}:"


def saved_voice_reference(request: SynthesisRequest, voice: Voice, inputs: TtsInputs) -> tuple[str, DecodedReference]:
    """A saved voice brings its own reference: its cloning mode and clip, and its transcript into `inputs`."""
    assert voice.saved is not None
    if request.mode_field not in (None, "preset_speaker") or request.preset_speaker.speaker:
        raise InvalidArgument(
            [("mode", f"voice {voice.name!r} is a saved voice and brings its own reference: leave mode unset")]
        )
    inputs.reference_text = voice.saved.reference_text or None
    key = f"{saved_reference_prefix(voice.name)}{voice.saved.create_time}"
    reference = DecodedReference(key, voice.saved.samples, voice.saved.sample_rate_hz)
    return voice.supported_modes[0], reference


def require_mode(catalog: VoiceCatalog, voice: Voice, mode: str) -> None:
    if mode in voice.supported_modes:
        return
    others = catalog.with_mode(mode)
    where = f"voices that support it: {', '.join(others)}" if others else "no configured voice supports it"
    raise FailedPrecondition(
        f"voice {voice.name!r} (model {voice.model.name}) does not support mode {mode}; {where}",
        violations=[("MODE", f"voice/{voice.name}", f"{mode} not in {list(voice.model.supported_modes)}")],
    )


def resolve_text_input(catalog: VoiceCatalog, voice: Voice, request: SynthesisRequest) -> bool:
    """Whether StreamingSynthesize hands text deltas to the model as they arrive (True) or sentence by sentence.
    Unset: the voice's default. Incremental on a voice whose model cannot take increments: FAILED_PRECONDITION naming
    the voices that can. Synthesize (its text is whole) always goes by sentences."""
    if request.text is not None:
        return False
    streams = voice.model.streams_text_input
    if request.text_input_mode == tts_gateway_pb2.TEXT_INPUT_MODE_UNSPECIFIED:
        return streams
    if request.text_input_mode == tts_gateway_pb2.TEXT_INPUT_MODE_SENTENCES:
        return False
    if not streams:
        able = catalog.streaming_text_input()
        where = f"voices that can: {', '.join(able)}" if able else "no configured voice can"
        raise FailedPrecondition(
            f"voice {voice.name!r} (model {voice.model.name}) cannot take text in increments "
            f"(TEXT_INPUT_MODE_INCREMENTAL); {where}",
            violations=[("TEXT_INPUT_MODE", f"voice/{voice.name}", f"model {voice.model.name} streams no text input")],
        )
    return True


def speaker_index(request: SynthesisRequest, voice: Voice, mode: str) -> int | None:
    """The model's speaker id for the requested (or the voice's default) speaker; None for a one-speaker model."""
    speaker = ""
    if mode == MODE_PRESET and request.mode_field == "preset_speaker":
        speaker = request.preset_speaker.speaker
    elif mode == MODE_INSTRUCT:
        speaker = request.instruct.speaker
    speaker = speaker or voice.spec.speaker
    if not speaker:
        return None
    if speaker not in voice.speakers:
        field = "instruct.speaker" if mode == MODE_INSTRUCT else "preset_speaker.speaker"
        raise InvalidArgument([(field, f"voice {voice.name!r} has speakers {list(voice.speakers)}")])
    return voice.model.speakers.index(speaker) if len(voice.model.speakers) > 1 else None


class RequestValidator:
    def __init__(
        self,
        catalog: VoiceCatalog,
        limits: Limits,
        references: ReferenceCache,
        transcripts: ReferenceTranscripts | None = None,
    ) -> None:
        self.catalog = catalog
        self.limits = limits
        self.references = references
        self.transcripts = transcripts  # None: an empty zero-shot reference_text is refused, as before recognition

    async def transcribe_reference(self, reference: DecodedReference, voice: Voice, field: str, request_id: str) -> str:
        """The transcript of a reference for a zero-shot clone on `voice` that came without one. Raises
        InvalidArgument on `field` when there is no transcriber or the reference could not be transcribed."""
        cross_lingual = MODE_CROSS_LINGUAL in voice.supported_modes
        if self.transcripts is None:
            reason = "this gateway transcribes no references"
            raise InvalidArgument([(field, untranscribed_problem(reason, cross_lingual=cross_lingual))])
        try:
            return await self.transcripts.transcript(
                reference.samples,
                reference.sample_rate_hz,
                language=voice.model.language_code,
                request_id=request_id,
            )
        except TranscriptUnavailable as exc:
            raise InvalidArgument([(field, untranscribed_problem(exc.reason, cross_lingual=cross_lingual))]) from None

    # ---- reference audio ---------------------------------------------------------------------------------------

    def decode_reference(self, audio: audio_pb2.AudioInput, field: str) -> DecodedReference:
        """Decode and check a reference clip. Raises InvalidArgument."""
        key = ReferenceCache.key(audio)
        cached = self.references.get(key, 0)
        if cached is not None:
            return DecodedReference(key, *cached)
        limit = self.limits.max_reference_bytes
        if len(audio.audio) > limit:
            message = f"is {len(audio.audio)} bytes, over the {limit / MiB:g} MiB limit"
            raise InvalidArgument([(f"{field}.audio", message)])
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
        low, high = self.limits.min_reference_s, self.limits.max_reference_s
        seconds = samples.size / rate
        if seconds < low:
            raise InvalidArgument(
                [(f"{field}.audio", f"is {seconds:.2f} s; reference audio must be {low:g}-{high:g} s")]
            )
        problems = reference_problems(samples, rate, low, high)
        if problems:  # silence: nothing of a speaker to clone
            raise InvalidArgument([(f"{field}.audio", problem) for problem in problems])
        self.references.put(key, 0, samples, rate)
        return DecodedReference(key, samples, rate)

    async def _request_reference(self, request: SynthesisRequest) -> tuple[Violations, DecodedReference | None]:
        """The reference clip of a cloning request, decoded off the event loop."""
        sub = request.zero_shot if request.mode == MODE_ZERO_SHOT else request.cross_lingual
        field = f"{request.mode}.reference_audio"
        if not sub.HasField("reference_audio") or not sub.reference_audio.audio:
            return [(field, "is required")], None
        try:
            return [], await asyncio.to_thread(self.decode_reference, sub.reference_audio, field)
        except InvalidArgument as exc:
            return exc.violations, None

    async def _reference_for_model(self, reference: DecodedReference, rate: int) -> NDArray[np.float32]:
        """The reference at the rate the model takes it, resampled once per clip and rate."""
        cached = self.references.get(reference.key, rate)
        if cached is not None:
            return cached[0]
        processed = await asyncio.to_thread(resample, reference.samples, reference.sample_rate_hz, rate)
        self.references.put(reference.key, rate, processed, rate)
        return processed

    # ---- the plan ----------------------------------------------------------------------------------------------

    async def _mode_violations(
        self, request: SynthesisRequest, inputs: TtsInputs
    ) -> tuple[Violations, DecodedReference | None]:
        """The fields of the requested mode; their values go into `inputs`, a reference clip is returned."""
        mode = request.mode
        violations: Violations = []
        reference = None
        if mode in CLONING_MODES:
            violations, reference = await self._request_reference(request)
        if mode == MODE_ZERO_SHOT:
            violations += reference_text_violations(
                request.zero_shot,
                inputs,
                self.limits.max_reference_text_chars,
                transcribes=self.transcripts is not None,
                may_transcribe=self.transcripts is not None and reference is not None,
            )
        elif mode == MODE_VOICE_DESIGN:
            violations += design_violations(request.voice_design, inputs)
        elif mode == MODE_INSTRUCT:
            violations += instruction_violations(request.instruct, inputs, self.limits.max_instruction_chars)
        return violations, reference

    async def _check_fields(
        self, request: SynthesisRequest, text_field: str | None, inputs: TtsInputs
    ) -> DecodedReference | None:
        """Every field check, so one INVALID_ARGUMENT names every bad field; returns the request's reference clip."""
        violations: Violations = []
        if text_field is not None:
            violations += input_text_violations(request.text or "", text_field, self.limits.max_text_chars)
        violations += voice_name_violations(request.voice)
        violations += text_input_mode_violations(request.text_input_mode)
        violations += output_format_violations(request.output_format)
        violations += speaking_rate_violations(request.speaking_rate)
        violations += conversion_request_violations(request)
        mode_violations, reference = await self._mode_violations(request, inputs)
        violations += mode_violations
        if violations:
            raise InvalidArgument(violations)
        return reference

    async def plan(self, message: WireRequest, *, text_field: str | None) -> SynthesisPlan:
        """Validate a Synthesize request (its text under `text_field`) or a StreamingSynthesize config (no text:
        `text_field` None) into the pipeline's plan. Raises InvalidArgument, NotFound or FailedPrecondition."""
        request = SynthesisRequest.from_wire(message)
        request_id = resolve_request_id(request.request_id)
        rate = request.speaking_rate
        inputs = TtsInputs(length_scale=1.0 / rate if rate else None, seed=request.seed or None)
        reference = await self._check_fields(request, text_field, inputs)

        voice = self.catalog.get(request.voice)
        mode = request.mode
        if voice.saved is not None:
            mode, reference = saved_voice_reference(request, voice, inputs)
        require_mode(self.catalog, voice, mode)
        require_speaking_rate(voice, rate)
        incremental_text = resolve_text_input(self.catalog, voice, request)
        inputs.noise_scale, inputs.noise_w = voice.spec.noise_scale, voice.spec.noise_w
        inputs.speaker_id = speaker_index(request, voice, mode)
        if mode == MODE_ZERO_SHOT and not inputs.reference_text and reference is not None:
            inputs.reference_text = await self.transcribe_reference(
                reference, voice, "zero_shot.reference_text", request_id
            )
        if reference is not None:
            inputs.reference_wav = await self._reference_for_model(reference, voice.model.reference_sample_rate_hz)
        fmt = request.output_format
        return SynthesisPlan(
            request_id=request_id,
            voice=voice,
            mode=mode,
            tts_inputs=inputs,
            conversion=resolve_conversion(request, voice),
            encoding=fmt.encoding,
            output_rate=resolve_output_rate(fmt.encoding, fmt.sample_rate_hz, voice.model.sample_rate_hz),
            incremental_text=incremental_text,
        )
