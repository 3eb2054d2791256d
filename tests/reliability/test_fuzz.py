"""Property-based fuzzing (Hypothesis) of every request message of both services, against the real processes.

Properties, for every generated request: the call ends on its own, with no client deadline (a first response or the
status within ``CALL_BOUND_S``, the end within ``STREAM_BOUND_S``), with a code from the allowed set (never UNKNOWN,
INTERNAL, UNAVAILABLE or a client-side "Stream removed"), a short message without tracebacks, server paths or object
reprs, and no stream left open on the server afterwards; an OK stream ends with a final chunk. After each
property's examples every service still serves a normal request.

Reproducible and bounded: ``derandomize=True`` (examples depend only on the test), no example database, no shrink
phase (a hang would cost the bound on every shrink step), and a fixed example budget per property.
"""

from __future__ import annotations

import contextlib
import math
import string
import struct
from collections.abc import Callable
from typing import Any, TypeVar

import grpc
import pytest
from hypothesis import HealthCheck, Phase, find, given, settings
from hypothesis import strategies as st

from tests.reliability.harness import (
    ALL_RPCS,
    CONVERSION,
    FLOAT32,
    GATEWAY,
    MAX_MESSAGE_CHARS,
    OPUS,
    PCM16,
    WAV,
    Outcome,
    call_raw,
    describe_request,
    leaks,
    method_descriptor,
    pcm16,
    still_serving,
    streams_released,
    tone,
    wav_bytes,
)
from voice.v1 import audio_pb2, conversion_pb2, tts_gateway_pb2, voice_conversion_pb2

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

T = TypeVar("T")
Code = grpc.StatusCode
# Codes a client may see for any request it can build; UNKNOWN/INTERNAL would mean an unhandled server error.
ALLOWED = frozenset(
    {
        Code.OK,
        Code.INVALID_ARGUMENT,
        Code.NOT_FOUND,
        Code.FAILED_PRECONDITION,
        Code.RESOURCE_EXHAUSTED,
        Code.OUT_OF_RANGE,
    }
)

INT32 = st.integers(-(2**31), 2**31 - 1)
NASTY_FLOATS = [math.nan, math.inf, -math.inf, -0.0, 3.4e38, 1e-45]  # representable as float32 too
NASTY_DOUBLES = [*NASTY_FLOATS, 1e308, 5e-324]
ANY_CHAR = st.characters(exclude_categories=("Cs",))  # every code point a string can hold, control chars included
# Starts with a letter, so it has something to speak; then letters, spaces and punctuation.
SPEAKABLE = st.builds(
    str.__add__,
    st.text(st.sampled_from(string.ascii_letters), min_size=1, max_size=8),
    st.text(st.sampled_from(string.ascii_letters + "     .,!?'"), max_size=32),
)
TEXTS = st.one_of(SPEAKABLE, st.text(ANY_CHAR, max_size=40))
STRINGS = st.text(ANY_CHAR, max_size=24)
VOICES = st.one_of(st.sampled_from(["joe-whole", "joe-world-high", "", "nobody"]), STRINGS)
MODEL_NAMES = ["", "world-default", "world-bright", "no-such-model", "../x", "/etc/passwd"]
MODELS = st.one_of(st.sampled_from(MODEL_NAMES), STRINGS)
ENUMS = st.one_of(st.integers(0, 8), INT32)  # known values and unknown ones (proto3 enums are open)
RATES = st.one_of(st.sampled_from([0, 8000, 16000, 22050, 24000, 48000]), INT32)
DOUBLES = st.one_of(st.sampled_from([0.0, 0.5, 1.0, 2.0, -3.0, *NASTY_DOUBLES]), st.floats())
REQUEST_IDS = st.one_of(st.just(""), st.text(ANY_CHAR, max_size=140))
FORMATS = st.builds(
    audio_pb2.AudioFormat,
    encoding=ENUMS,
    sample_rate_hz=RATES,
    channels=st.one_of(st.sampled_from([0, 0, 1, 2]), INT32),
)
SIMPLE_OUTPUT = st.builds(audio_pb2.AudioFormat, encoding=st.sampled_from([PCM16, WAV, OPUS, FLOAT32]))
REFERENCE_WAV = wav_bytes(tone(1.2))
TONE_PCM16 = pcm16(tone(0.25))


def mostly(valid: st.SearchStrategy[T], hostile: st.SearchStrategy[T]) -> st.SearchStrategy[T]:
    """``valid`` about five times in six: with several fields each hostile now and then, a good share of the
    requests is accepted and runs the real pipeline, the rest probe one or two bad fields at a time. (``one_of``
    with a repeated branch does not weight it, so the choice is drawn explicitly.)"""
    return st.sampled_from([True] * 5 + [False]).flatmap(lambda ok: valid if ok else hostile)


