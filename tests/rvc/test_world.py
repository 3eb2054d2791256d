from __future__ import annotations

import numpy as np
import pytest

from services.rvc_service.engines import BUILTIN_VOICES, ConversionParams, F0Estimator, VoiceModel, WorldVoice
from tests.rvc.factories import harmonic_tone
from tests.signals import glottal_vowel


def _f0(y: np.ndarray, sr: int) -> float:
    import soxr

    f0 = F0Estimator().estimate(soxr.resample(y, sr, 16000).astype(np.float32), "harvest")
    core = f0[15:-15]
    return float(np.median(core[core > 0]))


def _centroid(y: np.ndarray, sr: int) -> float:
    spec = np.abs(np.fft.rfft(y * np.hanning(len(y))))
    freqs = np.fft.rfftfreq(len(y), 1 / sr)
    return float((spec * freqs).sum() / spec.sum())


@pytest.fixture(scope="module")
def voice_in() -> np.ndarray:
    return harmonic_tone(200.0, sr=24000, seconds=1.0, harmonics=20)


@pytest.mark.parametrize("semitones", [-5.0, 7.0])
def test_pitch_moves_by_semitones(voice_in: np.ndarray, semitones: float) -> None:
    v = WorldVoice()
    y, sr = v.convert(voice_in, 24000, ConversionParams(pitch_shift_semitones=semitones))
    assert sr == 24000 and len(y) == len(voice_in)
    ratio = _f0(y, sr) / _f0(voice_in, 24000)
    assert abs(12 * np.log2(ratio) - semitones) < 0.3


def test_formant_shift_moves_spectral_centroid_not_pitch(voice_in: np.ndarray) -> None:
    v = WorldVoice()
    base, sr = v.convert(voice_in, 24000, ConversionParams())
    up, _ = v.convert(voice_in, 24000, ConversionParams(formant_shift_semitones=6))
    down, _ = v.convert(voice_in, 24000, ConversionParams(formant_shift_semitones=-6))
    assert _centroid(down, sr) < _centroid(base, sr) * 0.9
    assert _centroid(up, sr) > _centroid(base, sr) * 1.1
    assert abs(_f0(up, sr) - _f0(base, sr)) / _f0(base, sr) < 0.02


def test_builtins_and_block_api(voice_in: np.ndarray) -> None:
    assert {"world-default", "world-bright"} <= set(BUILTIN_VOICES)
    bright = BUILTIN_VOICES["world-bright"]
    assert isinstance(bright, VoiceModel)
    y, sr = bright.convert(voice_in, 24000, ConversionParams(), out_sr=16000)
    assert sr == 16000 and len(y) == 16000
    assert _f0(y, sr) > 200 * 2 ** (3.5 / 12)  # its +4 semitone offset
    block = bright.convert_block(voice_in, 24000, ConversionParams(), context=12000)
    assert len(block) == 12000


# ---- pitch against the source (issue 11): measured by librosa's pYIN, an estimator the voice does not use


def pyin_median(y: np.ndarray, sr: int) -> float:
    import librosa

    f0, voiced, _ = librosa.pyin(y.astype(np.float32), fmin=50, fmax=800, sr=sr, frame_length=2048)
    f0 = f0[np.isfinite(f0) & voiced]
    assert f0.size > 20, "too few voiced frames to measure"
    return float(np.median(f0))


@pytest.mark.parametrize("f0", [80.0, 110.0, 220.0, 300.0])
@pytest.mark.parametrize("semitones", [0.0, 12.0, -5.0])
def test_world_voice_keeps_the_source_pitch(f0: float, semitones: float) -> None:
    source = glottal_vowel(f0, sr=24000, seconds=2.0)
    out, sr = WorldVoice().convert(source, 24000, ConversionParams(pitch_shift_semitones=semitones))
    expected = pyin_median(source, 24000) * 2 ** (semitones / 12)
    assert abs(12 * np.log2(pyin_median(out, sr) / expected)) < 0.5
