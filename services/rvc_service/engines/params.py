"""Conversion settings and the pure-Python errors the engines raise (the servicer maps them to gRPC status codes)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from services.common.conversion_settings import CONVERSION_SETTINGS, SETTINGS_BY_NAME, SettingSpec
from services.common.conversion_settings import F0_METHODS as F0_METHODS  # re-exported: engines import it from here

# F0_METHODS, the names accepted for ConversionParams.f0_method, comes from the proto enum; "" means the service
# default (rmvpe if installed, else pm).


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


def _default(name: str) -> Any:
    return SETTINGS_BY_NAME[name].default


def _range_problem(spec: SettingSpec, value: Any, speaker_count: int | None) -> str | None:
    """Why `value` is out of the field's range (the engines' wording), or None. The model-bound upper end
    (speakers-1) is checked when the model's speaker count is known."""
    model_high = speaker_count - 1 if speaker_count and spec.high is None else None
    if spec.admits(value, model_high=model_high):
        return None
    if spec.high is None:
        top = model_high if model_high is not None else f"({spec.model_bound})"
        return f"must be between {spec.low:g} and {top}, got {value!r}"
    kind = "an integer " if spec.type is int else ""
    return f"must be {kind}between {spec.low:g} and {spec.high:g}, got {value!r}"


@dataclass(frozen=True, slots=True)
class ConversionParams:
    """Mirror of voice.v1.ConversionSettings (minus the model name); defaults and ranges come from the shared table
    (services/common/conversion_settings.py)."""

    pitch_shift_semitones: float = _default("pitch_shift_semitones")
    f0_method: str = ""
    index_rate: float = _default("index_rate")
    protect: float = _default("protect")
    rms_mix_rate: float = _default("rms_mix_rate")
    filter_radius: int = _default("filter_radius")
    speaker_id: int = _default("speaker_id")
    formant_shift_semitones: float = _default("formant_shift_semitones")

    def validate(self, speaker_count: int | None = None) -> ConversionParams:
        """Raise InvalidParameters listing every out-of-range field; returns self so calls can chain."""
        violations: list[tuple[str, str]] = []
        for spec in CONVERSION_SETTINGS:
            problem = _range_problem(spec, getattr(self, spec.name), speaker_count)
            if problem is not None:
                violations.append((spec.name, problem))
        if self.f0_method not in ("", *F0_METHODS):
            violations.append(("f0_method", f"must be one of {', '.join(F0_METHODS)} (or empty for the default)"))
        if violations:
            raise InvalidParameters(violations)
        return self
