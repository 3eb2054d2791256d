"""Voice-conversion engines: RVC (content encoder + F0 + retrieval + NSF synthesizer) and WORLD (built-in voices).

Both expose the same shape (VoiceModel): `validate(params)`, `convert(audio, sr, params, out_sr=, seed=)` and
`convert_block(audio, sr, params, context=, out_sr=, seed=, should_stop=)`, plus description attributes for ModelInfo.
Nothing here imports gRPC; errors are the pure exceptions in `params`, and a conversion whose `should_stop()` turns
true raises `services.rvc_service.cancel.JobCancelled` at its next check (inside a block, not only between blocks).
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray

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
    """What the worker pool relies on, for either engine. The description attributes are read-only (a frozen
    dataclass's fields, class attributes or properties)."""

    @property
    def name(self) -> str: ...
    @property
    def engine(self) -> str: ...  # "rvc" | "world"
    @property
    def version(self) -> str: ...
    @property
    def sample_rate(self) -> int: ...
    @property
    def uses_f0(self) -> bool: ...
    @property
    def has_index(self) -> bool: ...
    @property
    def speaker_count(self) -> int: ...
    @property
    def memory_bytes(self) -> int: ...

    def validate(self, params: ConversionParams) -> ConversionParams: ...

    def convert(
        self,
        audio: NDArray[np.floating[Any]],
        sr: int,
        params: ConversionParams,
        *,
        out_sr: int | None = None,
        seed: int | None = None,
        should_stop: ShouldStop | None = None,
    ) -> tuple[NDArray[np.float32], int]: ...

    def convert_block(
        self,
        audio: NDArray[np.floating[Any]],
        sr: int,
        params: ConversionParams,
        *,
        context: int,
        out_sr: int | None = None,
        seed: int | None = None,
        should_stop: ShouldStop | None = None,
    ) -> NDArray[np.float32]: ...


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
