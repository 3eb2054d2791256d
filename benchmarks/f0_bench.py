#!/usr/bin/env python3
"""F0 methods against librosa's pYIN: accuracy and speed of every F0Estimator method and of the WORLD voice's
Praat tracker (issue 11: DIO read Piper joe, a ~86 Hz voice, an octave up).

Signals: Rosenberg-style glottal-pulse vowels at 80/110/220/300 Hz (2% 5 Hz vibrato, formants 700/1200/2600 Hz),
Piper joe (made by the Triton environment's Piper with its noise scales at 0, so every run hears the same audio) and
LibriSpeech utterance 6313-76958-0021 (12 s of read speech, ~160 Hz, shipped in fairseq-fixed's tests).

The reference is pYIN on the 16 kHz signal with a 160-sample hop: one frame per 10 ms, frame k centred on k * 10 ms,
the F0Estimator's own grid. world.praat_f0 runs on the signal resampled to 24 kHz (the WORLD voice's rate) with 5 ms
frames and is interpolated onto that grid by time. Per method and signal, over the frames both call voiced:

  err st     median of the per-frame error 12 * log2(method / pYIN), in semitones (an octave error reads +-12)
  dmed st    offset of the method's median from pYIN's median (the figure tests/rvc/test_f0_accuracy.py checks)
  octave %   share of those frames with |error| > 6 semitones (nearer an octave than the right pitch)
and over all frames: voicing %, the share where the method and pYIN agree on voiced/unvoiced; RTF, seconds of
compute per second of audio (after one warm-up call, so model loading is not counted; best of --repeats).

The last line printed is one JSON object with every figure.

Run: .venv/bin/python benchmarks/f0_bench.py [--methods pm,harvest,...] [--device cpu|cuda] [--repeats 1]
     (about 5 minutes on 2 CPU cores, most of it full CREPE)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
import torch

from services.rvc_service.engines import F0Estimator
from services.rvc_service.engines.world import FRAME_MS, WORK_SR, praat_f0
from tests.signals import glottal_vowel, synthesize_joe

REPO = Path(__file__).resolve().parents[1]
SR = 16000
HOP = 160
GRID_S = HOP / SR
PRAAT = "world-praat"  # world.praat_f0 at 24 kHz, the WORLD voice's default tracker
METHODS = ["pm", "harvest", "dio", "crepe-tiny", "crepe", "fcpe", "rmvpe", PRAAT]
VOWELS = {"vowel80": 80.0, "vowel110": 110.0, "vowel220": 220.0, "vowel300": 300.0}
SIGNALS = [*VOWELS, "joe", "libri"]
JOE_TEXT = (
    "The quick brown fox jumps over the lazy dog. This is a second sentence to measure pitch. "
    "Your order shipped this morning and should arrive on Thursday before noon."
)
LIBRI_CLIP = "examples/hubert/tests/6313-76958-0021.flac"  # inside the fairseq package


@dataclass
class Row:
    method: str
    signal: str
    frames: int  # voiced by both the method and pYIN
    err_st: float
    dmed_st: float
    octave_rate: float
    voicing_agreement: float
    rtf: float


# ---- signals ------------------------------------------------------------------------------------------------------


def load_signal(name: str, workdir: Path, vowel_seconds: float) -> tuple[np.ndarray, int]:
    """(float32 mono, its native rate)."""
    if name in VOWELS:
        return glottal_vowel(VOWELS[name], 48000, vowel_seconds), 48000
    if name == "joe":
        path = workdir / "joe.wav"
        synthesize_joe(path, JOE_TEXT)
    elif name == "libri":
        spec = find_spec("fairseq")
        if spec is None or spec.origin is None:
            raise FileNotFoundError("fairseq-fixed is not installed")
        path = Path(spec.origin).parent / LIBRI_CLIP
    else:
        raise KeyError(name)
    x, rate = sf.read(path, dtype="float32")
    return (x if x.ndim == 1 else x.mean(axis=1)), rate


def resampled(x: np.ndarray, rate: int, to: int) -> np.ndarray:
    return x if rate == to else soxr.resample(x, rate, to).astype(np.float32)


# ---- tracks on one grid ----------------------------------------------------------------------------------------


def pyin_track(x16: np.ndarray) -> np.ndarray:
    """pYIN F0 per 10 ms frame of 16 kHz audio (frame k centred on k * 10 ms), 0 where unvoiced."""
    import librosa

    f0, voiced, _ = librosa.pyin(x16, fmin=50, fmax=600, sr=SR, frame_length=1024, hop_length=HOP)
    return np.where(voiced & np.isfinite(f0), f0, 0.0)


def on_grid(track: np.ndarray, period_s: float, times: np.ndarray) -> np.ndarray:
    """A track with frame k at k * period_s, read at `times`: linear between two voiced frames, unvoiced when either
    neighbour is (a frame that falls exactly on a time needs only itself voiced)."""
    pos = times / period_s
    lo = np.clip(np.floor(pos + 1e-9).astype(np.int64), 0, len(track) - 1)
    hi = np.clip(lo + 1, 0, len(track) - 1)
    frac = np.clip(pos - lo, 0.0, 1.0)
    a, b = track[lo], track[hi]
    exact = frac < 1e-6
    voiced = (pos < len(track)) & (a > 0) & (exact | (b > 0))
    return np.where(voiced, np.where(exact, a, a * (1 - frac) + b * frac), 0.0)


def compare(track: np.ndarray, reference: np.ndarray) -> tuple[int, float, float, float, float]:
    """(frames voiced by both, median per-frame error st, offset of medians st, octave-error rate, voicing
    agreement); `track` and `reference` on the same grid."""
    voiced, ref_voiced = track > 0, reference > 0
    both = voiced & ref_voiced
    agreement = float(np.mean(voiced == ref_voiced))
    if not both.any():
        return 0, float("nan"), float("nan"), float("nan"), agreement
    err = 12 * np.log2(track[both] / reference[both])
    dmed = 12 * np.log2(np.median(track[both]) / np.median(reference[both]))
    return int(both.sum()), float(np.median(err)), float(dmed), float(np.mean(np.abs(err) > 6)), agreement


def tracker(estimator: F0Estimator, method: str) -> tuple[Callable[[np.ndarray, np.ndarray], np.ndarray], float]:
    """(track(audio at 16 kHz, the same at 24 kHz), its frame period in seconds) for one method."""
    if method == PRAAT:
        return (lambda _x16, x24: praat_f0(x24.astype(np.float64))), FRAME_MS / 1000
    return (lambda x16, _x24: estimator.estimate(x16, method)), GRID_S


def finite(value: float) -> float | None:
    """JSON has no NaN."""
    return round(value, 4) if np.isfinite(value) else None


def timed(run: Callable[[], np.ndarray], repeats: int) -> tuple[np.ndarray, float]:
    best, out = float("inf"), np.zeros(0)
    for _ in range(repeats):
        started = time.perf_counter()
        out = run()
        best = min(best, time.perf_counter() - started)
    return out, best


# ---- main ----------------------------------------------------------------------------------------------------------


def main() -> int:
    warnings.filterwarnings("ignore")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated, from: " + ", ".join(METHODS))
    parser.add_argument("--signals", default=",".join(SIGNALS), help="comma-separated, from: " + ", ".join(SIGNALS))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per method and signal (best counts)")
    parser.add_argument("--vowel-seconds", type=float, default=2.0)
    default_models = Path(os.environ.get("RVC_MODELS_DIR", REPO / "services" / "rvc_service" / "models"))
    parser.add_argument("--rmvpe", type=Path, default=default_models / "rmvpe.pt", help="RMVPE weights")
    args = parser.parse_args()
    methods = [m for m in args.methods.split(",") if m]
    names = [s for s in args.signals.split(",") if s]
    started = time.perf_counter()

    estimator = F0Estimator(args.device, args.rmvpe)
    skipped = {m: f"no weights at {args.rmvpe}" for m in methods if m not in (*estimator.available, PRAAT)}
    methods = [m for m in methods if m not in skipped]
    print(
        f"device={args.device} torch={torch.__version__} threads={torch.get_num_threads()} cores={os.cpu_count()} "
        f"reference=librosa.pyin (16 kHz, 10 ms hop)"
    )
    for method, why in skipped.items():
        print(f"{method}: skipped ({why})")

    signals: dict[str, tuple[np.ndarray, int]] = {}
    with tempfile.TemporaryDirectory() as workdir:
        for name in names:
            try:
                signals[name] = load_signal(name, Path(workdir), args.vowel_seconds)
            except (OSError, subprocess.CalledProcessError) as exc:
                skipped[name] = str(exc)
                print(f"{name}: skipped ({exc})")

    references: dict[str, dict[str, float]] = {}
    rows: list[Row] = []
    header = ("method", "signal", "seconds", "frames", "err st", "dmed st", "octave %", "voicing %", "RTF")
    table = []
    for name, (x, rate) in signals.items():
        x16, x24 = resampled(x, rate, SR), resampled(x, rate, WORK_SR)
        seconds = len(x16) / SR
        reference, pyin_s = timed(lambda x16=x16: pyin_track(x16), 1)
        times = np.arange(len(reference)) * GRID_S
        voiced = reference[reference > 0]
        references[name] = {
            "seconds": round(seconds, 3),
            "median_hz": round(float(np.median(voiced)), 1) if voiced.size else None,
            "voiced": round(float(np.mean(reference > 0)), 3),
            "pyin_rtf": round(pyin_s / seconds, 3),
        }
        for method in methods:
            run, period = tracker(estimator, method)
            run(x16[:SR], x24[:WORK_SR])  # warm-up: model loading and first-call costs stay out of the RTF
            track, spent = timed(lambda run=run, x16=x16, x24=x24: run(x16, x24), args.repeats)
            frames, err, dmed, octave, agreement = compare(on_grid(track, period, times), reference)
            row = Row(method, name, frames, err, dmed, octave, agreement, spent / seconds)
            rows.append(row)
            table.append(
                f"{method:<12} {name:<9} {seconds:>7.2f} {frames:>6} {err:>+7.2f} {dmed:>+7.2f} "
                f"{100 * octave:>8.1f} {100 * agreement:>9.1f} {row.rtf:>8.3f}"
            )

    print("\nreference (pYIN): " + ", ".join(f"{n} {r['median_hz']} Hz" for n, r in references.items()))
    widths = (7, 6, 7, 7, 8, 9, 8)
    print(f"{header[0]:<12} {header[1]:<9} " + " ".join(f"{h:>{w}}" for h, w in zip(header[2:], widths, strict=True)))
    for line in table:
        print(line)
    figures = {
        "device": args.device,
        "threads": torch.get_num_threads(),
        "references": references,
        "rows": [{k: (finite(v) if isinstance(v, float) else v) for k, v in asdict(r).items()} for r in rows],
        "skipped": skipped,
        "total_s": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(figures, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
