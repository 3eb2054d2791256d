"""Conversion settings and the pure-Python errors the engines raise (the servicer maps them to gRPC status codes)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

# Names accepted for ConversionParams.f0_method; "" means the service default (rmvpe if installed, else pm).
F0_METHODS: tuple[str, ...] = ("pm", "harvest", "dio", "crepe", "crepe-tiny", "fcpe", "rmvpe")


class EngineError(Exception):
    """Base class of every error the engines and the registry raise on purpose."""


class InvalidParameters(EngineError, ValueError):
    """One or more settings are out of range (INVALID_ARGUMENT with a BadRequest field violation per entry)."""

    def __init__(self, violations: list[tuple[str, str]]) -> None:
        self.violations = violations
        super().__init__("; ".join(f"{field}: {msg}" for field, msg in violations))


class MethodUnavailable(EngineError):
    """The requested F0 method cannot run here, e.g. rmvpe without its weight file (FAILED_PRECONDITION)."""


class ModelLoadError(EngineError):
    """A model file exists but cannot be loaded: corrupt, wrong format, no content encoder (FAILED_PRECONDITION)."""


_PATH_RE = re.compile(r"(?:[A-Za-z]:)?(?:[/\\][^\s/\\'\"`:,;()\[\]{}<>]+)+[/\\]?")


def public_reason(exc: BaseException | str, limit: int = 160) -> str:
    """An exception's first line fit for a client: absolute paths reduced to their last component, length capped.
    Status messages must never show where the server keeps its files."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    text = _PATH_RE.sub(lambda m: m.group(0).rstrip("/\\").replace("\\", "/").rsplit("/", 1)[-1], text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass(frozen=True, slots=True)
class ConversionParams:
    """Mirror of voice.v1.ConversionSettings (minus the model name) with the contract's defaults."""

    pitch_shift_semitones: float = 0.0
    f0_method: str = ""
    index_rate: float = 0.75
    protect: float = 0.33
    rms_mix_rate: float = 0.25
    filter_radius: int = 3
    speaker_id: int = 0
    formant_shift_semitones: float = 0.0

    def validate(self, speaker_count: int | None = None) -> ConversionParams:
        """Raise InvalidParameters listing every out-of-range field; returns self so calls can chain."""
        v: list[tuple[str, str]] = []

        def check_range(name: str, value: float, lo: float, hi: float) -> None:
            if not (isinstance(value, int | float) and math.isfinite(value) and lo <= value <= hi):
                v.append((name, f"must be between {lo:g} and {hi:g}, got {value!r}"))

        check_range("pitch_shift_semitones", self.pitch_shift_semitones, -24, 24)
        check_range("index_rate", self.index_rate, 0, 1)
        check_range("protect", self.protect, 0, 0.5)
        check_range("rms_mix_rate", self.rms_mix_rate, 0, 1)
        check_range("formant_shift_semitones", self.formant_shift_semitones, -12, 12)
        if not isinstance(self.filter_radius, int) or not 0 <= self.filter_radius <= 7:
            v.append(("filter_radius", f"must be an integer between 0 and 7, got {self.filter_radius!r}"))
        if self.f0_method not in ("", *F0_METHODS):
            v.append(("f0_method", f"must be one of {', '.join(F0_METHODS)} (or empty for the default)"))
        top = (speaker_count - 1) if speaker_count else None
        if not isinstance(self.speaker_id, int) or self.speaker_id < 0 or (top is not None and self.speaker_id > top):
            rng = f"0 and {top}" if top is not None else "0 and (speakers-1)"
            v.append(("speaker_id", f"must be between {rng}, got {self.speaker_id!r}"))
        if v:
            raise InvalidParameters(v)
        return self
