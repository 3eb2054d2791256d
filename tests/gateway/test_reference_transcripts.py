"""Transcripts of zero-shot references (services/tts_gateway/transcripts.py) with an in-process fake recognizer:
the cache (hits, misses, failures, LRU bound, concurrent requests sharing one recognition), the request's own text
winning, the language hint, and the INVALID_ARGUMENT wording when no transcript can be had."""

from __future__ import annotations

import asyncio
import io
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from services.common.errors import InvalidArgument, Unavailable
from services.tts_gateway.asr_client import AsrModelInfo
from services.tts_gateway.domain import TtsModelInfo
from services.tts_gateway.servicer import TtsGatewayServicer
from services.tts_gateway.transcripts import (
    REFERENCE_TRANSCRIPTS,
    ReferenceTranscripts,
    TranscriptUnavailable,
    model_language,
    samples_key,
    untranscribed_problem,
)
from services.tts_gateway.validation import DecodedReference, Limits, ReferenceCache, RequestValidator
from services.tts_gateway.voices import Voice, VoiceCatalog, parse_voice_specs
from voice.v1 import audio_pb2, tts_gateway_pb2

RATE = 16000
WAV = audio_pb2.AUDIO_ENCODING_WAV


class FakeRecognizer:
    """Implements transcripts.Recognizer: answers from a table keyed by the clip's first sample, counts calls."""

    def __init__(self, answer: str = "hello there", *, fail: bool = False, delay_s: float = 0.0) -> None:
        self.answer = answer
        self.fail = fail
        self.delay_s = delay_s
        self.calls: list[tuple[int, int, str]] = []

    async def transcribe(self, samples: np.ndarray, sample_rate_hz: int, language: str, request_id: str) -> str:
        self.calls.append((samples.size, sample_rate_hz, language))
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.fail:
            raise Unavailable("Triton at 127.0.0.1:1 is unreachable", retry_after_s=1.0)
        return self.answer


def tone(seconds: float = 2.0, f0: float = 200.0, rate: int = RATE) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * f0 * t)).astype(np.float32)


def wav_input(samples: np.ndarray, rate: int = RATE) -> audio_pb2.AudioInput:
    buffer = io.BytesIO()
    sf.write(buffer, samples, rate, format="WAV", subtype="PCM_16")
    return audio_pb2.AudioInput(audio=buffer.getvalue(), format=audio_pb2.AudioFormat(encoding=WAV))


def counts() -> dict[str, float]:
    return {result: REFERENCE_TRANSCRIPTS.labels(result)._value.get() for result in ("hit", "miss", "failed")}


def delta(before: dict[str, float]) -> dict[str, float]:
    after = counts()
    return {key: after[key] - before[key] for key in after}


def _model(name: str, modes: tuple[str, ...], language: str = "en-US") -> TtsModelInfo:
    return TtsModelInfo(
        name=name,
        sample_rate_hz=16000,
        decoupled=True,
        supported_modes=modes,
        language_code=language,
        speakers=(),
        max_text_chars=1000,
        inputs=frozenset({"target_text", "reference_wav", "reference_text"}),
    )


def catalog() -> VoiceCatalog:
    """spark: zero-shot and cross-lingual; zs: zero-shot only (German); xl: cross-lingual only."""
    models = {
        "spark_tts": _model("spark_tts", ("zero_shot", "cross_lingual", "voice_design")),
        "zs_tts": _model("zs_tts", ("zero_shot",), language="de-DE"),
        "xl_tts": _model("xl_tts", ("cross_lingual",)),
    }
    specs = parse_voice_specs(
        {
            "voice": [
                {"name": n, "tts_model": m} for n, m in (("spark", "spark_tts"), ("zs", "zs_tts"), ("xl", "xl_tts"))
            ]
        }
    )
    voices = VoiceCatalog(specs)
    voices.voices = {spec.name: Voice(spec, models[spec.tts_model]) for spec in specs}
    return voices


