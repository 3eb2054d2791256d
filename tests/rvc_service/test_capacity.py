"""The admission estimator on synthetic numbers (capacity.py is pure: no service, no clock but the one given)."""

from __future__ import annotations

import threading

import pytest

from services.rvc_service.capacity import CapacityEstimator


class FakeClock:
    """Only for stream durations in the retry hint; every decision under test is independent of time."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_cost_is_run_time_per_audio_second_and_follows_measurements() -> None:
    est = CapacityEstimator(2, 0.8, alpha=0.5)
    for _ in range(3):
        est.observe("world|dio", 0.15, 0.5)
    assert est.cost("world|dio") == pytest.approx(0.3)
    est.observe("world|dio", 0.45, 0.5)  # the machine got busier: the estimate moves halfway (alpha 0.5)
    assert est.cost("world|dio") == pytest.approx((0.5 * 0.15 + 0.5 * 0.45) / 0.5)
    assert [(e.cost_class, e.jobs) for e in est.estimates()] == [("world|dio", 4)]


def test_short_final_windows_do_not_read_as_huge_costs() -> None:
    est = CapacityEstimator(1, 1.0, alpha=0.2)
    for _ in range(10):
        est.observe("m|dio", 0.1, 0.5)  # 0.2 s per audio second
    est.observe("m|dio", 0.1, 0.005)  # a flush of 5 ms of new audio after 0.5 s of context
    # A per-job mean of ratios would jump to ~4.2; the ratio of the weighted sums stays near the sustained cost.
    assert est.cost("m|dio") < 0.3


def test_unmeasured_class_counts_at_the_highest_known_cost_and_never_below_the_prior() -> None:
    est = CapacityEstimator(4, 1.0, prior_cost=0.5)
    assert est.cost("new|dio") == 0.5
    est.observe("cheap|dio", 0.05, 0.5)
    assert est.cost("new|dio") == 0.5  # a cheap measurement does not lower the prior
    est.observe("heavy|rmvpe", 1.5, 0.5)
    assert est.cost("new|dio") == pytest.approx(3.0)  # assumed as expensive as the worst known
    assert est.cost("cheap|dio") == pytest.approx(0.1)  # measured classes keep their own


def test_admits_while_the_sum_fits_and_refuses_beyond() -> None:
    est = CapacityEstimator(2, 0.8)  # capacity 1.6
    est.observe("w|dio", 0.2, 0.5)  # 0.4 each: four streams fit, the fifth would need 2.0
    decisions = [est.try_admit(f"s{i}", "w|dio") for i in range(5)]
    assert [d.admitted for d in decisions] == [True, True, True, True, False]
    assert decisions[3].load == pytest.approx(1.6) and decisions[4].load == pytest.approx(1.6)
    assert decisions[4].retry_after_s > 0 and est.refusals == 1
    est.release("s0")
    assert est.try_admit("s5", "w|dio").admitted  # a released share is available again
    est.release("missing")  # unknown ids are ignored
    assert est.active == 4


def test_load_follows_the_estimates_of_admitted_streams() -> None:
    est = CapacityEstimator(1, 1.0, alpha=1.0)
    est.observe("w|dio", 0.1, 0.5)
    assert est.try_admit("a", "w|dio").admitted and est.try_admit("b", "w|dio").admitted
    assert est.load() == pytest.approx(0.4)
    est.observe("w|dio", 0.3, 0.5)  # under load each job now takes longer
    assert est.load() == pytest.approx(1.2)  # the same streams now overbook the pool...
    assert not est.try_admit("c", "w|dio").admitted  # ...so nothing more gets in


def test_one_stream_is_always_admitted_and_zero_target_turns_admission_off() -> None:
    est = CapacityEstimator(1, 0.1, prior_cost=5.0)
    assert est.try_admit("only", "slow|harvest").admitted  # alone it cannot be helped by a refusal
    assert not est.try_admit("second", "slow|harvest").admitted
    off = CapacityEstimator(1, 0.0)
    assert all(off.try_admit(f"s{i}", "x|dio").admitted for i in range(50))


def test_retry_hint_tracks_how_long_streams_last() -> None:
    clock = FakeClock()
    est = CapacityEstimator(1, 0.5, prior_cost=0.4, clock=clock)
    for i in range(20):  # streams of 2 s each
        assert est.try_admit(f"s{i}", "w|dio").admitted
        clock.now += 2.0
        est.release(f"s{i}")
    est.try_admit("busy", "w|dio")
    refused = est.try_admit("late", "w|dio")
    assert not refused.admitted and refused.retry_after_s == pytest.approx(2.0, rel=0.05)


def test_concurrent_admissions_never_overbook() -> None:
    est = CapacityEstimator(3, 1.0)  # capacity 3.0
    est.observe("w|dio", 0.25, 0.5)  # 0.5 each: exactly six fit
    admitted: list[bool] = []
    lock = threading.Lock()

    def worker(i: int) -> None:
        ok = est.try_admit(f"s{i}", "w|dio").admitted
        with lock:
            admitted.append(ok)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(admitted) == 6 and est.load() == pytest.approx(3.0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"workers": 0}, "workers"),
        ({"workers": 1, "target_utilization": -0.1}, "target utilization"),
        ({"workers": 1, "alpha": 0.0}, "alpha"),
        ({"workers": 1, "prior_cost": 0.0}, "prior cost"),
    ],
)
def test_rejects_nonsense_settings(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CapacityEstimator(**kwargs)
