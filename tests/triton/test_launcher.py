"""triton/launch.py pieces that need no server: flags, env-var equivalents, the instance-count rewrite."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
LAUNCHER = REPO_ROOT / "triton" / "launch.py"


@pytest.fixture(scope="module")
def launch() -> ModuleType:
    # Loaded by path: triton/ is deliberately not a package (the name clashes with OpenAI's triton).
    spec = importlib.util.spec_from_file_location("triton_launch", LAUNCHER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_help_documents_every_flag_and_env_var() -> None:
    out = subprocess.run([sys.executable, str(LAUNCHER), "--help"], capture_output=True, text=True, check=True).stdout
    for flag, env in (
        ("--model-repository", "TRITON_MODEL_REPOSITORY"),
        ("--http-port", "TRITON_HTTP_PORT"),
        ("--grpc-port", "TRITON_GRPC_PORT"),
        ("--metrics-port", "TRITON_METRICS_PORT"),
        ("--instance-count", "TRITON_INSTANCE_COUNT"),
        ("--log-verbose", "TRITON_LOG_VERBOSE"),
        ("--stop-grace", "TRITON_STOP_GRACE"),
        ("--orpheus-checkpoint", "TRITON_ORPHEUS_CHECKPOINT"),
        ("--orpheus-param", "TRITON_ORPHEUS_PARAMS"),
    ):
        assert flag in out and env in out


def test_defaults_and_env_overrides(launch: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    args = launch.parse_args([])
    assert (args.http_port, args.grpc_port, args.metrics_port) == (8000, 8001, 8002)
    assert args.instance_count is None
    monkeypatch.setenv("TRITON_GRPC_PORT", "9101")
    monkeypatch.setenv("TRITON_INSTANCE_COUNT", "3")
    args = launch.parse_args(["--http-port", "9100", "--", "--log-info=false"])
    assert (args.http_port, args.grpc_port, args.instance_count) == (9100, 9101, 3)
    assert args.server_args == ["--log-info=false"]


def test_instance_count_rewrites_only_instance_groups(launch: ModuleType) -> None:
    staged = launch.staged_repository(REPO_ROOT / "triton" / "model_repo", 3)
    try:
        for name in ("piper_tts", "piper_tts_whole"):
            original = (REPO_ROOT / "triton" / "model_repo" / name / "config.pbtxt").read_text()
            rewritten = (staged / name / "config.pbtxt").read_text()
            assert "count: 1, kind: KIND_CPU" in original
            assert "count: 3, kind: KIND_CPU" in rewritten
            assert rewritten.replace("count: 3, kind", "count: 1, kind") == original
            assert (staged / name / "1" / "model.py").is_file()
    finally:
        import shutil

        shutil.rmtree(staged, ignore_errors=True)


def test_orpheus_checkpoint_stages_orpheus_tts_with_its_parameters(launch: ModuleType, tmp_path: Path) -> None:
    import shutil

    staged = launch.staged_repository(
        REPO_ROOT / "triton" / "model_repo", None, None, None, tmp_path, {"max_new_tokens": "50", "extra": "x"}
    )
    try:
        config = (staged / "orpheus_tts" / "config.pbtxt").read_text()
        assert f'key: "checkpoint_dir", value: {{ string_value: "{tmp_path}" }}' in config
        assert 'key: "max_new_tokens", value: { string_value: "50" }' in config
        assert 'key: "extra", value: { string_value: "x" }' in config  # an unknown key is added
        assert (staged / "orpheus_tts" / "1" / "orpheus_codec.py").is_file() and (staged / "piper_tts").is_dir()
        assert not (staged / "spark_tts").exists()
    finally:
        shutil.rmtree(staged, ignore_errors=True)