def validator(recognizer: FakeRecognizer | None, capacity: int = 8) -> RequestValidator:
    transcripts = None if recognizer is None else ReferenceTranscripts(recognizer, capacity=capacity, max_chars=1000)
    return RequestValidator(catalog(), Limits(), ReferenceCache(), transcripts)


def zero_shot(voice: str, reference: audio_pb2.AudioInput, text: str = "") -> tts_gateway_pb2.SynthesizeRequest:
    return tts_gateway_pb2.SynthesizeRequest(
        text="Hello.",
        voice=voice,
        output_format=audio_pb2.AudioFormat(encoding=audio_pb2.AUDIO_ENCODING_PCM16),
        zero_shot=tts_gateway_pb2.ZeroShot(reference_audio=reference, reference_text=text),
    )


def violations(exc: InvalidArgument) -> dict[str, str]:
    return dict(exc.violations)


# ---- the cache ---------------------------------------------------------------------------------------------------


async def test_each_distinct_reference_is_recognised_once() -> None:
    fake = FakeRecognizer(" the words of the clip ")
    transcripts = ReferenceTranscripts(fake, capacity=4)
    before = counts()
    assert await transcripts.transcript(tone(f0=200), RATE) == "the words of the clip"
    assert await transcripts.transcript(tone(f0=200), RATE) == "the words of the clip"  # equal samples: same key
    assert len(fake.calls) == 1
    assert delta(before) == {"hit": 1, "miss": 1, "failed": 0}
    await transcripts.transcript(tone(f0=300), RATE)  # another clip
    await transcripts.transcript(tone(f0=200), 22050)  # the same samples at another rate are another clip
    assert len(fake.calls) == 3
    assert samples_key(tone(), RATE) != samples_key(tone(), 22050)


async def test_the_cache_is_a_bounded_lru() -> None:
    fake = FakeRecognizer()
    transcripts = ReferenceTranscripts(fake, capacity=2)
    for f0 in (100, 200, 100, 300):  # 100 is used again before 300 comes, so 200 is the one evicted
        await transcripts.transcript(tone(f0=f0), RATE)
    assert len(fake.calls) == 3
    await transcripts.transcript(tone(f0=100), RATE)
    assert len(fake.calls) == 3
    await transcripts.transcript(tone(f0=200), RATE)
    assert len(fake.calls) == 4

    none_kept = ReferenceTranscripts(fake, capacity=0)
    await none_kept.transcript(tone(), RATE)
    await none_kept.transcript(tone(), RATE)
    assert len(fake.calls) == 6


async def test_concurrent_requests_for_one_clip_share_one_recognition() -> None:
    fake = FakeRecognizer(delay_s=0.05)
    transcripts = ReferenceTranscripts(fake)
    before = counts()
    results = await asyncio.gather(*(transcripts.transcript(tone(), RATE) for _ in range(5)))
    assert results == ["hello there"] * 5
    assert len(fake.calls) == 1
    assert delta(before) == {"hit": 4, "miss": 1, "failed": 0}


async def test_a_cancelled_request_leaves_the_recognition_to_fill_the_cache() -> None:
    fake = FakeRecognizer(delay_s=0.05)
    transcripts = ReferenceTranscripts(fake)
    task = asyncio.create_task(transcripts.transcript(tone(), RATE))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0.1)
    assert await transcripts.transcript(tone(), RATE) == "hello there"
    assert len(fake.calls) == 1


async def test_failures_are_counted_and_errors_are_not_cached() -> None:
    fake = FakeRecognizer(fail=True)
    transcripts = ReferenceTranscripts(fake)
    before = counts()
    with pytest.raises(TranscriptUnavailable, match=r"recognition failed: .*unreachable"):
        await transcripts.transcript(tone(), RATE)
    fake.fail = False
    assert await transcripts.transcript(tone(), RATE) == "hello there"  # tried again: an outage is not an answer
    assert len(fake.calls) == 2
    assert delta(before) == {"hit": 0, "miss": 1, "failed": 1}


