"""`make run` (deploy/local/run_stack.py): the whole stack comes up on loopback, the command it prints produces
speech, and Ctrl-C stops every service cleanly."""

from __future__ import annotations

import io
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import soundfile as sf

from tests.conftest import REPO_ROOT, free_port


def test_run_stack_serves_speech_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    ports = {
        name: str(free_port())
        for name in (
            "gateway-port", "gateway-metrics-port", "rvc-port", "rvc-metrics-port",
            "triton-http-port", "triton-grpc-port", "triton-metrics-port",
        )
    }  # fmt: skip
    argv = [sys.executable, "deploy/local/run_stack.py", "--log-dir", str(tmp_path / "logs")]
    for name, port in ports.items():
        argv += [f"--{name}", port]
    stack = subprocess.Popen(argv, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert stack.stdout is not None
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 240
        while not any("Stack is up" in line for line in lines):
            line = stack.stdout.readline()
            assert line, f"run_stack exited early:\n{''.join(lines)}"
            lines.append(line)
            assert time.monotonic() < deadline, "stack did not come up"
        while not lines[-1].strip().startswith(".venv/bin/grpcurl"):
            lines.append(stack.stdout.readline())
        banner = "".join(lines)
        assert f"Gateway       gRPC 127.0.0.1:{ports['gateway-port']}" in banner
        assert f"RVC service   gRPC 127.0.0.1:{ports['rvc-port']}" in banner
        # The ready-to-paste example, run as printed (with the output file moved into tmp_path).
        example = next(line.strip() for line in lines if "clients.python" in line)
        command = [arg if arg != "hello.wav" else str(tmp_path / "hello.wav") for arg in shlex.split(example)]
        subprocess.run(command, cwd=REPO_ROOT, check=True, capture_output=True, timeout=120)
        audio, rate = sf.read(io.BytesIO((tmp_path / "hello.wav").read_bytes()))
        text = re.search(r'say "([^"]+)"', example)
        assert text is not None
        assert rate == 22050 and 0.04 * len(text.group(1)) < len(audio) / rate < 0.15 * len(text.group(1))

        stack.send_signal(signal.SIGINT)
        rest, _ = stack.communicate(timeout=60)
    finally:
        if stack.poll() is None:
            stack.kill()
    assert stack.returncode == 0, rest
    for name in ("gateway", "rvc_service", "triton"):
        assert f"stopped {name} (exit 0)" in rest
