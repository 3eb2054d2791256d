"""The embedded default voice: WORLD analysis/resynthesis (pyworld) with pitch and formant shifting.

Needs no downloaded weights, so conversion always works. Pitch shift scales F0; formant shift warps each frame's
spectral envelope along frequency (up for positive semitones), which changes perceived vocal-tract size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import soxr

from .params import ConversionParams, InvalidParameters

WORK_SR = 24000
FRAME_MS = 5.0


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
        audio: np.ndarray,
        sr: int,
        params: ConversionParams,
        *,
        out_sr: int | None = None,
        seed: int | None = None,
    ) -> tuple[np.ndarray, int]:
        """Convert a whole utterance; returns (float32 mono, rate), rate = out_sr or 24000. `seed` is accepted for
        API symmetry (WORLD is deterministic)."""
        self.validate(params)
        if sr <= 0:
            raise InvalidParameters([("sample_rate_hz", "must be positive")])
        rate = out_sr or self.sample_rate
        x = np.asarray(audio, dtype=np.float32)
        if x.ndim == 2:
            x = x.mean(axis=1)
        n_out = round(len(x) * rate / sr)
        xw = x if sr == WORK_SR else soxr.resample(x, sr, WORK_SR).astype(np.float32)
        y = self._process(xw, params)
        if rate != WORK_SR and len(y):
            y = soxr.resample(y, WORK_SR, rate).astype(np.float32)
        return _fit_len(y, n_out), rate

    def convert_block(
        self,
        audio: np.ndarray,
        sr: int,
        params: ConversionParams,
        *,
        context: int,
        out_sr: int | None = None,
        seed: int | None = None,
    ) -> np.ndarray:
        """Streaming step with the same contract as RvcModel.convert_block: returns only the block after `context`."""
        if not 0 <= context <= len(audio):
            raise InvalidParameters([("context", f"must be between 0 and {len(audio)}")])
        y, rate = self.convert(audio, sr, params, out_sr=out_sr)
        return y[round(context * rate / sr) :][: round((len(audio) - context) * rate / sr)]

    def _process(self, x: np.ndarray, params: ConversionParams) -> np.ndarray:
        import pyworld

        if len(x) < WORK_SR * FRAME_MS / 1000 * 4:  # too short for any analysis frame
            return np.zeros_like(x)
        xd = x.astype(np.float64)
        analyse = pyworld.harvest if params.f0_method == "harvest" else pyworld.dio
        f0, t = analyse(xd, WORK_SR, f0_floor=50.0, f0_ceil=1100.0, frame_period=FRAME_MS)
        f0 = pyworld.stonemask(xd, f0, t, WORK_SR)
        sp = pyworld.cheaptrick(xd, f0, t, WORK_SR)
        ap = pyworld.d4c(xd, f0, t, WORK_SR)
        f0 = f0 * 2.0 ** ((params.pitch_shift_semitones + self.pitch_offset) / 12.0)
        sp = warp_envelope(sp, 2.0 ** ((params.formant_shift_semitones + self.formant_offset) / 12.0))
        y = pyworld.synthesize(f0, np.ascontiguousarray(sp), ap, WORK_SR, FRAME_MS)
        peak = float(np.abs(y).max()) / 0.99 if len(y) else 0.0
        if peak > 1:
            y = y / peak
        return _fit_len(y.astype(np.float32), len(x))


BUILTIN_VOICES: dict[str, WorldVoice] = {
    "world-default": WorldVoice("world-default"),
    # A lighter timbre: a few semitones up with formants raised less than pitch, so it sounds brighter, not chipmunk.
    "world-bright": WorldVoice("world-bright", pitch_offset=4.0, formant_offset=2.0),
}


def _fit_len(x: np.ndarray, n: int) -> np.ndarray:
    if len(x) >= n:
        return x[:n]
    return np.concatenate([x, np.zeros(n - len(x), dtype=x.dtype)])