async def test_an_empty_or_overlong_transcript_is_no_transcript() -> None:
    fake = FakeRecognizer("   ")
    transcripts = ReferenceTranscripts(fake, max_chars=20)
    before = counts()
    with pytest.raises(TranscriptUnavailable, match="no words were recognised"):
        await transcripts.transcript(tone(), RATE)
    with pytest.raises(TranscriptUnavailable, match="no words were recognised"):
        await transcripts.transcript(tone(), RATE)  # the model's answer is cached: not recognised again
    assert len(fake.calls) == 1
    assert delta(before) == {"hit": 1, "miss": 0, "failed": 1}
    fake.answer = "far too many words for the limit"
    with pytest.raises(TranscriptUnavailable, match="over the 20 limit"):
        await transcripts.transcript(tone(f0=300), RATE)


def test_the_voice_language_picks_a_model_language_or_the_default() -> None:
    model = AsrModelInfo("asr", 16000, ("en-US", "de-DE"), False, 600.0, "")
    assert model_language(model, "de-AT") == "de-DE"
    assert model_language(model, "fr-FR") == "en-US"
    assert model_language(model, "") == "en-US"
    assert model_language(AsrModelInfo("bare", 16000, (), False, 600.0, ""), "de") == ""


# ---- validation ----------------------------------------------------------------------------------------------


async def test_zero_shot_without_text_gets_the_transcript_once() -> None:
    fake = FakeRecognizer("hello from the reference")
    checker = validator(fake)
    reference = wav_input(tone(2.0))
    first = await checker.plan(zero_shot("zs", reference), text_field="text")
    second = await checker.plan(zero_shot("zs", reference), text_field="text")
    assert first.tts_inputs.reference_text == second.tts_inputs.reference_text == "hello from the reference"
    assert len(fake.calls) == 1
    assert fake.calls[0] == (32000, RATE, "de-DE")  # decoded samples, their rate, the voice's language


async def test_a_streaming_config_is_transcribed_the_same_way() -> None:
    fake = FakeRecognizer("streamed reference words")
    config = tts_gateway_pb2.StreamingSynthesizeConfig(
        voice="spark",
        output_format=audio_pb2.AudioFormat(encoding=audio_pb2.AUDIO_ENCODING_PCM16),
        zero_shot=tts_gateway_pb2.ZeroShot(reference_audio=wav_input(tone())),
    )
    plan = await validator(fake).plan(config, text_field=None)
    assert plan.mode == "zero_shot" and plan.tts_inputs.reference_text == "streamed reference words"
    assert fake.calls == [(32000, RATE, "en-US")]


async def test_the_requests_own_text_wins_without_recognition() -> None:
    fake = FakeRecognizer()
    plan = await validator(fake).plan(zero_shot("spark", wav_input(tone()), "  my own words "), text_field="text")
    assert plan.tts_inputs.reference_text == "my own words"
    assert fake.calls == []


@pytest.mark.parametrize(
    ("voice", "recognizer", "reason", "suggests_cross_lingual"),
    [
        ("spark", FakeRecognizer(""), "no words were recognised", True),
        ("zs", FakeRecognizer(""), "no words were recognised", False),
        ("spark", FakeRecognizer(fail=True), "recognition failed", True),
    ],
)
async def test_no_transcript_is_invalid_argument_on_reference_text(
    voice: str, recognizer: FakeRecognizer, reason: str, suggests_cross_lingual: bool
) -> None:
    with pytest.raises(InvalidArgument) as info:
        await validator(recognizer).plan(zero_shot(voice, wav_input(tone(f0=410))), text_field="text")
    problem = violations(info.value)["zero_shot.reference_text"]
    assert "could not be transcribed" in problem and reason in problem
    assert "give the transcript of reference_audio as reference_text" in problem
    assert ("cross_lingual" in problem) == suggests_cross_lingual


