"""WORLD analysis/resynthesis with pitch and formant shift, optionally in worker processes.

pyworld holds the GIL for its whole computation, so conversion threads cannot overlap on the CPU. The service can
therefore run this DSP in a small pool of spawned processes (`start_process_pool`); worker threads then only wait on
a future (GIL released) and N streams use N cores. This module imports only numpy and pyworld so a spawned worker
starts in well under a second (the engines package would pull in torch and transformers).
"""

from __future__ import annotations

import multiprocessing
import signal
import threading
from concurrent.futures import ProcessPoolExecutor

import numpy as np

WORK_SR = 24000
FRAME_MS = 5.0

_pool: ProcessPoolExecutor | None = None
_pool_lock = threading.Lock()


def warp_envelope(sp: np.ndarray, ratio: float) -> np.ndarray:
    """Envelope frames [t, bins] warped so the content at bin k moves to bin k * ratio (ratio > 1 raises formants)."""
    if ratio == 1.0:
        return sp
    bins = np.arange(sp.shape[1], dtype=np.float64)
    src = bins / ratio  # where each output bin reads from
    lo = np.clip(np.floor(src).astype(np.int64), 0, sp.shape[1] - 1)
    hi = np.clip(lo + 1, 0, sp.shape[1] - 1)
    frac = np.clip(src - lo, 0.0, 1.0)
    # Interpolate in the log domain: envelopes span many decades and linear interpolation would bias peaks.
    log_sp = np.log(np.maximum(sp, 1e-16))
    out = log_sp[:, lo] * (1 - frac) + log_sp[:, hi] * frac
    return np.exp(out)


def fit_len(x: np.ndarray, n: int) -> np.ndarray:
    if len(x) >= n:
        return x[:n]
    return np.concatenate([x, np.zeros(n - len(x), dtype=x.dtype)])


def shift_voice(x: np.ndarray, use_harvest: bool, pitch_semitones: float, formant_semitones: float) -> np.ndarray:
    """Analyse `x` (float32 at WORK_SR), shift F0 and warp the envelope, resynthesize to the same length."""
    import pyworld

    if len(x) < WORK_SR * FRAME_MS / 1000 * 4:  # too short for any analysis frame
        return np.zeros_like(x)
    xd = x.astype(np.float64)
    analyse = pyworld.harvest if use_harvest else pyworld.dio
    f0, t = analyse(xd, WORK_SR, f0_floor=50.0, f0_ceil=1100.0, frame_period=FRAME_MS)
    f0 = pyworld.stonemask(xd, f0, t, WORK_SR)
    sp = pyworld.cheaptrick(xd, f0, t, WORK_SR)
    ap = pyworld.d4c(xd, f0, t, WORK_SR)
    f0 = f0 * 2.0 ** (pitch_semitones / 12.0)
    sp = warp_envelope(sp, 2.0 ** (formant_semitones / 12.0))
    y = pyworld.synthesize(f0, np.ascontiguousarray(sp), ap, WORK_SR, FRAME_MS)
    peak = float(np.abs(y).max()) / 0.99 if len(y) else 0.0
    if peak > 1:
        y = y / peak
    return fit_len(y.astype(np.float32), len(x))


def run_shift_voice(x: np.ndarray, use_harvest: bool, pitch_semitones: float, formant_semitones: float) -> np.ndarray:
    """shift_voice in the process pool when one is running, else in the calling thread."""
    pool = _pool
    if pool is None:
        return shift_voice(x, use_harvest, pitch_semitones, formant_semitones)
    return pool.submit(shift_voice, x, use_harvest, pitch_semitones, formant_semitones).result()


def start_process_pool(processes: int) -> None:
    """Run WORLD DSP in `processes` spawned workers (spawn, not fork: the service has gRPC and torch threads)."""
    global _pool
    with _pool_lock:
        if _pool is not None or processes < 1:
            return
        _pool = ProcessPoolExecutor(
            max_workers=processes, mp_context=multiprocessing.get_context("spawn"), initializer=_ignore_stop_signals
        )
        # Start the workers now so the first request does not pay for interpreter start-up.
        list(_pool.map(_warm_up, range(processes)))


def stop_process_pool() -> None:
    global _pool
    with _pool_lock:
        pool, _pool = _pool, None
    if pool is not None:
        pool.shutdown(wait=True, cancel_futures=True)


def _ignore_stop_signals() -> None:
    # Ctrl-C reaches the whole process group; the service drains in-flight streams on SIGINT/SIGTERM, so its DSP
    # workers must keep serving until the service shuts the pool down itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _warm_up(_: int) -> None:
    import pyworld  # noqa: F401
