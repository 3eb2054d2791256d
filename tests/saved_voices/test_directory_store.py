"""The directory store's own promises: its layout on disk, sizes as on disk, crash leftovers and damaged voices.

Everything runs against real directories under tmp_path and real WAV files written and read by soundfile.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import grpc
import numpy as np
import pytest
import soundfile as sf

from services.common.errors import FailedPrecondition, InvalidArgument
from services.tts_gateway.saved_voices_dir import FORMAT_VERSION, DirectorySavedVoiceStore
from tests.saved_voices.helpers import RATE, make, speech_like, total_bytes


def entries(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir())


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "saved"


async def test_layout_on_disk_and_sizes_as_on_disk(root: Path) -> None:
    store = DirectorySavedVoiceStore(root)
    before = speech_like(2.5)
    created = await make(store, "zeta", samples=before, reference_text="Hello there.", description="Zeta's voice")
    voice_dir = root / "zeta"
    info = sf.info(str(voice_dir / "reference.wav"))
    assert (info.channels, info.samplerate, info.subtype, info.frames) == (1, RATE, "FLOAT", before.size)
    meta = json.loads((voice_dir / "voice.json").read_text(encoding="utf-8"))
    assert meta["format_version"] == FORMAT_VERSION
    assert {k: meta[k] for k in ("name", "base_voice", "reference_text", "description", "sample_rate_hz")} == {
        "name": "zeta",
        "base_voice": "spark",
        "reference_text": "Hello there.",
        "description": "Zeta's voice",
        "sample_rate_hz": RATE,
    }
    assert meta["create_time"] == created.create_time
    assert created.size_bytes == sum(p.stat().st_size for p in voice_dir.iterdir())
    await make(store, "other")
    on_disk = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())  # noqa: ASYNC240
    assert total_bytes(store) == on_disk
    await store.delete("zeta")
    assert not voice_dir.exists()
    assert entries(root) == ["other"]


async def test_bad_names_never_leave_the_root(tmp_path: Path) -> None:
    root = tmp_path / "saved"
    store = DirectorySavedVoiceStore(root)
    for bad_name in ("../x", "a/b", "..", ".hidden"):
        with pytest.raises(InvalidArgument):
            await make(store, bad_name)
    assert entries(root) == []
    assert entries(tmp_path) == ["saved"]


async def test_rejected_creates_leave_no_staging_directory(root: Path) -> None:
    store = DirectorySavedVoiceStore(root, max_voices=1)
    await make(store, "one")
    with pytest.raises(Exception):  # noqa: B017 - ResourceExhausted; what matters is what is left on disk
        await make(store, "two")
    assert entries(root) == ["one"]


async def test_start_up_clears_leftovers_and_skips_damaged_voices(root: Path, caplog: pytest.LogCaptureFixture) -> None:
    good = await make(DirectorySavedVoiceStore(root), "good")

    # A write that crashed before its rename: a temp dir with a half-written WAV and no metadata.
    staging = root / ".tmp-0123456789abcdef"
    staging.mkdir()
    (staging / "reference.wav").write_bytes(b"RIFF\x00\x00")
    # A delete that crashed after its rename.
    trash = root / ".trash-fedcba9876543210"
    (trash / "sub").mkdir(parents=True)
    # Damaged voice directories.
    corrupt = root / "corrupt"
    corrupt.mkdir()
    (corrupt / "voice.json").write_text("{not json", encoding="utf-8")
    sf.write(str(corrupt / "reference.wav"), speech_like(), RATE, subtype="FLOAT")
    no_wav = root / "no-wav"
    no_wav.mkdir()
    (no_wav / "voice.json").write_text((root / "good" / "voice.json").read_text().replace('"good"', '"no-wav"'))
    bad_wav = root / "bad-wav"
    bad_wav.mkdir()
    (bad_wav / "voice.json").write_text((root / "good" / "voice.json").read_text().replace('"good"', '"bad-wav"'))
    (bad_wav / "reference.wav").write_bytes(b"this is not audio")
    moved = root / "moved"  # a directory renamed by hand: its metadata names another voice
    moved.mkdir()
    for file in ("voice.json", "reference.wav"):
        (moved / file).write_bytes((root / "good" / file).read_bytes())
    future = root / "future"
    future.mkdir()
    meta = json.loads((root / "good" / "voice.json").read_text())
    (future / "voice.json").write_text(json.dumps({**meta, "name": "future", "format_version": FORMAT_VERSION + 1}))
    (future / "reference.wav").write_bytes((root / "good" / "reference.wav").read_bytes())
    (root / "stray-file.txt").write_text("not a voice")

    with caplog.at_level(logging.WARNING, logger="services.tts_gateway.saved_voices_dir"):
        store = DirectorySavedVoiceStore(root)

    assert [v.name for v in store.list()] == ["good"]
    assert np.array_equal(store.get("good").samples, good.samples)
    assert not staging.exists() and not trash.exists()
    warned = " ".join(record.getMessage() for record in caplog.records if record.levelno == logging.WARNING)
    for name in ("corrupt", "no-wav", "bad-wav", "moved", "future", "stray-file.txt"):
        assert name in warned
    # Damaged directories are left for the operator and do not count against the quota.
    assert corrupt.is_dir() and no_wav.is_dir()
    assert total_bytes(store) == good.size_bytes
    # Their names cannot be reused until removed, and the error says why.
    with pytest.raises(FailedPrecondition) as exc:
        await make(store, "corrupt")
    assert exc.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "damaged" in exc.value.message
    assert not any(p.name.startswith(".tmp-") for p in root.iterdir())  # noqa: ASYNC240
    # Healthy work goes on.
    assert (await make(store, "fresh")).name == "fresh"


def test_directory_store_is_always_available(root: Path) -> None:
    health = DirectorySavedVoiceStore(root).health()
    assert health.available and health.kind == "directory" and health.target == str(root.resolve())
