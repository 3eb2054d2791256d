"""The pure parts of speech in: word error rate, the G.711 codec (against Python's audioop, the reference C
routines), the telephone encodings in services.common.audio, the endpointer and segmenter, the VADs, and the parsing
of recognition model configs."""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest

from services.common import audio as A
from services.common import g711
from services.common.errors import InvalidArgument
from services.tts_gateway.asr_client import AsrModelInfo, parse_asr_config
from services.tts_gateway.endpointing import (
    Endpointer,
    EndpointerSettings,
    Segmenter,
    SpeechStart,
    Utterance,
    UtteranceEnd,
)
from services.tts_gateway.vad import FRAME_SAMPLES, EnergyVad, SileroVad
from tests.recognition.wer import corpus_wer, edit_distance, normalize, wer

# ---- WER ----------------------------------------------------------------------------------------------------------


def test_wer_counts_substitutions_insertions_and_deletions_over_normalized_words() -> None:
    assert normalize("The Quick, brown-fox!  Don't.") == ["the", "quick", "brown", "fox", "don't"]
    assert wer("the cat sat", "The cat sat.") == 0.0
    assert wer("the cat sat", "the bat sat") == pytest.approx(1 / 3)  # substitution
    assert wer("the cat sat", "the sat") == pytest.approx(1 / 3)  # deletion
    assert wer("the cat sat", "the cat sat down") == pytest.approx(1 / 3)  # insertion
    assert wer("a b c d", "") == 1.0
    assert wer("", "") == 0.0 and wer("", "x y") == 2.0
    assert edit_distance(["a", "b", "c"], ["c", "b", "a"]) == 2
    assert corpus_wer([("a b", "a b"), ("c d e f", "c x e")]) == pytest.approx(2 / 6)


# ---- G.711 --------------------------------------------------------------------------------------------------------

ALL_PCM = np.arange(-32768, 32768, dtype=np.int16)
ALL_CODES = np.arange(256, dtype=np.uint8)


@pytest.fixture(scope="module")
def audioop() -> object:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return pytest.importorskip("audioop")  # Python <= 3.12: the reference tables in C


def test_g711_matches_pythons_audioop_for_every_input(audioop: object) -> None:
    pcm = ALL_PCM.tobytes()
    assert g711.linear_to_ulaw(ALL_PCM).tobytes() == audioop.lin2ulaw(pcm, 2)  # type: ignore[attr-defined]
    assert g711.linear_to_alaw(ALL_PCM).tobytes() == audioop.lin2alaw(pcm, 2)  # type: ignore[attr-defined]
    assert g711.ulaw_to_linear(ALL_CODES).tobytes() == audioop.ulaw2lin(ALL_CODES.tobytes(), 2)  # type: ignore[attr-defined]
    assert g711.alaw_to_linear(ALL_CODES).tobytes() == audioop.alaw2lin(ALL_CODES.tobytes(), 2)  # type: ignore[attr-defined]


def test_g711_known_values_and_round_trips() -> None:
    # The textbook anchors: mu-law 0xFF and 0x7F are +0 and -0, 0x80/0x00 the extremes (+-32124); A-law 0xD5 and
    # 0x55 the smallest levels (+-8), 0xAA/0x2A the extremes (+-32256).
    assert g711.ulaw_to_linear(np.array([0xFF, 0x7F, 0x80, 0x00], dtype=np.uint8)).tolist() == [0, 0, 32124, -32124]
    assert g711.alaw_to_linear(np.array([0xD5, 0x55, 0xAA, 0x2A], dtype=np.uint8)).tolist() == [8, -8, 32256, -32256]
    assert g711.linear_to_ulaw(np.array([0], dtype=np.int16)).tolist() == [0xFF]
    # encode(decode(code)) is the code for all 256 A-law codes and all mu-law codes but -0 (0x7F), which is +0.
    assert (g711.linear_to_alaw(g711.alaw_to_linear(ALL_CODES)) == ALL_CODES).all()
    back = g711.linear_to_ulaw(g711.ulaw_to_linear(ALL_CODES))
    assert (back[ALL_CODES != 0x7F] == ALL_CODES[ALL_CODES != 0x7F]).all() and back[0x7F] == 0xFF
    # Decoding is monotonic in the linear value within each sign: a companding curve, not a table error.
    positive = np.sort(g711.ulaw_to_linear(ALL_CODES[ALL_CODES >= 0x80]))
    assert (np.diff(positive) > 0).all()


