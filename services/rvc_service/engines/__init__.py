"""Voice-conversion engines: RVC (content encoder + F0 + retrieval + NSF synthesizer) and WORLD (built-in voices).

Both expose the same shape (VoiceModel): `validate(params)`, `convert(audio, sr, params, out_sr=, seed=)` and
`convert_block(audio, sr, params, context=, out_sr=, seed=, should_stop=)`, plus description attributes for ModelInfo.
Nothing here imports gRPC; errors are the pure exceptions in `params`, and a conversion whose `should_stop()` turns
true raises `services.rvc_service.cancel.JobCancelled` at its next check (inside a block, not only between blocks).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from ..cancel import ShouldStop
from .content import ContentEncoder
from .f0 import F0Estimator, coarse_f0, shift_f0
from .index import RetrievalIndex
from .params import (
    F0_METHODS,
    ConversionParams,
    EngineError,
    InvalidParameters,
    MethodUnavailable,
    ModelLoadError,
)
from .rvc import PipelineConfig, RvcModel
from .world import BUILTIN_VOICES, WorldVoice


@runtime_checkable
class VoiceModel(Protocol):
    """What the worker pool relies on, for either engine."""

    name: str
    engine: str  # "rvc" | "world"
    version: str
    sample_rate: int
    uses_f0: bool
    has_index: bool
    speaker_count: int
    memory_bytes: int

    def validate(self, params: ConversionParams) -> ConversionParams: ...

    def convert(
        self,
        audio: np.ndarray,
        sr: int,
        params: ConversionParams,
        *,
        out_sr: int | None = None,
        seed: int | None = None,
        should_stop: ShouldStop | None = None,
    ) -> tuple[np.ndarray, int]: ...

    def convert_block(
        self,
        audio: np.ndarray,
        sr: int,
        params: ConversionParams,
        *,
        context: int,
        out_sr: int | None = None,
        seed: int | None = None,
        should_stop: ShouldStop | None = None,
    ) -> np.ndarray: ...


__all__ = [
    "BUILTIN_VOICES",
    "F0_METHODS",
    "ContentEncoder",
    "ConversionParams",
    "EngineError",
    "F0Estimator",
    "InvalidParameters",
    "MethodUnavailable",
    "ModelLoadError",
    "PipelineConfig",
    "RetrievalIndex",
    "RvcModel",
    "VoiceModel",
    "WorldVoice",
    "coarse_f0",
    "shift_f0",
]
