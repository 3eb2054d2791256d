"""The embedded default voice: WORLD analysis/resynthesis (pyworld) with pitch and formant shifting.

Needs no downloaded weights, so conversion always works. Pitch shift scales F0; formant shift warps each frame's
spectral envelope along frequency (up for positive semitones), which changes perceived vocal-tract size.

Cancellation: a conversion takes a `should_stop()` callable and checks it between the WORLD steps (F0, refinement,
envelope, aperiodicity, warp, synthesis) and between sub-blocks of each step: F0 is tracked in overlapping
sub-blocks, the per-frame steps (StoneMask, CheapTrick, D4C) run over slices of frames, and long syntheses run in
phase-continuous pieces. No uninterruptible call grows with the input, so a long clip stops as quickly after a cancel
as a short streaming block. Streaming windows (~1 s) are analysed and synthesized exactly as one call would.

Streaming (`convert_block`): F0 is tracked over the whole window, left context included (Praat's path search uses
it), but the per-frame steps, the warp and the synthesis run only from a short lead-in before the block, since the
context's output is discarded; this roughly halves the WORLD work per window at production block settings.

Aperiodicity: D4C is most of WORLD's cost, and aperiodicity varies slowly, so it is analysed on every other frame and
interpolated (in dB) between them (`aperiodicity`): ~20% less CPU per streamed second, and an output that differs
from every-frame D4C far less than WORLD's own output does between inputs shifted by one 5 ms frame.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import soxr
from numpy.typing import NDArray

from ..cancel import ShouldStop, check_stop
from .f0 import track_in_blocks
from .params import ConversionParams, InvalidParameters

WORK_SR = 24000
FRAME_MS = 5.0
# Frames per pyworld call (5 ms frames): keeps each uninterruptible call to tens of ms on one core. The per-frame
# steps give the same frames on any slice or subset of frames (D4C up to its own 1e-12 dither); synthesis pieces
# join in phase.
FRAMES_PER_CALL = 50
SYNTH_FRAMES_PER_CALL = 200
F0_FLOOR = 50.0  # Hz: below the lowest speaking voices
F0_CEIL = 1100.0  # Hz: above a child's shout


def warp_envelope(sp: NDArray[np.float64], ratio: float) -> NDArray[np.float64]:
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
    warped: NDArray[np.float64] = np.exp(out)
    return warped


@dataclass(frozen=True, slots=True)
class WorldVoice:
    """A built-in voice; its own pitch/formant offsets add to the request's."""

    name: str = "world-default"
    pitch_offset: float = 0.0
    formant_offset: float = 0.0

    engine = "world"
    sample_rate = WORK_SR
    version = ""
    uses_f0 = True
    has_index = False
    speaker_count = 1
    memory_bytes = 0

    def validate(self, params: ConversionParams) -> ConversionParams:
        return params.validate(self.speaker_count)

    def convert(
        self,
        audio: NDArray[np.floating[Any]],
        sr: int,
        params: ConversionParams,
        *,
        out_sr: int | None = None,
        seed: int | None = None,
        should_stop: ShouldStop | None = None,
    ) -> tuple[NDArray[np.float32], int]:
        """Convert a whole utterance; returns (float32 mono, rate), rate = out_sr or 24000. `seed` is accepted for
        API symmetry (WORLD is deterministic). Raises JobCancelled soon after `should_stop()` turns true."""
        return self._convert(audio, sr, params, out_sr, should_stop)

    def convert_block(
        self,
        audio: NDArray[np.floating[Any]],
        sr: int,
        params: ConversionParams,
        *,
        context: int,
        out_sr: int | None = None,
        seed: int | None = None,
        should_stop: ShouldStop | None = None,
    ) -> NDArray[np.float32]:
        """Streaming step with the same contract as RvcModel.convert_block: returns only the block after `context`.
        F0 is tracked over the whole window; the per-frame analysis and the synthesis cover the block only (from a
        short lead-in before it), so the context's own output, which would be discarded, is never computed."""
        if not 0 <= context <= len(audio):
            raise InvalidParameters([("context", f"must be between 0 and {len(audio)}")])
        y, rate = self._convert(audio, sr, params, out_sr, should_stop, context)
        return y[: round((len(audio) - context) * rate / sr)]

    def _convert(
        self,
        audio: NDArray[np.floating[Any]],
        sr: int,
        params: ConversionParams,
        out_sr: int | None,
        should_stop: ShouldStop | None,
        context: int = 0,
    ) -> tuple[NDArray[np.float32], int]:
        """The conversion of audio[context:] (input samples) analysed with audio[:context] as history."""
        check_stop(should_stop)
        self.validate(params)
        if sr <= 0:
            raise InvalidParameters([("sample_rate_hz", "must be positive")])
        rate = out_sr or self.sample_rate
        x = np.asarray(audio, dtype=np.float32)
        if x.ndim == 2:
            x = x.mean(axis=1)
        keep = round(context * rate / sr)  # first output sample wanted
        n_out = round(len(x) * rate / sr) - keep
        xw = x if sr == WORK_SR else soxr.resample(x, sr, WORK_SR).astype(np.float32)
        work_from, out_from = _synthesis_start(keep, rate)
        y = self._process(xw, params, should_stop, keep_from=work_from)
        check_stop(should_stop)
        if rate != WORK_SR and len(y):
            y = soxr.resample(y, WORK_SR, rate).astype(np.float32)
        return _fit_len(y[keep - out_from :], n_out), rate

    def _process(
        self,
        x: NDArray[np.float32],
        params: ConversionParams,
        should_stop: ShouldStop | None = None,
        keep_from: int = 0,
    ) -> NDArray[np.float32]:
        """The conversion of x[keep_from:] (len(x) - keep_from samples, peak-limited on that part), with F0 tracked
        over all of x. The per-frame steps and the synthesis start _LEAD_IN_FRAMES before keep_from: WORLD's
        synthesis puts its first pulse one period after its first sample and each pulse's response lasts about half
        an FFT frame after it, so the output warms up over that span and the lead-in keeps it out of x[keep_from:]."""
        import pyworld

        if keep_from >= len(x) or len(x) < WORK_SR * FRAME_MS / 1000 * 4:  # nothing wanted, or no analysis frame
            return np.zeros(max(0, len(x) - keep_from), dtype=x.dtype)
        xd = x.astype(np.float64)
        hop = round(WORK_SR * FRAME_MS / 1000)
        f0, t = track_f0(xd, params.f0_method, should_stop)
        first = max(0, keep_from // hop - _LEAD_IN_FRAMES)  # synthesis output starts at sample first * hop
        f0, t = f0[first:], t[first:]
        f0 = per_frames(lambda a, b: pyworld.stonemask(xd, f0[a:b], t[a:b], WORK_SR), len(f0), should_stop)
        sp = per_frames(lambda a, b: pyworld.cheaptrick(xd, f0[a:b], t[a:b], WORK_SR), len(f0), should_stop)
        ap = aperiodicity(xd, f0, t, should_stop)
        f0 = f0 * 2.0 ** ((params.pitch_shift_semitones + self.pitch_offset) / 12.0)
        ratio = 2.0 ** ((params.formant_shift_semitones + self.formant_offset) / 12.0)
        sp = per_frames(lambda a, b: warp_envelope(sp[a:b], ratio), len(sp), should_stop)
        y = synthesize(f0, sp, ap, should_stop)[keep_from - first * hop :]
        peak = float(np.abs(y).max()) / 0.99 if len(y) else 0.0
        if peak > 1:
            y = y / peak
        return _fit_len(y.astype(np.float32), len(x) - keep_from)


# Frames analysed and synthesized before the first kept sample (60 ms, 1440 samples at 24 kHz): the first pulse
# comes one period after synthesis starts (up to 960 samples at 25 Hz, the 50 Hz F0 floor an octave down) and its
# response reaches fft_size / 2 = 512 samples past it, so kept samples get every pulse they would in a longer call.
_LEAD_IN_FRAMES = 12
# Work-rate samples synthesized before the first kept sample when the output is resampled: soxr's filter settles
# within ~50 output samples of a cut, so the kept part resamples as it would within the whole window.
_RESAMPLE_MARGIN = 240


def _synthesis_start(keep: int, rate: int) -> tuple[int, int]:
    """(work-rate sample, output sample) where a conversion whose output is wanted from output sample `keep` starts
    synthesizing: at least _RESAMPLE_MARGIN work samples before it when resampled, on a sample that maps to a whole
    output sample (so the resampled piece lines up with the whole window's output exactly)."""
    if rate == WORK_SR:
        return keep, keep
    g = math.gcd(WORK_SR, rate)
    k = max(0, math.floor((keep * WORK_SR / rate - _RESAMPLE_MARGIN) / (WORK_SR // g)))
    return k * (WORK_SR // g), k * (rate // g)


def per_frames(
    step: Callable[[int, int], NDArray[np.float64]],
    n_frames: int,
    should_stop: ShouldStop | None,
    size: int = FRAMES_PER_CALL,
) -> NDArray[np.float64]:
    """Run a per-frame WORLD step over frame slices [a, b), checking for a cancel before each slice. Exact: these
    steps compute every frame from the signal around its own time stamp only."""
    parts = []
    for a in range(0, n_frames, size):
        check_stop(should_stop)
        parts.append(step(a, min(n_frames, a + size)))
    return np.concatenate(parts) if len(parts) > 1 else parts[0]


# D4C's value for a frame with F0 0: every bin fully aperiodic, less its safeguard (it analyses no such frame).
_UNVOICED_AP = 1.0 - 1e-12


def aperiodicity(
    xd: NDArray[np.float64], f0: NDArray[np.float64], t: NDArray[np.float64], should_stop: ShouldStop | None
) -> NDArray[np.float64]:
    """D4C aperiodicity at every frame, analysed on about every other one. D4C is most of WORLD's analysis cost
    (~60 of ~85 ms per streaming window) and aperiodicity varies slowly over 10 ms, so the even frames and the last
    (nothing is extrapolated) are analysed, and an odd frame between two of them is their geometric mean: the
    interpolation is linear in dB, as D4C itself interpolates its band values along frequency, since the values span
    decades (voiced low bands sit near -60 dB) and a linear mean would be pulled to the noisier side. An odd frame with
    F0 0 takes D4C's unvoiced value; a voiced one next to an unvoiced frame (a voicing edge) is analysed."""
    import pyworld

    n = len(f0)
    voiced = f0 > 0
    analysed = np.zeros(n, dtype=bool)
    analysed[::2] = True
    analysed[-1] = True
    edge = np.zeros(n, dtype=bool)
    edge[1:-1] = voiced[1:-1] & ~(voiced[:-2] & voiced[2:])
    analysed |= edge
    idx = np.flatnonzero(analysed)
    ap = np.empty((n, pyworld.get_cheaptrick_fft_size(WORK_SR) // 2 + 1))
    ap[idx] = per_frames(lambda a, b: pyworld.d4c(xd, f0[idx[a:b]], t[idx[a:b]], WORK_SR), len(idx), should_stop)
    odd = np.flatnonzero(~analysed)  # 0 < odd < n - 1, both neighbours analysed
    ap[odd] = np.sqrt(ap[odd - 1] * ap[odd + 1])
    ap[odd[~voiced[odd]]] = _UNVOICED_AP
    return ap


def praat_f0(x: NDArray[np.float64], sr: int = WORK_SR, frame_ms: float = FRAME_MS) -> NDArray[np.float64]:
    """F0 per frame (frame k at k * frame_ms, len(x) // hop + 1 frames, as pyworld's trackers) by Praat's
    autocorrelation method (parselmouth), 0 where unvoiced. Its path search with octave costs keeps low voices in
    their octave: on Piper joe (87-95 Hz by Praat and YIN) DIO reads 169 Hz, and resynthesis baked the octave in."""
    import parselmouth

    hop = round(sr * frame_ms / 1000)
    n = len(x) // hop + 1
    pitch = parselmouth.Sound(np.asarray(x, dtype=np.float64), sr).to_pitch_ac(
        time_step=frame_ms / 1000, pitch_floor=F0_FLOOR, pitch_ceiling=F0_CEIL
    )
    times, values = pitch.xs(), pitch.selected_array["frequency"]
    if not len(times):
        return np.zeros(n)
    t = np.arange(n) * (frame_ms / 1000)
    nearest = np.clip(np.rint((t - times[0]) / (frame_ms / 1000)).astype(np.int64), 0, len(times) - 1)
    inside = (t >= times[0] - frame_ms / 2000) & (t <= times[-1] + frame_ms / 2000)
    return np.where(inside, values[nearest], 0.0)


def track_f0(
    xd: NDArray[np.float64], method: str, should_stop: ShouldStop | None
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """F0 at 5 ms frames, tracked in sub-blocks (Harvest costs ~0.1 s per second of audio, too long to run uncut on a
    long clip). Default (and pm): Praat's autocorrelation, the estimator that keeps octaves; harvest and dio on
    request. The neural methods belong to the RVC engines; asked of this voice they fall back to the default."""
    import pyworld

    if method in ("harvest", "dio"):
        tracker = pyworld.harvest if method == "harvest" else pyworld.dio

        def analyse(x: NDArray[np.float64]) -> NDArray[np.float64]:
            f0: NDArray[np.float64] = tracker(x, WORK_SR, f0_floor=F0_FLOOR, f0_ceil=F0_CEIL, frame_period=FRAME_MS)[0]
            return f0
    else:
        analyse = praat_f0
    f0 = track_in_blocks(
        analyse,
        xd,
        round(WORK_SR * FRAME_MS / 1000),
        1000 / FRAME_MS,
        should_stop,
    )
    return f0, np.arange(len(f0)) * (FRAME_MS / 1000)


def synthesize(
    f0: NDArray[np.float64], sp: NDArray[np.float64], ap: NDArray[np.float64], should_stop: ShouldStop | None
) -> NDArray[np.float64]:
    """WORLD synthesis; long inputs in pieces of SYNTH_FRAMES_PER_CALL frames with a cancel check before each.

    WORLD places a glottal pulse wherever the running phase of the (interpolated) F0 contour wraps, counting from
    the first sample, so a piece synthesized on its own would put its pulses elsewhere than its neighbour does.
    Each piece therefore starts with a few lead-in frames whose F0 brings the running phase to the previous piece's
    phase at the first shared frame: the two pieces then pulse in step through their overlap (wider than a pulse
    response) and meet in a short crossfade, which only blends WORLD's noise excitation (a fresh draw per call)."""
    import pyworld

    n = len(f0)
    if n <= SYNTH_FRAMES_PER_CALL * 3 // 2:  # every streaming window: one call, as before
        check_stop(should_stop)
        whole: NDArray[np.float64] = pyworld.synthesize(
            f0, np.ascontiguousarray(sp), np.ascontiguousarray(ap), WORK_SR, FRAME_MS
        )
        return whole
    hop = round(WORK_SR * FRAME_MS / 1000)
    lowest = WORK_SR // ((sp.shape[1] - 1) * 2) + 1.0  # WORLD treats F0 below fs / fft_size + 1 as unvoiced
    f0 = np.where(f0 < lowest, 0.0, f0)
    y = np.zeros(n * hop)  # pyworld's output length
    half = _SYNTH_FADE // 2
    prev_phase, prev_lo = np.zeros(0), 0  # running phase of the previous piece (its own lead-in removed)
    for a in range(0, n, SYNTH_FRAMES_PER_CALL):
        check_stop(should_stop)
        b = min(n, a + SYNTH_FRAMES_PER_CALL)
        lo, hi = max(0, a - _SYNTH_MARGIN), min(n, b + _SYNTH_MARGIN)
        seg_f0, seg_sp, seg_ap = f0[lo:hi], sp[lo:hi], ap[lo:hi]
        lead = None
        if lo > 0:
            lead = (_lead_in_f0(seg_f0[:2], hop, prev_phase[(lo - prev_lo) * hop]), _LEAD_FRAMES)
            seg_f0 = np.concatenate((np.full(_LEAD_FRAMES, lead[0]), seg_f0))
            seg_sp = np.concatenate((np.repeat(seg_sp[:1], _LEAD_FRAMES, axis=0), seg_sp))
            seg_ap = np.concatenate((np.repeat(seg_ap[:1], _LEAD_FRAMES, axis=0), seg_ap))
        skip = _LEAD_FRAMES * hop if lead else 0
        if b < n:
            prev_phase, prev_lo = _world_phase(f0[lo:hi], hop, lead)[skip:], lo
        piece = pyworld.synthesize(
            np.ascontiguousarray(seg_f0), np.ascontiguousarray(seg_sp), np.ascontiguousarray(seg_ap), WORK_SR, FRAME_MS
        )[skip:]  # piece[0] is sample lo * hop
        start = a * hop - half if a > 0 else 0
        end = b * hop + half if b < n else len(y)
        part = piece[start - lo * hop : end - lo * hop].copy()
        if a > 0:
            part[: 2 * half] *= _SYNTH_RAMP
        if b < n:
            part[-2 * half :] *= _SYNTH_RAMP[::-1]
        y[start:end] += part
    return y


# Chunked synthesis: margins (frames) beyond each piece, wider than a pulse response (fft_size / 2 samples) plus the
# crossfade; lead-in frames whose F0 (100..160 Hz) sets the running phase; a 10 ms linear crossfade.
_SYNTH_MARGIN = 10
_LEAD_FRAMES = 4
_SYNTH_FADE = 240
_SYNTH_RAMP = (np.arange(_SYNTH_FADE) + 0.5) / _SYNTH_FADE


def _world_phase(f0: NDArray[np.float64], hop: int, lead: tuple[float, int] | None = None) -> NDArray[np.float64]:
    """WORLD's running pulse phase per output sample, computed the way its GetTimeBase does (same float operations,
    so the pulse positions agree to the sample): F0 and voicing linearly interpolated between frames on a time axis
    in seconds (plus one extrapolated frame), voicing thresholded at > 0.5, unvoiced samples counted at 500 Hz."""
    frames = f0 if lead is None else np.concatenate((np.full(lead[1], lead[0]), f0))
    n = len(frames)
    coarse_f0 = np.append(frames, frames[-1] * 2 - frames[-2])
    vuv = (frames != 0).astype(np.float64)
    coarse_vuv = np.append(vuv, vuv[-1] * 2 - vuv[-2])
    coarse_t = np.arange(n + 1) * (FRAME_MS / 1000.0)
    t = np.arange(n * hop) / float(WORK_SR)
    k = np.clip(np.searchsorted(coarse_t, t, side="right"), 1, n)  # coarse_t[k-1] <= t < coarse_t[k] (histc)
    s = (t - coarse_t[k - 1]) / (coarse_t[k] - coarse_t[k - 1])
    f0i = coarse_f0[k - 1] + s * (coarse_f0[k] - coarse_f0[k - 1])
    voiced = coarse_vuv[k - 1] + s * (coarse_vuv[k] - coarse_vuv[k - 1]) > 0.5
    return np.cumsum(2.0 * np.pi * np.where(voiced, f0i, 500.0) / WORK_SR)


def _lead_in_f0(first: NDArray[np.float64], hop: int, target: float) -> float:
    """A constant F0 for the lead-in frames such that the running phase at the first real frame equals `target`
    modulo 2 pi. That phase is linear in the lead-in F0 (for any voiced value), so two evaluations solve it."""
    join = _LEAD_FRAMES * hop

    def phase_at(c: float) -> float:
        return float(_world_phase(first, hop, (c, _LEAD_FRAMES))[join])

    p0, p1 = phase_at(100.0), phase_at(101.0)
    return 100.0 + float(np.mod(target - p0, 2.0 * np.pi)) / (p1 - p0)


BUILTIN_VOICES: dict[str, WorldVoice] = {
    "world-default": WorldVoice("world-default"),
    # A lighter timbre: a few semitones up with formants raised less than pitch, so it sounds brighter, not chipmunk.
    "world-bright": WorldVoice("world-bright", pitch_offset=4.0, formant_offset=2.0),
}


def _fit_len(x: NDArray[np.float32], n: int) -> NDArray[np.float32]:
    if len(x) >= n:
        return x[:n]
    return np.concatenate([x, np.zeros(n - len(x), dtype=x.dtype)])
