"""benchmarks/overload_bench.py's bookkeeping on synthetic streams and on this process's CPU."""

from __future__ import annotations

import os

import pytest

from benchmarks.overload_bench import analyse, tree_cpu_s


def stream(voice: str, started: float, *arrivals: tuple[float, float], code: str = "OK") -> dict[str, object]:
    return {"voice": voice, "started": started, "headers_s": 0.5, "code": code, "arrivals": list(arrivals),
            "retry_delay_s": None}  # fmt: skip


def test_analyse_counts_admissions_refusals_stutter_and_goodput() -> None:
    result = {
        "started": 0.0,
        "end": 10.0,
        "streams": [
            stream("joe", 0.0, (1.0, 2.0), (2.5, 2.0)),  # plays 1.1-3.1, second chunk in time: no stutter
            stream("joe-world-high", 1.0, (2.0, 1.0), (3.5, 1.0)),  # plays 2.1-3.1, next arrives 3.5: 0.4 s gap
            stream("joe", 2.0, code="RESOURCE_EXHAUSTED"),
            stream("joe", 9.0, (9.5, 1.0), (11.0, 1.0)),  # audio after the window does not count for goodput
        ],
    }
    row = analyse(result, 4, "hint", 0.1, (20.0, 2.0, 1.0))
    assert row.admitted == {"joe": 2, "joe-world-high": 1} and row.refusals == 1
    assert row.stuttered == 2 and row.worst_gap == pytest.approx(0.4)
    assert row.goodput == pytest.approx((4.0 + 2.0 + 1.0) / 10.0)
    assert row.ttfa_p50 == pytest.approx(1.0)


def test_tree_cpu_counts_this_process() -> None:
    sum(i * i for i in range(200_000))
    assert tree_cpu_s(os.getpid()) > 0
