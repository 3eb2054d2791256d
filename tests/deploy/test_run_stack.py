"""`make run` (deploy/local/run_stack.py): the whole stack comes up on loopback, the command it prints produces
speech, a service killed under it is restarted on the same port while the others keep serving, and Ctrl-C stops
every service cleanly, leaving no process behind."""

from __future__ import annotations

import io
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest
import soundfile as sf

from tests.conftest import REPO_ROOT, free_port
from tests.waiting import wait_until
from voice.v1 import (
    audio_pb2,
    tts_gateway_pb2,
    tts_gateway_pb2_grpc,
    voice_conversion_pb2,
    voice_conversion_pb2_grpc,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
PORT_NAMES = (
    "gateway-port", "gateway-metrics-port", "rvc-port", "rvc-metrics-port",
    "triton-http-port", "triton-grpc-port", "triton-metrics-port", "edge-port", "edge-metrics-port",
)  # fmt: skip


class Stack:
    """run_stack.py as `make run` starts it, on free ports; its output is read by a thread into ``lines``."""

    def __init__(self, tmp_path: Path, *extra: str) -> None:
        self.ports = {name: free_port() for name in PORT_NAMES}
        argv = [sys.executable, "deploy/local/run_stack.py", "--log-dir", str(tmp_path / "logs"), *extra]
        for name, port in self.ports.items():
            argv += [f"--{name}", str(port)]
        self.process = subprocess.Popen(
            argv, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in iter(self.process.stdout.readline, ""):
            self.lines.append(line)

    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, pattern: str, timeout: float) -> str:
        """The first output line matching ``pattern`` (a regular expression), waiting up to ``timeout``."""

        def matching_line() -> str | None:
            line = next((line for line in list(self.lines) if re.search(pattern, line)), None)
            assert line or self.process.poll() is None or self._reader.is_alive(), f"run_stack exited:\n{self.output()}"
            return line

        return wait_until(
            matching_line, within=timeout, interval=0.1, what=lambda: f"a line matching {pattern!r}:\n{self.output()}"
        )

    def wait_up(self) -> None:
        self.wait_for(r"Stack is up", 240)
        self.wait_for(r"^\s*\.venv/bin/grpcurl", 10)

    def interrupt(self) -> str:
        """Ctrl-C; returns the output once run_stack has exited."""
        self.process.send_signal(signal.SIGINT)
        self.process.wait(timeout=90)
        self._reader.join(timeout=10)
        return self.output()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, parent pid), or None once the process is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return fields[0], int(fields[1])


