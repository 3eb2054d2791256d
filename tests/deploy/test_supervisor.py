"""The supervisor of `make run` (deploy/local/run_stack.py) with small real child processes: restart with exponential
backoff, backoff reset after a stable run, give-up after --max-restarts, the other services untouched, stop of all.
The children are tiny Python programs that print a ready line like the services do, so these run in seconds; the
whole stack under supervision is tested in test_run_stack.py."""

from __future__ import annotations

import importlib.util
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import ModuleType

import pytest

from tests.conftest import REPO_ROOT
from tests.waiting import wait_until

pytestmark = pytest.mark.timeout(60)

# Prints a ready line, records its start, then runs for argv[2] seconds (forever if negative) and exits with argv[3].
CHILD = """
import json, sys, time
with open(sys.argv[1], "a") as f:
    f.write(f"{time.time()}\\n")
print(json.dumps({"port": 1234, "metrics_port": 1235}), flush=True)
hold = float(sys.argv[2])
time.sleep(hold if hold >= 0 else 3600)  # its lifetime (argv[2]): what the test asks of it
sys.exit(int(sys.argv[3]))
"""


@pytest.fixture(scope="module")
def run_stack() -> ModuleType:
    spec = importlib.util.spec_from_file_location("run_stack", REPO_ROOT / "deploy" / "local" / "run_stack.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _service(run_stack: ModuleType, tmp_path: Path, name: str, hold: float, code: int) -> object:
    starts = tmp_path / f"{name}.starts"
    return run_stack.Service(
        name,
        lambda: [sys.executable, "-c", CHILD, str(starts), str(hold), str(code)],
        ready_timeout=30,
        log_path=tmp_path / f"{name}.log",
    )


def _starts(tmp_path: Path, name: str) -> list[float]:
    return [float(x) for x in (tmp_path / f"{name}.starts").read_text().split()]


def test_crashing_service_is_restarted_with_doubling_backoff_then_given_up(
    run_stack: ModuleType, tmp_path: Path
) -> None:
    messages: list[str] = []
    supervisor = run_stack.Supervisor(
        max_restarts=4, backoff_min=0.2, backoff_max=0.8, stable_after=30, log=messages.append
    )
    steady = _service(run_stack, tmp_path, "steady", hold=-1, code=0)
    crasher = _service(run_stack, tmp_path, "crasher", hold=0, code=3)
    supervisor.start(steady)
    steady_pid = steady.process.pid
    supervisor.start(crasher)
    assert crasher.info == {"port": 1234, "metrics_port": 1235}
    started = time.monotonic()
    assert supervisor.run(poll_interval=0.02) == 1  # gave up: the stack stops with a non-zero exit
    elapsed = time.monotonic() - started

    restarts = [m for m in messages if m.startswith("crasher exited unexpectedly with code 3")]
    assert [m.rsplit("restart ", 1)[1] for m in restarts[:4]] == ["#1 in 0.2 s", "#2 in 0.4 s", "#3 in 0.8 s",
                                                                   "#4 in 0.8 s"]  # fmt: skip
    assert "giving up after 4 restart(s)" in messages[-1]
    starts = _starts(tmp_path, "crasher")
    assert len(starts) == 5  # the first start and four restarts
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    # Each gap is the child's run (Python start-up) plus the backoff: never shorter than the backoff.
    for gap, delay in zip(gaps, [0.2, 0.4, 0.8, 0.8], strict=True):
        assert delay <= gap < delay + 5, gaps
    assert elapsed >= 2.2
    # The other service kept running through all of it (one start, same process) and was stopped at the end.
    assert len(_starts(tmp_path, "steady")) == 1
    assert steady.process.pid == steady_pid and steady.process.returncode == -signal.SIGTERM


def test_backoff_resets_after_a_stable_run(run_stack: ModuleType, tmp_path: Path) -> None:
    messages: list[str] = []
    supervisor = run_stack.Supervisor(
        max_restarts=3, backoff_min=0.1, backoff_max=5, stable_after=0.5, log=messages.append
    )
    supervisor.start(_service(run_stack, tmp_path, "flaky", hold=0.8, code=7))  # up longer than stable_after
    assert supervisor.run(poll_interval=0.02) == 1
    delays = [m.rsplit(" in ", 1)[1] for m in messages if "; restart #" in m]
    assert delays == ["0.1 s", "0.1 s", "0.1 s"], messages


def test_stop_request_stops_every_service_and_restarts_none(run_stack: ModuleType, tmp_path: Path) -> None:
    messages: list[str] = []
    supervisor = run_stack.Supervisor(backoff_min=5, log=messages.append)
    first = _service(run_stack, tmp_path, "first", hold=-1, code=0)
    crasher = _service(run_stack, tmp_path, "crasher", hold=0, code=1)
    supervisor.start(first)
    supervisor.start(crasher)
    result: list[int] = []
    runner = threading.Thread(target=lambda: result.append(supervisor.run(poll_interval=0.02)))
    runner.start()
    wait_until(  # the crasher is waiting out its backoff
        lambda: any("restart #1 in 5.0 s" in m for m in messages), within=10, interval=0.02, what=lambda: str(messages)
    )
    supervisor.stopping.set()
    runner.join(timeout=40)
    assert result == [0]
    assert first.process.returncode == -signal.SIGTERM
    assert crasher.process is None and len(_starts(tmp_path, "crasher")) == 1  # not restarted after the stop


def test_ready_line_parsing(run_stack: ModuleType) -> None:
    assert run_stack.parse_ready_line(json.dumps({"service": "x", "port": 5, "metrics_port": 6}))["port"] == 5
    assert run_stack.parse_ready_line("triton ready: grpc=127.0.0.1:1 http=...\n") is not None
    assert run_stack.parse_ready_line("I1123 10:00:00 some log line") is None
    assert run_stack.parse_ready_line('{"no_port": 1}') is None


def test_services_die_with_a_killed_supervisor(tmp_path: Path) -> None:
    # A supervisor in its own process, killed outright: the parent-death signal must take its service down with it.
    script = f"""
import importlib.util, sys
spec = importlib.util.spec_from_file_location("run_stack", {str(REPO_ROOT / "deploy" / "local" / "run_stack.py")!r})
run_stack = sys.modules["run_stack"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(run_stack)
service = run_stack.Service("steady", lambda: [sys.executable, "-c", {CHILD!r}, {str(tmp_path / "s")!r}, "-1", "0"],
                            ready_timeout=30, log_path=run_stack.Path({str(tmp_path / "steady.log")!r}))
supervisor = run_stack.Supervisor()
supervisor.start(service)
print(service.process.pid, flush=True)
supervisor.run()
"""
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    child = 0
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        os.kill(child, 0)  # running
        parent.kill()
        parent.wait(timeout=10)
        wait_until(lambda: not _running(child), within=5, what="the service to die with its killed supervisor")
    finally:
        parent.kill()
        if child and _running(child):  # only when the test failed: the service it started
            os.kill(child, signal.SIGKILL)


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
