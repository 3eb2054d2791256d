"""The Node.js example client (clients/node) against the real gateway: it must write a valid, complete WAV, from
Synthesize or (--incremental) StreamingSynthesize fed word by word or from stdin; it honours RetryInfo (against the
fake of the gateway's overload response); and it installs and runs outside the repository from the tarball
`npm pack` makes."""

from __future__ import annotations

import json
import shutil
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

from tests.clients.audio_checks import assert_speech_like, read_finalized_wav
from tests.clients.conftest import REPO_ROOT, Cli, Stack, client_env
from tests.clients.fake_gateway import SAMPLE_RATE, FakeOverloadedGateway, Refusal
from tests.recognition.wer import wer
from voice.v1 import tts_gateway_pb2

NODE_DIR = REPO_ROOT / "clients" / "node"
NODE = shutil.which("node")
NPM = shutil.which("npm")

pytestmark = pytest.mark.skipif(NODE is None, reason="node is not installed; the Node.js client cannot run")


@pytest.fixture(scope="module")
def node_client() -> list[str]:
    # Installing packages is set-up's job (`npm ci --prefix clients/node`), not the test's: fail loudly if skipped.
    if not (NODE_DIR / "node_modules" / "@grpc" / "grpc-js").is_dir():
        pytest.fail("clients/node/node_modules is missing: run `npm ci --prefix clients/node` (make setup does)")
    return [str(NODE), str(NODE_DIR / "synthesize.js")]


