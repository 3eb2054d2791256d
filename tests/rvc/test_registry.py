from __future__ import annotations

import shutil
import threading
from pathlib import Path

import pytest

from services.rvc_service.engines import ConversionParams, ModelLoadError, RvcModel, WorldVoice
from services.rvc_service.registry import InvalidModelName, ModelNotFound, ModelRegistry, find_index
from tests.rvc.factories import harmonic_tone, write_checkpoint


@pytest.fixture()
def registry_dir(model_dir: Path, tmp_path: Path) -> Path:
    d = tmp_path / "models"
    shutil.copytree(model_dir, d)
    write_checkpoint(d / "bass.pth", "v2", False, 32000, seed=2)
    return d


def test_lists_builtins_and_checkpoints(registry_dir: Path) -> None:
    reg = ModelRegistry(registry_dir)
    infos = {i.name: i for i in reg.list()}
    assert {"world-default", "world-bright", "alto", "tenor", "bass"} <= set(infos)
    assert infos["world-default"].engine == "world" and infos["world-default"].loaded
    alto = infos["alto"]
    assert (alto.engine, alto.loaded, alto.has_index, alto.sample_rate_hz) == ("rvc", False, True, 0)
    assert alto.size_bytes > 0 and not infos["bass"].has_index
    assert find_index(registry_dir, "alto").name.startswith("added_IVF")


def loaded_rvc_models(reg: ModelRegistry) -> list[str]:
    """The RVC checkpoints held in memory (WORLD voices are always loaded), as ListModels reports them."""
    return [info.name for info in reg.list() if info.loaded and info.engine == "rvc"]


def test_load_get_unload(registry_dir: Path) -> None:
    reg = ModelRegistry(registry_dir)
    m = reg.load("alto")
    assert isinstance(m, RvcModel) and reg.get("alto") is m and loaded_rvc_models(reg) == ["alto"]
    info = reg.info("alto")
    assert info.loaded and info.version == "v2" and info.sample_rate_hz == 40000 and info.memory_bytes > 0
    assert info.uses_f0 and info.has_index and info.speaker_count == 2
    y, sr = m.convert(harmonic_tone(seconds=0.5), 16000, ConversionParams(f0_method="pm"), seed=0)
    assert sr == 40000 and len(y) == 20000
    assert isinstance(reg.get("world-default"), WorldVoice)
    assert reg.unload("alto") and not reg.unload("alto") and loaded_rvc_models(reg) == []


def test_lru_eviction_under_budget(registry_dir: Path) -> None:
    probe = ModelRegistry(registry_dir)
    sizes = {n: probe.load(n).memory_bytes for n in ("alto", "bass", "tenor")}
    reg = ModelRegistry(registry_dir, memory_budget_bytes=sum(sizes.values()) - 1)  # all three never fit
    reg.load("alto")
    reg.load("bass")
    reg.load("alto")  # touch: bass becomes least recently used
    reg.load("tenor")
    assert "bass" not in loaded_rvc_models(reg) and {"alto", "tenor"} <= set(loaded_rvc_models(reg))
    assert reg.memory_used_bytes <= reg.memory_budget_bytes
    tiny = ModelRegistry(registry_dir, memory_budget_bytes=10)
    with pytest.raises(ModelLoadError):
        tiny.load("alto")


@pytest.mark.parametrize("name", ["../alto", "sub/alto", "..", "a\\b", "/etc/passwd", "", "x\x00y"])
def test_path_names_are_rejected(registry_dir: Path, name: str) -> None:
    reg = ModelRegistry(registry_dir)
    with pytest.raises(InvalidModelName):
        reg.load(name)


def test_symlink_escaping_directory_is_rejected(registry_dir: Path, tmp_path: Path) -> None:
    outside = write_checkpoint(tmp_path / "outside.pth", "v2")
    (registry_dir / "sneaky.pth").symlink_to(outside)
    with pytest.raises(InvalidModelName):
        ModelRegistry(registry_dir).load("sneaky")


def test_unknown_and_broken_models(registry_dir: Path, tmp_path: Path) -> None:
    reg = ModelRegistry(registry_dir)
    with pytest.raises(ModelNotFound):
        reg.load("nobody")
    (registry_dir / "broken.pth").write_bytes(b"nope")
    with pytest.raises(ModelLoadError):
        reg.load("broken")
    empty = tmp_path / "empty"
    empty.mkdir()
    write_checkpoint(empty / "solo.pth")
    with pytest.raises(ModelLoadError):  # no content encoder in the directory
        ModelRegistry(empty).load("solo")


def test_concurrent_loads_give_one_instance(registry_dir: Path) -> None:
    reg = ModelRegistry(registry_dir)
    got: list[object] = []
    threads = [threading.Thread(target=lambda: got.append(reg.load("bass"))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 4 and all(g is got[0] for g in got)


def test_listing_uses_the_loading_rule(registry_dir: Path, tmp_path: Path) -> None:
    outside = write_checkpoint(tmp_path / "outside.pth", "v2")
    (registry_dir / "sneaky.pth").symlink_to(outside)
    (registry_dir / "alias.pth").symlink_to(registry_dir / "bass.pth")
    (registry_dir / "gone.pth").symlink_to(tmp_path / "missing.pth")
    reg = ModelRegistry(registry_dir)
    names = {i.name for i in reg.list()}
    assert "alias" in names and not {"sneaky", "gone"} & names
    for name in names - {"world-default", "world-bright"}:
        reg.info(name)  # every listed name is accepted by the loading rule (raises otherwise)


def test_unreadable_checkpoint_is_reported_before_missing_encoder(tmp_path: Path) -> None:
    d = tmp_path / "no_encoder"
    d.mkdir()
    (d / "noise.pth").write_bytes(bytes(range(256)) * 8)
    with pytest.raises(ModelLoadError) as err:
        ModelRegistry(d).load("noise")
    assert str(err.value).startswith("model 'noise': checkpoint is not a readable RVC .pth (")
    assert str(d) not in str(err.value)
    (d / "empty.pth").write_bytes(b"")
    with pytest.raises(ModelLoadError, match=r"checkpoint is not a readable RVC \.pth \(the file is empty\)"):
        ModelRegistry(d).load("empty")
