"""Real processes for the fault tests: a Triton that can be killed and started again on the SAME ports, the stack
around it (``FaultStack``: that Triton, a conversion service and a gateway), and small helpers to watch a gateway
stream, its health and its upstreams' counters.

The session fixture in tests/fixtures/triton_server.py picks new free ports on every start, so a gateway pointed at
it could never see "the same Triton come back"; ``RestartableTriton`` keeps its three ports for life.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.fixtures.gateway import start_gateway
from tests.fixtures.service_process import ServiceProcess
from tests.fixtures.triton_server import LAUNCHER, REPO_ROOT, TRITON_PYTHON, free_ports
from voice.v1 import audio_pb2, tts_gateway_pb2, tts_gateway_pb2_grpc

SERVICE = "voice.v1.TtsGatewayService"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
# Loading Piper on a 2-core machine that other test runs share has taken over a minute.
TRITON_READY_TIMEOUT_S = float(os.environ.get("TRITON_FIXTURE_READY_TIMEOUT", "240"))
# Only the two voices these tests drive, both on piper_tts: the launcher then loads one model (one stub, ~250 MB).
VOICES_TOML = """
[[voice]]
name = "joe"
tts_model = "piper_tts"
speaker = "joe"

[[voice]]
name = "joe-world-high"
tts_model = "piper_tts"
speaker = "joe"

[voice.conversion]
model = "world-default"
pitch_shift_semitones = 4.0
formant_shift_semitones = 1.5
"""


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (0: state, 1: ppid, 2: pgid, 19: start time); None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2 :].split()


def _ppid(pid: int) -> int | None:
    fields = _stat(pid)
    return None if fields is None or fields[0] == "Z" else int(fields[1])


def _group_members(pgids: set[int]) -> list[tuple[int, str]]:
    """(pid, start time) of every live process in these process groups: a pid with its start time names one process
    for good, so it can be killed later without hitting a process that reused the pid."""
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat(int(entry.name))) is not None and int(fields[2]) in pgids:
            members.append((int(entry.name), fields[19]))
    return members


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


class RestartableTriton:
    """triton/launch.py with only piper_tts on fixed loopback ports; ``start`` again after the server died."""

    def __init__(self, log_dir: Path, models: tuple[str, ...] = ("piper_tts",)) -> None:
        self.http_port, self.grpc_port, self.metrics_port = free_ports(3)
        self.models = models
        self.log_path = log_dir / "tritonserver.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.server: tuple[int, str] | None = None  # (pid, start time) of the current launch's tritonserver

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/v2/health/ready", timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    def _launch(self) -> subprocess.Popen[bytes]:
        command = [
            str(TRITON_PYTHON), str(LAUNCHER), "--address=127.0.0.1", f"--http-port={self.http_port}",
            f"--grpc-port={self.grpc_port}", f"--metrics-port={self.metrics_port}", f"--models={','.join(self.models)}",
            f"--ready-timeout={TRITON_READY_TIMEOUT_S}",
        ]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if not k.startswith("TRITON_")}
        with self.log_path.open("ab") as log:
            return subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT, env=env, start_new_session=True
            )

    def start(self) -> float:
        """Launch and wait until ready; returns the seconds that took. A just-freed port can refuse the bind for a
        moment (the server then exits), so a launch that dies before ready is retried until the deadline."""
        started = time.monotonic()
        deadline = started + TRITON_READY_TIMEOUT_S
        self.process = self._launch()
        launches = 1
        while not self.ready():
            if self.process.poll() is not None:
                if launches >= 5 or time.monotonic() > deadline:
                    raise RuntimeError(f"Triton exited with {self.process.returncode}:\n{self.log_tail()}")
                time.sleep(1.0)  # back-off between launches: a retry's pace, not a wait for state
                self.process = self._launch()
                launches += 1
            elif time.monotonic() > deadline:
                raise RuntimeError(f"Triton not ready after {TRITON_READY_TIMEOUT_S:.0f} s:\n{self.log_tail()}")
            time.sleep(0.1)
        pid = self.server_pid()
        fields = _stat(pid)
        self.server = (pid, fields[19]) if fields is not None else None
        return time.monotonic() - started

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else "(no log)"
        return f"{self.log_path}:\n" + "\n".join(text.splitlines()[-lines:])

    def server_pid(self) -> int:
        """The tritonserver process itself (the launcher's child), not the launcher."""
        assert self.process is not None
        launcher = self.process.pid
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and _ppid(int(entry.name)) == launcher and _comm(int(entry.name)) == "tritonserver":
                return int(entry.name)
        raise RuntimeError("the launcher has no tritonserver child")

    def wait_launcher_exit(self, timeout: float) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def stop(self) -> None:
        if self.process is None:
            return
        # Only groups whose leader is provably still ours: an unreaped launcher, a server with its start time.
        groups = set()
        if self.process.poll() is None:
            groups.add(self.process.pid)
        if self.server is not None and (fields := _stat(self.server[0])) is not None and fields[19] == self.server[1]:
            groups.add(self.server[0])
        leftovers = _group_members(groups)
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(40)
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait(10)
        # The launcher kills its server's group on exit; whatever still runs of what we saw must not outlive us.
        for pid, started in leftovers:
            fields = _stat(pid)
            if fields is not None and fields[19] == started:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)


