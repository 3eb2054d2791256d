"""Saved voices: named voices created once from reference audio and kept on disk across gateway restarts.

Layout under the store's root:
    <root>/<name>/reference.wav     mono float32 WAV (soundfile FLOAT subtype) at the voice's sample rate
    <root>/<name>/voice.json        metadata (see `_metadata`), with a format version
    <root>/.tmp-<hex>/              a voice being written; renamed to <root>/<name> once complete
    <root>/.trash-<hex>/            a voice being deleted; renamed away from <root>/<name> first

A voice becomes visible in one os.rename of a fully written, fsynced directory, and disappears in one rename too, so a
crash leaves either the whole voice or none of it. Voice names always start with a letter or digit, so they can never
collide with the dot-prefixed work directories, which start-up removes.

Samples are loaded eagerly (at create and at start-up) and kept in memory as read-only arrays: memory use is bounded by
`max_total_bytes` (the float32 WAV on disk is the same size as the array), every stored WAV is fully read once at
start-up so a damaged one is skipped there rather than failing requests later, and `get` never touches the disk, so
a request cannot lose its voice's audio to a concurrent delete.

Pure Python (no generated protos): errors are the project's ServiceError subclasses, which the servicer's interceptor
turns into gRPC statuses. All methods are thread-safe; the gateway calls them through asyncio.to_thread.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
from numpy.typing import NDArray

from services.common.errors import (
    ECHO_CHARS,
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    clip,
)
from services.tts_gateway.text import control_character_problem

__all__ = [
    "FORMAT_VERSION",
    "MAX_DESCRIPTION_CHARS",
    "MAX_NAME_CHARS",
    "MAX_REFERENCE_TEXT_CHARS",
    "SILENCE_DBFS",
    "AlreadyExists",
    "SavedVoice",
    "SavedVoiceStore",
    "name_problem",
]

logger = logging.getLogger(__name__)

MiB = 1024 * 1024
FORMAT_VERSION = 1
WAV_NAME = "reference.wav"
META_NAME = "voice.json"
_TMP_PREFIX = ".tmp-"
_TRASH_PREFIX = ".trash-"

# The model-name rule of services/rvc_service/registry.py (_NAME_RE plus its no-"..", no-slash checks), written out
# here because importing that module loads torch and the RVC engines into the gateway. One deliberate difference:
# spaces are not allowed. A saved voice's name becomes a directory name and is typed into requests, where trailing or
# doubled spaces make names that look identical but are not.
MAX_NAME_CHARS = 128
_NAME_RE = re.compile(rf"^[A-Za-z0-9][A-Za-z0-9._-]{{0,{MAX_NAME_CHARS - 1}}}$")
_NAME_CHARS_RE = re.compile(r"[^A-Za-z0-9._-]")
_NAME_RULE = f"1-{MAX_NAME_CHARS} characters: letters, digits, '.', '_' or '-', starting with a letter or digit"

MAX_REFERENCE_TEXT_CHARS = 1000
MAX_DESCRIPTION_CHARS = 500
MAX_BASE_VOICE_CHARS = 256  # a configured voice's name; the servicer checks that it exists
MIN_SAMPLE_RATE_HZ = 8000  # below telephone band there is too little of the voice left to clone
MAX_SAMPLE_RATE_HZ = 192_000

# Silence check: the clip must hold at least SILENCE_MIN_ACTIVE_S of 20 ms frames whose RMS reaches SILENCE_DBFS.
# Voiced speech frames sit around -30..-15 dBFS even in quiet phone recordings, while a quiet room's noise floor is
# -60..-70 dBFS and dithered digital silence lower still; -50 dBFS (RMS 0.0032) leaves 15-20 dB of margin on both
# sides. Counting frames rather than taking one RMS over the whole clip keeps a 30 s clip with a few seconds of
# speech acceptable, while a lone click (one loud frame) or a near-silent clip is still rejected.
SILENCE_DBFS = -50.0
SILENCE_FRAME_S = 0.02
SILENCE_MIN_ACTIVE_S = 0.5

# Quota errors only clear when the client deletes something; the RetryInfo says "not soon" rather than "retry now".
QUOTA_RETRY_AFTER_S = 60.0


@dataclass(frozen=True)
class SavedVoice:
    """One saved voice. `samples` is a read-only float32 mono array, loaded eagerly; equality ignores it."""

    name: str
    base_voice: str
    reference_text: str  # "" = no transcript (cross-lingual cloning)
    description: str
    sample_rate_hz: int
    create_time: float  # unix seconds
    duration_s: float
    size_bytes: int  # reference.wav + voice.json on disk
    samples: NDArray[np.float32] = field(repr=False, compare=False)


def name_problem(name: object) -> str | None:
    """What is wrong with `name` as a saved-voice name (phrased as what to fix), or None when it is valid."""
    if not isinstance(name, str):
        return f"must be a string, not {type(name).__name__}"
    if not name:
        return f"must not be empty; use {_NAME_RULE}"
    if len(name) > MAX_NAME_CHARS:
        return f"must be at most {MAX_NAME_CHARS} characters (got {len(name)})"
    if not name[0].isascii() or not name[0].isalnum():
        return f"must start with a letter or digit; use {_NAME_RULE}"
    bad = _NAME_CHARS_RE.search(name)
    if bad is not None:
        return f"contains {bad.group()!r} at offset {bad.start()}; use {_NAME_RULE}"
    if ".." in name:
        return "must not contain '..'"
    if not _NAME_RE.match(name):  # the regex is the rule; the checks above only say which part of it failed
        return f"use {_NAME_RULE}"
    return None


def _shown(name: str) -> str:
    return repr(clip(name, ECHO_CHARS))


def reference_problems(
    samples: NDArray[np.floating[Any]], sample_rate_hz: int, min_s: float, max_s: float
) -> list[str]:
    """What is wrong with the reference clip (for the "reference_audio" field); empty when it is usable."""
    if samples.ndim != 1:
        return [f"must be mono (one channel of samples); got an array of shape {samples.shape}"]
    duration_s = samples.size / sample_rate_hz
    if not min_s <= duration_s <= max_s:
        return [f"must be {min_s:g}-{max_s:g} s of audio; got {duration_s:.2f} s"]
    finite = np.isfinite(samples)
    if not finite.all():
        first = int(np.argmin(finite))
        return [f"holds a non-finite sample (NaN or infinity) at index {first}; the decoded audio is corrupt"]
    frame = max(1, round(SILENCE_FRAME_S * sample_rate_hz))
    frames = samples[: samples.size // frame * frame].astype(np.float64).reshape(-1, frame)
    threshold = 10.0 ** (SILENCE_DBFS / 20.0)
    active_frames = int(np.count_nonzero(np.sqrt(np.mean(frames * frames, axis=1)) >= threshold))
    needed_frames = math.ceil(SILENCE_MIN_ACTIVE_S / SILENCE_FRAME_S)
    if active_frames < needed_frames:
        return [
            f"is silent or nearly so: needs at least {SILENCE_MIN_ACTIVE_S:g} s louder than {SILENCE_DBFS:g} dBFS, "
            f"got {active_frames * SILENCE_FRAME_S:.2f} s; record the speaker closer to the microphone"
        ]
    return []


def _text_problem(text: str, limit: int) -> str | None:
    if len(text) > limit:
        return f"must be at most {limit} characters (got {len(text)})"
    return control_character_problem(text)


def _fsync_dir(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _read_only(samples: NDArray[np.float32]) -> NDArray[np.float32]:
    samples.setflags(write=False)
    return samples


class SavedVoiceStore:
    """Saved voices under `root`, one directory each. Quotas count what is on disk: at most `max_voices` voices
    and `max_total_bytes` bytes of voice files. `reserved_names()` (the configured voices) is asked on every create,
    so a saved voice can never shadow a configured one created before it."""

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
        if max_voices < 0 or max_total_bytes < 0:
            raise ValueError("max_voices and max_total_bytes must be >= 0")
        if not 0 < min_reference_s <= max_reference_s:
            raise ValueError("need 0 < min_reference_s <= max_reference_s")
        self.root = Path(root).resolve()
        self.max_voices = max_voices
        self.max_total_bytes = max_total_bytes
        self.min_reference_s = min_reference_s
        self.max_reference_s = max_reference_s
        self._reserved_names = reserved_names
        self._lock = threading.Lock()
        self._voices: dict[str, SavedVoice] = {}
        self.root.mkdir(parents=True, exist_ok=True)
        self._load()

    # ---------------------------------------------------------------------------------------------- queries

    def get(self, name: str) -> SavedVoice:
        """The saved voice called `name`; NotFound for anything else (including names no voice could have)."""
        with self._lock:
            voice = self._voices.get(name) if isinstance(name, str) else None
        if voice is None:
            shown = _shown(name) if isinstance(name, str) else type(name).__name__
            raise NotFound(f"no saved voice named {shown}", resource_type="saved_voice", resource_name=str(name))
        return voice

    def list(self) -> list[SavedVoice]:
        """Every saved voice, sorted by name."""
        with self._lock:
            return [self._voices[name] for name in sorted(self._voices)]

    def __contains__(self, name: object) -> bool:
        with self._lock:
            return isinstance(name, str) and name in self._voices

    def __len__(self) -> int:
        with self._lock:
            return len(self._voices)

    @property
    def total_bytes(self) -> int:
        with self._lock:
            return sum(voice.size_bytes for voice in self._voices.values())

    # -------------------------------------------------------------------------------------------- mutations

    def create(
        self,
        name: str,
        *,
        base_voice: str,
        samples: NDArray[Any],
        sample_rate_hz: int,
        reference_text: str = "",
        description: str = "",
    ) -> SavedVoice:
        """Validate, write and register a new voice. Errors, in order: InvalidArgument (every field problem at
        once), AlreadyExists (configured or saved name), ResourceExhausted (count or bytes quota),
        FailedPrecondition (a damaged directory of that name is on disk)."""
        reference_text = reference_text.strip()
        description = description.strip()
        samples = np.asarray(samples)
        violations: list[tuple[str, str]] = []
        problem = name_problem(name)
        if problem:
            violations.append(("name", problem))
        base_voice = base_voice.strip()
        if not base_voice:
            violations.append(("base_voice", "must name a configured voice that can clone (e.g. a Spark-TTS voice)"))
        elif len(base_voice) > MAX_BASE_VOICE_CHARS:
            violations.append(
                ("base_voice", f"must be at most {MAX_BASE_VOICE_CHARS} characters (got {len(base_voice)})")
            )
        if isinstance(sample_rate_hz, bool) or not isinstance(sample_rate_hz, int | np.integer):
            violations.append(("sample_rate_hz", f"must be an integer, not {type(sample_rate_hz).__name__}"))
        elif not MIN_SAMPLE_RATE_HZ <= sample_rate_hz <= MAX_SAMPLE_RATE_HZ:
            violations.append(
                ("sample_rate_hz", f"must be {MIN_SAMPLE_RATE_HZ}-{MAX_SAMPLE_RATE_HZ} Hz; got {sample_rate_hz}")
            )
        elif not np.issubdtype(samples.dtype, np.number) or np.iscomplexobj(samples):
            violations.append(("reference_audio", f"must be real-valued samples, not {samples.dtype}"))
        else:
            sample_rate_hz = int(sample_rate_hz)
            samples = samples.astype(np.float32, copy=True)  # our own copy: the caller may reuse its buffer
            violations += [
                ("reference_audio", p)
                for p in reference_problems(samples, sample_rate_hz, self.min_reference_s, self.max_reference_s)
            ]
        for field_name, text, limit in (
            ("reference_text", reference_text, MAX_REFERENCE_TEXT_CHARS),
            ("description", description, MAX_DESCRIPTION_CHARS),
        ):
            problem = _text_problem(text, limit)
            if problem:
                violations.append((field_name, problem))
        if violations:
            raise InvalidArgument(violations)

        # Fail fast, before writing anything, on the common conflicts; both are checked again at commit.
        with self._lock:
            self._check_free(name)

        create_time = time.time()
        staging = self._write_staging(
            name, base_voice, reference_text, description, samples, sample_rate_hz, create_time
        )
        try:
            size_bytes = sum(path.stat().st_size for path in (staging / WAV_NAME, staging / META_NAME))
            voice = SavedVoice(
                name=name,
                base_voice=base_voice,
                reference_text=reference_text,
                description=description,
                sample_rate_hz=sample_rate_hz,
                create_time=create_time,
                duration_s=samples.size / sample_rate_hz,
                size_bytes=size_bytes,
                samples=_read_only(samples),
            )
            with self._lock:
                self._check_free(name)
                self._check_quota(voice)
                target = self._voice_dir(name)
                if os.path.lexists(target):
                    raise FailedPrecondition(
                        f"a damaged saved voice named {_shown(name)} is on the server's disk; "
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
            "saved voice %r created (%.2f s at %d Hz, %d bytes)", name, voice.duration_s, sample_rate_hz, size_bytes
        )
        return voice

    def delete(self, name: str) -> SavedVoice:
        """Remove a saved voice and return it (samples included). InvalidArgument for a malformed name, NotFound
        for an unknown one."""
        problem = name_problem(name)
        if problem:
            raise InvalidArgument([("name", problem)])
        with self._lock:
            voice = self._voices.get(name)
            if voice is None:
                raise NotFound(f"no saved voice named {_shown(name)}", resource_type="saved_voice", resource_name=name)
            trash = self.root / f"{_TRASH_PREFIX}{uuid.uuid4().hex}"
            # One rename takes the voice off disk atomically; the slow recursive delete happens after.
            os.rename(self._voice_dir(name), trash)
            del self._voices[name]
        self._sync_root()
        shutil.rmtree(trash, ignore_errors=True)
        logger.info("saved voice %r deleted", name)
        return voice

    # ------------------------------------------------------------------------------------------------ internals

    def _voice_dir(self, name: str) -> Path:
        """The directory of a (validated) voice name; refuses anything that is not a direct child of root, so a
        name can never address a path outside it even if validation were bypassed."""
        path = self.root / name
        if name_problem(name) is not None or path.parent != self.root or path.name != name:
            raise AssertionError(f"saved voice name {_shown(name)} escapes the store root")
        return path

    def _sync_root(self) -> None:
        """Make a rename in root durable. Best effort: the rename itself already happened and is what readers see."""
        try:
            _fsync_dir(self.root)
        except OSError as exc:
            logger.warning("could not fsync saved voice root %s: %s", self.root, exc)

    def _check_free(self, name: str) -> None:
        """AlreadyExists when a configured or saved voice has this name. Caller holds the lock."""
        if name in set(self._reserved_names()):
            raise AlreadyExists(
                f"voice {_shown(name)} already exists as a configured voice; choose another name",
                resource_type="voice",
                resource_name=name,
            )
        if name in self._voices:
            raise AlreadyExists(
                f"saved voice {_shown(name)} already exists; delete it first or choose another name",
                resource_type="saved_voice",
                resource_name=name,
            )

    def _check_quota(self, voice: SavedVoice) -> None:
        """ResourceExhausted when adding `voice` would pass a quota. Caller holds the lock."""
        if len(self._voices) + 1 > self.max_voices:
            raise ResourceExhausted(
                f"saved voice limit reached: {len(self._voices)} of {self.max_voices} voices are saved; "
                "delete a saved voice you no longer need, then create this one",
                retry_after_s=QUOTA_RETRY_AFTER_S,
            )
        used = sum(saved.size_bytes for saved in self._voices.values())
        if used + voice.size_bytes > self.max_total_bytes:
            if voice.size_bytes > self.max_total_bytes:
                advice = "use a shorter or lower-rate reference clip"
            else:
                advice = "delete saved voices you no longer need, or use a shorter reference clip"
            raise ResourceExhausted(
                f"saved voice storage limit reached: this voice needs {voice.size_bytes / MiB:.2f} MiB and "
                f"{used / MiB:.2f} of {self.max_total_bytes / MiB:.2f} MiB are in use; {advice}",
                retry_after_s=QUOTA_RETRY_AFTER_S,
            )

    def _write_staging(
        self,
        name: str,
        base_voice: str,
        reference_text: str,
        description: str,
        samples: NDArray[np.float32],
        sample_rate_hz: int,
        create_time: float,
    ) -> Path:
        """A complete, fsynced voice directory under a temporary name inside root (same filesystem, so the final
        rename is atomic)."""
        staging = self.root / f"{_TMP_PREFIX}{uuid.uuid4().hex}"
        staging.mkdir()
        try:
            with open(staging / WAV_NAME, "wb") as wav:
                sf.write(wav, samples, sample_rate_hz, subtype="FLOAT", format="WAV")
                wav.flush()
                os.fsync(wav.fileno())
            metadata = {
                "format_version": FORMAT_VERSION,
                "name": name,
                "base_voice": base_voice,
                "reference_text": reference_text,
                "description": description,
                "sample_rate_hz": sample_rate_hz,
                "create_time": create_time,
            }
            with open(staging / META_NAME, "w", encoding="utf-8") as meta:
                json.dump(metadata, meta, ensure_ascii=False, indent=2)
                meta.flush()
                os.fsync(meta.fileno())
            _fsync_dir(staging)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return staging

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
                voice = self._read_voice(entry)
            except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:  # RuntimeError: libsndfile
                logger.warning("skipping unreadable saved voice directory %s: %s", entry, exc)
                continue
            self._voices[voice.name] = voice
        logger.info("saved voices: %d loaded from %s", len(self._voices), self.root)

    def _read_voice(self, directory: Path) -> SavedVoice:
        """One voice directory, checked for consistency; ValueError (or an I/O error) when it is not usable."""
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
        create_time = float(metadata["create_time"])
        samples, wav_rate = sf.read(wav_path, dtype="float32", always_2d=True)
        if samples.shape[1] != 1:
            raise ValueError(f"{WAV_NAME} has {samples.shape[1]} channels, not 1")
        if wav_rate != sample_rate_hz:
            raise ValueError(f"{WAV_NAME} is at {wav_rate} Hz but {META_NAME} says {sample_rate_hz} Hz")
        if samples.shape[0] == 0:
            raise ValueError(f"{WAV_NAME} holds no samples")
        mono = np.ascontiguousarray(samples[:, 0])
        return SavedVoice(
            name=directory.name,
            base_voice=metadata["base_voice"],
            reference_text=metadata["reference_text"],
            description=metadata["description"],
            sample_rate_hz=sample_rate_hz,
            create_time=create_time,
            duration_s=mono.size / sample_rate_hz,
            size_bytes=meta_path.stat().st_size + wav_path.stat().st_size,
            samples=_read_only(mono),
        )
