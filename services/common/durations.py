"""Seconds <-> google.protobuf.Duration, the one conversion every service and test uses.

Rounded to the nanosecond, so a duration computed from sample counts (samples / rate) survives the round trip.
"""

from __future__ import annotations

from google.protobuf import duration_pb2


def duration_from_seconds(seconds: float) -> duration_pb2.Duration:
    duration = duration_pb2.Duration()
    duration.FromNanoseconds(round(seconds * 1e9))
    return duration


def seconds_from_duration(duration: duration_pb2.Duration) -> float:
    return duration.ToNanoseconds() / 1e9
