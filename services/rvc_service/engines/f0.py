"""Pitch (F0) estimation at RVC's frame rate (16 kHz input, 10 ms hop, 50-1100 Hz) and its coarse quantisation.

Every estimator returns exactly `n_frames` values in Hz (0 = unvoiced), so the pipeline can index F0 and content
features by the same frame number whatever the method.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from numpy.typing import NDArray

from ..cancel import ShouldStop, check_stop
from .params import F0_METHODS, MethodUnavailable, public_reason

SR = 16000
HOP = 160
F0_MIN = 50.0
F0_MAX = 1100.0
# F0 trackers run over sub-blocks of F0_CORE_S seconds, each seeing F0_MARGIN_S of audio on both sides, so that no
# uninterruptible call grows with the input (a cancel is seen between sub-blocks). The margin covers the trackers'
# analysis windows (a few periods of the 50 Hz floor), so the stitched contour matches a whole-signal analysis but
# for rare frames; inputs up to core + 2 margins (every streaming window) are analysed in one call as before.
F0_CORE_S = 1.0
F0_MARGIN_S = 0.25
_MEL_MIN = 1127.0 * np.log(1 + F0_MIN / 700)
_MEL_MAX = 1127.0 * np.log(1 + F0_MAX / 700)


def shift_f0(f0: NDArray[np.floating[Any]], semitones: float) -> NDArray[np.float32]:
    return (f0 * float(2.0 ** (semitones / 12.0))).astype(np.float32)


def coarse_f0(f0: NDArray[np.floating[Any]]) -> NDArray[np.int64]:
    """Mel-scale quantisation to the pitch-embedding indexes 1..255 (1 = unvoiced), as RVC trains with."""
    mel = 1127.0 * np.log(1 + f0 / 700.0)
    voiced = mel > 0
    mel[voiced] = (mel[voiced] - _MEL_MIN) * 254 / (_MEL_MAX - _MEL_MIN) + 1
    coarse: NDArray[np.int64] = np.clip(np.rint(mel), 1, 255).astype(np.int64)
    return coarse


def track_in_blocks(
    analyse: Callable[[NDArray[np.float64]], NDArray[np.float64]],
    x: NDArray[np.float64],
    hop: int,
    frame_rate: float,
    should_stop: ShouldStop | None,
) -> NDArray[np.float64]:
    """`analyse(excerpt)` -> F0 per frame (frame k at sample k * hop, len(excerpt) // hop + 1 frames, as pyworld's
    trackers return; `frame_rate` frames per second), run over overlapping sub-blocks and stitched; checks
    `should_stop` before each sub-block."""
    n_frames = len(x) // hop + 1
    core = max(1, round(F0_CORE_S * frame_rate))
    margin = round(F0_MARGIN_S * frame_rate)
    if n_frames <= core + 2 * margin:
        check_stop(should_stop)
        return np.asarray(analyse(x))[:n_frames]
    f0 = np.zeros(n_frames)
    for a in range(0, n_frames, core):
        check_stop(should_stop)
        b = min(n_frames, a + core)
        lo, hi = max(0, a - margin), min(n_frames, b + margin)
        part = np.asarray(analyse(x[lo * hop : hi * hop]))
        got = part[a - lo : a - lo + (b - a)]
        f0[a : a + len(got)] = got
    return f0


def _fit(f0: npt.ArrayLike, n: int, center: bool = False) -> NDArray[np.float32]:
    """Trim or zero-pad to n frames; `center` splits the padding across both ends (Praat drops edge frames)."""
    f0_32 = np.asarray(f0, dtype=np.float32)
    if len(f0_32) >= n:
        return f0_32[:n]
    missing = n - len(f0_32)
    left = (missing + 1) // 2 if center else 0
    return np.pad(f0_32, (left, missing - left))


class F0Estimator:
    """All F0 methods on one torch device. Neural models load on first use and are shared by threads afterwards."""

    def __init__(self, device: torch.device | str = "cpu", rmvpe_path: str | Path | None = None) -> None:
        self.device = torch.device(device)
        self.rmvpe_path = Path(rmvpe_path) if rmvpe_path else None
        self._models: dict[str, Any] = {}
        self._lock = threading.Lock()

    @property
    def available(self) -> tuple[str, ...]:
        return tuple(m for m in F0_METHODS if m != "rmvpe" or self.has_rmvpe)

    @property
    def has_rmvpe(self) -> bool:
        return self.rmvpe_path is not None and self.rmvpe_path.is_file()

    def default_method(self) -> str:
        """The contract's F0_METHOD_UNSPECIFIED: rmvpe when its weights are installed, otherwise pm (Praat's
        autocorrelation). Not harvest: on Piper joe it marks half the frames voiced that pYIN does not and jumps an
        octave on some takes; pm keeps the octave on every test signal at a 100th of harvest's cost
        (benchmarks/f0_bench.py)."""
        return "rmvpe" if self.has_rmvpe else "pm"

    def estimate(
        self,
        audio: NDArray[np.floating[Any]],
        method: str,
        n_frames: int | None = None,
        filter_radius: int = 3,
        *,
        should_stop: ShouldStop | None = None,
    ) -> NDArray[np.float32]:
        """F0 in Hz of 16 kHz mono float audio, one value per 10 ms frame (n_frames defaults to len // 160).
        `should_stop` is checked before the estimator runs and between the batches of the neural ones."""
        n = len(audio) // HOP if n_frames is None else n_frames
        method = method or self.default_method()
        x = np.ascontiguousarray(audio, dtype=np.float32)
        check_stop(should_stop)
        if method == "pm":
            return self._pm(x, n)
        if method in ("harvest", "dio"):
            return self._world(x, n, method, filter_radius, should_stop)
        if method in ("crepe", "crepe-tiny"):
            return self._crepe(x, n, "tiny" if method == "crepe-tiny" else "full", should_stop)
        if method == "fcpe":
            return self._fcpe(x, n)
        if method == "rmvpe":
            return _fit(self._model("rmvpe").infer(x), n)
        raise MethodUnavailable(f"unknown F0 method {method!r}")

    # -------------------------------------------------------------------------------------------------- methods

    @staticmethod
    def _pm(x: NDArray[np.float32], n: int) -> NDArray[np.float32]:
        import parselmouth

        pitch = parselmouth.Sound(x.astype(np.float64), SR).to_pitch_ac(
            time_step=HOP / SR, voicing_threshold=0.6, pitch_floor=F0_MIN, pitch_ceiling=F0_MAX
        )
        return _fit(pitch.selected_array["frequency"], n, center=True)

    @staticmethod
    def _world(
        x: NDArray[np.float32], n: int, method: str, filter_radius: int, should_stop: ShouldStop | None = None
    ) -> NDArray[np.float32]:
        import pyworld
        from scipy.signal import medfilt

        xd = x.astype(np.float64)
        fn = pyworld.harvest if method == "harvest" else pyworld.dio
        f0 = track_in_blocks(
            lambda part: fn(part, SR, f0_floor=F0_MIN, f0_ceil=F0_MAX, frame_period=1000 * HOP / SR)[0],
            xd,
            HOP,
            SR / HOP,
            should_stop,
        )
        t = np.arange(len(f0)) * (HOP / SR)
        # Refine the coarse estimate, as RVC does; per frame, so slices of frames give the same result.
        refined = []
        for a in range(0, len(f0), 200):
            check_stop(should_stop)
            refined.append(pyworld.stonemask(xd, f0[a : a + 200], t[a : a + 200], SR))
        f0 = np.concatenate(refined)
        if method == "harvest" and filter_radius > 0:
            f0 = medfilt(f0, 2 * filter_radius + 1)  # removes single-frame octave jumps and breath blips
        return _fit(f0, n)

    def _crepe(
        self, x: NDArray[np.float32], n: int, capacity: str, should_stop: ShouldStop | None = None
    ) -> NDArray[np.float32]:
        import torchcrepe

        model = self._model("crepe-" + capacity)
        audio = torch.from_numpy(x)[None].to(self.device)
        probs = []
        with torch.inference_mode():
            # The model is per frame, so the batch only bounds the time between cancel checks: on CPU 160 ms of
            # frames (~80 ms of CPU for crepe-tiny on one core); a GPU gets big batches (launches are asynchronous).
            batch = 512 if self.device.type == "cuda" else 16
            for frames in torchcrepe.preprocess(audio, SR, HOP, batch, self.device, pad=True):
                check_stop(should_stop)
                probs.append(model(frames, embed=False))
            p = torch.cat(probs).reshape(1, -1, torchcrepe.PITCH_BINS).transpose(1, 2)
            # weighted_argmax rather than torchcrepe's default Viterbi: Viterbi runs through librosa/numba, whose JIT
            # costs ~40 s on first use; RVC's median/mean filters below do the smoothing instead.
            f0, periodicity = torchcrepe.postprocess(
                p, F0_MIN, F0_MAX, torchcrepe.decode.weighted_argmax, return_periodicity=True
            )
            periodicity = torchcrepe.filter.median(periodicity, 3)
            f0 = torchcrepe.filter.mean(f0, 3)
            f0[periodicity < 0.1] = 0  # RVC's voicing threshold on CREPE's confidence
        return _fit(f0[0].float().cpu().numpy(), n)

    def _fcpe(self, x: NDArray[np.float32], n: int) -> NDArray[np.float32]:
        model = self._model("fcpe")
        audio = torch.from_numpy(x)[None, :, None].to(self.device)
        with torch.inference_mode():
            f0 = model.infer(
                audio,
                sr=SR,
                decoder_mode="local_argmax",
                threshold=0.006,
                f0_min=F0_MIN,
                f0_max=F0_MAX,
                interp_uv=False,
                output_interp_target_length=n,
            )
        return _fit(f0.squeeze().float().cpu().numpy().reshape(-1), n)

    # ------------------------------------------------------------------------------------------------- models

    def _model(self, name: str) -> Any:
        model = self._models.get(name)
        if model is not None:
            return model
        with self._lock:
            if name not in self._models:
                self._models[name] = self._load(name)
            return self._models[name]

    def _load(self, name: str) -> Any:
        if name.startswith("crepe-"):
            import torchcrepe

            capacity = name.split("-", 1)[1]
            # A private instance rather than torchcrepe's module-global model, so devices and threads don't collide.
            model = torchcrepe.Crepe(capacity)
            weights = Path(torchcrepe.__file__).parent / "assets" / f"{capacity}.pth"
            model.load_state_dict(torch.load(str(weights), map_location="cpu", weights_only=True))
            return model.eval().to(self.device)
        if name == "fcpe":
            from torchfcpe import spawn_bundled_infer_model

            return spawn_bundled_infer_model(device=str(self.device))
        if name == "rmvpe":
            path = self.rmvpe_path
            if not self.has_rmvpe or path is None:  # has_rmvpe implies a path
                raise MethodUnavailable("rmvpe needs its weight file (rmvpe.pt in the models directory)")
            from .rmvpe import Rmvpe

            try:
                return Rmvpe(path, self.device)
            except Exception as exc:  # a corrupt file makes the method unavailable, not the service
                raise MethodUnavailable(f"rmvpe weights {path.name!r} do not load ({public_reason(exc)})") from exc
        raise MethodUnavailable(f"unknown F0 method {name!r}")
