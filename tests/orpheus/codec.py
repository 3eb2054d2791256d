"""The Orpheus codec module (triton/orpheus_repo/orpheus_tts/1/orpheus_codec.py), loaded by path (triton/ is no
package)."""

from __future__ import annotations

import importlib.util
import sys

from tests.fixtures.triton_server import REPO_ROOT

CODEC_PATH = REPO_ROOT / "triton" / "orpheus_repo" / "orpheus_tts" / "1" / "orpheus_codec.py"
_spec = importlib.util.spec_from_file_location("orpheus_codec", CODEC_PATH)
assert _spec is not None and _spec.loader is not None
orpheus_codec = importlib.util.module_from_spec(_spec)
sys.modules["orpheus_codec"] = orpheus_codec  # dataclasses look their module up while the class is built
_spec.loader.exec_module(orpheus_codec)

# The tiny-checkpoint tool holds the published SNAC 24 kHz configuration (stdlib imports only at module level).
TOOL_PATH = REPO_ROOT / "triton" / "orpheus_tiny_checkpoint.py"
_tool_spec = importlib.util.spec_from_file_location("orpheus_tiny_checkpoint", TOOL_PATH)
assert _tool_spec is not None and _tool_spec.loader is not None
orpheus_tiny_checkpoint = importlib.util.module_from_spec(_tool_spec)
_tool_spec.loader.exec_module(orpheus_tiny_checkpoint)
