"""The real-time admission model on exact numbers (the estimator is pure: time is an argument)."""

from __future__ import annotations

import pytest

from services.tts_gateway.admission import RealTimeAdmission


def run_stream(admission: RealTimeAdmission, voice: str, start: float, end: float, audio_s: float) -> None:
    decision, ticket = admission.try_admit(voice, start)
    assert decision.admitted and ticket is not None
    admission.finish(ticket, end, audio_s=audio_s)


def test_unmeasured_voice_is_admitted_a_few_streams_at_a_time() -> None:
    admission = RealTimeAdmission(cold_start_streams=2)
    assert admission.try_admit("joe", 0.0)[0].admitted
    assert admission.try_admit("joe", 0.0)[0].admitted
    decision, ticket = admission.try_admit("joe", 0.0)
    assert not decision.admitted and ticket is None
    assert "not been measured" in decision.reason and decision.retry_after_s > 0
    assert admission.try_admit("other", 0.0)[0].admitted  # another voice has its own cold start
    assert admission.refusals == 1


def test_cost_is_production_time_per_audio_second_per_concurrent_stream() -> None:
    admission = RealTimeAdmission()
    # Two streams side by side for 2 s each, producing 10 s of audio each: 0.2 s per audio s with 2 streams.
    _, a = admission.try_admit("joe", 0.0)
    _, b = admission.try_admit("joe", 0.0)
    admission.finish(a, 2.0, audio_s=10.0)
    admission.finish(b, 2.0, audio_s=10.0)
    assert admission.cost["joe"] == pytest.approx(0.1)
    # target 0.8 at 0.1 per stream: 8 streams of joe alone.
    assert admission.capacity_streams("joe") == 8


def test_admits_until_one_more_stream_would_break_real_time() -> None:
    admission = RealTimeAdmission(target_load=0.8)
    admission.observe("joe", 0.1)
    admission.observe("slow", 0.25)
    tickets = [admission.try_admit("joe", 0.0)[1] for _ in range(3)]
    assert all(t is not None for t in tickets)
    # A 4th stream of "slow": 0.25 * 4 = 1.0 > 0.8: refused, and the refusal names the voice that would suffer.
    decision, ticket = admission.try_admit("slow", 0.0)
    assert not decision.admitted and ticket is None and "'slow'" in decision.reason
    # Another joe: 0.1 * 4 = 0.4: fine, up to 8 joe streams.
    for _ in range(5):
        assert admission.try_admit("joe", 0.0)[0].admitted
    assert not admission.try_admit("joe", 0.0)[0].admitted
    assert admission.predicted_load() == pytest.approx(0.8)


def test_estimate_follows_what_the_system_sustains() -> None:
    admission = RealTimeAdmission(smoothing=0.5)
    admission.observe("joe", 0.1)
    # The upstream got slower (a noisy neighbour): streams now take 0.3 s per audio s each, alone.
    for i in range(6):
        run_stream(admission, "joe", 10.0 * i, 10.0 * i + 3.0, 10.0)
    assert admission.cost["joe"] == pytest.approx(0.3, rel=0.05)
    assert admission.capacity_streams("joe") == 2


def test_short_or_failed_streams_teach_nothing_and_release_their_slot() -> None:
    admission = RealTimeAdmission(min_audio_s=0.5)
    admission.observe("joe", 0.1)
    _, ticket = admission.try_admit("joe", 0.0)
    assert ticket is not None
    admission.finish(ticket, 5.0, audio_s=0.0)
    assert admission.cost["joe"] == pytest.approx(0.1)
    assert admission.active == 0


def test_disabled_admission_admits_everything_but_still_counts() -> None:
    admission = RealTimeAdmission(enabled=False)
    admission.observe("joe", 10.0)
    for _ in range(5):
        assert admission.try_admit("joe", 0.0)[0].admitted
    assert admission.active == 5


def test_retry_hint_spreads_typical_stream_length_over_active_streams() -> None:
    admission = RealTimeAdmission()
    admission.observe("joe", 0.1)
    run_stream(admission, "joe", 0.0, 4.0, 40.0)  # 4 s for 40 s of audio alone: cost 0.1, as observed
    for _ in range(8):
        admission.try_admit("joe", 10.0)
    assert admission.retry_after_s() == pytest.approx(0.5)


def test_a_stream_counts_twice_while_it_starts_up() -> None:
    """A crowd arriving at once is let in a few at a time: each starting stream counts `startup_weight` (2) times
    for `startup_s`; once they have started, the steady capacity applies."""
    admission = RealTimeAdmission(target_load=0.8, startup_s=3.0)
    admission.observe("joe", 0.1)  # 8 streams in steady state
    admitted = [admission.try_admit("joe", 0.0)[0].admitted for _ in range(6)]
    assert admitted == [True] * 4 + [False] * 2  # 4 starting streams count as 8
    assert admission.predicted_load(now=0.0) == pytest.approx(0.8)
    assert admission.next_startup_end(1.0) == pytest.approx(2.0)
    # At 3.1 s they have started: 4 steady streams + starting ones at 2 each, up to 0.8.
    assert admission.try_admit("joe", 3.1)[0].admitted
    assert admission.try_admit("joe", 3.1)[0].admitted
    assert not admission.try_admit("joe", 3.1)[0].admitted
    assert admission.predicted_load() == pytest.approx(0.6)  # without a time: every stream once
    assert admission.next_startup_end(10.0) is None


def test_a_settled_stream_counts_once_before_its_start_up_times_out() -> None:
    admission = RealTimeAdmission(target_load=0.8, startup_s=3.0)
    admission.observe("joe", 0.1)
    tickets = [admission.try_admit("joe", 0.0)[1] for _ in range(4)]
    assert not admission.try_admit("joe", 0.5)[0].admitted
    assert tickets[0] is not None and tickets[1] is not None
    assert admission.settle(tickets[0]) and admission.settle(tickets[1])  # their listeners have audio in hand
    assert not admission.settle(tickets[1])  # once is enough
    assert admission.try_admit("joe", 0.5)[0].admitted  # 2 settled + 2 starting x 2 + the new one x 2 = 8
    assert not admission.try_admit("joe", 0.5)[0].admitted
