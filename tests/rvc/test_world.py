from __future__ import annotations

import numpy as np
import pytest
from factories import harmonic_tone

from services.rvc_service.engines import BUILTIN_VOICES, ConversionParams, F0Estimator, VoiceModel, WorldVoice


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
