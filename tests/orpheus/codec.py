"""The Orpheus codec module (triton/model_repo/orpheus_tts/1/orpheus_codec.py), loaded by path (a model folder is no
package: the python backend puts it on sys.path)."""

from __future__ import annotations

import importlib.util
import sys

from tests.fixtures.triton_server import REPO_ROOT

# The tiny-checkpoint writer holds the published SNAC 24 kHz configuration (stdlib imports only at module level).
from voice_triton.tiny import orpheus as orpheus_tiny_checkpoint

CODEC_PATH = REPO_ROOT / "triton" / "model_repo" / "orpheus_tts" / "1" / "orpheus_codec.py"
_spec = importlib.util.spec_from_file_location("orpheus_codec", CODEC_PATH)
assert _spec is not None and _spec.loader is not None
orpheus_codec = importlib.util.module_from_spec(_spec)
sys.modules["orpheus_codec"] = orpheus_codec  # dataclasses look their module up while the class is built
_spec.loader.exec_module(orpheus_codec)

__all__ = ["CODEC_PATH", "orpheus_codec", "orpheus_tiny_checkpoint"]
