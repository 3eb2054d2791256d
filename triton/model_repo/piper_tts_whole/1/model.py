"""Whole-waveform Piper model: the same code as piper_tts, loaded from that model's folder.

The behaviour (one response, no streaming) follows from this model's config.pbtxt, which is not decoupled. Loading by
path keeps the model repository self-contained: copy or mount the whole folder and both models work.
"""

import importlib.util
import sys
from pathlib import Path

_SHARED = Path(__file__).resolve().parents[2] / "piper_tts" / "1" / "model.py"
_spec = importlib.util.spec_from_file_location("piper_tts_shared_model", _SHARED)
if _spec is None or _spec.loader is None:
    raise ImportError(f"cannot load the shared Piper model code from {_SHARED}")
_module = importlib.util.module_from_spec(_spec)
# dataclasses look their module up in sys.modules while the module is still executing.
sys.modules[_spec.name] = _module
_spec.loader.exec_module(_module)

TritonPythonModel = _module.TritonPythonModel
