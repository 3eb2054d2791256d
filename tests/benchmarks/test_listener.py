"""The player model of benchmarks/listener.py against arrival schedules computed by hand."""

from __future__ import annotations

import math

import pytest

from benchmarks.listener import Arrival, describe, percentile, play, summarize


def test_on_time_stream_has_no_underrun() -> None:
    # 0.5 s chunks, each arriving 0.1 s before the previous one has been played: never dry.
    arrivals = [Arrival(0.2 + 0.5 * i, 0.5) for i in range(4)]
    report = play(0.0, arrivals)
    assert report.underruns == 0
    assert report.total_stall_s == 0.0
    assert report.worst_stall_s == 0.0
    assert report.ttfa_s == pytest.approx(0.2)
    # last audio at 1.7 s for 2.0 s of audio
    assert report.rtf == pytest.approx(1.7 / 2.0)


def test_one_gap_of_0_3_s_gives_one_underrun_of_0_2_s() -> None:
    # 1 s of audio at t=0 plays from 0.1 to 1.1; the next chunk comes 0.3 s after real time (1.3 s): dry for 0.2 s.
    report = play(0.0, [Arrival(0.0, 1.0), Arrival(1.3, 1.0), Arrival(2.0, 1.0)])
    assert report.underruns == 1
    assert report.total_stall_s == pytest.approx(0.2)
    assert report.worst_stall_s == pytest.approx(0.2)
    # playback resumed at 1.3, so the third chunk (2.0 < 2.3) is on time


def test_preroll_absorbs_lateness_up_to_its_length() -> None:
    late_by_preroll = [Arrival(0.0, 1.0), Arrival(1.1, 1.0)]
    assert play(0.0, late_by_preroll).underruns == 0  # exactly when the buffer runs dry: on time
    assert play(0.0, late_by_preroll, preroll_s=0.05).underruns == 1
    assert play(0.0, late_by_preroll, preroll_s=0.05).total_stall_s == pytest.approx(0.05)


def test_a_slow_stream_underruns_on_every_late_chunk() -> None:
    # 0.5 s of audio every 0.8 s (RTF 1.6): dry 0.2 s before chunk 2, then 0.3 s before each later one.
    arrivals = [Arrival(0.8 * (i + 1), 0.5) for i in range(5)]
    report = play(0.0, arrivals)
    assert report.underruns == 4
    assert report.stalls == pytest.approx([0.2, 0.3, 0.3, 0.3])
    assert report.total_stall_s == pytest.approx(1.1)
    assert report.worst_stall_s == pytest.approx(0.3)
    assert report.ttfa_s == pytest.approx(0.8)
    assert report.rtf == pytest.approx(4.0 / 2.5)


def test_rebuffering_lengthens_stalls_and_can_hide_later_ones() -> None:
    arrivals = [Arrival(0.0, 1.0), Arrival(1.3, 0.5), Arrival(1.85, 1.0)]
    plain = play(0.0, arrivals)
    # resume at 1.3, dry at 1.8, third chunk at 1.85: second underrun of 0.05 s
    assert plain.stalls == pytest.approx([0.2, 0.05])
    rebuffered = play(0.0, arrivals, rebuffer_s=0.1)
    # resume at 1.4, dry at 1.9: the third chunk is on time
    assert rebuffered.stalls == pytest.approx([0.3])


def test_empty_chunks_are_ignored_and_ttfa_counts_from_request_start() -> None:
    arrivals = [Arrival(0.05, 0.0), Arrival(0.4, 1.0), Arrival(1.2, 1.0), Arrival(1.3, 0.0)]
    report = play(0.1, arrivals)
    assert report.ttfa_s == pytest.approx(0.3)
    assert report.audio_s == pytest.approx(2.0)
    assert report.wall_s == pytest.approx(1.1)  # last audio at 1.2, the empty final chunk does not count
    assert report.underruns == 0


@pytest.mark.parametrize(
    "arrivals",
    [
        [],
        [Arrival(0.1, 0.0)],
        [Arrival(0.5, 1.0), Arrival(0.4, 1.0)],
        [Arrival(-0.1, 1.0)],
    ],
    ids=["no-chunks", "no-audio", "out-of-order", "before-request"],
)
def test_bad_schedules_are_rejected(arrivals: list[Arrival]) -> None:
    with pytest.raises(ValueError):
        play(0.0, arrivals)


def test_summary_folds_streams() -> None:
    good = play(0.0, [Arrival(0.2, 1.0), Arrival(0.9, 1.0)])
    bad = play(0.0, [Arrival(0.0, 1.0), Arrival(1.3, 1.0), Arrival(2.8, 1.0)])
    summary = summarize([good, bad, good])
    assert summary.streams == 3
    assert summary.streams_with_underrun == 1
    assert summary.underruns == bad.underruns == 2
    assert summary.worst_stall_s == pytest.approx(0.5)  # resumed at 1.3, dry at 2.3, next at 2.8
    assert summary.ttfa_p50 == pytest.approx(0.2)


def test_percentile_matches_linear_interpolation() -> None:
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == pytest.approx(2.5)
    assert percentile([5.0], 99) == 5.0
    assert percentile([0.0, 10.0], 99) == pytest.approx(9.9)
    assert math.isnan(percentile([], 50))


def test_model_statement_names_the_preroll() -> None:
    assert "100 ms after the first audio" in describe()
    assert "as soon as it arrives" in describe()
    assert "250 ms after it arrives" in describe(rebuffer_s=0.25)
