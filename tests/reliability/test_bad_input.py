"""The bad-input corpus: every RPC of both services gets malformed, out-of-range and hostile requests, and each must
be answered promptly with its exact status code and a message that says what to fix without leaking server details;
after each case a normal request must still succeed and no stream may be left holding a slot.

Real processes throughout: the session's Triton (Piper), conversion service and gateway. Requests go out as raw bytes
(tests/reliability/harness.py) so unparseable ones can be sent too.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import grpc
import pytest
from google.protobuf.message import Message

from tests.fixtures.gateway import GatewayProcess
from tests.reliability.harness import (
    ALL_RPCS,
    CONVERSION,
    FLOAT32,
    GATEWAY,
    MAX_MESSAGE_CHARS,
    OPUS,
    PCM16,
    WAV,
    active_streams,
    call_raw,
    class_names,
    fmt,
    leaks,
    length_delimited,
    pcm16,
    short_synthesize_request,
    still_serving,
    streams_released,
    tone,
    wav_bytes,
)
from voice.v1 import audio_pb2, conversion_pb2, tts_gateway_pb2, voice_conversion_pb2

# Generous: the first case also starts the session's Triton, conversion service and gateway (slow on a loaded machine).
pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

IA = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
FAILED = grpc.StatusCode.FAILED_PRECONDITION
OK = grpc.StatusCode.OK
# An unknown over-long name may be refused as too long or as unknown; never RESOURCE_EXHAUSTED "Stream removed".
LONG_NAME_CODES = frozenset({NOT_FOUND, IA})

BAD_UTF8 = b"\xff\xfe"
LONG_NAME = "v" * 10_000
# Bytes no protobuf parser accepts, one kind each.
TRUNCATED_VARINT = b"\xff" * 12  # a tag varint that never ends
TRUNCATED_FIELD = b"\x12\x20only-nine"  # field 2 says 32 bytes follow; 9 do
BAD_WIRE_TYPE = b"\x0f\x00"  # wire type 7 does not exist
STRAY_END_GROUP = b"\x0c"  # an END_GROUP with no group open


@dataclass(frozen=True)
class Case:
    id: str
    service: str
    rpc: str
    build: Callable[[], list[bytes]]
    expect: grpc.StatusCode | frozenset[grpc.StatusCode]
    # A word the message must contain: the field (or thing) the client has to fix.
    mentions: str = ""
    # Client-streaming calls: False keeps the request stream open, so only the server can end the call.
    half_close: bool = True
    # The request does not parse: the message must not name Python classes.
    unparseable: bool = False
    # An accepted request must return audio (a stream ending with its final chunk).
    audio: bool = False

    @property
    def codes(self) -> frozenset[grpc.StatusCode]:
        return self.expect if isinstance(self.expect, frozenset) else frozenset({self.expect})


def wire(*messages: Message | bytes) -> list[bytes]:
    return [m if isinstance(m, bytes) else m.SerializeToString() for m in messages]


# ------------------------------------------------------------------------------------------------ gateway requests

REFERENCE_WAV = wav_bytes(tone(1.5))


def synth(text: str = "Hello there.", voice: str = "joe", **kw: object) -> tts_gateway_pb2.SynthesizeRequest:
    kw.setdefault("output_format", fmt(PCM16))
    return tts_gateway_pb2.SynthesizeRequest(text=text, voice=voice, **kw)  # type: ignore[arg-type]


def syn(**kw: object) -> Callable[[], list[bytes]]:
    return lambda: wire(synth(**kw))  # type: ignore[arg-type]


def syn_corrupt(extra: bytes) -> Callable[[], list[bytes]]:
    """A valid request with one more field occurrence appended (the last occurrence of a field wins)."""
    return lambda: [synth().SerializeToString() + extra]


def conv(**kw: object) -> conversion_pb2.ConversionSettings:
    return conversion_pb2.ConversionSettings(**kw)  # type: ignore[arg-type]


def reference(data: bytes = REFERENCE_WAV, encoding: int = WAV) -> audio_pb2.AudioInput:
    return audio_pb2.AudioInput(audio=data, format=fmt(encoding))


def ss_config(voice: str = "joe", **kw: object) -> tts_gateway_pb2.StreamingSynthesizeRequest:
    kw.setdefault("output_format", fmt(PCM16))
    config = tts_gateway_pb2.StreamingSynthesizeConfig(voice=voice, **kw)  # type: ignore[arg-type]
    return tts_gateway_pb2.StreamingSynthesizeRequest(config=config)


def ss_text(text: str) -> tts_gateway_pb2.StreamingSynthesizeRequest:
    return tts_gateway_pb2.StreamingSynthesizeRequest(text=text)


def ss(*messages: Message | bytes) -> Callable[[], list[bytes]]:
    return lambda: wire(*messages)


# ------------------------------------------------------------------------------------------------ conversion requests

IN_16K = fmt(PCM16, 16000)
HALF_SECOND = pcm16(tone(0.5))


def cv_config(model: str = "world-default", **kw: object) -> voice_conversion_pb2.ConvertRequest:
    kw.setdefault("input_format", IN_16K)
    kw.setdefault("output_format", fmt(PCM16))
    settings = kw.pop("settings", None) or conv(model=model)
    config = voice_conversion_pb2.ConvertConfig(settings=settings, **kw)  # type: ignore[arg-type]
    return voice_conversion_pb2.ConvertRequest(config=config)


def cv_audio(data: bytes = HALF_SECOND) -> voice_conversion_pb2.ConvertRequest:
    return voice_conversion_pb2.ConvertRequest(audio=data)


def cv(*messages: Message | bytes) -> Callable[[], list[bytes]]:
    return lambda: wire(*messages)


def clip(model: str = "world-default", **kw: object) -> Callable[[], list[bytes]]:
    def build() -> list[bytes]:
        values: dict[str, object] = {
            "settings": conv(model=model),
            "audio": audio_pb2.AudioInput(audio=HALF_SECOND, format=IN_16K),
            "output_format": fmt(PCM16),
        }
        values.update(kw)
        return wire(voice_conversion_pb2.ConvertClipRequest(**values))  # type: ignore[arg-type]

    return build


def one(message: Message | bytes) -> Callable[[], list[bytes]]:
    return lambda: wire(message)


# ------------------------------------------------------------------------------------------------ the corpus

S, SS, LV, GS = "Synthesize", "StreamingSynthesize", "ListVoices", "GetStatus"
CRV, GV, DV = "CreateVoice", "GetVoice", "DeleteVoice"
CV, CC, LM, LD, UL = "Convert", "ConvertClip", "ListModels", "LoadModel", "UnloadModel"
G, C = GATEWAY, CONVERSION

CASES: list[Case] = [
    # ---- Synthesize: bytes that do not parse
    Case("synthesize-truncated-varint", G, S, one(TRUNCATED_VARINT), IA, unparseable=True),
    Case("synthesize-truncated-field", G, S, one(TRUNCATED_FIELD), IA, unparseable=True),
    Case("synthesize-bad-wire-type", G, S, one(BAD_WIRE_TYPE), IA, unparseable=True),
    Case("synthesize-text-invalid-utf8", G, S, syn_corrupt(length_delimited(2, BAD_UTF8)), IA, unparseable=True),
    Case("synthesize-voice-invalid-utf8", G, S, syn_corrupt(length_delimited(3, BAD_UTF8)), IA, unparseable=True),
    Case("synthesize-request-id-invalid-utf8", G, S, syn_corrupt(length_delimited(1, BAD_UTF8)), IA, unparseable=True),
    Case(
        "synthesize-nested-speaker-invalid-utf8",
        G,
        S,
        syn_corrupt(length_delimited(4, length_delimited(1, BAD_UTF8))),
        IA,
        unparseable=True,
    ),
    Case(
        "synthesize-nested-conversion-model-invalid-utf8",
        G,
        S,
        syn_corrupt(length_delimited(9, length_delimited(1, BAD_UTF8))),
        IA,
        unparseable=True,
    ),
    # ---- Synthesize: text
    Case("synthesize-empty-text", G, S, syn(text=""), IA, mentions="text"),
    Case("synthesize-whitespace-text", G, S, syn(text=" \t\n "), IA, mentions="text"),
    Case("synthesize-text-over-5000", G, S, syn(text="a" * 5001), IA, mentions="text"),
    Case("synthesize-text-embedded-nul", G, S, syn(text="Hello\x00 world."), IA, mentions="text"),
    Case("synthesize-text-only-emoji", G, S, syn(text="🎉🎉🙂"), IA, mentions="text"),
    Case("synthesize-text-only-punctuation", G, S, syn(text="?!..."), IA, mentions="text"),
    # Emoji and symbols inside speakable text are not a reason to refuse it.
    Case("synthesize-emoji-inside-words-is-spoken", G, S, syn(text="Hello 🎉 there!"), OK, audio=True),
    # ---- Synthesize: voice
    Case("synthesize-no-voice", G, S, syn(voice=""), IA, mentions="voice"),
    Case("synthesize-unknown-voice", G, S, syn(voice="nobody"), NOT_FOUND, mentions="voice"),
    Case("synthesize-voice-10k-chars", G, S, syn(voice=LONG_NAME), LONG_NAME_CODES, mentions="voice"),
    Case(
        "synthesize-unknown-preset-speaker",
        G,
        S,
        syn(preset_speaker=tts_gateway_pb2.PresetSpeaker(speaker="nobody")),
        IA,
        mentions="speaker",
    ),
    # ---- Synthesize: output format
    Case("synthesize-no-output-format", G, S, lambda: wire(synth(output_format=None)), IA, mentions="encoding"),
    Case("synthesize-encoding-unknown-99", G, S, syn(output_format=fmt(99)), IA, mentions="encoding"),
    Case("synthesize-encoding-negative", G, S, syn(output_format=fmt(-1)), IA, mentions="encoding"),
    Case("synthesize-rate-4000", G, S, syn(output_format=fmt(PCM16, 4000)), IA, mentions="sample_rate_hz"),
    Case("synthesize-rate-96000", G, S, syn(output_format=fmt(WAV, 96000)), IA, mentions="sample_rate_hz"),
    Case("synthesize-rate-negative", G, S, syn(output_format=fmt(PCM16, -16000)), IA, mentions="sample_rate_hz"),
    Case("synthesize-opus-rate-22050", G, S, syn(output_format=fmt(OPUS, 22050)), IA, mentions="sample_rate_hz"),
    Case("synthesize-stereo-output", G, S, syn(output_format=fmt(PCM16, 0, 2)), IA, mentions="channels"),
    # ---- Synthesize: speaking rate
    Case("synthesize-speaking-rate-0.1", G, S, syn(speaking_rate=0.1), IA, mentions="speaking_rate"),
    Case("synthesize-speaking-rate-4.5", G, S, syn(speaking_rate=4.5), IA, mentions="speaking_rate"),
    Case("synthesize-speaking-rate-negative", G, S, syn(speaking_rate=-1.0), IA, mentions="speaking_rate"),
    Case("synthesize-speaking-rate-nan", G, S, syn(speaking_rate=math.nan), IA, mentions="speaking_rate"),
    Case("synthesize-speaking-rate-inf", G, S, syn(speaking_rate=math.inf), IA, mentions="speaking_rate"),
    # ---- Synthesize: conversion settings
    Case("synthesize-pitch-99", G, S, syn(conversion=conv(pitch_shift_semitones=99)), IA, mentions="pitch"),
    Case("synthesize-index-rate-nan", G, S, syn(conversion=conv(index_rate=math.nan)), IA, mentions="index_rate"),
    Case("synthesize-protect-0.9", G, S, syn(conversion=conv(protect=0.9)), IA, mentions="protect"),
    Case("synthesize-filter-radius-8", G, S, syn(conversion=conv(filter_radius=8)), IA, mentions="filter_radius"),
    Case("synthesize-formant-13", G, S, syn(conversion=conv(formant_shift_semitones=13)), IA, mentions="formant"),
    Case("synthesize-speaker-id-negative", G, S, syn(conversion=conv(speaker_id=-1)), IA, mentions="speaker_id"),
    Case("synthesize-f0-method-unknown", G, S, syn(conversion=conv(f0_method=42)), IA, mentions="f0_method"),
    Case(
        "synthesize-disable-with-conversion",
        G,
        S,
        syn(voice="joe-world-high", disable_conversion=True, conversion=conv(pitch_shift_semitones=2)),
        IA,
        mentions="disable_conversion",
    ),
    Case(
        "synthesize-conversion-without-model",
        G,
        S,
        syn(conversion=conv(pitch_shift_semitones=2)),
        IA,
        mentions="model",
    ),
    Case("synthesize-conversion-unknown-model", G, S, syn(conversion=conv(model="no-such-model")), NOT_FOUND),
    Case("synthesize-conversion-path-model", G, S, syn(conversion=conv(model="../x")), IA, mentions="model"),
    Case("synthesize-conversion-model-10k-chars", G, S, syn(conversion=conv(model=LONG_NAME)), LONG_NAME_CODES),
    # ---- Synthesize: modes
    Case(
        "synthesize-zero-shot-on-preset-voice",
        G,
        S,
        syn(zero_shot=tts_gateway_pb2.ZeroShot(reference_audio=reference(), reference_text="A short sentence.")),
        FAILED,
        mentions="zero_shot",
    ),
    Case(
        "synthesize-zero-shot-undecodable-reference",
        G,
        S,
        syn(zero_shot=tts_gateway_pb2.ZeroShot(reference_audio=reference(b"RIFF-not-a-wav"), reference_text="Hi.")),
        IA,
        mentions="reference_audio",
    ),
    Case(
        "synthesize-zero-shot-missing-reference",
        G,
        S,
        syn(zero_shot=tts_gateway_pb2.ZeroShot(reference_text="Hi.")),
        IA,
        mentions="reference_audio",
    ),
    Case(
        "synthesize-zero-shot-reference-too-short",
        G,
        S,
        syn(zero_shot=tts_gateway_pb2.ZeroShot(reference_audio=reference(wav_bytes(tone(0.2))), reference_text="Hi.")),
        IA,
        mentions="reference_audio",
    ),
    Case(
        # An empty transcript is no field error any more (the gateway transcribes the reference, issue 25): on a
        # voice that cannot clone, the mode is what is wrong.
        "synthesize-zero-shot-missing-reference-text",
        G,
        S,
        syn(zero_shot=tts_gateway_pb2.ZeroShot(reference_audio=reference())),
        FAILED,
        mentions="zero_shot",
    ),
    Case(
        "synthesize-cross-lingual-on-preset-voice",
        G,
        S,
        syn(cross_lingual=tts_gateway_pb2.CrossLingual(reference_audio=reference())),
        FAILED,
        mentions="cross_lingual",
    ),
    Case(
        "synthesize-instruct-missing-instruction",
        G,
        S,
        syn(instruct=tts_gateway_pb2.Instruct()),
        IA,
        mentions="instruction",
    ),
    Case(
        "synthesize-instruct-on-preset-voice",
        G,
        S,
        syn(instruct=tts_gateway_pb2.Instruct(instruction="Speak warmly.")),
        FAILED,
        mentions="instruct",
    ),
    # ---- Synthesize: request id
    Case("synthesize-request-id-200-chars", G, S, syn(request_id="r" * 200), IA, mentions="request_id"),
    Case("synthesize-request-id-with-space", G, S, syn(request_id="my id"), IA, mentions="request_id"),
    # ---- StreamingSynthesize
    Case("stream-synth-garbage-first", G, SS, ss(TRUNCATED_FIELD), IA, half_close=False, unparseable=True),
    Case(
        "stream-synth-config-voice-invalid-utf8",
        G,
        SS,
        ss(length_delimited(1, length_delimited(3, BAD_UTF8))),
        IA,
        half_close=False,
        unparseable=True,
    ),
    Case(
        "stream-synth-garbage-after-config",
        G,
        SS,
        ss(ss_config(), BAD_WIRE_TYPE),
        IA,
        half_close=False,
        unparseable=True,
    ),
    Case(
        "stream-synth-invalid-utf8-text-after-config",
        G,
        SS,
        ss(ss_config(), length_delimited(2, BAD_UTF8)),
        IA,
        half_close=False,
        unparseable=True,
    ),
    Case("stream-synth-text-before-config", G, SS, ss(ss_text("Hello.")), IA, mentions="config"),
    Case("stream-synth-no-messages", G, SS, ss(), IA, mentions="config"),
    Case("stream-synth-config-twice", G, SS, ss(ss_config(), ss_config()), IA, mentions="config"),
    Case(
        "stream-synth-text-over-stream-limit",
        G,
        SS,
        ss(ss_config(), ss_text("a" * 50_001)),
        IA,
        mentions="text",
    ),
    Case("stream-synth-unknown-voice", G, SS, ss(ss_config(voice="nobody")), NOT_FOUND, mentions="voice"),
    Case("stream-synth-voice-10k-chars", G, SS, ss(ss_config(voice=LONG_NAME)), LONG_NAME_CODES, mentions="voice"),
    Case("stream-synth-no-voice", G, SS, ss(ss_config(voice="")), IA, mentions="voice"),
    Case(
        "stream-synth-encoding-unspecified",
        G,
        SS,
        ss(ss_config(output_format=fmt(0))),
        IA,
        mentions="encoding",
    ),
    Case(
        "stream-synth-speaking-rate-nan",
        G,
        SS,
        ss(ss_config(speaking_rate=math.nan)),
        IA,
        mentions="speaking_rate",
    ),
    Case(
        "stream-synth-zero-shot-on-preset-voice",
        G,
        SS,
        ss(ss_config(zero_shot=tts_gateway_pb2.ZeroShot(reference_audio=reference(), reference_text="Hi there."))),
        FAILED,
        mentions="zero_shot",
    ),
    Case(
        "stream-synth-text-embedded-nul",
        G,
        SS,
        ss(ss_config(), ss_text("Hello\x00 world.")),
        IA,
        mentions="text",
    ),
    # A stream whose whole text has nothing to speak is refused like Synthesize refuses it; an unspeakable sentence
    # between speakable ones is skipped and the rest is spoken.
    Case("stream-synth-text-only-emoji", G, SS, ss(ss_config(), ss_text("🎉🎉🙂")), IA, mentions="text"),
    Case(
        "stream-synth-emoji-sentence-between-words-is-skipped",
        G,
        SS,
        ss(ss_config(), ss_text("Hello there. "), ss_text("🎉🎉! "), ss_text("See you.")),
        OK,
        audio=True,
    ),
    # ---- ListVoices / gateway GetStatus
    Case("list-voices-garbage", G, LV, one(TRUNCATED_VARINT), IA, unparseable=True),
    Case("list-voices-language-invalid-utf8", G, LV, one(length_delimited(1, BAD_UTF8)), IA, unparseable=True),
    Case("list-voices-unknown-language-is-empty", G, LV, one(tts_gateway_pb2.ListVoicesRequest(language_code="x")), OK),
    Case("gateway-status-garbage", G, GS, one(STRAY_END_GROUP), IA, unparseable=True),
    # ---- saved voices (the session gateway's voices are Piper's: none can clone)
    Case("create-voice-garbage", G, CRV, one(TRUNCATED_FIELD), IA, unparseable=True),
    Case("create-voice-name-invalid-utf8", G, CRV, one(length_delimited(1, BAD_UTF8)), IA, unparseable=True),
    Case("create-voice-empty", G, CRV, one(tts_gateway_pb2.CreateVoiceRequest()), IA, mentions="name"),
    Case(
        "create-voice-parent-path-name",
        G,
        CRV,
        one(tts_gateway_pb2.CreateVoiceRequest(name="../x", base_voice="joe", reference_audio=reference())),
        IA,
        mentions="name",
    ),
    Case(
        "create-voice-name-10k-chars",
        G,
        CRV,
        one(tts_gateway_pb2.CreateVoiceRequest(name=LONG_NAME, base_voice="joe", reference_audio=reference())),
        IA,
        mentions="name",
    ),
    Case(
        "create-voice-undecodable-reference",
        G,
        CRV,
        one(tts_gateway_pb2.CreateVoiceRequest(name="x", base_voice="joe", reference_audio=reference(b"RIFFjunk"))),
        IA,
        mentions="reference_audio",
    ),
    Case(
        "create-voice-silent-reference",
        G,
        CRV,
        one(
            tts_gateway_pb2.CreateVoiceRequest(
                name="x", base_voice="joe", reference_audio=reference(wav_bytes(tone(2.0) * 0.0))
            )
        ),
        IA,
        mentions="silent",
    ),
    Case(
        "create-voice-base-cannot-clone",
        G,
        CRV,
        one(tts_gateway_pb2.CreateVoiceRequest(name="x", base_voice="joe", reference_audio=reference())),
        FAILED,
        mentions="cannot clone",
    ),
    Case(
        "create-voice-unknown-base",
        G,
        CRV,
        one(tts_gateway_pb2.CreateVoiceRequest(name="x", base_voice="nope", reference_audio=reference())),
        NOT_FOUND,
        mentions="base voice",
    ),
    Case("get-voice-garbage", G, GV, one(BAD_WIRE_TYPE), IA, unparseable=True),
    Case("get-voice-empty", G, GV, one(tts_gateway_pb2.GetVoiceRequest()), IA, mentions="name"),
    Case("get-voice-unknown", G, GV, one(tts_gateway_pb2.GetVoiceRequest(name="nope")), NOT_FOUND, mentions="nope"),
    Case("get-voice-name-10k-chars", G, GV, one(tts_gateway_pb2.GetVoiceRequest(name=LONG_NAME)), LONG_NAME_CODES),
    Case("delete-voice-garbage", G, DV, one(TRUNCATED_VARINT), IA, unparseable=True),
    Case("delete-voice-configured", G, DV, one(tts_gateway_pb2.DeleteVoiceRequest(name="joe")), FAILED, mentions="joe"),
    Case("delete-voice-unknown", G, DV, one(tts_gateway_pb2.DeleteVoiceRequest(name="nope")), NOT_FOUND),
    Case("delete-voice-parent-path", G, DV, one(tts_gateway_pb2.DeleteVoiceRequest(name="../x")), IA, mentions="name"),
    Case("gateway-status-unknown-field-ignored", G, GS, one(b"\x08\x01"), OK),
    # ---- Convert: bytes that do not parse
    Case("convert-garbage-first", C, CV, cv(TRUNCATED_VARINT), IA, half_close=False, unparseable=True),
    Case(
        "convert-config-model-invalid-utf8",
        C,
        CV,
        cv(length_delimited(1, length_delimited(2, length_delimited(1, BAD_UTF8)))),
        IA,
        half_close=False,
        unparseable=True,
    ),
    Case("convert-garbage-after-config", C, CV, cv(cv_config(), BAD_WIRE_TYPE), IA, half_close=False, unparseable=True),
    Case(
        "convert-garbage-after-audio",
        C,
        CV,
        cv(cv_config(), cv_audio(), TRUNCATED_FIELD),
        IA,
        half_close=False,
        unparseable=True,
    ),
    # ---- Convert: stream structure
    Case("convert-audio-before-config", C, CV, cv(cv_audio()), IA, mentions="config"),
    Case("convert-no-messages", C, CV, cv(), IA, mentions="config"),
    Case("convert-config-twice", C, CV, cv(cv_config(), cv_config()), IA, mentions="config"),
    Case("convert-no-audio-then-end", C, CV, cv(cv_config()), IA, mentions="audio"),
    Case("convert-only-empty-audio-then-end", C, CV, cv(cv_config(), cv_audio(b"")), IA, mentions="audio"),
    # ---- Convert: formats and audio
    Case("convert-input-wav", C, CV, cv(cv_config(input_format=fmt(WAV, 16000))), IA, mentions="input_format"),
    Case("convert-input-unspecified", C, CV, cv(cv_config(input_format=fmt(0, 16000))), IA, mentions="input_format"),
    Case("convert-input-rate-0", C, CV, cv(cv_config(input_format=fmt(PCM16, 0))), IA, mentions="sample_rate_hz"),
    Case("convert-input-rate-96000", C, CV, cv(cv_config(input_format=fmt(PCM16, 96000))), IA, mentions="sample_rate"),
    Case("convert-input-channels-9", C, CV, cv(cv_config(input_format=fmt(PCM16, 16000, 9))), IA, mentions="channels"),
    Case("convert-no-output-format", C, CV, cv(cv_config(output_format=None)), IA, mentions="output_format"),
    Case("convert-output-encoding-99", C, CV, cv(cv_config(output_format=fmt(99))), IA, mentions="encoding"),
    Case("convert-odd-pcm16-bytes", C, CV, cv(cv_config(), cv_audio(b"\x01\x02\x03")), IA, mentions="audio"),
    Case(
        "convert-float32-not-multiple-of-4",
        C,
        CV,
        cv(cv_config(input_format=fmt(FLOAT32, 16000)), cv_audio(b"\x00" * 6)),
        IA,
        mentions="audio",
    ),
    Case(
        "convert-audio-message-over-1mib",
        C,
        CV,
        cv(cv_config(), cv_audio(b"\x00" * ((1 << 20) + 2))),
        IA,
        mentions="audio",
    ),
    # ---- Convert: settings and model
    Case("convert-no-model", C, CV, cv(cv_config(model="")), IA, mentions="model"),
    Case("convert-unknown-model", C, CV, cv(cv_config(model="no-such-model")), NOT_FOUND, mentions="model"),
    Case("convert-model-parent-path", C, CV, cv(cv_config(model="../x")), IA, mentions="model"),
    Case("convert-model-absolute-path", C, CV, cv(cv_config(model="/etc/passwd")), IA, mentions="model"),
    Case("convert-model-10k-chars", C, CV, cv(cv_config(model=LONG_NAME)), LONG_NAME_CODES, mentions="model"),
    Case(
        "convert-pitch-99",
        C,
        CV,
        cv(cv_config(settings=conv(model="world-default", pitch_shift_semitones=99))),
        IA,
        mentions="pitch",
    ),
    Case(
        "convert-index-rate-nan",
        C,
        CV,
        cv(cv_config(settings=conv(model="world-default", index_rate=math.nan))),
        IA,
        mentions="index_rate",
    ),
    Case(
        "convert-f0-method-unknown",
        C,
        CV,
        cv(cv_config(settings=conv(model="world-default", f0_method=42))),
        IA,
        mentions="f0_method",
    ),
    Case(
        "convert-rmvpe-without-weights",
        C,
        CV,
        cv(cv_config(settings=conv(model="world-default", f0_method=conversion_pb2.F0_METHOD_RMVPE))),
        FAILED,
        mentions="rmvpe",
    ),
    Case(
        "convert-speaker-id-beyond-model",
        C,
        CV,
        cv(cv_config(settings=conv(model="world-default", speaker_id=5))),
        IA,
        mentions="speaker_id",
    ),
    Case("convert-request-id-bad", C, CV, cv(cv_config(request_id="bad id\x01")), IA, mentions="request_id"),
    # ---- ConvertClip
    Case("clip-garbage", C, CC, one(BAD_WIRE_TYPE), IA, unparseable=True),
    Case(
        "clip-model-invalid-utf8",
        C,
        CC,
        lambda: [clip()()[0] + length_delimited(2, length_delimited(1, BAD_UTF8))],
        IA,
        unparseable=True,
    ),
    Case("clip-empty-audio", C, CC, clip(audio=audio_pb2.AudioInput(format=IN_16K)), IA, mentions="audio"),
    Case(
        "clip-undecodable-wav",
        C,
        CC,
        clip(audio=audio_pb2.AudioInput(audio=b"RIFF\x00\x00garbage" * 4, format=fmt(WAV))),
        IA,
        mentions="audio",
    ),
    Case(
        "clip-undecodable-opus",
        C,
        CC,
        clip(audio=audio_pb2.AudioInput(audio=b"OggS" + b"\x00" * 60, format=fmt(OPUS))),
        IA,
        mentions="audio",
    ),
    Case(
        "clip-odd-pcm16-bytes",
        C,
        CC,
        clip(audio=audio_pb2.AudioInput(audio=b"\x00" * 1001, format=IN_16K)),
        IA,
        mentions="audio",
    ),
    Case(
        "clip-pcm16-without-rate",
        C,
        CC,
        clip(audio=audio_pb2.AudioInput(audio=HALF_SECOND, format=fmt(PCM16))),
        IA,
        mentions="sample_rate",
    ),
    Case("clip-no-output-format", C, CC, clip(output_format=None), IA, mentions="output_format"),
    Case("clip-unknown-model", C, CC, clip(model="no-such-model"), NOT_FOUND, mentions="model"),
    Case("clip-model-parent-path", C, CC, clip(model="../../etc/passwd"), IA, mentions="model"),
    Case("clip-model-10k-chars", C, CC, clip(model=LONG_NAME), LONG_NAME_CODES, mentions="model"),
    Case(
        "clip-pitch-nan",
        C,
        CC,
        clip(settings=conv(model="world-default", pitch_shift_semitones=math.nan)),
        IA,
        mentions="pitch",
    ),
    # ---- ListModels / conversion GetStatus
    Case("list-models-garbage", C, LM, one(TRUNCATED_VARINT), IA, unparseable=True),
    Case("list-models-unknown-field-ignored", C, LM, one(b"\x08\x01"), OK),
    Case("conversion-status-garbage", C, GS, one(TRUNCATED_FIELD), IA, unparseable=True),
    # ---- LoadModel
    Case("load-garbage", C, LD, one(STRAY_END_GROUP), IA, unparseable=True),
    Case("load-name-invalid-utf8", C, LD, one(length_delimited(1, BAD_UTF8)), IA, unparseable=True),
    Case("load-empty-name", C, LD, one(voice_conversion_pb2.LoadModelRequest()), IA, mentions="name"),
    Case("load-unknown", C, LD, one(voice_conversion_pb2.LoadModelRequest(name="no-such-model")), NOT_FOUND),
    Case("load-parent-path", C, LD, one(voice_conversion_pb2.LoadModelRequest(name="../x")), IA, mentions="name"),
    Case("load-absolute-path", C, LD, one(voice_conversion_pb2.LoadModelRequest(name="/etc/passwd")), IA),
    Case("load-name-with-nul", C, LD, one(voice_conversion_pb2.LoadModelRequest(name="model\x00.pth")), IA),
    Case("load-name-10k-chars", C, LD, one(voice_conversion_pb2.LoadModelRequest(name=LONG_NAME)), LONG_NAME_CODES),
    # ---- UnloadModel
    Case("unload-garbage", C, UL, one(TRUNCATED_VARINT), IA, unparseable=True),
    Case("unload-empty-name", C, UL, one(voice_conversion_pb2.UnloadModelRequest()), IA, mentions="name"),
    Case("unload-unknown", C, UL, one(voice_conversion_pb2.UnloadModelRequest(name="no-such-model")), NOT_FOUND),
    Case("unload-parent-path", C, UL, one(voice_conversion_pb2.UnloadModelRequest(name="../x")), IA, mentions="name"),
    Case("unload-name-10k-chars", C, UL, one(voice_conversion_pb2.UnloadModelRequest(name=LONG_NAME)), LONG_NAME_CODES),
]


def test_corpus_covers_every_rpc_of_both_services() -> None:
    assert len(CASES) >= 60
    assert len({c.id for c in CASES}) == len(CASES), "case ids must be unique"
    assert {(c.service, c.rpc) for c in CASES} == ALL_RPCS
    unparseable = {(c.service, c.rpc) for c in CASES if c.unparseable}
    assert unparseable == ALL_RPCS, f"RPCs without an unparseable-bytes case: {sorted(ALL_RPCS - unparseable)}"


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in CASES])
def test_bad_input(case: Case, request: pytest.FixtureRequest) -> None:
    process = request.getfixturevalue("gateway" if case.service == GATEWAY else "rvc_service")
    with grpc.insecure_channel(process.address) as channel:
        baseline = active_streams(channel, case.service)
        outcome = call_raw(channel, case.service, case.rpc, case.build(), half_close=case.half_close)
        problems: list[str] = []
        if outcome.code not in case.codes:
            problems.append(f"expected {'/'.join(sorted(c.name for c in case.codes))}, got {outcome.describe()}")
        if leaks(outcome.details):
            problems.append(f"status message leaks server details: {outcome.details[:300]!r}")
        if len(outcome.details) >= MAX_MESSAGE_CHARS:
            problems.append(f"status message of {len(outcome.details)} characters: {outcome.details[:200]!r}...")
        if case.unparseable and class_names(outcome.details):
            problems.append(f"message names Python classes: {outcome.details[:300]!r}")
        if case.mentions and outcome.code in case.codes and case.mentions not in outcome.details:
            problems.append(f"message does not name {case.mentions!r} (what to fix): {outcome.details[:300]!r}")
        if case.audio and outcome.code == OK and audio_bytes(outcome.responses) < 1000:
            problems.append("the accepted request returned no audio")
        # Whatever happened to the bad call, the service keeps serving and frees the stream's slot.
        try:
            still_serving(channel, case.service)
        except (AssertionError, grpc.RpcError) as exc:
            problems.append(f"a normal request after it failed: {exc}")
        left = streams_released(channel, case.service, baseline)
        if left > baseline:
            problems.append(f"{left - baseline} stream(s) still open on the server after the call ended")
    assert not problems, "\n".join(problems)


def audio_bytes(responses: list[bytes]) -> int:
    """Audio in a stream of AudioChunk that ended with its final chunk (0 when it did not)."""
    chunks = [audio_pb2.AudioChunk.FromString(r) for r in responses]
    return sum(len(c.audio) for c in chunks) if chunks and chunks[-1].is_final else 0


def test_normal_request_succeeds_on_its_own(gateway: GatewayProcess) -> None:
    """The probe the corpus relies on works by itself, so a corpus failure is the bad input's doing."""
    with grpc.insecure_channel(gateway.address) as channel:
        outcome = call_raw(channel, GATEWAY, S, wire(short_synthesize_request()))
    assert outcome.code == OK, outcome.describe()
    assert audio_bytes(outcome.responses) > 1000


def test_harness_reports_a_stream_left_open_as_hanging(gateway: GatewayProcess) -> None:
    """The bound really catches a call the server does not end: a StreamingSynthesize that is never half-closed
    waits for more text (legitimately, until the server's idle timeout). Cancelling it frees its slot."""
    with grpc.insecure_channel(gateway.address) as channel:
        baseline = active_streams(channel, GATEWAY)
        outcome = call_raw(channel, GATEWAY, SS, wire(ss_config(), ss_text("Hello")), half_close=False, bound_s=1.0)
        assert outcome.code is None and 1.0 <= outcome.seconds < 3.0, outcome.describe()
        assert streams_released(channel, GATEWAY, baseline) <= baseline
