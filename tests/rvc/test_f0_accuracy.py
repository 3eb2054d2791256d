"""Accuracy of every F0Estimator method against librosa's pYIN (issue 11), on synthetic vowels and real voices.

For each method and signal: the method's median F0 over the frames that both it and pYIN call voiced must be within
half a semitone of pYIN's median over the same frames. pYIN is the reference because no method under test uses it;
it runs on the same 16 kHz audio with a 160-sample hop, so its frame k is centred on the estimator's frame k (both
at k * 10 ms) and the two tracks share one time grid.

Signals: Rosenberg-style glottal-pulse vowels at 80/110/220/300 Hz, Piper joe (a low male voice, about 86 Hz, made
by the Triton environment's Piper with its noise off so the test sees the same audio every run) and a clip of read
speech from LibriSpeech that fairseq ships in its tests (about 160 Hz). librosa's own example recordings are
downloaded on first use, so they are not used here.

Combinations that miss today are strict xfails carrying the measured offset, so the suite stays green, the defect
stays on record, and a fix shows up as an XPASS. Full CREPE is left to benchmarks/f0_bench.py (too slow on CPU).
"""

from __future__ import annotations

import os
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr

from services.rvc_service.engines import F0Estimator
from tests import signals as test_signals
from tests.signals import glottal_vowel

REPO = Path(__file__).resolve().parents[2]
SR = 16000
HOP = 160
TOLERANCE_ST = 0.5
JOE_TEXT = "The quick brown fox jumps over the lazy dog. This is a second sentence to measure pitch."
LIBRI_CLIP = "examples/hubert/tests/6313-76958-0021.flac"  # inside the fairseq package (fairseq-fixed)
LIBRI_SECONDS = 3.0  # its most voiced stretch; the whole 12 s clip is the benchmark's
RMVPE_WEIGHTS = Path(os.environ.get("RVC_MODELS_DIR", REPO / "services" / "rvc_service" / "models")) / "rmvpe.pt"

VOWELS = {"vowel80": 80.0, "vowel110": 110.0, "vowel220": 220.0, "vowel300": 300.0}
SIGNALS = [*VOWELS, "joe", "libri"]
METHODS = ["pm", "harvest", "dio", "crepe-tiny", "fcpe", "rmvpe"]
# Measured with the CPU build of torch: the offset of the medians over frames voiced by both, and the share of those
# frames more than 6 semitones above pYIN (nearer an octave up than the right pitch).
KNOWN_MISSES = {
    ("dio", "joe"): "DIO reads joe an octave up: +11.6 st (171 vs 87 Hz; 94% of frames an octave up)",
    ("crepe-tiny", "joe"): "CREPE tiny reads joe +3.9 st (108 vs 86 Hz; 38% of frames an octave up)",
    ("fcpe", "joe"): "FCPE reads joe +2.3 st (99 vs 87 Hz; 28% of frames an octave up)",
    ("crepe-tiny", "libri"): "CREPE tiny reads the LibriSpeech clip's first 3 s +2.2 st (216 vs 190 Hz)",
}


def synthesize_joe(path: Path, text: str = JOE_TEXT) -> Path:
    try:
        return test_signals.synthesize_joe(path, text)
    except FileNotFoundError as missing:
        pytest.skip(f"Piper needs the Triton environment: {missing}")


def libri_clip() -> Path:
    """LibriSpeech utterance 6313-76958-0021 (16 kHz read speech) as fairseq ships it; skips when absent."""
    spec = find_spec("fairseq")
    path = Path(spec.origin).parent / LIBRI_CLIP if spec and spec.origin else None
    if path is None or not path.exists():
        pytest.skip("the LibriSpeech clip comes with fairseq-fixed, which is not installed")
    return path


def pyin_track(x16: np.ndarray) -> np.ndarray:
    """pYIN F0 per 10 ms frame of 16 kHz audio (frame k centred on sample k * 160), 0 where unvoiced."""
    import librosa

    f0, voiced, _ = librosa.pyin(x16, fmin=50, fmax=600, sr=SR, frame_length=1024, hop_length=HOP)
    return np.where(voiced & np.isfinite(f0), f0, 0.0)


class Signals:
    """Each signal at 16 kHz with its pYIN track, made on first use (pYIN costs about a second per second)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self._made: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def __getitem__(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        if name not in self._made:
            audio = self._audio(name)
            self._made[name] = (audio, pyin_track(audio))
        return self._made[name]

    def _audio(self, name: str) -> np.ndarray:
        if name in VOWELS:
            return glottal_vowel(VOWELS[name])
        if name == "joe":
            x, rate = sf.read(synthesize_joe(self.workdir / "joe.wav"), dtype="float32")
        elif name == "libri":
            x, rate = sf.read(libri_clip(), dtype="float32", frames=int(LIBRI_SECONDS * 16000))
        else:
            raise KeyError(name)
        return soxr.resample(x, rate, SR).astype(np.float32) if rate != SR else x


@pytest.fixture(scope="module")
def signals(tmp_path_factory: pytest.TempPathFactory) -> Signals:
    return Signals(tmp_path_factory.mktemp("f0_accuracy"))


@pytest.fixture(scope="module")
def estimator() -> F0Estimator:
    return F0Estimator("cpu", RMVPE_WEIGHTS)


def median_offset_st(track: np.ndarray, reference: np.ndarray) -> tuple[float, float, float, int]:
    """(offset in semitones, method median Hz, reference median Hz, frames) over frames voiced in both."""
    n = min(len(track), len(reference))
    both = (track[:n] > 0) & (reference[:n] > 0)
    if not both.any():
        return float("nan"), float("nan"), float("nan"), 0
    ours, theirs = float(np.median(track[:n][both])), float(np.median(reference[:n][both]))
    return float(12 * np.log2(ours / theirs)), ours, theirs, int(both.sum())


def cases() -> list[object]:
    out: list[object] = []
    for signal in SIGNALS:
        for method in METHODS:
            reason = KNOWN_MISSES.get((method, signal))
            marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
            out.append(pytest.param(method, signal, marks=marks, id=f"{method}-{signal}"))
    return out


@pytest.mark.parametrize(("method", "signal"), cases())
def test_median_f0_matches_pyin(method: str, signal: str, signals: Signals, estimator: F0Estimator) -> None:
    if method not in estimator.available:
        pytest.skip(f"{method} is not installed (weights expected at {RMVPE_WEIGHTS})")
    audio, reference = signals[signal]
    track = estimator.estimate(audio, method)
    assert track.shape == (len(audio) // HOP,)
    offset, ours, theirs, frames = median_offset_st(track, reference)
    assert frames >= 30, f"{method} and pYIN share only {frames} voiced frames on {signal}"
    assert abs(offset) < TOLERANCE_ST, (
        f"{method} on {signal}: median {ours:.1f} Hz vs pYIN {theirs:.1f} Hz ({offset:+.2f} semitones)"
    )


def test_the_comparison_can_fail() -> None:
    """An octave-up track is caught: the check is not vacuous."""
    reference = np.where(np.arange(100) % 10 < 7, 100.0, 0.0)
    offset, *_ = median_offset_st(reference * 2, reference)
    assert offset == pytest.approx(12.0)
