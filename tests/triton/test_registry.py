"""The backend registry and the models' shared code that needs no server (voice_triton)."""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path

import pytest

from voice_triton import registry
from voice_triton.lru import LockedLRU
from voice_triton.model_config import read_config
from voice_triton.params import ConfigError, ModelParams

REPO_ROOT = Path(__file__).resolve().parents[2]
REPOSITORY = REPO_ROOT / "triton" / "model_repo"


def test_every_model_folder_belongs_to_exactly_one_backend_and_every_registered_model_exists() -> None:
    folders = sorted(path.parent.name for path in REPOSITORY.glob("*/config.pbtxt"))
    registered = sorted(model for backend in registry.BACKENDS for model in backend.models)
    assert folders == registered
    for backend in registry.BACKENDS:
        assert backend.entry_model in backend.models
        for model in backend.models:
            # The config's name is the folder's, and helper models carry their backend's name.
            assert read_config(REPOSITORY / model / "config.pbtxt").name == model
            assert model == backend.name or model.startswith(f"{backend.name}_"), model


def test_entries_are_complete() -> None:
    assert registry.get("piper").embedded  # the default needs no checkpoint
    names = registry.names()
    assert len(set(names)) == len(names)
    dirs = [backend.models_dir_name for backend in registry.BACKENDS if not backend.embedded]
    assert len(set(dirs)) == len(dirs) and all(dirs)
    for backend in registry.BACKENDS:
        for requirement in backend.requirements:
            assert (REPO_ROOT / "triton" / requirement).is_file(), requirement
        if not backend.embedded:
            module = backend.tiny_writer.replace(".", "/") + ".py"
            assert (REPO_ROOT / "triton" / "kit" / "src" / module).is_file(), backend.tiny_writer
    with pytest.raises(registry.UnknownBackend, match="known are piper"):
        registry.get("nonesuch")


def test_voices_come_from_the_registry_and_orpheus_speakers_from_its_config() -> None:
    config = read_config(REPOSITORY / "orpheus_tts" / "config.pbtxt")
    speakers = config.parameters["speakers"].string_value.split(",")
    voices = registry.get("orpheus").gateway_voices()
    assert [voice.speaker for voice in voices] == speakers
    assert [voice.name for voice in voices] == [f"orpheus-{speaker}" for speaker in speakers]
    assert [voice.name for voice in registry.get("spark").gateway_voices()] == ["spark"]
    text = registry.voices_toml([registry.get("spark"), registry.get("orpheus")])
    import tomllib

    parsed = tomllib.loads(text)["voice"]
    assert len(parsed) == 1 + len(speakers)
    assert parsed[1] == {
        "name": "orpheus-tara",
        "description": "Orpheus TTS, tara",
        "tts_model": "orpheus_tts",
        "speaker": "tara",
    }


def test_layout_alternatives_and_missing_files(tmp_path: Path) -> None:
    layout = registry.Layout(("config.json", "model.safetensors|pytorch_model.bin", "sub/a.txt"))
    assert layout.missing(tmp_path / "absent") == list(layout.required)
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    assert layout.missing(tmp_path) == ["sub/a.txt"]


def test_no_backend_is_named_outside_the_registry() -> None:
    """The launcher and run_stack learn backends from the registry only (the old flag spellings are generated)."""
    for path in (REPO_ROOT / "triton" / "launch.py", REPO_ROOT / "deploy" / "local" / "run_stack.py"):
        code = "\n".join(
            line for line in path.read_text().splitlines() if not line.lstrip().startswith("#")
        )  # comments and docstring examples may mention one
        code = re.sub(r'"""(.|\n)*?"""', "", code)
        for backend in registry.BACKENDS:
            for name in (backend.name, *backend.models):
                assert not re.search(rf"\b{name}\b", code), f"{path.name} names {name}"


def params(values: dict[str, str], decoupled: bool = False) -> ModelParams:
    config = {
        "parameters": {key: {"string_value": value} for key, value in values.items()},
        "model_transaction_policy": {"decoupled": decoupled},
    }
    return ModelParams.from_args({"model_name": "m", "model_config": json.dumps(config)})


def test_model_params_are_typed_with_ranges_and_name_the_key_when_wrong() -> None:
    p = params({"n": "4", "x": "0.5", "flag": "true", "list": "a, b,,c", "r": "0,2", "bad": "many"}, decoupled=True)
    assert p.decoupled and p.model_name == "m"
    assert p.integer("n", 1, 1, 8) == 4 and p.integer("absent", 3) == 3
    assert p.number("x", 1.0, 0, 1) == 0.5 and p.flag("flag", False) and not p.flag("absent", False)
    assert p.names("list") == ["a", "b", "c"] and p.interval("r") == (0.0, 2.0)
    with pytest.raises(ConfigError, match="m: config parameter n must be between 5 and 8, got 4"):
        p.integer("n", 1, 5, 8)
    with pytest.raises(ConfigError, match="parameter bad must be a whole number"):
        p.integer("bad", 1)
    with pytest.raises(ConfigError, match="parameter bad must be true or false"):
        p.flag("bad", True)
    with pytest.raises(ConfigError, match="parameter absent must be set"):
        p.required("absent")


def test_locked_lru_evicts_the_least_recently_used_and_counts() -> None:
    cache: LockedLRU[str, int] = LockedLRU(2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # a is now the most recent
    cache.put("c", 3)
    assert cache.get("b") is None and cache.get("a") == 1 and cache.get("c") == 3
    assert (cache.hits, cache.misses, len(cache)) == (3, 1, 2)

    def hammer(offset: int) -> None:
        for i in range(2000):
            cache.put(f"{offset}-{i % 7}", i)
            cache.get(f"{offset}-{(i + 1) % 7}")

    threads = [threading.Thread(target=hammer, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(cache) == 2
