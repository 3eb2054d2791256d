"""Fixtures of the `voice-models` tests: the Hub stand-in serving the tiny checkpoints, and the CLI as users run it.

The stand-in serves the catalog's repositories at their pinned commits: Spark-TTS and Orpheus from the tiny
checkpoints the registered writers make (`tiny_checkpoints`), SNAC from the tiny Orpheus checkpoint's `snac/`, small
random files for the RVC assets and a user voice, plus files the backends do not load (a README, images, other RVC
weights), which a pull must leave on the Hub.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.models.hub_standin import HubRepo, HubStandIn
from voice_triton import catalog

CLI = Path(sys.executable).parent / "voice-models"
GRANTED_TOKEN = "hf_standin_granted"
UNGRANTED_TOKEN = "hf_standin_no_access"
VOICE_REPO = "someone/alice-rvc"
VOICE_COMMIT = "1111111111111111111111111111111111111111"


@dataclass(frozen=True)
class Result:
    code: int
    stdout: str
    stderr: str

    @property
    def error_line(self) -> str:
        """The last line on stderr (progress bars may precede it)."""
        lines = [line for line in self.stderr.replace("\r", "\n").splitlines() if line.strip()]
        return lines[-1] if lines else ""


def cli_env(hub_url: str, home: Path, **extra: str) -> dict[str, str]:
    """The user's environment minus Hub and models settings, pointed at the stand-in, with an empty HF_HOME (no
    stored login, no cache)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE", "VOICE_MODELS"))}
    env.update(HF_ENDPOINT=hub_url, HF_HOME=str(home), HF_HUB_DISABLE_TELEMETRY="1", **extra)
    return env


def write_files(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def random_files(root: Path, sizes: dict[str, int]) -> Path:
    """Stand-ins for weights that are only downloaded here, never loaded."""
    return write_files(root, {name: os.urandom(size) for name, size in sizes.items()})


def repo_folder(tmp: Path, name: str, *sources: Path, extra: dict[str, bytes] | None = None) -> Path:
    """A folder holding copies of `sources` (merged) and `extra` files: one repository's content."""
    root = tmp / name
    for source in sources:
        shutil.copytree(source, root, dirs_exist_ok=True)
    return write_files(root, extra or {})


@pytest.fixture(scope="session")
def hub_repos(tiny_checkpoints: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> list[HubRepo]:
    tmp = tmp_path_factory.mktemp("hub-repos")
    not_loaded = {"README.md": b"# model card\n", "src/figures/logo.png": os.urandom(2048)}
    spark = catalog.get("spark-tts-0.5b")
    orpheus, snac, rvc = catalog.get("orpheus-3b-0.1-ft"), catalog.get("snac-24khz"), catalog.get("rvc-base")
    orpheus_only = repo_folder(tmp, "orpheus", tiny_checkpoints["orpheus"], extra=not_loaded)
    shutil.rmtree(orpheus_only / "snac")
    rvc_assets = {"hubert_base.pt": 300_000, "rmvpe.pt": 200_000, "pretrained_v2/f0G40k.pth": 100_000}
    voice = {"weights/alice.pth": 120_000, "added_IVF256_Flat_nprobe_1_alice_v2.index": 40_000}
    return [
        HubRepo.from_folder(
            spark.repo_id, spark.revision, repo_folder(tmp, "spark", tiny_checkpoints["spark"], extra=not_loaded)
        ),
        HubRepo.from_folder(
            orpheus.repo_id, orpheus.revision, orpheus_only, gated=True, granted=frozenset({GRANTED_TOKEN})
        ),
        HubRepo.from_folder(
            snac.repo_id, snac.revision, repo_folder(tmp, "snac", tiny_checkpoints["orpheus"] / "snac")
        ),
        HubRepo.from_folder(rvc.repo_id, rvc.revision, random_files(tmp / "rvc", rvc_assets)),
        HubRepo.from_folder(VOICE_REPO, VOICE_COMMIT, random_files(tmp / "voice", voice)),
    ]


@pytest.fixture(scope="session")
def hub(hub_repos: list[HubRepo]) -> Iterator[HubStandIn]:
    with HubStandIn(hub_repos, tokens=frozenset({UNGRANTED_TOKEN})) as standin:
        yield standin


Cli = Callable[..., Result]


def run_cli(env: dict[str, str], *args: str, cwd: Path, limit: Callable[[], None] | None = None) -> Result:
    done = subprocess.run(
        [str(CLI), *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=120, preexec_fn=limit
    )
    return Result(done.returncode, done.stdout, done.stderr)


@pytest.fixture
def models_dir(tmp_path: Path) -> Path:
    return tmp_path / "models"


@pytest.fixture
def cli(hub: HubStandIn, tmp_path: Path, models_dir: Path) -> Cli:
    """`voice-models ARGS --models-dir <test's models dir>` against the session's stand-in; `env=` adds variables."""

    def run(*args: str, env: dict[str, str] | None = None, limit: Callable[[], None] | None = None) -> Result:
        full = cli_env(hub.url, tmp_path / "hf-home", **(env or {}))
        return run_cli(full, *args, f"--models-dir={models_dir}", cwd=tmp_path, limit=limit)

    return run
