"""triton/launch.py: flags and their variables, which backends it plans to serve and why not the others, the staged
repository's configs. On a real server, a backend whose weights fail to load while the others serve is tested in
tests/models/test_models_serving.py (one server with a pulled checkpoint beside a broken one)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from voice_triton import registry
from voice_triton.model_config import read_config, string_parameters

REPO_ROOT = Path(__file__).resolve().parents[2]
LAUNCHER = REPO_ROOT / "triton" / "launch.py"
REPOSITORY = REPO_ROOT / "triton" / "model_repo"


@pytest.fixture(scope="module")
def launch() -> ModuleType:
    # Loaded by path: triton/ is deliberately not a package (the name clashes with OpenAI's triton).
    spec = importlib.util.spec_from_file_location("triton_launch", LAUNCHER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("TRITON_"):
            monkeypatch.delenv(name)


def complete_layout(backend: registry.Backend, root: Path) -> Path:
    """A folder holding every file the backend's layout names (empty files: enough for the launcher's check)."""
    assert backend.layout is not None
    for entry in backend.layout.required:
        path = root / entry.split("|")[0]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
    return root


def test_help_documents_every_flag_and_env_var() -> None:
    # Wide enough that argparse wraps no line (it breaks names such as Voxtral-Mini-3B-2507 at their hyphens).
    wide = {**os.environ, "COLUMNS": "1000"}
    out = subprocess.run(
        [sys.executable, str(LAUNCHER), "--help"], capture_output=True, text=True, check=True, env=wide
    ).stdout
    for flag, env in (
        ("--model-repository", "TRITON_MODEL_REPOSITORY"),
        ("--models-dir", "TRITON_MODELS_DIR"),
        ("--checkpoint", "TRITON_CHECKPOINTS"),
        ("--param", "TRITON_PARAMS"),
        ("--http-port", "TRITON_HTTP_PORT"),
        ("--grpc-port", "TRITON_GRPC_PORT"),
        ("--metrics-port", "TRITON_METRICS_PORT"),
        ("--instance-count", "TRITON_INSTANCE_COUNT"),
        ("--server-root", "TRITON_SERVER_ROOT"),
        ("--log-verbose", "TRITON_LOG_VERBOSE"),
        ("--stop-grace", "TRITON_STOP_GRACE"),
        ("--orpheus-checkpoint", "TRITON_ORPHEUS_CHECKPOINT"),
        ("--orpheus-param", "TRITON_ORPHEUS_PARAMS"),
        ("--spark-checkpoint", "TRITON_SPARK_CHECKPOINT"),
    ):
        assert flag in out and env in out, flag
    for backend in registry.BACKENDS:  # the help names every backend that takes a checkpoint, from the registry
        assert backend.embedded or (backend.name in out and backend.models_dir_name in out)


def test_defaults_and_env_overrides(launch: ModuleType, monkeypatch: pytest.MonkeyPatch, clean_env: None) -> None:
    args = launch.parse_args([])
    assert (args.http_port, args.grpc_port, args.metrics_port) == (8000, 8001, 8002)
    assert args.instance_count is None and args.checkpoint == [] and args.param == []
    monkeypatch.setenv("TRITON_GRPC_PORT", "9101")
    monkeypatch.setenv("TRITON_INSTANCE_COUNT", "3")
    monkeypatch.setenv("TRITON_CHECKPOINTS", "spark=/a, orpheus=/b")
    monkeypatch.setenv("TRITON_PARAMS", "spark_tts:top_k=5")
    args = launch.parse_args(["--http-port", "9100", "--param", "orpheus_tts:top_p=0.5", "--", "--log-info=false"])
    assert (args.http_port, args.grpc_port, args.instance_count) == (9100, 9101, 3)
    assert args.checkpoint == ["spark=/a", "orpheus=/b"]
    assert args.param == ["spark_tts:top_k=5", "orpheus_tts:top_p=0.5"]  # the command line adds to the variable
    assert args.server_args == ["--log-info=false"]


def test_without_checkpoints_only_piper_is_planned_and_each_other_backend_says_why(
    launch: ModuleType, clean_env: None
) -> None:
    plan = launch.plan_launch(launch.parse_args([]), REPOSITORY)
    # The embedded backends: Piper (speech out) and PocketSphinx (speech in).
    assert plan.backends == ["piper", "pocketsphinx"]
    assert plan.models == ["piper_tts", "piper_tts_whole", "pocketsphinx"]
    others = [backend.name for backend in registry.BACKENDS if not backend.embedded]
    assert sorted(plan.skipped) == sorted(others)
    assert all("no checkpoint" in why for why in plan.skipped.values())


def test_an_incomplete_checkpoint_is_reported_with_what_is_missing(
    launch: ModuleType, tmp_path: Path, clean_env: None
) -> None:
    spark = complete_layout(registry.get("spark"), tmp_path / "spark")
    (spark / "BiCodec" / "model.safetensors").unlink()
    (spark / "LLM" / "config.json").unlink()
    orpheus = complete_layout(registry.get("orpheus"), tmp_path / "orpheus")
    plan = launch.plan_launch(
        launch.parse_args([f"--checkpoint=spark={spark}", f"--orpheus-checkpoint={orpheus}"]), REPOSITORY
    )
    assert plan.backends == ["piper", "pocketsphinx", "orpheus"]
    assert "orpheus_tts" in plan.models and "spark_tts" not in plan.models
    assert plan.skipped["spark"].endswith("missing: BiCodec/model.safetensors, LLM/config.json")
    assert plan.overrides["orpheus_tts"]["checkpoint_dir"] == str(orpheus)


def test_models_dir_serves_the_backends_found_under_their_registered_names(
    launch: ModuleType, tmp_path: Path, clean_env: None
) -> None:
    spark = registry.get("spark")
    complete_layout(spark, tmp_path / spark.models_dir_name)
    (tmp_path / "unrelated").mkdir()
    plan = launch.plan_launch(launch.parse_args([f"--models-dir={tmp_path}", "--spark-param=top_k=7"]), REPOSITORY)
    assert plan.backends == ["piper", "pocketsphinx", "spark"]
    for model in spark.models:
        assert plan.overrides[model]["checkpoint_dir"] == str(tmp_path / spark.models_dir_name)
    assert plan.overrides["spark_tts"]["top_k"] == "7"
    # --models narrows the plan; a model of a backend that cannot serve is refused with the reason.
    only = launch.plan_launch(launch.parse_args([f"--models-dir={tmp_path}", "--models=spark_tts"]), REPOSITORY)
    assert only.models == ["spark_tts"]
    with pytest.raises(launch.LaunchError, match=r"orpheus_tts.*no checkpoint"):
        launch.plan_launch(launch.parse_args(["--models=orpheus_tts"]), REPOSITORY)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--checkpoint=nonesuch=/x"], "unknown backend 'nonesuch'"),
        (["--checkpoint=spark"], "BACKEND=DIR"),
        (["--checkpoint=piper=/x"], "needs no checkpoint"),
        (["--param=nomodel:key=1"], "no model 'nomodel'"),
        (["--param=piper_tts=1"], "MODEL:KEY=VALUE"),
    ],
)
def test_flag_mistakes_are_refused_with_what_to_write(
    launch: ModuleType, flags: list[str], message: str, clean_env: None
) -> None:
    with pytest.raises((launch.LaunchError, registry.UnknownBackend), match=message):
        launch.plan_launch(launch.parse_args(flags), REPOSITORY)


def test_staged_configs_change_only_what_was_asked_through_the_config_protobuf(launch: ModuleType) -> None:
    overrides = {"orpheus_tts": {"checkpoint_dir": "/ckpt", "max_new_tokens": "50", "extra": "x"}}
    staged = launch.staged_repository(REPOSITORY, ["piper_tts", "piper_tts_whole", "orpheus_tts"], overrides, 3)
    try:
        assert sorted(p.name for p in staged.iterdir()) == ["orpheus_tts", "piper_tts", "piper_tts_whole"]
        for model in ("piper_tts", "piper_tts_whole", "orpheus_tts"):
            original, rewritten = (
                read_config(REPOSITORY / model / "config.pbtxt"),
                read_config(staged / model / "config.pbtxt"),
            )
            assert [group.count for group in original.instance_group] == [1]
            assert [group.count for group in rewritten.instance_group] == [3]
            del rewritten.instance_group[:]
            del original.instance_group[:]
            changed = string_parameters(rewritten)
            expected = {**string_parameters(original), **overrides.get(model, {})}
            assert changed == expected  # every other parameter, input and output unchanged
            for group in ("input", "output"):
                assert list(getattr(rewritten, group)) == list(getattr(original, group))
            assert (staged / model / "1" / "model.py").is_file()
        assert (staged / "orpheus_tts" / "1" / "orpheus_codec.py").is_file()
    finally:
        shutil.rmtree(staged, ignore_errors=True)
