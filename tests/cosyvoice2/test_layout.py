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


def test_catalog_layout_is_part_of_ours() -> None:
    layout = _entry().layout
    assert layout is not None
    assert set(layout.required) <= set(LAYOUT.required)


def test_layout_judges_a_folder(tmp_path: Path) -> None:
    for path in LAYOUT.required:
        (tmp_path / path.split("|")[-1]).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path.split("|")[-1]).touch()
    assert LAYOUT.missing(tmp_path) == []
    entry = _entry()
    assert entry.layout is not None and entry.layout.missing(tmp_path) == []
    (tmp_path / "llm.pt").unlink()
    assert LAYOUT.missing(tmp_path) == ["llm.pt"]
