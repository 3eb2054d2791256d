"""The release both services report (GetServiceInfo, logs, the build-info metric): pyproject.toml is its one home."""

from __future__ import annotations

from importlib import metadata

VERSION: str = metadata.version("voice-serving")
