"""The one declaration of voice.v1.ConversionSettings' numeric fields: type, range, default and meaning.

The gateway's request validation, the conversion service's request mapping and the engines' parameter checks all
read this table; a test holds the ranges and defaults written in proto/voice/v1/conversion.proto's comments to it,
so the documentation cannot drift from what the services enforce. The F0 method names the engines use are derived
from the proto enum here too (F0_METHOD_CREPE_TINY -> "crepe-tiny").

One bound is not a constant: `speaker_id` must be below the model's speaker count, which only the conversion service
knows. Its row says so (`high` None, `model_bound` naming the limit): the gateway can check the low end only, the
engine checks both ends once it has the model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from voice.v1 import conversion_pb2


@dataclass(frozen=True)
class SettingSpec:
    """One optional numeric field of ConversionSettings."""

    name: str
    type: type[float] | type[int]
    low: float
    high: float | None  # None: the model sets the upper bound (see model_bound)
    default: float
    doc: str
    model_bound: str = ""  # what the upper bound is when the model sets it, as the contract writes it

    @property
    def range_text(self) -> str:
        """The range as the contract writes it: "-24.0..24.0", "0..7", "0..(speakers-1)"."""
        high = f"({self.model_bound})" if self.high is None else f"{self.high}"
        return f"{self.low}..{high}"

    def admits(self, value: float, *, model_high: float | None = None) -> bool:
        """Whether `value` is a finite number of the right type within range. `model_high` is the model's upper
        bound for a field whose row has none; without it only the low end can be checked."""
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if self.type is int and not isinstance(value, int):
            return False
        high = self.high if self.high is not None else model_high
        return math.isfinite(value) and self.low <= value and (high is None or value <= high)


# In proto field order. Keep the comments of conversion.proto in step (tests/rvc_service/test_conversion_settings.py).
CONVERSION_SETTINGS: tuple[SettingSpec, ...] = (
    SettingSpec("pitch_shift_semitones", float, -24.0, 24.0, 0.0, "Pitch shift in semitones."),
    SettingSpec("index_rate", float, 0.0, 1.0, 0.75, "Weight of retrieved index features versus the input features."),
    SettingSpec("protect", float, 0.0, 0.5, 0.33, "Protection of voiceless consonants and breaths; 0.5 turns it off."),
    SettingSpec("rms_mix_rate", float, 0.0, 1.0, 0.25, "How much of the output loudness envelope is kept."),
    SettingSpec("filter_radius", int, 0, 7, 3, "Median-filter radius applied to harvest F0."),
    SettingSpec(
        "speaker_id",
        int,
        0,
        None,
        0,
        "Speaker inside a multi-speaker model; only the conversion service knows the model's speaker count.",
        model_bound="speakers-1",
    ),
    SettingSpec("formant_shift_semitones", float, -12.0, 12.0, 0.0, "Formant shift in semitones (world engine)."),
)
SETTINGS_BY_NAME: dict[str, SettingSpec] = {spec.name: spec for spec in CONVERSION_SETTINGS}


def fields_set(settings: conversion_pb2.ConversionSettings) -> dict[str, float]:
    """The numeric fields the message sets (proto3 `optional`: an explicit 0 counts as set)."""
    return {spec.name: getattr(settings, spec.name) for spec in CONVERSION_SETTINGS if settings.HasField(spec.name)}


def f0_method_short_name(enum_name: str) -> str:
    """F0_METHOD_CREPE_TINY -> "crepe-tiny": the name the engines, the voices file and the CLI use."""
    return enum_name.removeprefix("F0_METHOD_").lower().replace("_", "-")


# F0Method value -> engine method name; UNSPECIFIED is "" (the service's default method).
F0_METHOD_NAMES: dict[int, str] = {
    value.number: "" if value.number == conversion_pb2.F0_METHOD_UNSPECIFIED else f0_method_short_name(value.name)
    for value in conversion_pb2.F0Method.DESCRIPTOR.values
}
# The engines' method names in enum order ("pm", "harvest", ...), without the default's "".
F0_METHODS: tuple[str, ...] = tuple(name for name in F0_METHOD_NAMES.values() if name)


def f0_method_value(name: str) -> int | None:
    """The F0Method value for a name as people write it ("crepe-tiny", "CREPE_TINY", "F0_METHOD_CREPE_TINY",
    "unspecified"); None when there is no such method."""
    wanted = f0_method_short_name(name.strip().upper().replace("-", "_"))
    for value in conversion_pb2.F0Method.DESCRIPTOR.values:
        if f0_method_short_name(value.name) == wanted:
            number: int = value.number  # the descriptor stubs leave EnumValueDescriptor.number untyped
            return number
    return None
