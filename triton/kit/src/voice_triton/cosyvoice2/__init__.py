"""CosyVoice2 engine code: LLM, flow matching and HiFT vocoder with the published parameter names.

This package's __init__ imports nothing heavy (no torch), like the registry and the catalog, so both may read
`LAYOUT`; the engines are in the submodules (`llm`, `flow`, `hift`).
"""

from __future__ import annotations

# The published checkpoint layout lives with the backend's registry entry; re-exported for the catalog and the tests.
from voice_triton.registry import COSYVOICE2_LAYOUT as LAYOUT

__all__ = ["LAYOUT"]
