"""The CosyVoice2 checkpoint layout (voice_triton.cosyvoice2.LAYOUT) agrees with the model catalog's
`cosyvoice2-0.5b` entry: `voice-models pull` fetches every file the backend needs, and a folder the backend accepts
passes the catalog's own completeness check."""

from __future__ import annotations

from fnmatch import fnmatch
from pathlib import Path

from voice_triton import catalog
from voice_triton.cosyvoice2 import LAYOUT


def _entry() -> catalog.Entry:
    return catalog.get("cosyvoice2-0.5b")


def test_catalog_pulls_every_file_of_the_layout() -> None:
    patterns = _entry().files
    for required in LAYOUT.required:
        for path in required.split("|"):
            assert any(fnmatch(path, pattern) for pattern in patterns), f"{path} is not pulled by the catalog"


def test_catalog_entry_fills_the_backend_and_judges_with_its_layout() -> None:
    entry = _entry()
    assert entry.backend == "cosyvoice2"
    assert entry.required() == LAYOUT.required


def test_layout_judges_a_folder(tmp_path: Path) -> None:
    entry = _entry()
    folder = entry.directory(tmp_path)
    assert folder == tmp_path / "CosyVoice2-0.5B"
    for path in LAYOUT.required:
        (folder / path.split("|")[-1]).parent.mkdir(parents=True, exist_ok=True)
        (folder / path.split("|")[-1]).touch()
    assert LAYOUT.missing(folder) == [] and entry.missing(tmp_path) == []
    (folder / "llm.pt").unlink()
    assert LAYOUT.missing(folder) == ["llm.pt"] and entry.missing(tmp_path) == ["llm.pt"]