# Real-time admission is not under test here and, on a machine shared with other test runs, could refuse a stream
# these tests need open; every test here runs at most two streams at once.
GATEWAY_FLAGS = ("--admission-target-load=0",)


@dataclass
class FaultStack:
    triton: RestartableTriton
    rvc: ServiceProcess
    gateway: ServiceProcess
    voices: Path
    log_dir: Path

    def gateway_flags(self) -> tuple[str, ...]:
        return (f"--voices={self.voices}", *GATEWAY_FLAGS)

    def heal(self) -> None:
        """Undo what a failed test may have left: a stopped or dead conversion service, a dead Triton."""
        if self.rvc.running:  # not yet reaped, so the pid is still this child's
            os.kill(self.rvc.process.pid, signal.SIGCONT)
        else:
            self.rvc.restart()
        if not self.triton.ready():
            self.triton.stop()
            self.triton.start()

    def start_gateway(self, *extra: str) -> ServiceProcess:
        """Another gateway in front of this stack's upstreams (the caller stops it)."""
        return start_gateway(
            self.triton.grpc_url, self.rvc.address, *self.gateway_flags(), *extra, log_dir=self.log_dir
        )


def triton_counter(metrics_url: str, family: str = "tts_pieces_total", model: str = "piper_tts") -> float:
    """A counter of the piper model on Triton's metrics port (0 when the family has no sample yet)."""
    with urllib.request.urlopen(metrics_url, timeout=5) as response:
        text = response.read().decode()
    pattern = rf'^{re.escape(family)}\{{[^}}]*model="{re.escape(model)}"[^}}]*\}} (\S+)'
    return sum(float(m) for m in re.findall(pattern, text, re.M))


def gauge_value(metrics_url: str, family: str) -> float | None:
    with urllib.request.urlopen(metrics_url, timeout=5) as response:
        text = response.read().decode()
    match = re.search(rf"^{re.escape(family)} (\S+)$", text, re.M)
    return float(match.group(1)) if match else None


def request(text: str, voice: str = "joe") -> tts_gateway_pb2.SynthesizeRequest:
    return tts_gateway_pb2.SynthesizeRequest(
        text=text, voice=voice, output_format=audio_pb2.AudioFormat(encoding=audio_pb2.AUDIO_ENCODING_PCM16)
    )


def story(sentences: int, topic: str = "a long story about the sea") -> str:
    return " ".join(f"This is sentence number {i + 1} of {topic}." for i in range(sentences))


