"""Assertions on audio that the clients wrote: a complete, honest WAV header, plausible speech length, not silence."""

from __future__ import annotations

import io
import struct
import wave

import numpy as np

# Speech runs at roughly 10-20 characters per second; the bounds leave room for slow voices and pauses but catch a
# truncated stream (too short) or duplicated/looping audio (too long).
MIN_SECONDS_PER_CHAR = 0.04
MAX_SECONDS_PER_CHAR = 0.15


def read_finalized_wav(data: bytes) -> tuple[np.ndarray, int]:
    """Parse a WAV whose header must state the true sizes (as a saved file should); returns (float samples, rate)."""
    assert data[:4] == b"RIFF" and data[8:12] == b"WAVE", f"not a RIFF/WAVE file: {data[:12]!r}"
    (riff_size,) = struct.unpack_from("<I", data, 4)
    assert riff_size == len(data) - 8, f"RIFF size {riff_size} but file has {len(data)} bytes"
    with wave.open(io.BytesIO(data)) as wav:
        assert wav.getnchannels() == 1
        assert wav.getsampwidth() == 2
        rate = wav.getframerate()
        frames = wav.getnframes()
        pcm = wav.readframes(frames)
    assert len(pcm) == frames * 2, "data chunk size does not match the samples present"
    return pcm16_samples(pcm), rate


def pcm16_samples(pcm: bytes) -> np.ndarray:
    assert len(pcm) % 2 == 0, "PCM16 byte count must be even"
    return np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0


def assert_speech_like(samples: np.ndarray, rate: int, text: str) -> float:
    """Duration within the per-character bounds and clearly not silence; returns the duration in seconds."""
    seconds = len(samples) / rate
    low, high = MIN_SECONDS_PER_CHAR * len(text), MAX_SECONDS_PER_CHAR * len(text)
    assert low <= seconds <= high, (
        f"{seconds:.2f} s of audio for {len(text)} characters (expected {low:.2f}..{high:.2f})"
    )
    level = float(np.sqrt(np.mean(np.square(samples, dtype=np.float64))))
    assert level > 0.01, f"audio is (nearly) silent: RMS {level:.4f}"
    return seconds