def fuzz_settings(examples: int) -> settings:
    return settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        phases=(Phase.explicit, Phase.generate),
        report_multiple_bugs=False,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
    )


@st.composite
def conversion_settings(draw: st.DrawFn) -> conversion_pb2.ConversionSettings:
    message = conversion_pb2.ConversionSettings(
        model=draw(mostly(st.sampled_from(["world-default", "world-bright"]), MODELS)),
        f0_method=draw(mostly(st.sampled_from([0, 2, 3]), ENUMS)),
    )
    for name in ("pitch_shift_semitones", "index_rate", "protect", "rms_mix_rate", "formant_shift_semitones"):
        if draw(st.booleans()):
            setattr(message, name, draw(mostly(st.sampled_from([0.0, 0.25]), DOUBLES)))
    for name in ("filter_radius", "speaker_id"):
        if draw(st.booleans()):
            setattr(message, name, draw(mostly(st.just(0), st.one_of(st.integers(-1, 9), INT32))))
    return message


@st.composite
def audio_inputs(draw: st.DrawFn) -> audio_pb2.AudioInput:
    """Undecodable bytes declared as WAV or Ogg-Opus, raw FLOAT32 samples with NaN and ±inf among them, or real audio;
    each mostly declared as what it is, sometimes as any format at all."""
    kind = draw(st.sampled_from(["bytes", "floats", "pcm16", "wav"]))
    if kind == "bytes":
        data, encoding = draw(st.binary(max_size=600)), draw(mostly(st.sampled_from([WAV, OPUS]), ENUMS))
    elif kind == "floats":
        floats = draw(st.lists(st.one_of(st.sampled_from(NASTY_FLOATS), st.floats(width=32)), max_size=400))
        data, encoding = struct.pack(f"<{len(floats)}f", *floats), draw(mostly(st.just(FLOAT32), ENUMS))
    elif kind == "pcm16":
        data, encoding = TONE_PCM16, draw(mostly(st.just(PCM16), ENUMS))
    else:
        data, encoding = REFERENCE_WAV, draw(mostly(st.just(WAV), ENUMS))
    audio_format = audio_pb2.AudioFormat(
        encoding=encoding,
        sample_rate_hz=draw(mostly(st.sampled_from([16000, 22050]), RATES)),
        channels=draw(mostly(st.just(0), st.one_of(st.integers(-1, 9), INT32))),
    )
    return audio_pb2.AudioInput(audio=data, format=audio_format)


@st.composite
def modes(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(["preset", "zero_shot", "cross_lingual", "instruct"]))
    if kind == "preset":
        return {"preset_speaker": tts_gateway_pb2.PresetSpeaker(speaker=draw(st.sampled_from(["", "joe"]) | STRINGS))}
    if kind == "zero_shot":
        return {"zero_shot": tts_gateway_pb2.ZeroShot(reference_audio=draw(audio_inputs()), reference_text=draw(TEXTS))}
    if kind == "cross_lingual":
        return {"cross_lingual": tts_gateway_pb2.CrossLingual(reference_audio=draw(audio_inputs()))}
    return {"instruct": tts_gateway_pb2.Instruct(instruction=draw(TEXTS), speaker=draw(STRINGS))}


@st.composite
def synthesis_fields(draw: st.DrawFn) -> dict[str, Any]:
    """The fields SynthesizeRequest and StreamingSynthesizeConfig share; mostly `joe` so accepted requests stay
    cheap."""
    fields: dict[str, Any] = {
        "request_id": draw(mostly(st.sampled_from(["", "fuzz-1"]), REQUEST_IDS)),
        "voice": draw(mostly(st.just("joe"), VOICES)),
        "output_format": draw(mostly(SIMPLE_OUTPUT, st.one_of(FORMATS, st.none()))),
        "disable_conversion": draw(mostly(st.just(False), st.booleans())),
        "speaking_rate": draw(mostly(st.sampled_from([0.0, 0.8, 1.25]), DOUBLES)),
        **draw(mostly(st.just({}), modes())),
    }
    conversion = draw(mostly(st.none(), conversion_settings()))
    if conversion is not None:
        fields["conversion"] = conversion
    return fields


@st.composite
def synthesize_requests(draw: st.DrawFn) -> list[bytes]:
    request = tts_gateway_pb2.SynthesizeRequest(text=draw(mostly(SPEAKABLE, TEXTS)), **draw(synthesis_fields()))
    return [request.SerializeToString()]