async def test_without_a_transcriber_an_empty_text_is_refused_as_before() -> None:
    with pytest.raises(InvalidArgument) as info:
        await validator(None).plan(zero_shot("spark", wav_input(tone())), text_field="text")
    assert violations(info.value) == {"zero_shot.reference_text": "must be 1..1000 characters"}


async def test_a_refused_reference_is_not_transcribed_and_both_fields_are_named() -> None:
    fake = FakeRecognizer()
    silence = wav_input(np.zeros(2 * RATE, dtype=np.float32))
    with pytest.raises(InvalidArgument) as info:
        await validator(fake).plan(zero_shot("spark", silence), text_field="text")
    found = violations(info.value)
    assert "silent" in found["zero_shot.reference_audio.audio"]
    assert "give the transcript" in found["zero_shot.reference_text"]
    assert fake.calls == []


async def test_other_modes_and_unknown_voices_never_recognise() -> None:
    fake = FakeRecognizer()
    checker = validator(fake)
    cross = tts_gateway_pb2.SynthesizeRequest(
        text="Hello.",
        voice="xl",
        output_format=audio_pb2.AudioFormat(encoding=audio_pb2.AUDIO_ENCODING_PCM16),
        cross_lingual=tts_gateway_pb2.CrossLingual(reference_audio=wav_input(tone())),
    )
    plan = await checker.plan(cross, text_field="text")
    assert plan.mode == "cross_lingual" and not plan.tts_inputs.reference_text
    with pytest.raises(Exception, match="nobody"):
        await checker.plan(zero_shot("nobody", wav_input(tone())), text_field="text")
    assert fake.calls == []


# ---- CreateVoice's choice ------------------------------------------------------------------------------------


def servicer(recognizer: FakeRecognizer | None) -> TtsGatewayServicer:
    checker = validator(recognizer)
    none: Any = None
    return TtsGatewayServicer(
        catalog=checker.catalog,
        validator=checker,
        triton=none,
        rvc=none,
        monitor=none,
        windows=none,
        max_concurrent_streams=1,
    )


def decoded(f0: float = 200.0) -> DecodedReference:
    return DecodedReference(f"test-{f0}", tone(f0=f0), RATE)


async def test_create_voice_transcript_choice() -> None:
    fake = FakeRecognizer("words of the speaker")
    gateway = servicer(fake)
    voices = gateway.catalog.voices
    assert await gateway._transcript_for_saved_voice(decoded(), voices["spark"]) == "words of the speaker"
    assert await gateway._transcript_for_saved_voice(decoded(), voices["xl"]) == ""  # cross-lingual only: as before
    assert len(fake.calls) == 1

    fake.answer = ""  # no words: a base voice that clones cross-lingually falls back to that (the old behaviour) ...
    assert await gateway._transcript_for_saved_voice(decoded(300), voices["spark"]) == ""
    with pytest.raises(InvalidArgument) as info:  # ... one that cannot says what to give
        await gateway._transcript_for_saved_voice(decoded(300), voices["zs"])
    problem = violations(info.value)["reference_text"]
    assert "could not be transcribed" in problem and "cross_lingual" not in problem

    off = servicer(None)
    assert await off._transcript_for_saved_voice(decoded(), off.catalog.voices["spark"]) == ""
    with pytest.raises(InvalidArgument, match="transcribes no references"):
        await off._transcript_for_saved_voice(decoded(), off.catalog.voices["zs"])


def test_the_error_wording() -> None:
    assert untranscribed_problem("x", cross_lingual=False) == (
        "is empty and the reference audio could not be transcribed (x): "
        "give the transcript of reference_audio as reference_text"
    )
    assert untranscribed_problem("x", cross_lingual=True).endswith(
        ", or use cross_lingual, which clones without a transcript"
    )
