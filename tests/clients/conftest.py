"""Fixtures for the client tests: addresses of the real running stack, and runners for each client.

Everything here talks to the real gateway (on real Triton) and the real voice-conversion service started by the
session fixtures in tests/fixtures/; nothing is mocked.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.clients.fake_gateway import FakeOverloadedGateway, serve_fake_gateway
from voice.v1 import tts_gateway_pb2
from voice_client import ConversionClient, TtsClient

REPO_ROOT = Path(__file__).resolve().parents[2]
CLI_TIMEOUT_S = 240.0
# The console script that installing voice-client (clients/python) puts beside the interpreter.
VOICE_CLI = Path(sys.executable).parent / "voice-cli"


@dataclass(frozen=True)
class Stack:
    tts_target: str
    rvc_target: str


@pytest.fixture(scope="session")
def stack(gateway: Any, rvc_service: Any) -> Stack:
    """The session's gateway (tests/fixtures/gateway.py), which runs on the session's Triton and the very
    voice-conversion service whose address is exposed here for the conversion commands."""
    return Stack(tts_target=gateway.address, rvc_target=rvc_service.address)


@pytest.fixture(scope="session")
def voices(stack: Stack) -> list[tts_gateway_pb2.Voice]:
    with TtsClient(stack.tts_target, timeout=30) as client:
        listed = client.list_voices()
    assert listed, "the gateway lists no voices"
    return listed


@pytest.fixture(scope="session")
def plain_voice(voices: list[tts_gateway_pb2.Voice]) -> tts_gateway_pb2.Voice:
    """A voice without default conversion (Piper straight through)."""
    plain = [v for v in voices if not v.HasField("default_conversion")]
    assert plain, f"no voice without default conversion among {[v.name for v in voices]}"
    return plain[0]


@pytest.fixture(scope="session")
def converted_voice(voices: list[tts_gateway_pb2.Voice]) -> tts_gateway_pb2.Voice:
    converted = [v for v in voices if v.HasField("default_conversion")]
    assert converted, f"no voice with a default conversion among {[v.name for v in voices]}"
    return converted[0]


@pytest.fixture(scope="session")
def conversion_models(stack: Stack) -> list[str]:
    with ConversionClient(stack.rvc_target, timeout=30) as client:
        return [m.name for m in client.list_models()]


def client_env(**extra: str) -> dict[str, str]:
    """The test's environment without VOICE_* settings a developer may have exported, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOICE_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


@dataclass
class CliResult:
    returncode: int
    stdout: bytes
    stderr: str

    @property
    def stderr_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.strip()]


class Cli:
    """Runs the installed `voice-cli` console script, as a user would, against the fixture stack."""

    def __init__(self, stack: Stack, command: Sequence[str] = (str(VOICE_CLI),)) -> None:
        self.stack = stack
        self.command = list(command)

    def __call__(self, *args: str, stdin: bytes | None = None, cwd: Path | None = None) -> CliResult:
        return self.run(args, stdin=stdin, cwd=cwd)

    def run(self, args: Sequence[str], *, stdin: bytes | None = None, cwd: Path | None = None) -> CliResult:
        env = client_env(VOICE_TARGET=self.stack.tts_target, VOICE_RVC_TARGET=self.stack.rvc_target)
        done = subprocess.run(
            [*self.command, *args],
            cwd=cwd or REPO_ROOT,
            env=env,
            input=stdin,
            capture_output=True,
            timeout=CLI_TIMEOUT_S,
            check=False,
        )
        return CliResult(done.returncode, done.stdout, done.stderr.decode(errors="replace"))


@pytest.fixture(scope="session")
def cli(stack: Stack) -> Cli:
    if not VOICE_CLI.exists():
        pytest.fail(f"{VOICE_CLI} is missing: install the client (pip install -e clients/python; make setup does)")
    return Cli(stack)


@pytest.fixture
def fake_gateway() -> Iterator[tuple[FakeOverloadedGateway, str]]:
    """A fake of the gateway's overload response (fake_gateway.py) on a free port: (servicer, address)."""
    yield from serve_fake_gateway()