@st.composite
def streaming_synthesize_calls(draw: st.DrawFn) -> list[bytes]:
    Request = tts_gateway_pb2.StreamingSynthesizeRequest
    messages = [Request(config=tts_gateway_pb2.StreamingSynthesizeConfig(**draw(synthesis_fields())))]
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from(["text", "text", "text", "text", "flush", "empty", "config"]))
        if kind == "text":
            messages.append(Request(text=draw(mostly(SPEAKABLE, st.text(ANY_CHAR, max_size=20)))))
        elif kind == "flush":
            messages.append(Request(flush=Request.Flush()))
        elif kind == "empty":
            messages.append(Request())
        else:
            messages.append(Request(config=tts_gateway_pb2.StreamingSynthesizeConfig(voice="joe")))
    return [m.SerializeToString() for m in messages]


IN_FORMATS = mostly(
    st.builds(audio_pb2.AudioFormat, encoding=st.just(PCM16), sample_rate_hz=st.sampled_from([16000, 22050])),
    st.one_of(
        st.builds(audio_pb2.AudioFormat, encoding=st.sampled_from([PCM16, FLOAT32]), sample_rate_hz=RATES),
        FORMATS,
    ),
)


@st.composite
def convert_calls(draw: st.DrawFn) -> list[bytes]:
    Request = voice_conversion_pb2.ConvertRequest
    config = voice_conversion_pb2.ConvertConfig(
        request_id=draw(mostly(st.just(""), REQUEST_IDS)),
        settings=draw(conversion_settings()),
        input_format=draw(IN_FORMATS),
        output_format=draw(mostly(SIMPLE_OUTPUT, st.one_of(FORMATS, st.none()))),
    )
    messages = [Request(config=config)]
    for _ in range(draw(st.integers(0, 3))):
        kind = draw(st.sampled_from(["samples", "samples", "samples", "bytes", "flush", "empty", "config"]))
        if kind == "samples":
            messages.append(Request(audio=TONE_PCM16))
        elif kind == "bytes":
            messages.append(Request(audio=draw(st.binary(max_size=3000))))
        elif kind == "flush":
            messages.append(Request(flush=Request.Flush()))
        elif kind == "empty":
            messages.append(Request())
        else:
            messages.append(Request(config=config))
    return [m.SerializeToString() for m in messages]


@st.composite
def convert_clip_requests(draw: st.DrawFn) -> list[bytes]:
    valid_audio = st.sampled_from(
        [
            audio_pb2.AudioInput(audio=TONE_PCM16, format=audio_pb2.AudioFormat(encoding=PCM16, sample_rate_hz=16000)),
            audio_pb2.AudioInput(audio=REFERENCE_WAV, format=audio_pb2.AudioFormat(encoding=WAV)),
        ]
    )
    request = voice_conversion_pb2.ConvertClipRequest(
        request_id=draw(mostly(st.just(""), REQUEST_IDS)),
        settings=draw(conversion_settings()),
        audio=draw(st.one_of(valid_audio, audio_inputs())),  # the clip is what this property is about
        output_format=draw(mostly(SIMPLE_OUTPUT, st.one_of(FORMATS, st.none()))),
    )
    return [request.SerializeToString()]


NAMES = st.one_of(
    st.sampled_from(["world-default", "world-bright", "", ".", "..", "a/b", "nul\x00", "x" * 300]),
    st.text(ANY_CHAR, max_size=60),
    st.text(st.sampled_from("./\\ab-_ \x00~"), max_size=12),
)


@st.composite
def name_requests(draw: st.DrawFn) -> tuple[str, str, list[bytes]]:
    """(service, rpc, messages) for the RPCs whose input is one name-like string."""
    name = draw(NAMES)
    rpc = draw(st.sampled_from(["LoadModel", "UnloadModel", "ListVoices"]))
    if rpc == "ListVoices":
        return GATEWAY, rpc, [tts_gateway_pb2.ListVoicesRequest(language_code=name).SerializeToString()]
    if rpc == "LoadModel":
        return CONVERSION, rpc, [voice_conversion_pb2.LoadModelRequest(name=name).SerializeToString()]
    return CONVERSION, rpc, [voice_conversion_pb2.UnloadModelRequest(name=name).SerializeToString()]


RAW = st.tuples(st.sampled_from(sorted(ALL_RPCS)), st.binary(max_size=80))


# ------------------------------------------------------------------------------------------------ the properties


def problems(outcome: Outcome, service: str, rpc: str) -> list[str]:
    found: list[str] = []
    if outcome.code is None:
        return [outcome.describe()]
    if outcome.code not in ALLOWED:
        found.append(f"code {outcome.describe()} is not one of {sorted(c.name for c in ALLOWED)}")
    if "Stream removed" in outcome.details:
        found.append("the status did not fit in the trailers (client saw 'Stream removed')")
    if leaks(outcome.details):
        found.append(f"status message leaks server details: {outcome.details[:300]!r}")
    if len(outcome.details) >= MAX_MESSAGE_CHARS:
        found.append(f"status message of {len(outcome.details)} characters")
    if outcome.code == Code.OK and method_descriptor(service, rpc).server_streaming:
        chunks = [audio_pb2.AudioChunk.FromString(r) for r in outcome.responses]
        if not chunks or not chunks[-1].is_final:
            found.append(f"an OK stream of {len(chunks)} chunks did not end with a final chunk")
    return found


