"""The Node.js example client (clients/node) against the real gateway: it must write a valid, complete WAV."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.clients.audio_checks import assert_speech_like, read_finalized_wav
from tests.clients.conftest import REPO_ROOT, Stack, client_env
from voice.v1 import tts_gateway_pb2

NODE_DIR = REPO_ROOT / "clients" / "node"
NODE = shutil.which("node")

pytestmark = pytest.mark.skipif(NODE is None, reason="node is not installed; the Node.js client cannot run")


@pytest.fixture(scope="module")
def node_client() -> list[str]:
    # Installing packages is set-up's job (`npm ci --prefix clients/node`), not the test's: fail loudly if skipped.
    if not (NODE_DIR / "node_modules" / "@grpc" / "grpc-js").is_dir():
        pytest.fail("clients/node/node_modules is missing: run `npm ci --prefix clients/node` (make setup does)")
    return [str(NODE), str(NODE_DIR / "synthesize.js")]


def run_node(args: list[str], stack: Stack) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args,
        cwd=NODE_DIR,
        env=client_env(VOICE_TARGET=stack.tts_target),
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


@pytest.mark.parametrize("encoding", ["pcm16", "wav"])
def test_node_client_writes_a_valid_wav(
    node_client: list[str], stack: Stack, plain_voice: tts_gateway_pb2.Voice, tmp_path: Path, encoding: str
) -> None:
    text = "Hello from Node. The gateway streams, and Node writes the file."
    out = tmp_path / f"node-{encoding}.wav"
    done = run_node(
        [*node_client, "--text", text, "--voice", plain_voice.name, "--out", str(out), "--format", encoding], stack
    )
    assert done.returncode == 0, done.stderr
    samples, rate = read_finalized_wav(out.read_bytes())
    assert rate == plain_voice.native_sample_rate_hz
    assert_speech_like(samples, rate, text)
    assert "time to first audio" in done.stderr


def test_node_client_reports_errors(node_client: list[str], stack: Stack, tmp_path: Path) -> None:
    out = tmp_path / "never.wav"
    done = run_node([*node_client, "--text", "Hi.", "--voice", "no-such-voice", "--out", str(out)], stack)
    assert done.returncode == 3, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: NOT_FOUND: "), done.stderr
    assert not out.exists()
