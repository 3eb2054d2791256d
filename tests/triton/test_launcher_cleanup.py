"""triton/launch.py leaves no debris: no orphaned tritonserver or python-backend stub, no /dev/shm region, whichever
process is killed. Real launcher, real server, real stubs; a stub that ignores everything is modelled by SIGSTOP (a
stopped process cannot notice that its server died, as the stuck stub of the issue did not)."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest

from tests.fixtures.triton_server import LAUNCHER, TRITON_PYTHON, free_ports
from tests.waiting import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

SHM = Path("/dev/shm")
READY_TIMEOUT_S = 90.0


@pytest.fixture(scope="module")
def launch() -> ModuleType:
    # Loaded by path: triton/ is deliberately not a package (the name clashes with OpenAI's triton).
    spec = importlib.util.spec_from_file_location("triton_launch_cleanup", LAUNCHER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (index 0 is the state); None once the process is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def _live(pids: list[int]) -> list[int]:
    return [pid for pid in pids if (fields := _stat(pid)) is not None and fields[0] != "Z"]


def _all_pids() -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]


def _children(parent: int) -> list[int]:
    return [pid for pid in _live(_all_pids()) if (fields := _stat(pid)) is not None and int(fields[1]) == parent]


def _group(pgid: int) -> list[int]:
    return [pid for pid in _live(_all_pids()) if (fields := _stat(pid)) is not None and int(fields[2]) == pgid]


def _regions(prefix: str) -> list[str]:
    return sorted(p.name for p in SHM.glob(f"{prefix}*"))


def _wait(condition: Callable[[], bool], within: float, what: str) -> float:
    """Seconds until ``condition`` held; fails after ``within``."""
    start = time.monotonic()
    wait_until(condition, within=within, what=what)
    return time.monotonic() - start


def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


class Launched:
    def __init__(self, process: subprocess.Popen[bytes], log: Path, http_port: int) -> None:
        self.process = process
        self.log = log
        self.http_port = http_port
        self.server = 0

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


@contextlib.contextmanager
def _launcher(tmp_path: Path, name: str, *extra: str) -> Iterator[Launched]:
    """One launcher with only piper_tts (one stub), waited until ready; everything it started is killed afterwards."""
    http, grpc, metrics = free_ports(3)
    log = tmp_path / f"{name}.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRITON_")}
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(TRITON_PYTHON), str(LAUNCHER), "--address=127.0.0.1", f"--http-port={http}", f"--grpc-port={grpc}",
             f"--metrics-port={metrics}", "--models=piper_tts", f"--ready-timeout={READY_TIMEOUT_S}", *extra],
            stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )  # fmt: skip
    launched = Launched(process, log, http)
    try:

        def ready() -> bool:
            assert process.poll() is None, f"launcher exited with {process.returncode}:\n{launched.log_text()}"
            return "triton ready" in launched.log_text()

        wait_until(ready, within=READY_TIMEOUT_S, interval=0.2, what=lambda: f"ready:\n{launched.log_text()}")
        servers = _children(process.pid)
        assert len(servers) == 1, servers
        launched.server = servers[0]
        yield launched
    finally:
        leftovers = _group(launched.server) if launched.server else []
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        process.wait(timeout=10)
        for pid in leftovers:  # only what this test started: the server and its stubs
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_stale_cleanup_touches_only_regions_of_launchers_that_are_gone(launch: ModuleType, tmp_path: Path) -> None:
    own = launch.shm_prefix()
    ns, dead_pid = launch.pid_namespace(), _dead_pid()
    dead = f"{launch.SHM_PREFIX_BASE}{ns}-{dead_pid}-12345_"
    # The same pid with another start time: the pid was reused since, the owner is gone.
    reused = f"{launch.SHM_PREFIX_BASE}{ns}-{os.getpid()}-{launch.process_start_time(os.getpid()) + 1}_"
    # A launcher of another pid namespace (a container sharing /dev/shm): its pids mean nothing here.
    foreign = f"{launch.SHM_PREFIX_BASE}{ns + 1}-{dead_pid}-12345_"
    names = {
        "own": f"{own}{uuid.uuid4()}",
        "dead": f"{dead}{uuid.uuid4()}",
        "reused": f"{reused}{uuid.uuid4()}",
        "foreign": f"{foreign}{uuid.uuid4()}",
        "default": f"triton_python_backend_shm_region_{uuid.uuid4()}",  # another Triton's: never ours to remove
        "other": "psm_0123abcd",
    }
    for name in names.values():
        (tmp_path / name).write_bytes(b"\0" * 64)
    removed, _killed = launch.remove_stale(shm_dir=tmp_path)
    assert sorted(removed) == sorted([names["dead"], names["reused"]])
    kept = [names[k] for k in ("own", "foreign", "default", "other")]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(kept)
    # The launcher names its regions after itself: pid namespace, pid and start time.
    assert ns > 0 and own.startswith(f"{launch.SHM_PREFIX_BASE}{ns}-{os.getpid()}-")


def test_kill_9_of_the_server_kills_its_stubs_and_removes_its_regions(launch: ModuleType, tmp_path: Path) -> None:
    stale = SHM / f"{launch.SHM_PREFIX_BASE}{launch.pid_namespace()}-{_dead_pid()}-1_{uuid.uuid4()}"
    stale.write_bytes(b"\0" * 4096)
    try:
        with _launcher(tmp_path, "server-killed") as launched:
            assert not stale.exists(), "a region of a launcher that is gone survived the start"
            prefix = launch.shm_prefix(launched.process.pid)
            stubs = [pid for pid in _group(launched.server) if pid != launched.server]
            assert stubs, "no python-backend stub in the server's process group"
            assert _regions(prefix), f"no region named {prefix}* while serving"
            for pid in stubs:  # stuck stubs: they cannot notice the server's death on their own
                os.kill(pid, signal.SIGSTOP)
            os.kill(launched.server, signal.SIGKILL)
            took = _wait(lambda: not _live(stubs) and not _regions(prefix), within=10, what="stubs and regions gone")
            assert launched.process.wait(timeout=10) != 0
            assert not _group(launched.server)
            print(f"stubs and regions gone {took:.3f} s after kill -9 of tritonserver")
    finally:
        stale.unlink(missing_ok=True)


def test_kill_9_of_the_launcher_takes_the_server_and_stubs_down(launch: ModuleType, tmp_path: Path) -> None:
    with _launcher(tmp_path, "launcher-killed") as launched:
        prefix = launch.shm_prefix(launched.process.pid)
        group = _group(launched.server)
        assert len(group) >= 2, group  # the server and at least one stub
        launched.process.kill()
        launched.process.wait(timeout=10)
        # The parent-death signal makes the server shut down; its own shutdown stops the stubs and unlinks regions.
        took = _wait(lambda: not _live(group), within=20, what="the server and its stubs to exit")
        _wait(lambda: not _regions(prefix), within=5, what="the shared-memory regions to go")
        print(f"server and stubs gone {took:.2f} s after kill -9 of the launcher")


def test_a_new_launcher_removes_stubs_and_regions_of_a_launcher_killed_with_its_server(
    launch: ModuleType, tmp_path: Path
) -> None:
    stubs: list[int] = []
    try:
        with _launcher(tmp_path, "first") as first:
            prefix = launch.shm_prefix(first.process.pid)
            stubs = [pid for pid in _group(first.server) if pid != first.server]
            for pid in stubs:
                os.kill(pid, signal.SIGSTOP)
            # Both die at once, so no one is left to clean up (an OOM kill of the whole cgroup looks like this).
            first.process.kill()
            os.kill(first.server, signal.SIGKILL)
            first.process.wait(timeout=10)
            _wait(lambda: not _live([first.server]), within=10, what="the killed server to be gone")
            assert _live(stubs) and _regions(prefix), "nothing was left behind: the scenario did not happen"
            with _launcher(tmp_path, "second"):
                assert not _live(stubs), "the stubs of a launcher that is gone survived a new launcher's start"
                assert not _regions(prefix)
    finally:
        for pid in _live(stubs):  # only if the test failed: the stopped stubs it made
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_a_server_that_does_not_drain_is_killed_after_the_stop_grace(launch: ModuleType, tmp_path: Path) -> None:
    with _launcher(tmp_path, "hung", "--stop-grace=2") as launched:
        prefix = launch.shm_prefix(launched.process.pid)
        group = _group(launched.server)
        os.kill(launched.server, signal.SIGSTOP)  # a hung server: the forwarded SIGTERM stays pending
        started = time.monotonic()
        launched.process.send_signal(signal.SIGTERM)
        code = launched.process.wait(timeout=30)
        took = time.monotonic() - started
        assert code == 128 + signal.SIGKILL, launched.log_text()
        assert 2 <= took < 10, took
        assert not _live(group) and not _regions(prefix)
        assert "killing it" in launched.log_text()
