"""The ConversionSettings table (services/common/conversion_settings.py) is the one home of the settings' ranges
and defaults: the contract's comments, the proto's fields, the engines' parameters and both services' checks agree
with it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from google.protobuf.descriptor import FieldDescriptor

from services.common.conversion_settings import (
    CONVERSION_SETTINGS,
    F0_METHOD_NAMES,
    F0_METHODS,
    SETTINGS_BY_NAME,
    f0_method_value,
)
from services.rvc_service.engines import ConversionParams, InvalidParameters
from services.tts_gateway.validation import conversion_violations
from voice.v1 import conversion_pb2

CONVERSION_PROTO = Path(__file__).resolve().parents[2] / "proto" / "voice" / "v1" / "conversion.proto"
NUMBER = r"-?\d+(?:\.\d+)?"
PROTO_TYPES = {FieldDescriptor.TYPE_DOUBLE: float, FieldDescriptor.TYPE_INT32: int}


def documented_fields() -> dict[str, str]:
    """ConversionSettings field name -> its comment in conversion.proto."""
    body = CONVERSION_PROTO.read_text().split("message ConversionSettings {", 1)[1].split("\n}", 1)[0]
    fields: dict[str, str] = {}
    comment: list[str] = []
    for line in body.splitlines():
        line = line.strip()
        if line.startswith("//"):
            comment.append(line.removeprefix("//").strip())
        elif match := re.match(r"(?:optional\s+)?\w+\s+(\w+)\s*=\s*\d+;", line):
            fields[match.group(1)] = " ".join(comment)
            comment = []
    return fields


def test_the_table_covers_exactly_the_numeric_fields_of_the_proto() -> None:
    descriptor = conversion_pb2.ConversionSettings.DESCRIPTOR
    numeric = {f.name: f for f in descriptor.fields if f.name not in ("model", "f0_method")}
    assert [spec.name for spec in CONVERSION_SETTINGS] == sorted(numeric, key=lambda name: numeric[name].number)
    for spec in CONVERSION_SETTINGS:
        field = numeric[spec.name]
        assert field.has_presence, f"{spec.name}: unset must be told from 0, so the field must be optional"
        assert PROTO_TYPES[field.type] is spec.type, spec.name


@pytest.mark.parametrize("spec", CONVERSION_SETTINGS, ids=lambda spec: spec.name)
def test_proto_comments_state_the_tables_range_and_default(spec) -> None:
    comment = documented_fields()[spec.name]
    high = re.escape(f"({spec.model_bound})") if spec.high is None else NUMBER
    match = re.search(rf"({NUMBER})\.\.({high})", comment)
    assert match, f"conversion.proto documents no range for {spec.name}: {comment!r}"
    assert float(match.group(1)) == spec.low
    if spec.high is not None:
        assert float(match.group(2)) == spec.high
    default = re.search(rf"Default ({NUMBER})\b", comment)
    assert default and float(default.group(1)) == spec.default, f"{spec.name}: {comment!r}"


def test_engine_defaults_are_the_tables() -> None:
    params = ConversionParams()
    assert {spec.name: getattr(params, spec.name) for spec in CONVERSION_SETTINGS} == {
        spec.name: spec.default for spec in CONVERSION_SETTINGS
    }


@pytest.mark.parametrize("spec", CONVERSION_SETTINGS, ids=lambda spec: spec.name)
def test_gateway_and_engine_enforce_the_same_bounds(spec) -> None:
    step = 1 if spec.type is int else 0.01
    below = spec.type(spec.low - step)
    settings = conversion_pb2.ConversionSettings(**{spec.name: below})
    assert [f for f, _ in conversion_violations(settings, "conversion")] == [f"conversion.{spec.name}"]
    with pytest.raises(InvalidParameters) as err:
        ConversionParams(**{spec.name: below}).validate(speaker_count=2)
    assert [f for f, _ in err.value.violations] == [spec.name]
    if spec.high is None:
        return
    above = spec.type(spec.high + step)
    settings = conversion_pb2.ConversionSettings(**{spec.name: above})
    assert [f for f, _ in conversion_violations(settings, "conversion")] == [f"conversion.{spec.name}"]
    with pytest.raises(InvalidParameters):
        ConversionParams(**{spec.name: above}).validate(speaker_count=2)
    edges = conversion_pb2.ConversionSettings(**{spec.name: spec.high})
    assert conversion_violations(edges, "conversion") == []
    ConversionParams(**{spec.name: spec.type(spec.high)}).validate(speaker_count=2)


def test_speaker_id_upper_bound_is_the_models_to_check() -> None:
    """The gateway does not know the model's speaker count: it lets any non-negative id through, the engine
    checks it against the model and names the real range."""
    spec = SETTINGS_BY_NAME["speaker_id"]
    assert spec.high is None and spec.model_bound == "speakers-1"
    assert conversion_violations(conversion_pb2.ConversionSettings(speaker_id=50_000), "conversion") == []
    ConversionParams(speaker_id=1).validate(speaker_count=2)
    with pytest.raises(InvalidParameters, match="between 0 and 1, got 2"):
        ConversionParams(speaker_id=2).validate(speaker_count=2)
    (field, message), *_ = conversion_violations(conversion_pb2.ConversionSettings(speaker_id=-1), "conversion")
    assert (field, message) == ("conversion.speaker_id", "must be in 0..(speakers-1), got -1")


def test_f0_method_names_come_from_the_proto_enum() -> None:
    enum = conversion_pb2.F0Method.DESCRIPTOR
    assert set(F0_METHOD_NAMES) == {value.number for value in enum.values}
    assert F0_METHOD_NAMES[conversion_pb2.F0_METHOD_UNSPECIFIED] == ""
    assert F0_METHOD_NAMES[conversion_pb2.F0_METHOD_CREPE_TINY] == "crepe-tiny"
    assert F0_METHODS == ("pm", "harvest", "dio", "crepe", "crepe-tiny", "fcpe", "rmvpe")
    for spelling in ("crepe-tiny", "CREPE_TINY", "F0_METHOD_CREPE_TINY", " Crepe-Tiny "):
        assert f0_method_value(spelling) == conversion_pb2.F0_METHOD_CREPE_TINY
    assert f0_method_value("yin") is None
