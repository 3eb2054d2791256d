"""The directory store: saved voices on the replica's own disk (the embedded default of `make run`; one replica).

Layout under the store's root:
    <root>/<name>/reference.wav     mono float32 WAV (soundfile FLOAT subtype) at the voice's sample rate
    <root>/<name>/voice.json        metadata (see `_write_staging`), with a format version
    <root>/.tmp-<hex>/              a voice being written; renamed to <root>/<name> once complete
    <root>/.trash-<hex>/            a voice being deleted; renamed away from <root>/<name> first

A voice becomes visible in one os.rename of a fully written, fsynced directory, and disappears in one rename too, so a
crash leaves either the whole voice or none of it. Voice names always start with a letter or digit, so they can never
collide with the dot-prefixed work directories, which start-up removes.

Samples are loaded eagerly (at create and at start-up) and kept in memory as read-only arrays: memory use is bounded by
`max_total_bytes` (the float32 WAV on disk is the same size as the array), every stored WAV is fully read once at
start-up so a damaged one is skipped there rather than failing requests later, and `get` never touches the disk, so
a request cannot lose its voice's audio to a concurrent delete. The blocking file work of `create` and `delete` runs in
a worker thread (asyncio.to_thread); the in-memory registry is guarded by a lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path

from services.common.contract import MiB
from services.common.errors import FailedPrecondition
from services.tts_gateway.saved_voices import (
    NewVoice,
    SavedVoice,
    SavedVoiceStore,
    StoreHealth,
    already_exists,
    check_quota,
    decode_wav,
    encode_wav,
    name_problem,
    not_found,
    shown,
)

__all__ = ["FORMAT_VERSION", "META_NAME", "WAV_NAME", "DirectorySavedVoiceStore", "read_voice_directory"]

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
WAV_NAME = "reference.wav"
META_NAME = "voice.json"
_TMP_PREFIX = ".tmp-"
_TRASH_PREFIX = ".trash-"


def _fsync_dir(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())


def read_voice_directory(directory: Path) -> tuple[SavedVoice, bytes]:
    """One voice directory, checked for consistency, and its WAV's bytes; ValueError (or an I/O error) when it is not
    usable. Also what `saved_voices_import` reads."""
    if directory.is_symlink() or not directory.is_dir():
        raise ValueError("not a plain directory")
    problem = name_problem(directory.name)
    if problem:
        raise ValueError(f"directory name is not a valid voice name: {problem}")
    meta_path, wav_path = directory / META_NAME, directory / WAV_NAME
    with open(meta_path, encoding="utf-8") as meta:
        metadata = json.load(meta)
    if not isinstance(metadata, dict):
        raise ValueError(f"{META_NAME} is not a JSON object")
    if metadata.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"unsupported format_version {metadata.get('format_version')!r}")
    if metadata["name"] != directory.name:
        raise ValueError(f"{META_NAME} names {metadata['name']!r}, not the directory's name")
    sample_rate_hz = metadata["sample_rate_hz"]
    if not isinstance(sample_rate_hz, int) or sample_rate_hz <= 0:
        raise ValueError(f"bad sample_rate_hz {sample_rate_hz!r}")
    for key in ("base_voice", "reference_text", "description"):
        if not isinstance(metadata[key], str):
            raise ValueError(f"{key} is not a string")
    wav = wav_path.read_bytes()
    mono = decode_wav(wav, sample_rate_hz)
    voice = SavedVoice(
        name=directory.name,
        base_voice=metadata["base_voice"],
        reference_text=metadata["reference_text"],
        description=metadata["description"],
        sample_rate_hz=sample_rate_hz,
        create_time=float(metadata["create_time"]),
        duration_s=mono.size / sample_rate_hz,
        size_bytes=meta_path.stat().st_size + len(wav),
        samples=mono,
    )
    return voice, wav


class DirectorySavedVoiceStore(SavedVoiceStore):
    """Saved voices under `root`, one directory each. Quotas count what is on disk: at most `max_voices` voices
    and `max_total_bytes` bytes of voice files."""

    kind = "directory"

    def __init__(
        self,
        root: str | Path,
        *,
        max_voices: int = 100,
        max_total_bytes: int = 256 * MiB,
        reserved_names: Callable[[], Iterable[str]] = tuple,
        min_reference_s: float = 1.0,
        max_reference_s: float = 30.0,
    ) -> None:
        super().__init__(
            max_voices=max_voices,
            max_total_bytes=max_total_bytes,
            reserved_names=reserved_names,
            min_reference_s=min_reference_s,
            max_reference_s=max_reference_s,
        )
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self._load()

    def health(self) -> StoreHealth:
        return StoreHealth(kind=self.kind, target=str(self.root), available=True)

    # -------------------------------------------------------------------------------------------- mutations

    async def _create(self, new: NewVoice) -> SavedVoice:
        name = new.name
        voice = await asyncio.to_thread(self._create_blocking, new)
        self._changed(name)
        return voice

    def _create_blocking(self, new: NewVoice) -> SavedVoice:
        name = new.name
        # Fail fast, before writing anything, on the common conflicts; both are checked again at commit.
        with self._lock:
            self._check_free(name)
        staging, voice = self._write_staging(new)
        try:
            with self._lock:
                self._check_free(name)
                check_quota(
                    len(self._voices), self._used_bytes(), voice.size_bytes, self.max_voices, self.max_total_bytes
                )
                target = self._voice_dir(name)
                if os.path.lexists(target):
                    raise FailedPrecondition(
                        f"a damaged saved voice named {shown(name)} is on the server's disk; "
                        "choose another name, or ask the operator to remove it",
                        violations=[("SAVED_VOICE_DAMAGED", name, "unreadable voice directory skipped at start-up")],
                    )
                os.rename(staging, target)
                self._voices[name] = voice
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        self._sync_root()
        logger.info(
            "saved voice %r created (%.2f s at %d Hz, %d bytes)",
            name,
            voice.duration_s,
            voice.sample_rate_hz,
            voice.size_bytes,
        )
        return voice

    async def delete(self, name: str) -> SavedVoice:
        self._check_name(name)
        voice = await asyncio.to_thread(self._delete_blocking, name)
        self._changed(name)
        return voice

    def _delete_blocking(self, name: str) -> SavedVoice:
        with self._lock:
            voice = self._voices.get(name)
            if voice is None:
                raise not_found(name)
            trash = self.root / f"{_TRASH_PREFIX}{uuid.uuid4().hex}"
            # One rename takes the voice off disk atomically; the slow recursive delete happens after.
            os.rename(self._voice_dir(name), trash)
            del self._voices[name]
        self._sync_root()
        shutil.rmtree(trash, ignore_errors=True)
        logger.info("saved voice %r deleted", name)
        return voice

    # ------------------------------------------------------------------------------------------------ internals

    def _used_bytes(self) -> int:
        return sum(saved.size_bytes for saved in self._voices.values())

    def _voice_dir(self, name: str) -> Path:
        """The directory of a (validated) voice name; refuses anything that is not a direct child of root, so a
        name can never address a path outside it even if validation were bypassed."""
        path = self.root / name
        if name_problem(name) is not None or path.parent != self.root or path.name != name:
            raise AssertionError(f"saved voice name {shown(name)} escapes the store root")
        return path

    def _sync_root(self) -> None:
        """Make a rename in root durable. Best effort: the rename itself already happened and is what readers see."""
        try:
            _fsync_dir(self.root)
        except OSError as exc:
            logger.warning("could not fsync saved voice root %s: %s", self.root, exc)

    def _check_free(self, name: str) -> None:
        """AlreadyExists when a configured or saved voice has this name. Caller holds the lock."""
        self._check_not_reserved(name)
        if name in self._voices:
            raise already_exists(name)

    def _write_staging(self, new: NewVoice) -> tuple[Path, SavedVoice]:
        """A complete, fsynced voice directory under a temporary name inside root (same filesystem, so the final
        rename is atomic), and the voice it holds."""
        staging = self.root / f"{_TMP_PREFIX}{uuid.uuid4().hex}"
        staging.mkdir()
        create_time = time.time()
        try:
            wav = encode_wav(new.samples, new.sample_rate_hz)
            _write_synced(staging / WAV_NAME, wav)
            metadata = {
                "format_version": FORMAT_VERSION,
                "name": new.name,
                "base_voice": new.base_voice,
                "reference_text": new.reference_text,
                "description": new.description,
                "sample_rate_hz": new.sample_rate_hz,
                "create_time": create_time,
            }
            meta = json.dumps(metadata, ensure_ascii=False, indent=2).encode("utf-8")
            _write_synced(staging / META_NAME, meta)
            _fsync_dir(staging)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return staging, new.saved(create_time, len(wav) + len(meta))

    def _load(self) -> None:
        """Clear leftovers of interrupted writes and deletes, then register every readable voice directory."""
        for entry in sorted(self.root.iterdir()):
            if entry.name.startswith((_TMP_PREFIX, _TRASH_PREFIX)):
                logger.info("removing %s left by an interrupted saved-voice write or delete", entry)
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    with contextlib.suppress(OSError):
                        entry.unlink()
                continue
            if entry.name.startswith("."):
                continue  # not ours (editor or filesystem metadata)
            try:
                voice, _ = read_voice_directory(entry)
            except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:  # RuntimeError: libsndfile
                logger.warning("skipping unreadable saved voice directory %s: %s", entry, exc)
                continue
            self._voices[voice.name] = voice
        logger.info("saved voices: %d loaded from %s", len(self._voices), self.root)
