"""The soak's process discovery and memory bookkeeping (benchmarks/soak.py), on real processes."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from benchmarks.soak import MemoryLog, Sample, Tracked, descendants, memory_table, pick_baseline
from tests.waiting import wait_until

# A parent that starts a child that starts a grandchild, like the Triton launcher -> tritonserver -> stubs; each
# sleeps to stay alive while the test looks at it.
TREE = (
    "import subprocess, sys, time\n"
    'code = \'import subprocess, sys, time; subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]);'
    " time.sleep(60)'\n"
    "subprocess.Popen([sys.executable, '-c', code])\n"
    "time.sleep(60)\n"
)


@pytest.fixture
def tree() -> Iterator[subprocess.Popen[bytes]]:
    root = subprocess.Popen([sys.executable, "-c", TREE], start_new_session=True)
    yield root
    os.killpg(root.pid, 9)
    root.wait(10)


def test_descendants_finds_children_and_grandchildren(tree: subprocess.Popen[bytes]) -> None:
    def child_and_grandchild() -> list[int]:
        pids = descendants(tree.pid)
        return pids if len(pids) == 2 else []

    found = wait_until(child_and_grandchild, within=20, interval=0.1, what="the child and the grandchild to start")
    log = MemoryLog([], tree.pid)
    sample = log.sample(0.0)
    assert set(sample.kb) == {tree.pid, *found}
    assert all(values["VmRSS"] > 0 for values in sample.kb.values())
    assert descendants(found[-1]) == []  # the grandchild has no children


def _sample(at: float, rss_mb: dict[int, float]) -> Sample:
    return Sample(at, {pid: {"VmRSS": int(mb * 1024), "RssAnon": int(mb * 512)} for pid, mb in rss_mb.items()})


def test_growth_is_measured_from_the_warm_up_sample() -> None:
    log = MemoryLog([Tracked("gateway", 1)], 2)
    log.processes = {1: "gateway", 3: "stub piper_tts_0_0"}
    # The stub doubles during warm-up (a plateau being reached), then grows 10%; the gateway grows 40% after it.
    log.samples = [
        _sample(0, {1: 100, 3: 200}),
        _sample(60, {1: 100, 3: 400}),
        _sample(120, {1: 120, 3: 420}),
        _sample(180, {1: 140, 3: 440}),
    ]
    baseline = pick_baseline(log.samples, 60)
    assert baseline is log.samples[1]
    table, growths = memory_table(log, baseline)
    assert dict(growths) == pytest.approx({"gateway": 0.40, "stub piper_tts_0_0": 0.10}, abs=1e-3)
    assert "all python stubs" in table


def test_short_soak_falls_back_to_the_start_sample() -> None:
    samples = [_sample(0, {1: 100}), _sample(30, {1: 100})]
    assert pick_baseline(samples, 60) is samples[0]