def run_node(
    args: list[str], target: str, cwd: Path = NODE_DIR, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args,
        cwd=cwd,
        env=client_env(VOICE_TARGET=target),
        input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


def lines_of(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


@pytest.mark.parametrize("encoding", ["pcm16", "wav"])
def test_node_client_writes_a_valid_wav(
    node_client: list[str], stack: Stack, plain_voice: tts_gateway_pb2.Voice, tmp_path: Path, encoding: str
) -> None:
    text = "Hello from Node. The gateway streams, and Node writes the file."
    out = tmp_path / f"node-{encoding}.wav"
    done = run_node(
        [*node_client, "--text", text, "--voice", plain_voice.name, "--out", str(out), "--format", encoding],
        stack.tts_target,
    )
    assert done.returncode == 0, done.stderr
    samples, rate = read_finalized_wav(out.read_bytes())
    assert rate == plain_voice.native_sample_rate_hz
    assert_speech_like(samples, rate, text)
    assert "time to first audio" in done.stderr


INCREMENTAL_TEXT = "Hello from Node, word by word. The gateway speaks each sentence as it completes."


@pytest.mark.parametrize(
    ("extra", "stdin"),
    [
        (["--incremental", "--text", INCREMENTAL_TEXT], None),
        (["--text-input", "sentences", "--text", "-", "--format", "wav"], INCREMENTAL_TEXT),
        (["--incremental", "--text-input", "auto", "--text", "-"], INCREMENTAL_TEXT),
    ],
    ids=["words", "stdin-sentences", "stdin-auto"],
)
def test_node_client_incremental_writes_a_valid_wav(
    node_client: list[str],
    stack: Stack,
    plain_voice: tts_gateway_pb2.Voice,
    tmp_path: Path,
    extra: list[str],
    stdin: str | None,
) -> None:
    out = tmp_path / "incremental.wav"
    args = [*node_client, "--voice", plain_voice.name, "--out", str(out), *extra]
    done = run_node(args, stack.tts_target, stdin=stdin)
    assert done.returncode == 0, done.stderr
    samples, rate = read_finalized_wav(out.read_bytes())
    assert rate == plain_voice.native_sample_rate_hz
    assert_speech_like(samples, rate, INCREMENTAL_TEXT)


def test_node_client_paces_words(
    node_client: list[str], stack: Stack, plain_voice: tts_gateway_pb2.Voice, tmp_path: Path
) -> None:
    text = "One two three four five six seven eight nine ten."
    rate = 8.0
    out = tmp_path / "paced.wav"
    args = ["--text", text, "--voice", plain_voice.name, "--out", str(out), "--incremental", "--words-per-second", "8"]
    started = time.monotonic()
    done = run_node([*node_client, *args], stack.tts_target)
    elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    words = len(text.split())
    assert elapsed / ((words - 1) / rate) >= 1.0, f"{words} words at {rate}/s took only {elapsed:.2f} s"
    samples, sample_rate = read_finalized_wav(out.read_bytes())
    assert_speech_like(samples, sample_rate, text)
    # Pacing only makes sense for words sent one by one; bad values are usage errors.
    for bad in (["--words-per-second", "3"], ["--incremental", "--words-per-second", "-1"], ["--text-input", "x"]):
        refused = run_node([*node_client, "--text", "Hi.", "--voice", "v", "--out", str(out), *bad], stack.tts_target)
        assert refused.returncode == 2 and refused.stderr.startswith("error: "), refused.stderr


def test_node_client_reports_errors(node_client: list[str], stack: Stack, tmp_path: Path) -> None:
    out = tmp_path / "never.wav"
    done = run_node([*node_client, "--text", "Hi.", "--voice", "no-such-voice", "--out", str(out)], stack.tts_target)
    assert done.returncode == 3, done.stderr
    lines = lines_of(done.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: NOT_FOUND: "), done.stderr
    assert not out.exists()


def test_node_client_shows_bad_request_violations(
    node_client: list[str], stack: Stack, plain_voice: tts_gateway_pb2.Voice, tmp_path: Path
) -> None:
    args = ["--text", "Hi.", "--voice", plain_voice.name, "--out", str(tmp_path / "x.wav"), "--rate", "7"]
    done = run_node([*node_client, *args], stack.tts_target)
    assert done.returncode == 2, done.stderr
    lines = lines_of(done.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: INVALID_ARGUMENT: ") and "sample_rate_hz" in lines[0]


def test_node_client_honours_retry_info(
    node_client: list[str], fake_gateway: tuple[FakeOverloadedGateway, str], tmp_path: Path
) -> None:
    servicer, target = fake_gateway
    servicer.refusals = [Refusal(retry_after_s=0.3), Refusal(retry_after_s=0.2)]
    out = tmp_path / "retried.wav"
    done = run_node([*node_client, "--text", "Hi.", "--voice", "fake", "--out", str(out), "--format", "wav"], target)
    assert done.returncode == 0, done.stderr
    retries = [line for line in lines_of(done.stderr) if "retrying in" in line]
    prefix = "RESOURCE_EXHAUSTED: the gateway is at its real-time capacity (fake); retry shortly; retrying in "
    assert [line.startswith(prefix) for line in retries] == [True, True], done.stderr
    assert [line.endswith(f"s (retry {i} of 3)") for i, line in enumerate(retries, 1)] == [True, True]
    # Jittered, never below the hint: [0.3, 0.6] for the first retry, [0.2, 0.6] for the second.
    delays = [float(line[len(prefix) :].split(" s ")[0]) for line in retries]
    assert 0.3 <= delays[0] <= 0.6 and 0.2 <= delays[1] <= 0.6, delays
    assert len(servicer.calls) == 3
    gaps = [later - earlier for earlier, later in zip(servicer.calls, servicer.calls[1:], strict=False)]
    assert gaps[0] >= 0.3 and gaps[1] >= 0.2, gaps
    samples, rate = read_finalized_wav(out.read_bytes())
    assert rate == SAMPLE_RATE and len(samples) == int(0.6 * SAMPLE_RATE)


def test_node_retry_delays_are_jittered_never_below_the_hint(node_client: list[str]) -> None:
    script = (
        "const { jitteredDelay } = require(process.argv[1]);"
        "const d = Array.from({ length: 2000 }, () => jitteredDelay(1, 1));"
        "const third = Array.from({ length: 2000 }, () => jitteredDelay(1, 3));"
        "console.log(JSON.stringify({ min: Math.min(...d), max: Math.max(...d), mean: d.reduce((a, b) => a + b) / "
        "d.length, max3: Math.max(...third), capped: jitteredDelay(100, 1), off: jitteredDelay(0.4, 2, 10, 0) }));"
    )
    done = subprocess.run(
        [node_client[0], "-e", script, str(Path(node_client[-1]).resolve())],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    assert got["min"] >= 1.0 and got["max"] <= 2.0 and 1.4 < got["mean"] < 1.6
    assert got["max3"] > 4.0 and got["capped"] == 10 and got["off"] == 0.4


def test_node_client_gives_up_as_told(
    node_client: list[str], fake_gateway: tuple[FakeOverloadedGateway, str], tmp_path: Path
) -> None:
    servicer, target = fake_gateway
    servicer.refusals = [Refusal(retry_after_s=0.25)]
    args = ["--text", "Hi.", "--voice", "fake", "--out", str(tmp_path / "x.wav"), "--max-retries", "0"]
    done = run_node([*node_client, *args], target)
    assert done.returncode == 6, done.stderr
    lines = lines_of(done.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: RESOURCE_EXHAUSTED: "), done.stderr
    assert lines[0].endswith("(retry after 0.25 s)") and len(servicer.calls) == 1
    # A delay that would pass the deadline is not waited for.
    servicer.calls.clear()
    servicer.refusals = [Refusal(retry_after_s=5.0)]
    done = run_node([*node_client, *args[:-2], "--timeout", "2"], target)
    assert done.returncode == 6 and len(servicer.calls) == 1, done.stderr
    # No RetryInfo, no retry.
    servicer.calls.clear()
    servicer.refusals = [Refusal(retry_after_s=None)]
    done = run_node([*node_client, *args[:-2]], target)
    assert done.returncode == 6 and len(servicer.calls) == 1, done.stderr


@pytest.mark.slow
@pytest.mark.skipif(NPM is None, reason="npm is not installed")
def test_packed_client_installs_and_runs_outside_the_repository(
    stack: Stack, plain_voice: tts_gateway_pb2.Voice, tmp_path: Path
) -> None:
    packs = tmp_path / "packs"
    packs.mkdir()
    npm = str(NPM)
    quiet = ["--no-audit", "--no-fund", "--loglevel=error"]
    packed = subprocess.run(
        [npm, "pack", "--pack-destination", str(packs), *quiet],
        cwd=NODE_DIR,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert packed.returncode == 0, packed.stderr
    (tarball,) = packs.glob("*.tgz")
    with tarfile.open(tarball) as archive:
        names = set(archive.getnames())
    assert {"package/synthesize.js", "package/rpc_status.proto", "package/proto/voice/v1/tts_gateway.proto"} <= names
    assert not any("node_modules" in name or "copy-protos" in name for name in names), sorted(names)

    app = tmp_path / "app"  # outside the repository: nothing there but what npm installs
    app.mkdir()
    installed = subprocess.run(
        [npm, "install", "--ignore-scripts", *quiet, str(tarball)],
        cwd=app,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert installed.returncode == 0, installed.stderr
    binary = app / "node_modules" / ".bin" / "voice-synthesize"
    assert binary.exists()
    text = "Installed from the packed tarball."
    done = run_node(
        [str(binary), "--text", text, "--voice", plain_voice.name, "--out", "packed.wav"], stack.tts_target, cwd=app
    )
    assert done.returncode == 0, done.stderr
    samples, rate = read_finalized_wav((app / "packed.wav").read_bytes())
    assert rate == plain_voice.native_sample_rate_hz
    assert_speech_like(samples, rate, text)


TRANSCRIBE_TEXT = "The weather is going to be sunny and warm tomorrow. Please call me back when you get home tonight."


@pytest.fixture(scope="module")
def joe_wav(cli: Cli, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("node-transcribe") / "joe.wav"
    result = cli("say", TRANSCRIBE_TEXT, "--voice", "joe", "-o", str(out), "-q")
    assert result.returncode == 0, result.stderr
    return out


@pytest.mark.parametrize("extra", [[], ["--words"], ["--stream", "--interim"]])
def test_node_transcribe_hears_the_words(node_client: list[str], stack: Stack, joe_wav: Path, extra: list[str]) -> None:
    transcribe = [node_client[0], str(NODE_DIR / "transcribe.js")]
    done = run_node([*transcribe, str(joe_wav), *extra], stack.tts_target)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    finals = [line for line in lines if line and not line.startswith(("[interim] ", "  "))]
    error = wer(TRANSCRIBE_TEXT, " ".join(finals))
    assert error < 0.35, (error, lines)
    if "--interim" in extra:
        assert any(line.startswith("[interim] ") for line in lines), lines
        assert "after the end of the audio" in done.stderr
    if "--words" in extra:
        assert sum(line.startswith("  ") for line in lines) >= 10, lines
    assert "utterances in" in lines_of(done.stderr)[-1]


def test_node_transcribe_errors(node_client: list[str], stack: Stack, joe_wav: Path, tmp_path: Path) -> None:
    transcribe = [node_client[0], str(NODE_DIR / "transcribe.js")]
    unknown = run_node([*transcribe, str(joe_wav), "--model", "no-such-model", "--stream"], stack.tts_target)
    assert unknown.returncode == 3, unknown.stderr
    assert lines_of(unknown.stderr)[0].startswith("error: NOT_FOUND: "), unknown.stderr
    missing = run_node([*transcribe, str(tmp_path / "missing.wav")], stack.tts_target)
    assert missing.returncode == 2, missing.stderr
    assert "cannot read" in missing.stderr and "No such file or directory" in missing.stderr
