"""The Python client installs and works outside the repository: wheels of voice-proto (proto/) and voice-client
(clients/python/) go into a fresh virtual environment with one pip command, their dependencies from the package
index, and `voice-cli` runs there against the real stack. Nothing of the server comes along.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.clients.audio_checks import assert_speech_like, read_finalized_wav
from tests.clients.conftest import REPO_ROOT, Stack
from voice.v1 import tts_gateway_pb2

pytestmark = pytest.mark.slow

SOURCES = {"voice-proto": REPO_ROOT / "proto", "voice-client": REPO_ROOT / "clients" / "python"}
# Must not be installed with the client: server code and its media, status and reflection packages.
FORBIDDEN = {"voice-serving", "av", "soxr", "grpcio-status", "grpcio-reflection", "prometheus-client"}
INSTALL_TIMEOUT_S = 540


@dataclass(frozen=True)
class ClientVenv:
    root: Path
    work: Path  # an empty working directory outside the repository

    @property
    def python(self) -> Path:
        return self.root / "bin" / "python"

    @property
    def voice_cli(self) -> Path:
        return self.root / "bin" / "voice-cli"

    def env(self, **extra: str) -> dict[str, str]:
        drop = ("VOICE_", "PYTHON", "VIRTUAL_ENV", "PIP_REQUIRE_VIRTUALENV")
        env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
        env["PATH"] = f"{self.root / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        env.update(extra)
        return env

    def run(self, *args: str | Path, timeout: float = 240, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(a) for a in args],
            cwd=self.work,
            env=self.env(**env),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )


def _base_python() -> str:
    """A Python 3.11 outside any virtual environment (the venv module makes a clean one from it)."""
    found = shutil.which("python3.11")
    if found and Path(found).resolve() != Path(sys.executable).resolve():
        return found
    return str(Path(sys.base_prefix) / "bin" / "python3")


def _checked(done: subprocess.CompletedProcess[str], what: str) -> subprocess.CompletedProcess[str]:
    assert done.returncode == 0, f"{what} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def client_venv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClientVenv]:
    base = tmp_path_factory.mktemp("client-install")
    # Build from copies, so that setuptools' build/ and egg-info folders never land in the checkout.
    sources = []
    for name, source in SOURCES.items():
        if not (source / "pyproject.toml").is_file():
            pytest.fail(f"{source}/pyproject.toml is missing: {name} cannot be built")
        copy = base / "src" / source.name
        shutil.copytree(source, copy, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
        sources.append(copy)
    wheels = base / "wheels"
    # The development environment has the build back end and grpcio-tools (requirements-dev.txt), so no isolated
    # build environment has to be downloaded.
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels)]
    _checked(
        subprocess.run([*build, *map(str, sources)], capture_output=True, text=True, timeout=300, check=False),
        "pip wheel",
    )
    built = sorted(wheels.glob("*.whl"))
    assert [w.name.split("-")[0] for w in built] == ["voice_client", "voice_proto"], built

    venv = ClientVenv(base / "venv", base / "work")
    venv.work.mkdir()
    _checked(
        subprocess.run(
            [_base_python(), "-m", "venv", str(venv.root)], capture_output=True, text=True, timeout=120, check=False
        ),
        "python3.11 -m venv",
    )
    # One pip command: both wheels, every dependency resolved from the index.
    install = venv.run(
        venv.python, "-m", "pip", "install", "--disable-pip-version-check", *built, timeout=INSTALL_TIMEOUT_S
    )
    _checked(install, "pip install of the two wheels")
    yield venv


def test_only_client_dependencies_are_installed(client_venv: ClientVenv) -> None:
    listed = _checked(client_venv.run(client_venv.python, "-m", "pip", "list", "--format=json"), "pip list")
    names = {entry["name"].lower().replace("_", "-") for entry in json.loads(listed.stdout)}
    client = {"voice-client", "voice-proto", "grpcio", "protobuf", "numpy", "soundfile"}
    assert client | {"googleapis-common-protos", "grpcio-health-checking"} <= names, names
    assert not names & FORBIDDEN, f"installed with the client: {sorted(names & FORBIDDEN)}"


def test_server_code_is_not_importable(client_venv: ClientVenv) -> None:
    for module in ("services", "grpc_status", "grpc_reflection", "av", "soxr", "prometheus_client"):
        done = client_venv.run(client_venv.python, "-c", f"import {module}")
        assert done.returncode != 0 and "ModuleNotFoundError" in done.stderr, f"{module} imports: {done.stderr}"
    probe = "import voice_client, voice.v1.tts_gateway_pb2_grpc; print(voice_client.__file__)"
    done = _checked(client_venv.run(client_venv.python, "-c", probe), "import voice_client")
    assert str(client_venv.root) in done.stdout and str(REPO_ROOT) not in done.stdout


def test_voice_cli_help(client_venv: ClientVenv) -> None:
    done = _checked(client_venv.run(client_venv.voice_cli, "--help"), "voice-cli --help")
    assert done.stdout.startswith("usage: voice-cli") and "--max-retries" in done.stdout
    module = _checked(client_venv.run(client_venv.python, "-m", "voice_client", "say", "--help"), "-m voice_client")
    assert "--voice" in module.stdout


def test_voice_cli_synthesizes_against_the_real_stack(
    client_venv: ClientVenv, stack: Stack, plain_voice: tts_gateway_pb2.Voice
) -> None:
    text = "Installed from a wheel, far from the repository."
    done = client_venv.run(
        client_venv.voice_cli, "--target", stack.tts_target, "say", text, "--voice", plain_voice.name, "-o", "out.wav"
    )
    _checked(done, "voice-cli say")
    samples, rate = read_finalized_wav((client_venv.work / "out.wav").read_bytes())
    assert rate == plain_voice.native_sample_rate_hz
    assert_speech_like(samples, rate, text)
    # The health check (a generic call with the private pool's messages) and the rich status of a refusal.
    status = _checked(client_venv.run(client_venv.voice_cli, "--target", stack.tts_target, "status"), "status")
    assert ": SERVING" in status.stdout.splitlines()[0]
    bad = client_venv.run(
        client_venv.voice_cli, "--target", stack.tts_target, "say", "Hi.", "--voice", plain_voice.name, "-o", "x.wav",
        "--rate", "7",
    )  # fmt: skip
    assert bad.returncode == 2 and "output_format.sample_rate_hz" in bad.stderr, bad.stderr


def test_voice_cli_convert_of_a_missing_file_is_one_line(client_venv: ClientVenv, stack: Stack) -> None:
    done = client_venv.run(
        client_venv.voice_cli, "--rvc-target", stack.rvc_target, "convert", "input.wav", "-o", "out.wav",
        "--model", "world-default",
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert done.stderr == "voice-cli: error: cannot read input.wav: No such file or directory\n"
    assert done.stdout == ""