def _descendants(root: int) -> dict[int, str]:
    """pid -> command line of every live process below ``root``."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _proc_stat(int(entry.name))) is not None and stat[0] != "Z":
            parents[int(entry.name)] = stat[1]
    found: dict[int, str] = {}
    frontier = [root]
    while frontier:
        parent = frontier.pop()
        for pid, ppid in parents.items():
            if ppid == parent and pid not in found:
                try:
                    found[pid] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                except OSError:
                    continue
                frontier.append(pid)
    return found


def _alive(pids: list[int]) -> list[int]:
    return [pid for pid in pids if (stat := _proc_stat(pid)) is not None and stat[0] != "Z"]


def _assert_all_gone(pids: list[int], names: dict[int, str]) -> None:
    wait_until(  # orphans' zombies are reaped by init a moment later
        lambda: not _alive(pids),
        within=5,
        interval=0.1,
        what=lambda: f"every process of the stack to exit: {[names[pid][:120] for pid in _alive(pids)]}",
    )


def test_run_stack_serves_speech_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    stack = Stack(tmp_path)
    try:
        stack.wait_up()
        banner = stack.output()
        assert f"Gateway       gRPC 127.0.0.1:{stack.ports['gateway-port']}" in banner
        assert f"RVC service   gRPC 127.0.0.1:{stack.ports['rvc-port']}" in banner
        # The ready-to-paste example, run as printed (with the output file moved into tmp_path).
        example = next(line.strip() for line in stack.lines if "voice-cli" in line)
        command = [arg if arg != "hello.wav" else str(tmp_path / "hello.wav") for arg in shlex.split(example)]
        subprocess.run(command, cwd=REPO_ROOT, check=True, capture_output=True, timeout=120)
        audio, rate = sf.read(io.BytesIO((tmp_path / "hello.wav").read_bytes()))
        text = re.search(r'say "([^"]+)"', example)
        assert text is not None
        assert rate == 22050 and 0.04 * len(text.group(1)) < len(audio) / rate < 0.15 * len(text.group(1))

        started = _descendants(stack.process.pid)
        rest = stack.interrupt()
    finally:
        stack.kill()
    assert stack.process.returncode == 0, rest
    for name in ("gateway", "rvc_service", "triton"):
        assert f"stopped {name} (exit 0)" in rest
    _assert_all_gone(list(started), started)


def _rvc_status(port: int, timeout: float = 3.0) -> voice_conversion_pb2.VoiceConversionServiceGetStatusResponse:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = voice_conversion_pb2_grpc.VoiceConversionServiceStub(channel)
        return stub.GetStatus(voice_conversion_pb2.VoiceConversionServiceGetStatusRequest(), timeout=timeout)


def _rvc_answers(port: int) -> bool:
    try:
        _rvc_status(port, timeout=1)
    except grpc.RpcError:
        return False
    return True


def test_killed_conversion_service_is_restarted_on_its_port_while_the_gateway_keeps_serving(tmp_path: Path) -> None:
    stack = Stack(tmp_path, "--max-restarts", "3")
    try:
        stack.wait_up()
        rvc_port = stack.ports["rvc-port"]
        _rvc_status(rvc_port)
        before = _descendants(stack.process.pid)
        (rvc_pid,) = [pid for pid, cmd in before.items() if "services.rvc_service" in cmd]
        gateway_pids = [pid for pid, cmd in before.items() if "services.tts_gateway" in cmd]

        os.kill(rvc_pid, signal.SIGKILL)
        killed_at = time.monotonic()
        with pytest.raises(grpc.RpcError) as down:
            _rvc_status(rvc_port, timeout=1)
        assert down.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)

        # The gateway was not taken down with it: it answers and still speaks with the Triton-only voice.
        with grpc.insecure_channel(f"127.0.0.1:{stack.ports['gateway-port']}") as channel:
            stub = tts_gateway_pb2_grpc.TtsGatewayServiceStub(channel)
            stub.GetStatus(tts_gateway_pb2.TtsGatewayServiceGetStatusRequest(), timeout=10)
            request = tts_gateway_pb2.SynthesizeRequest(
                text="The gateway still speaks.",
                voice="joe",
                output_format=audio_pb2.AudioFormat(encoding=audio_pb2.AUDIO_ENCODING_PCM16),
            )
            pcm = b"".join(chunk.audio for chunk in stub.Synthesize(request, timeout=60))
        assert len(pcm) // 2 > 22050 * 0.5  # over half a second of 16-bit audio at 22.05 kHz
        assert _alive(gateway_pids) == gateway_pids

        stack.wait_for(r"rvc_service exited unexpectedly with code -9 \(SIGKILL\).*restart #1 in 0\.5 s", 10)
        # Back on the same port (the gateway's upstream URL stays right) within seconds.
        wait_until(
            lambda: _rvc_answers(rvc_port),
            within=killed_at + 30 - time.monotonic(),
            interval=0.2,
            what=lambda: f"the conversion service to answer again:\n{stack.output()}",
        )
        back_after = time.monotonic() - killed_at
        stack.wait_for(r"rvc_service is back after restart #1", 10)
        after = _descendants(stack.process.pid)
        (new_rvc,) = [pid for pid, cmd in after.items() if "services.rvc_service" in cmd]
        assert new_rvc != rvc_pid
        print(f"conversion service answering again {back_after:.1f} s after kill -9")
        assert back_after < 25, back_after  # the restart itself is 0.5 s; the rest is the service's own start-up

        rest = stack.interrupt()
    finally:
        stack.kill()
    assert stack.process.returncode == 0, rest
    for name in ("gateway", "rvc_service", "triton"):
        assert f"stopped {name} (exit 0)" in rest
    assert "triton exited" not in rest and "gateway exited" not in rest  # only the killed service was restarted
    _assert_all_gone(list(after), after)