@dataclass
class StreamWatch:
    """Reads a Synthesize call to its end in a task, noting when each chunk and the end arrived."""

    call: grpc.aio.UnaryStreamCall
    chunks: list[audio_pb2.AudioChunk] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    error: grpc.aio.AioRpcError | None = None
    ended_at: float | None = None
    _task: asyncio.Task[None] | None = None

    def start(self) -> StreamWatch:
        self._task = asyncio.create_task(self._run())
        return self

    async def _run(self) -> None:
        try:
            # read(), not iteration: the caller may have read the first chunks itself (gRPC forbids mixing the two).
            while (chunk := await self.call.read()) is not grpc.aio.EOF:
                self.chunks.append(chunk)
                self.times.append(time.monotonic())
        except grpc.aio.AioRpcError as exc:
            self.error = exc
        finally:
            self.ended_at = time.monotonic()

    @property
    def done(self) -> bool:
        return self._task is not None and self._task.done()

    async def until_chunks(self, count: int, within_s: float, *, required: bool = True) -> None:
        """Wait until ``count`` chunks arrived or the stream ended (which the caller then reports); after
        ``within_s`` fail the test, or just return when not ``required``."""
        deadline = time.monotonic() + within_s
        while len(self.chunks) < count and not self.done:
            if time.monotonic() > deadline:
                if not required:
                    return
                raise AssertionError(f"only {len(self.chunks)} chunks within {within_s:.0f} s")
            await asyncio.sleep(0.01)

    async def finish(self, within_s: float) -> None:
        """Wait for the end of the stream; fails the test if it is still going ``within_s`` on."""
        assert self._task is not None
        try:
            await asyncio.wait_for(asyncio.shield(self._task), within_s)
        except TimeoutError:
            raise AssertionError(f"the stream is still going {within_s:.0f} s on ({len(self.chunks)} chunks)") from None

    def cancel(self) -> None:
        self.call.cancel()


async def health(address: str) -> int:
    """grpc.health.v1 status of the gateway service, through a fresh channel."""
    async with grpc.aio.insecure_channel(address) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=SERVICE), timeout=3
        )
        return int(reply.status)


async def wait_health(address: str, want: int, within_s: float) -> float:
    """Seconds until the gateway's health is ``want``; fails after ``within_s``."""
    started = time.monotonic()
    while (status := await health(address)) != want:
        if time.monotonic() - started > within_s:
            name = health_pb2.HealthCheckResponse.ServingStatus.Name
            raise AssertionError(f"health {name(status)}, not {name(want)}, {within_s:.0f} s on")
        await asyncio.sleep(0.05)
    return time.monotonic() - started


async def synthesize_all(
    stub: tts_gateway_pb2_grpc.TtsGatewayServiceStub, req: tts_gateway_pb2.SynthesizeRequest, deadline_s: float = 60
) -> list[audio_pb2.AudioChunk]:
    return [chunk async for chunk in stub.Synthesize(req, timeout=deadline_s)]


async def retry_until_ok(
    stub: tts_gateway_pb2_grpc.TtsGatewayServiceStub, req: tts_gateway_pb2.SynthesizeRequest, bound_s: float
) -> tuple[float, int, list[audio_pb2.AudioChunk]]:
    """Send ``req`` again and again while it fails with UNAVAILABLE. Returns (seconds from the first attempt until
    the first audio of the call that succeeded, failed attempts, that call's chunks). Any other failure, or no call
    starting to succeed within ``bound_s``, fails the test."""
    started = time.monotonic()
    failures = 0
    last = ""
    while time.monotonic() - started < bound_s:
        chunks: list[audio_pb2.AudioChunk] = []
        first_audio: float | None = None
        try:
            async for chunk in stub.Synthesize(req, timeout=30):
                if first_audio is None:
                    first_audio = time.monotonic() - started
                chunks.append(chunk)
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.UNAVAILABLE:
                raise
            failures += 1
            last = exc.details() or ""
            await asyncio.sleep(0.1)  # a client's retry pace: the recovery time it measures includes it
            continue
        assert first_audio is not None and chunks[-1].is_final
        return first_audio, failures, chunks
    raise AssertionError(f"still UNAVAILABLE {bound_s:.0f} s on after {failures} attempts: {last}")
