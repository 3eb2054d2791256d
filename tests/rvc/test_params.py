from __future__ import annotations

import pytest

from services.rvc_service.engines import ConversionParams, InvalidParameters


def test_defaults_are_valid() -> None:
    p = ConversionParams()
    assert p.validate(speaker_count=1) is p
    assert (p.index_rate, p.protect, p.rms_mix_rate, p.filter_radius) == (0.75, 0.33, 0.25, 3)


def test_every_violation_is_reported_with_its_range() -> None:
    bad = ConversionParams(
        pitch_shift_semitones=30,
        f0_method="yin",
        index_rate=1.5,
        protect=0.6,
        rms_mix_rate=-0.1,
        filter_radius=9,
        speaker_id=3,
        formant_shift_semitones=-13,
    )
    with pytest.raises(InvalidParameters) as err:
        bad.validate(speaker_count=2)
    fields = dict(err.value.violations)
    assert set(fields) == {
        "pitch_shift_semitones",
        "f0_method",
        "index_rate",
        "protect",
        "rms_mix_rate",
        "filter_radius",
        "speaker_id",
        "formant_shift_semitones",
    }
    assert "-24 and 24" in fields["pitch_shift_semitones"]
    assert "0 and 1" in fields["speaker_id"]
    assert isinstance(err.value, ValueError)


def test_nan_is_rejected() -> None:
    with pytest.raises(InvalidParameters):
        ConversionParams(index_rate=float("nan")).validate()
