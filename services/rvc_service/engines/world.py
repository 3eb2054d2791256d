"""The embedded default voice: WORLD analysis/resynthesis (pyworld) with pitch and formant shifting.

Needs no downloaded weights, so conversion always works. Pitch shift scales F0; formant shift warps each frame's
spectral envelope along frequency (up for positive semitones), which changes perceived vocal-tract size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import soxr

from services.rvc_service.world_dsp import WORK_SR, fit_len, run_shift_voice

from .params import ConversionParams, InvalidParameters


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
        return fit_len(y, n_out), rate

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
        return run_shift_voice(
            x,
            params.f0_method == "harvest",
            params.pitch_shift_semitones + self.pitch_offset,
            params.formant_shift_semitones + self.formant_offset,
        )


BUILTIN_VOICES: dict[str, WorldVoice] = {
    "world-default": WorldVoice("world-default"),
    # A lighter timbre: a few semitones up with formants raised less than pitch, so it sounds brighter, not chipmunk.
    "world-bright": WorldVoice("world-bright", pitch_offset=4.0, formant_offset=2.0),
}
