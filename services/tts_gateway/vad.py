"""Voice-activity detectors for the endpointer (services/tts_gateway/endpointing.py): speech probability per frame.

* `SileroVad`: Silero VAD (MIT), the ONNX model that ships inside the `silero-vad` wheel, run with ONNX Runtime. The
  gateway has no torch: the wheel is installed without its dependencies (its metadata requires torch for the
  package's own wrapper, which is never imported here; only the packaged .onnx file is read). 16 kHz, 512-sample
  frames (32 ms) with the 64 samples of context the model was trained with, recurrent state carried across frames:
  one instance per stream.
* `EnergyVad`: the fallback when the package or ONNX Runtime is missing (`--vad energy`): frame level in dBFS
  against a threshold, mapped linearly to 0..1 over +-6 dB. Fine for clean audio (TTS output, close microphones);
  it takes loud noise for speech.
"""

from __future__ import annotations

import importlib.util
import math
import threading
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

VAD_RATE_HZ = 16000
FRAME_SAMPLES = 512
_CONTEXT = 64


def silero_model_path() -> Path:
    """The packaged ONNX file, found without importing the package (its __init__ imports torch)."""
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the silero-vad package is not installed (pip install --no-deps silero-vad==6.2.3)")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "silero_vad.onnx"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the silero-vad package")
    return path


class SileroModel:
    """The ONNX session, shared by every stream (ONNX Runtime sessions are thread-safe for run())."""

    _lock = threading.Lock()
    _shared: SileroModel | None = None

    def __init__(self, path: Path | None = None) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(
            str(path or silero_model_path()), options, providers=["CPUExecutionProvider"]
        )

    @classmethod
    def shared(cls) -> SileroModel:
        with cls._lock:
            if cls._shared is None:
                cls._shared = cls()
            return cls._shared


class SileroVad:
    """Speech probability of consecutive 512-sample frames at 16 kHz, for one stream."""

    frame_samples = FRAME_SAMPLES

    def __init__(self, model: SileroModel | None = None) -> None:
        self.model = model or SileroModel.shared()
        self._state = np.zeros((2, 1, 128), dtype=np.float32)
        self._context = np.zeros((1, _CONTEXT), dtype=np.float32)
        self._sr = np.array(VAD_RATE_HZ, dtype=np.int64)

    def __call__(self, frame: NDArray[Any]) -> float:
        x = np.asarray(frame, dtype=np.float32).reshape(1, -1)
        if x.shape[1] != FRAME_SAMPLES:
            raise ValueError(f"SileroVad takes frames of {FRAME_SAMPLES} samples, got {x.shape[1]}")
        x = np.concatenate([self._context, x], axis=1)
        out, self._state = self.model.session.run(None, {"input": x, "state": self._state, "sr": self._sr})
        self._context = x[:, -_CONTEXT:]
        return float(out.reshape(-1)[0])


class EnergyVad:
    """Frame level against a threshold: 0 at threshold-6 dB, 1 at threshold+6 dB."""

    frame_samples = FRAME_SAMPLES

    def __init__(self, threshold_dbfs: float = -40.0) -> None:
        self.threshold_dbfs = threshold_dbfs

    def __call__(self, frame: NDArray[Any]) -> float:
        x = np.asarray(frame, dtype=np.float64)
        level = math.sqrt(float(np.mean(x * x))) if x.size else 0.0
        db = 20.0 * math.log10(level) if level > 1e-10 else -200.0
        return min(1.0, max(0.0, (db - self.threshold_dbfs + 6.0) / 12.0))


def make_vad(kind: str) -> SileroVad | EnergyVad:
    if kind == "silero":
        return SileroVad()
    if kind == "energy":
        return EnergyVad()
    raise ValueError(f"unknown VAD {kind!r}: use silero or energy")
