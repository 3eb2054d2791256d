"""Pipeline plumbing, voice config and validation, without upstream services.

Voices here are built from a TtsModelInfo written by hand (what Triton's config would say); that is data, not a mock.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io

import grpc
import numpy as np
import pytest
import soundfile as sf

from services.common.errors import FailedPrecondition, InvalidArgument, NotFound
from services.tts_gateway.domain import MODES, TtsModelInfo
from services.tts_gateway.pipeline import Pipe, PipeClosed
from services.tts_gateway.synthesis_request import SynthesisRequest
from services.tts_gateway.triton_client import parse_model_config
from services.tts_gateway.validation import Limits, ReferenceCache, RequestValidator, merge_conversion
from services.tts_gateway.voices import (
    DEFAULT_VOICES_PATH,
    Voice,
    VoiceCatalog,
    VoiceConfigError,
    load_voice_specs,
    parse_voice_specs,
)
from tests.waiting import yield_to_loop
from voice.v1 import audio_pb2, conversion_pb2, tts_gateway_pb2

PIPER_CONFIG = {
    "name": "piper_tts",
    "model_transaction_policy": {"decoupled": True},
    "input": [{"name": "target_text"}, {"name": "length_scale"}, {"name": "speaker_id"}],
    "parameters": {
        "sample_rate_hz": {"string_value": "22050"},
        "supported_modes": {"string_value": "preset_speaker"},
        "language_code": {"string_value": "en_US"},
        "speakers": {"string_value": "joe"},
    },
}
CLONING_CONFIG = {
    "name": "cloner",
    "input": [{"name": "target_text"}, {"name": "reference_wav"}],
    "parameters": {
        "sample_rate_hz": {"string_value": "24000"},
        "supported_modes": {"string_value": "zero_shot,cross_lingual"},
        "language_code": {"string_value": "zh"},
    },
}


async def test_pipe_applies_backpressure_and_keeps_order() -> None:
    pipe: Pipe[int] = Pipe(2)
    await pipe.put(1)
    await pipe.put(2)
    blocked = asyncio.create_task(pipe.put(3))
    await yield_to_loop()
    assert not blocked.done()  # full: the producer waits for the consumer
    received = []
    async for item in pipe:
        received.append(item)
        if item == 3:
            break
        if item == 1:
            await yield_to_loop()
            assert blocked.done()  # one item taken: the producer's put went through
    await blocked
    assert received == [1, 2, 3]


async def test_pipe_error_reaches_reader_and_unblocks_writer() -> None:
    pipe: Pipe[int] = Pipe(1)
    await pipe.put(1)
    writer = asyncio.create_task(pipe.put(2))
    await yield_to_loop()
    assert not writer.done()  # waiting for room when the pipe fails
    await pipe.close(RuntimeError("upstream broke"))
    with pytest.raises(PipeClosed):
        await writer
    with pytest.raises(RuntimeError, match="upstream broke"):
        async for _ in pipe:
            pass


def test_model_config_parsing_reads_the_rate_and_refuses_to_guess() -> None:
    info = parse_model_config(PIPER_CONFIG)
    assert (info.sample_rate_hz, info.decoupled, info.language_code) == (22050, True, "en-US")
    assert info.supported_modes == ("preset_speaker",) and info.speakers == ("joe",)
    broken = {**PIPER_CONFIG, "parameters": {}}
    with pytest.raises(ValueError, match="sample_rate_hz"):
        parse_model_config(broken)


def test_shipped_voices_file_parses() -> None:
    specs = {s.name: s for s in load_voice_specs(DEFAULT_VOICES_PATH)}
    assert specs["joe"].conversion is None
    world = specs["joe-world-high"].conversion
    assert world is not None and world.model and world.pitch_shift_semitones != 0


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({}, "at least one"),
        ({"voice": [{"name": "a"}]}, "tts_model"),
        ({"voice": [{"name": "a", "tts_model": "m"}, {"name": "a", "tts_model": "m"}]}, "twice"),
        ({"voice": [{"name": "a", "tts_model": "m", "colour": "red"}]}, "unknown keys"),
        ({"voice": [{"name": "a", "tts_model": "m", "conversion": {"pitch": 1}}]}, "unknown conversion keys"),
        ({"voice": [{"name": "a", "tts_model": "m", "conversion": {"model": "w", "f0_method": "x"}}]}, "f0_method"),
        ({"voice": [{"name": "a", "tts_model": "m", "noise_scale": 3}]}, "noise_scale must be a number between"),
        ({"voice": [{"name": "a", "tts_model": "m", "noise_w": "loud"}]}, "noise_w must be a number between"),
    ],
)
def test_bad_voice_files_are_rejected_with_a_reason(data: dict, message: str) -> None:
    with pytest.raises(VoiceConfigError, match=message):
        parse_voice_specs(data)


def test_conversion_merge_overrides_only_what_the_request_set() -> None:
    default = conversion_pb2.ConversionSettings(model="w", pitch_shift_semitones=4, formant_shift_semitones=1.5)
    merged = merge_conversion(default, conversion_pb2.ConversionSettings(pitch_shift_semitones=-2))
    assert (merged.model, merged.pitch_shift_semitones, merged.formant_shift_semitones) == ("w", -2, 1.5)
    zero = merge_conversion(default, conversion_pb2.ConversionSettings(pitch_shift_semitones=0))
    assert zero.HasField("pitch_shift_semitones") and zero.pitch_shift_semitones == 0


def _catalog() -> VoiceCatalog:
    specs = parse_voice_specs(
        {
            "voice": [
                {"name": "joe", "tts_model": "piper_tts"},
                {"name": "clone", "tts_model": "cloner"},
                {"name": "joe-w", "tts_model": "piper_tts", "conversion": {"model": "world-default"}},
            ]
        }
    )
    catalog = VoiceCatalog(specs)
    models: dict[str, TtsModelInfo] = {
        "piper_tts": parse_model_config(PIPER_CONFIG),
        "cloner": parse_model_config(CLONING_CONFIG),
    }
    catalog.voices = {s.name: Voice(s, models[s.tts_model]) for s in specs}
    return catalog


def _wav(seconds: float, rate: int = 16000) -> bytes:
    buf = io.BytesIO()
    t = np.arange(int(seconds * rate)) / rate
    sf.write(buf, 0.3 * np.sin(2 * np.pi * 200 * t), rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def _request(**fields: object) -> tts_gateway_pb2.SynthesizeRequest:
    base: dict[str, object] = {
        "text": "Hello.",
        "voice": "joe",
        "output_format": audio_pb2.AudioFormat(encoding=audio_pb2.AUDIO_ENCODING_PCM16),
    }
    base.update(fields)
    return tts_gateway_pb2.SynthesizeRequest(**base)


async def test_plan_resolves_rate_speaking_rate_and_conversion() -> None:
    validator = RequestValidator(_catalog(), Limits(), ReferenceCache())
    plan = await validator.plan(_request(speaking_rate=2.0), text_field="text")
    assert plan.output_rate == 22050 and plan.conversion is None
    assert plan.tts_inputs.length_scale == pytest.approx(0.5)
    opus = await validator.plan(
        _request(output_format=audio_pb2.AudioFormat(encoding=audio_pb2.AUDIO_ENCODING_OGG_OPUS)), text_field="text"
    )
    assert opus.output_rate == 24000  # Opus cannot do 22050: next Opus rate up
    converted = await validator.plan(_request(voice="joe-w"), text_field="text")
    assert converted.conversion is not None and converted.conversion.model == "world-default"
    off = await validator.plan(_request(voice="joe-w", disable_conversion=True), text_field="text")
    assert off.conversion is None


async def test_mode_the_backend_lacks_names_voices_that_have_it() -> None:
    validator = RequestValidator(_catalog(), Limits(), ReferenceCache())
    ref = audio_pb2.AudioInput(audio=_wav(2.0), format=audio_pb2.AudioFormat(encoding=audio_pb2.AUDIO_ENCODING_WAV))
    with pytest.raises(FailedPrecondition, match="clone") as info:
        await validator.plan(
            _request(cross_lingual=tts_gateway_pb2.CrossLingual(reference_audio=ref)), text_field="text"
        )
    assert info.value.code == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(FailedPrecondition, match="no configured voice"):
        await validator.plan(_request(instruct=tts_gateway_pb2.Instruct(instruction="warmly")), text_field="text")
    with pytest.raises(NotFound):
        await validator.plan(_request(voice="nobody"), text_field="text")


async def test_reference_audio_is_checked_and_cached_by_content() -> None:
    cache = ReferenceCache()
    validator = RequestValidator(_catalog(), Limits(), cache)
    ref = audio_pb2.AudioInput(audio=_wav(2.0), format=audio_pb2.AudioFormat(encoding=audio_pb2.AUDIO_ENCODING_WAV))
    request = _request(voice="clone", cross_lingual=tts_gateway_pb2.CrossLingual(reference_audio=ref))
    first = await validator.plan(request, text_field="text")
    second = await validator.plan(request, text_field="text")
    assert first.tts_inputs.reference_wav is second.tts_inputs.reference_wav  # the processed clip is reused
    assert first.tts_inputs.reference_wav is not None and first.tts_inputs.reference_wav.size == 32000
    assert cache.hits >= 2
    for audio, message in [(_wav(0.3), "1-30 s"), (_wav(31), "longer than"), (b"RIFFjunk", "decode")]:
        bad = audio_pb2.AudioInput(audio=audio, format=audio_pb2.AudioFormat(encoding=audio_pb2.AUDIO_ENCODING_WAV))
        with pytest.raises(InvalidArgument, match=message):
            await validator.plan(
                _request(voice="clone", cross_lingual=tts_gateway_pb2.CrossLingual(reference_audio=bad)),
                text_field="text",
            )


def test_both_wire_forms_read_into_the_same_request() -> None:
    """StreamingSynthesizeConfig repeats SynthesizeRequest's settings (the wire cannot share them): with the same
    settings both read into the same SynthesisRequest, text aside, and every field of the config is read."""
    settings = dict(
        request_id="req-1",
        voice="joe",
        instruct=tts_gateway_pb2.Instruct(instruction="warmly", speaker="joe"),
        output_format=audio_pb2.AudioFormat(encoding=audio_pb2.AUDIO_ENCODING_WAV, sample_rate_hz=24000),
        conversion=conversion_pb2.ConversionSettings(model="w", pitch_shift_semitones=2),
        disable_conversion=True,
        speaking_rate=1.5,
        seed=7,
    )
    config_fields = {f.name for f in tts_gateway_pb2.StreamingSynthesizeConfig.DESCRIPTOR.fields}
    mode_fields = {f.name for f in tts_gateway_pb2.StreamingSynthesizeConfig.DESCRIPTOR.oneofs_by_name["mode"].fields}
    # A new setting must be added here too; text_input_mode is the config's own (Synthesize's text is whole).
    assert config_fields - mode_fields == set(settings) - {"instruct"} | {"text_input_mode"}
    assert mode_fields == set(MODES)  # a oneof member names its mode
    from_request = SynthesisRequest.from_wire(tts_gateway_pb2.SynthesizeRequest(text="Hi.", **settings))
    sentences = tts_gateway_pb2.TEXT_INPUT_MODE_SENTENCES
    from_config = SynthesisRequest.from_wire(
        tts_gateway_pb2.StreamingSynthesizeConfig(**settings, text_input_mode=sentences)
    )
    assert from_request.text == "Hi." and from_config.text is None
    assert from_request.text_input_mode == tts_gateway_pb2.TEXT_INPUT_MODE_UNSPECIFIED
    assert dataclasses.replace(from_request, text=None, text_input_mode=sentences) == from_config
    assert from_config.mode == "instruct" and from_config.instruct.speaker == "joe"
    assert SynthesisRequest.from_wire(tts_gateway_pb2.StreamingSynthesizeConfig()).conversion is None
