"""Where a model's weights are: its `checkpoint_dir` parameter, checked against the backend's registered layout."""

from __future__ import annotations

from pathlib import Path

from voice_triton import registry
from voice_triton.params import ConfigError, ModelParams


def checkpoint_dir(params: ModelParams, backend: str) -> Path:
    """The checkpoint directory of `backend`, complete by its layout; otherwise a ConfigError naming what is missing
    (so the failed load says which file to fetch, not a stack trace from deep inside a loader)."""
    entry = registry.get(backend)
    raw = params.text("checkpoint_dir")
    if not raw:
        raise ConfigError(
            f"{params.model_name}: no {entry.title} checkpoint: set parameter checkpoint_dir "
            f"(triton/launch.py --checkpoint {backend}=DIR)"
        )
    root = Path(raw)
    missing = entry.missing(root)
    if missing:
        raise ConfigError(
            f"{params.model_name}: {root} is not a complete {entry.title} checkpoint; missing: {', '.join(missing)}"
        )
    return root