@pytest.mark.parametrize(
    ("encode", "decode"), [(g711.encode_ulaw, g711.decode_ulaw), (g711.encode_alaw, g711.decode_alaw)]
)
def test_a_full_scale_sine_round_trips_within_g711_error(encode: object, decode: object) -> None:
    t = np.arange(8000) / 8000
    sine = (0.999 * np.sin(2 * np.pi * 1004 * t)).astype(np.float32)
    out = decode(encode(sine))  # type: ignore[operator]
    assert out.dtype == np.float32 and out.size == sine.size
    # G.711 keeps about 38 dB signal-to-quantisation-noise for a full-scale tone; the largest step is 1/32 of
    # full scale (mu-law: 1024/32768; A-law: 1024/32768 as well).
    snr = 10 * np.log10(np.sum(sine.astype(np.float64) ** 2) / np.sum((out - sine).astype(np.float64) ** 2))
    assert snr > 35, snr
    assert np.max(np.abs(out - sine)) <= 1024 / 32768 + 1e-6


def test_audio_module_decodes_and_encodes_the_telephone_encodings() -> None:
    tone = (0.5 * np.sin(2 * np.pi * 440 * np.arange(800) / 8000)).astype(np.float32)
    for encoding, encode in ((A.MULAW, g711.encode_ulaw), (A.ALAW, g711.encode_alaw)):
        samples, rate = A.decode_audio(encode(tone), encoding, 8000)
        assert rate == 8000 and samples.size == tone.size and np.max(np.abs(samples - tone)) < 0.02
        with pytest.raises(A.AudioDecodeError, match="sample_rate_hz is required"):
            A.decode_audio(encode(tone), encoding, 0)
        assert A.encoding_name(encoding) in ("MULAW", "ALAW")
        assert A.validate_output_format(encoding, 0) == [] and A.validate_output_format(encoding, 16000) == []
        # Native rate means the telephone rate for these.
        assert A.resolve_output_rate(encoding, 0, 22050) == 8000
        assert A.resolve_output_rate(encoding, 16000, 22050) == 16000
        encoder = A.make_encoder(encoding, 8000)
        data = encoder.encode(tone[:300]) + encoder.encode(tone[300:]) + encoder.finish()
        assert data == encode(tone) and encoder.samples_encoded == tone.size
    stereo = g711.encode_ulaw(np.repeat(tone, 2))
    samples, _ = A.decode_audio(stereo, A.MULAW, 8000, 2)
    assert samples.size == tone.size


# ---- endpointing --------------------------------------------------------------------------------------------------

FRAME_S = 0.032


def run(probabilities: list[float], settings: EndpointerSettings | None = None) -> list[object]:
    endpointer = Endpointer(FRAME_S, settings)
    events: list[object] = []
    for p in probabilities:
        events += endpointer.push(p)
    return events + endpointer.finish()


def frames(seconds: float) -> int:
    return round(seconds / FRAME_S)


def test_endpointer_finds_utterances_with_hysteresis_and_pre_roll() -> None:
    silence, speech = [0.0] * frames(1.0), [0.9] * frames(1.0)
    events = run(silence + speech + [0.4] * 5 + speech + silence + speech + silence)
    starts = [e for e in events if isinstance(e, SpeechStart)]
    ends = [e for e in events if isinstance(e, UtteranceEnd)]
    # 0.4 is above end_threshold (0.35): the dip does not end the first utterance.
    assert len(starts) == len(ends) == 2
    assert ends[0].reason == ends[1].reason == "silence"
    first_speech = frames(1.0)
    assert ends[0].start_frame == first_speech - frames(0.2)  # pre-roll
    assert starts[0].start_s == pytest.approx(ends[0].start_frame * FRAME_S)
    last_speech = first_speech + 2 * frames(1.0) + 5
    assert ends[0].end_frame == last_speech + frames(0.15)  # post-roll


def test_endpointer_ignores_blips_caps_long_speech_and_closes_at_end_of_audio() -> None:
    # A blip shorter than min_speech_s (0.1 s = 3 frames) is no speech.
    assert run([0.0] * 10 + [0.9, 0.9] + [0.0] * 40) == []
    long = run([0.9] * frames(70.0), EndpointerSettings(max_utterance_s=30.0))
    ends = [e for e in long if isinstance(e, UtteranceEnd)]
    assert [e.reason for e in ends] == ["max_length", "max_length", "end_of_audio"]
    assert all(e.end_frame - e.start_frame <= frames(30.0) for e in ends)
    # Utterances never overlap, pre-roll included.
    assert all(a.end_frame <= b.start_frame for a, b in itertools.pairwise(ends))
    with pytest.raises(ValueError, match="threshold"):
        Endpointer(FRAME_S, EndpointerSettings(start_threshold=0.2, end_threshold=0.5))


