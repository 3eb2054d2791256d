"""The gateway's saved-voice wiring: which store the flags choose, and the caches a change to a voice clears."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from services.tts_gateway.app import make_parser, make_saved_voice_store, watch_saved_voices
from services.tts_gateway.saved_voices_dir import DirectorySavedVoiceStore
from services.tts_gateway.saved_voices_pg import PostgresSavedVoiceStore
from services.tts_gateway.validation import ReferenceCache, saved_reference_prefix
from tests.saved_voices.helpers import make


def test_the_database_flag_chooses_the_postgresql_store_and_wins_over_the_directory(tmp_path: Path) -> None:
    url = "postgresql://voices:pw@db.example:6543/voices"
    args = make_parser().parse_args([f"--saved-voices-dir={tmp_path}", f"--saved-voices-database={url}"])
    store = make_saved_voice_store(args, ["joe"])
    assert isinstance(store, PostgresSavedVoiceStore)
    assert store.target == "db.example:6543/voices" and "pw" not in repr(store.health())
    args = make_parser().parse_args([f"--saved-voices-dir={tmp_path}", "--max-saved-voices=7"])
    local = make_saved_voice_store(args, ["joe"])
    assert isinstance(local, DirectorySavedVoiceStore) and local.max_voices == 7
    assert make_saved_voice_store(make_parser().parse_args(["--saved-voices-dir="]), []) is None


class _Host:
    async def set_serving(self, serving: bool, name: str | None = None) -> None:
        pass

    def on_stop(self, hook: Any) -> None:
        pass


async def test_a_changed_voice_drops_only_its_own_cached_references(tmp_path: Path) -> None:
    store = DirectorySavedVoiceStore(tmp_path / "saved")
    cache = ReferenceCache(8)
    watch_saved_voices(store, cache, _Host())  # type: ignore[arg-type]
    voice = await make(store, "a")
    other = await make(store, "ab")
    clip = np.zeros(10, np.float32)
    for saved in (voice, other):
        cache.put(f"{saved_reference_prefix(saved.name)}{saved.create_time}", 24_000, clip.copy(), 24_000)
    await store.delete("a")
    assert cache.get(f"saved:a:{voice.create_time}", 24_000) is None
    assert cache.get(f"saved:ab:{other.create_time}", 24_000) is not None