def check(channel: grpc.Channel, service: str, rpc: str, messages: list[bytes]) -> None:
    outcome = call_raw(channel, service, rpc, messages)
    found = problems(outcome, service, rpc)
    left = streams_released(channel, service, baseline=0)
    if left:
        found.append(f"{left} stream(s) still open on the server after the call ended")
    sent = "\n  ".join(describe_request(service, rpc, m) for m in messages)
    assert not found, f"{service}/{rpc}: " + "; ".join(found) + f"\nrequest messages:\n  {sent}"


def run_property(
    addresses: dict[str, str],
    strategy: st.SearchStrategy[T],
    examples: int,
    body: Callable[[dict[str, grpc.Channel], T], None],
) -> None:
    """Run ``body`` on ``examples`` generated values with one channel per service, then check that every service
    still serves a normal request."""
    with contextlib.ExitStack() as stack:
        channels = {s: stack.enter_context(grpc.insecure_channel(a)) for s, a in addresses.items()}

        @fuzz_settings(examples)
        @given(strategy)
        def example(value: T) -> None:
            body(channels, value)

        example()
        for service, channel in channels.items():
            still_serving(channel, service)


@pytest.fixture(scope="module")
def addresses(gateway: Any, rvc_service: Any) -> dict[str, str]:
    return {GATEWAY: gateway.address, CONVERSION: rvc_service.address}


def on(service: str, rpc: str) -> Callable[[dict[str, grpc.Channel], list[bytes]], None]:
    return lambda channels, messages: check(channels[service], service, rpc, messages)


def test_fuzz_synthesize(addresses: dict[str, str]) -> None:
    run_property(addresses, synthesize_requests(), 50, on(GATEWAY, "Synthesize"))


def test_fuzz_streaming_synthesize(addresses: dict[str, str]) -> None:
    run_property(addresses, streaming_synthesize_calls(), 30, on(GATEWAY, "StreamingSynthesize"))


def test_fuzz_convert(addresses: dict[str, str]) -> None:
    run_property(addresses, convert_calls(), 40, on(CONVERSION, "Convert"))


def test_fuzz_convert_clip(addresses: dict[str, str]) -> None:
    run_property(addresses, convert_clip_requests(), 40, on(CONVERSION, "ConvertClip"))


def test_fuzz_names(addresses: dict[str, str]) -> None:
    def body(channels: dict[str, grpc.Channel], value: tuple[str, str, list[bytes]]) -> None:
        service, rpc, messages = value
        check(channels[service], service, rpc, messages)

    run_property(addresses, name_requests(), 60, body)


def test_fuzz_raw_bytes_on_every_rpc(addresses: dict[str, str]) -> None:
    def body(channels: dict[str, grpc.Channel], value: tuple[tuple[str, str], bytes]) -> None:
        (service, rpc), data = value
        check(channels[service], service, rpc, [data])

    run_property(addresses, RAW, 120, body)


def _synthesize(messages: list[bytes]) -> tts_gateway_pb2.SynthesizeRequest:
    return tts_gateway_pb2.SynthesizeRequest.FromString(messages[0])


@pytest.mark.parametrize(
    ("strategy", "predicate"),
    [
        pytest.param(DOUBLES, math.isnan, id="doubles-nan"),
        pytest.param(DOUBLES, math.isinf, id="doubles-inf"),
        pytest.param(FORMATS, lambda f: f.encoding not in audio_pb2.AudioEncoding.values(), id="unknown-encoding"),
        pytest.param(TEXTS, lambda t: any(ord(c) < 32 for c in t), id="control-characters"),
        pytest.param(TEXTS, lambda t: "\x00" in t, id="nul"),
        pytest.param(
            synthesize_requests(), lambda m: math.isnan(_synthesize(m).speaking_rate), id="request-with-nan-rate"
        ),
        pytest.param(
            synthesize_requests(),
            lambda m: (r := _synthesize(m)).voice == "joe" and r.text[:1].isalpha() and not r.HasField("conversion"),
            id="request-likely-accepted",
        ),
        pytest.param(convert_calls(), lambda m: len(m) >= 2 and m[1] == m[0], id="convert-with-config-twice"),
    ],
)
def test_strategies_reach_the_values_the_properties_are_about(
    strategy: st.SearchStrategy[Any], predicate: Callable[[Any], bool]
) -> None:
    """Offline (no server): each generator really produces the hostile (or the accepted) values it is meant to."""
    no_shrink = settings(max_examples=2000, derandomize=True, database=None, phases=(Phase.generate,))
    find(strategy, predicate, settings=no_shrink)