def tone_bursts(rate: int, layout: list[tuple[str, float]]) -> np.ndarray:
    parts = []
    for kind, seconds in layout:
        n = int(seconds * rate)
        t = np.arange(n) / rate
        parts.append(0.3 * np.sin(2 * np.pi * 220 * t) if kind == "tone" else np.zeros(n))
    return np.concatenate(parts).astype(np.float32)


def test_segmenter_cuts_audio_fed_in_odd_chunks_into_the_same_utterances_as_whole() -> None:
    rate = 16000
    audio = tone_bursts(rate, [("s", 0.5), ("tone", 1.0), ("s", 1.0), ("tone", 0.7), ("s", 0.3)])
    whole = Segmenter(rate, FRAME_SAMPLES, EnergyVad())
    events = whole.feed(audio) + whole.finish()
    chunked = Segmenter(rate, FRAME_SAMPLES, EnergyVad())
    chunk_events = []
    for offset in range(0, audio.size, 1234):
        chunk_events += chunked.feed(audio[offset : offset + 1234])
        if chunked.in_speech:
            current, start_s = chunked.current()
            assert current.size and start_s == pytest.approx(chunked.endpointer.start_frame * FRAME_SAMPLES / rate)
    chunk_events += chunked.finish()
    utterances = [e for e in events if isinstance(e, Utterance)]
    assert len(utterances) == 2
    assert utterances[0].reason == "silence" and utterances[1].reason == "end_of_audio"
    assert utterances[0].start_s == pytest.approx(0.5 - 0.2, abs=0.04)
    assert utterances[0].end_s == pytest.approx(1.5 + 0.15, abs=0.04)
    assert utterances[1].end_s == pytest.approx(audio.size / rate, abs=1e-6)  # to the last sample
    # The audio is the stream's own samples.
    first = utterances[0]
    start = round(first.start_s * rate)
    np.testing.assert_array_equal(first.samples, audio[start : start + first.samples.size])
    assert [(u.start_s, u.end_s, u.samples.size) for u in utterances] == [
        (u.start_s, u.end_s, u.samples.size) for u in chunk_events if isinstance(u, Utterance)
    ]


def test_energy_vad_maps_level_to_probability() -> None:
    vad = EnergyVad(threshold_dbfs=-40.0)
    assert vad(np.zeros(FRAME_SAMPLES)) == 0.0
    assert vad(np.full(FRAME_SAMPLES, 0.1)) == 1.0  # -20 dBFS
    assert vad(np.full(FRAME_SAMPLES, 10 ** (-40 / 20))) == pytest.approx(0.5)


def test_silero_vad_runs_from_the_packaged_onnx_and_calls_silence_and_noise_non_speech() -> None:
    vad = SileroVad()
    assert max(vad(np.zeros(FRAME_SAMPLES, dtype=np.float32)) for _ in range(20)) < 0.2
    rng = np.random.default_rng(0)
    noise = [vad((0.01 * rng.standard_normal(FRAME_SAMPLES)).astype(np.float32)) for _ in range(30)]
    assert max(noise) < 0.5
    with pytest.raises(ValueError, match="512"):
        vad(np.zeros(100, dtype=np.float32))


# ---- model configs ------------------------------------------------------------------------------------------------


def config(**params: str) -> dict[str, object]:
    return {"name": "m", "parameters": {k: {"string_value": v} for k, v in params.items()}}


def test_recognition_models_are_told_apart_by_their_task_parameter() -> None:
    assert parse_asr_config(config(sample_rate_hz="22050", speakers="joe")) is None  # a TTS model
    info = parse_asr_config(
        config(
            task="recognition",
            sample_rate_hz="16000",
            language_codes="en-US, de_DE",
            word_time_offsets="true",
            max_audio_seconds="30",
            description="d",
        )
    )
    assert info == AsrModelInfo("m", 16000, ("en-US", "de-DE"), True, 30.0, "d")
    assert parse_asr_config(config(task="recognition")) is None  # no rate: never assumed


def test_language_codes_resolve_to_the_models_own() -> None:
    info = AsrModelInfo("m", 16000, ("en-US", "de-DE"), True, 30.0, "")
    assert info.language("") == "en-US"
    assert info.language("en") == "en-US" and info.language("de_de") == "de-DE" and info.language("en-GB") == "en-US"
    with pytest.raises(InvalidArgument):
        info.language("fr-FR")
