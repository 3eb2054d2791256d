"""Shared by the saved-voice tests: reference clips and a short way to create a voice."""

from __future__ import annotations

import numpy as np

from services.tts_gateway.saved_voices import SavedVoice, SavedVoiceStore

RATE = 16_000


def speech_like(seconds: float = 3.0, rate: int = RATE, peak: float = 0.3, seed: int = 0) -> np.ndarray:
    """A 150 Hz voice with harmonics, amplitude-modulated at a syllable rate (4 Hz), plus a little breath noise."""
    t = np.arange(round(seconds * rate)) / rate
    voiced = sum(np.sin(2 * np.pi * 150 * k * t) / k for k in range(1, 8))
    envelope = 0.5 * (1 - np.cos(2 * np.pi * 4 * t))  # 0..1, four "syllables" a second
    noise = np.random.default_rng(seed).normal(0.0, 0.01, t.size)
    signal = envelope * voiced + noise
    return (peak * signal / np.max(np.abs(signal))).astype(np.float32)


def rms_dbfs(samples: np.ndarray) -> float:
    return float(20 * np.log10(np.sqrt(np.mean(samples.astype(np.float64) ** 2))))


async def make(store: SavedVoiceStore, name: str, **overrides: object) -> SavedVoice:
    kwargs: dict[str, object] = {"base_voice": "spark", "samples": speech_like(), "sample_rate_hz": RATE}
    kwargs.update(overrides)
    return await store.create(name, **kwargs)  # type: ignore[arg-type]


def total_bytes(store: SavedVoiceStore) -> int:
    """What the store's voices count against the byte quota (test helper; the stores check it themselves)."""
    return sum(voice.size_bytes for voice in store.list())
