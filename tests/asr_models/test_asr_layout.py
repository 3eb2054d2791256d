"""The recognition backends' checkpoints: the tiny writers' files are the registered layout, the same seed writes the
same weights, and an incomplete directory is refused naming what is missing (by the launcher and by the model)."""

from __future__ import annotations

import hashlib
import importlib.util
import shutil
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.fixtures.triton_server import REPO_ROOT, write_tiny_checkpoint
from voice_triton import catalog, registry
from voice_triton.checkpoint import checkpoint_dir
from voice_triton.params import ConfigError, ModelParams

BACKENDS = ["whisper", "voxtral"]


@pytest.fixture(scope="module")
def launch() -> ModuleType:
    # Loaded by path: triton/ is deliberately not a package (the name clashes with OpenAI's triton).
    spec = importlib.util.spec_from_file_location("triton_launch_asr", REPO_ROOT / "triton" / "launch.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_tiny_writer_fills_the_registered_layout(tiny_checkpoints: dict[str, Path], backend: str) -> None:
    entry = registry.get(backend)
    root = tiny_checkpoints[backend]
    assert entry.layout is not None and entry.missing(root) == []
    written = files(root)
    # Every layout entry is met by a file the writer made, and the catalog's download patterns take every one.
    for required in entry.layout.required:
        assert set(required.split("|")) & written, required
    published = catalog.get({"whisper": "whisper-large-v3-turbo", "voxtral": "voxtral-mini-3b-2507"}[backend])
    assert published.backend == backend and published.revision_pinned
    import fnmatch

    for name in written:
        assert any(fnmatch.fnmatch(name, pattern) for pattern in published.files), name
    assert sum((root / name).stat().st_size for name in written) < 30e6
    assert entry.voices == () and entry.gateway_voices() == []


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_same_seed_writes_the_same_weights(tiny_checkpoints: dict[str, Path], tmp_path: Path, backend: str) -> None:
    again = write_tiny_checkpoint(backend, tmp_path / backend, seed=0)

    def digest(root: Path) -> str:
        return hashlib.sha256((root / "model.safetensors").read_bytes()).hexdigest()

    assert digest(again) == digest(tiny_checkpoints[backend])
    other = write_tiny_checkpoint(backend, tmp_path / f"{backend}-1", seed=1)
    assert digest(other) != digest(again)


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_incomplete_checkpoint_is_refused_naming_the_missing_file(
    tiny_checkpoints: dict[str, Path], tmp_path: Path, launch: ModuleType, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in [n for n in __import__("os").environ if n.startswith("TRITON_")]:
        monkeypatch.delenv(name)
    broken = shutil.copytree(tiny_checkpoints[backend], tmp_path / backend)
    gone = "preprocessor_config.json"
    (broken / gone).unlink()
    plan = launch.plan_launch(
        launch.parse_args([f"--checkpoint={backend}={broken}"]), REPO_ROOT / "triton" / "model_repo"
    )
    assert backend not in plan.backends and registry.get(backend).entry_model not in plan.models
    assert plan.skipped[backend].endswith(f"missing: {gone}")
    # The model's own check, what a load with a hand-set checkpoint_dir meets first.
    params = ModelParams(backend, {"checkpoint_dir": str(broken)})
    with pytest.raises(ConfigError, match=f"missing: {gone}"):
        checkpoint_dir(params, backend)
