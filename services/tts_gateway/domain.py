"""The gateway's shared vocabulary: synthesis modes, what a TTS model offers and the per-request model
inputs. Pure data: no gRPC, no Triton, no I/O, so every module (validation, pipeline, voices,
the upstream clients) can import it without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from services.common.contract import CLONING_MODE_NAMES

# Modes as the models' `supported_modes` parameter names them (and the `mode` oneof of the requests).
MODE_PRESET = "preset_speaker"
MODE_ZERO_SHOT = "zero_shot"
MODE_CROSS_LINGUAL = "cross_lingual"
MODE_INSTRUCT = "instruct"
MODE_VOICE_DESIGN = "voice_design"
MODES: tuple[str, ...] = (MODE_PRESET, MODE_ZERO_SHOT, MODE_CROSS_LINGUAL, MODE_INSTRUCT, MODE_VOICE_DESIGN)
CLONING_MODES: tuple[str, ...] = CLONING_MODE_NAMES  # the modes that take reference audio

# Text-input streaming: the model config parameter that declares it and the input that names a session.
TEXT_INPUT_STREAMING_PARAMETER = "text_input_streaming"
SESSION_ID_INPUT = "session_id"


@dataclass(frozen=True)
class TtsModelInfo:
    """What the gateway needs to know about one TTS model, from its Triton config."""

    name: str
    sample_rate_hz: int
    decoupled: bool
    supported_modes: tuple[str, ...]
    language_code: str
    speakers: tuple[str, ...]
    max_text_chars: int
    inputs: frozenset[str]
    reference_sample_rate_hz: int = 16000
    parameters: dict[str, str] = field(default_factory=dict)

    @property
    def streams_text_input(self) -> bool:
        """The model takes text in increments (text-input sessions): it declares the `text_input_streaming: "true"`
        parameter, is decoupled and has a `session_id` input. All three, or the gateway sends it sentences."""
        declared = self.parameters.get(TEXT_INPUT_STREAMING_PARAMETER, "").strip().lower() == "true"
        return declared and self.decoupled and SESSION_ID_INPUT in self.inputs


@dataclass
class TtsInputs:
    """Per-request model inputs besides the text."""

    speaker_id: int | None = None
    length_scale: float | None = None
    noise_scale: float | None = None
    noise_w: float | None = None
    reference_wav: NDArray[np.float32] | None = None
    reference_text: str | None = None
    instruction: str | None = None
    # Voice design (Spark-TTS): "female"/"male" and five-step levels ("very_low" .. "very_high").
    gender: str | None = None
    pitch_level: str | None = None
    speed_level: str | None = None
    seed: int | None = None  # for models that sample; None lets the model pick
