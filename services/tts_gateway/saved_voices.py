"""Saved voices: named voices created once from reference audio (CreateVoice) and kept across gateway restarts.

This module holds what every store shares: the `SavedVoice` record, the checks a new voice must pass (name, reference
clip, transcript, description), the quota rule, the WAV encoding of the stored clip, and `SavedVoiceStore`, the
interface the gateway uses. Two stores implement it:

* `saved_voices_dir.DirectorySavedVoiceStore`: one directory per voice on the replica's own disk (the default of
  `make run`; one replica only).
* `saved_voices_pg.PostgresSavedVoiceStore`: one row per voice in PostgreSQL, shared by every replica, changes pushed
  to all of them with LISTEN/NOTIFY (`--saved-voices-database`).

Both keep every voice (samples included) in memory, so `get`, `list` and `in` never block a request on I/O; the
in-memory copy is bounded by the byte quota. Mutations (`create`, `delete`) are coroutines.

Pure Python (no generated protos): errors are the project's ServiceError subclasses, which the servicer's interceptor
turns into gRPC statuses.
"""

from __future__ import annotations

import abc
import io
import logging
import math
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import soundfile as sf
from numpy.typing import NDArray

from services.common.contract import MAX_NAME_CHARS, MAX_REFERENCE_BYTES, MAX_REFERENCE_TEXT_CHARS, MiB
from services.common.contract import name_problem as _contract_name_problem
from services.common.errors import (
    ECHO_CHARS,
    AlreadyExists,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
    clip,
)
from services.tts_gateway.text import control_character_problem

__all__ = [
    "MAX_AUDIO_BYTES",
    "MAX_DESCRIPTION_CHARS",
    "MAX_NAME_CHARS",
    "MAX_REFERENCE_TEXT_CHARS",
    "SILENCE_DBFS",
    "AlreadyExists",
    "NewVoice",
    "SavedVoice",
    "SavedVoiceStore",
    "StoreHealth",
    "name_problem",
]

logger = logging.getLogger(__name__)

MAX_DESCRIPTION_CHARS = 500
MAX_BASE_VOICE_CHARS = 256  # a configured voice's name; the servicer checks that it exists
MIN_SAMPLE_RATE_HZ = 8000  # below telephone band there is too little of the voice left to clone
MAX_SAMPLE_RATE_HZ = 192_000
# The stored clip (a float32 WAV) must fit the contract's reference limit: the PostgreSQL store keeps it in one bytea
# value, and the same limit on every store keeps a voice movable between them (import-dir).
MAX_AUDIO_BYTES = MAX_REFERENCE_BYTES
WAV_HEADER_ALLOWANCE = 4096  # soundfile's float WAV header is well under this

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
# A store that lost its backing service: worth retrying soon (the store reconnects on its own).
UNAVAILABLE_RETRY_AFTER_S = 2.0


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
    size_bytes: int  # what the voice counts against the byte quota (stored audio + metadata)
    samples: NDArray[np.float32] = field(repr=False, compare=False)


@dataclass(frozen=True)
class NewVoice:
    """A voice that passed every field check, ready to be stored: `samples` is the store's own float32 copy."""

    name: str
    base_voice: str
    reference_text: str
    description: str
    sample_rate_hz: int
    samples: NDArray[np.float32] = field(repr=False)

    def saved(self, create_time: float, size_bytes: int) -> SavedVoice:
        return SavedVoice(
            name=self.name,
            base_voice=self.base_voice,
            reference_text=self.reference_text,
            description=self.description,
            sample_rate_hz=self.sample_rate_hz,
            create_time=create_time,
            duration_s=self.samples.size / self.sample_rate_hz,
            size_bytes=size_bytes,
            samples=read_only(self.samples),
        )


@dataclass(frozen=True)
class StoreHealth:
    """Whether the store can be used now; what GetStatus reports as its `saved_voices` upstream."""

    kind: str  # "directory" or "postgresql"
    target: str  # the directory, or host:port/dbname (never a password)
    available: bool
    last_error: str = ""
    schema_version: int = 0  # PostgreSQL only


def name_problem(name: object) -> str | None:
    """What is wrong with `name` as a saved-voice name (the contract's rule, without spaces), or None when valid."""
    return _contract_name_problem(name, allow_spaces=False)


def shown(name: object) -> str:
    return repr(clip(name, ECHO_CHARS)) if isinstance(name, str) else type(name).__name__


def read_only(samples: NDArray[np.float32]) -> NDArray[np.float32]:
    samples.setflags(write=False)
    return samples


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


def _base_voice_problem(base_voice: str) -> str | None:
    if not base_voice:
        return "must name a configured voice that can clone (e.g. a Spark-TTS voice)"
    if len(base_voice) > MAX_BASE_VOICE_CHARS:
        return f"must be at most {MAX_BASE_VOICE_CHARS} characters (got {len(base_voice)})"
    return None


def _audio_problems(
    samples: NDArray[Any], sample_rate_hz: object, min_s: float, max_s: float
) -> tuple[list[tuple[str, str]], NDArray[np.float32] | None]:
    """The sample rate's and the clip's violations, and the store's own float32 copy when both are usable."""
    if isinstance(sample_rate_hz, bool) or not isinstance(sample_rate_hz, int | np.integer):
        return [("sample_rate_hz", f"must be an integer, not {type(sample_rate_hz).__name__}")], None
    if not MIN_SAMPLE_RATE_HZ <= sample_rate_hz <= MAX_SAMPLE_RATE_HZ:
        return [("sample_rate_hz", f"must be {MIN_SAMPLE_RATE_HZ}-{MAX_SAMPLE_RATE_HZ} Hz; got {sample_rate_hz}")], None
    if not np.issubdtype(samples.dtype, np.number) or np.iscomplexobj(samples):
        return [("reference_audio", f"must be real-valued samples, not {samples.dtype}")], None
    copy = samples.astype(np.float32, copy=True)  # our own copy: the caller may reuse its buffer
    problems = reference_problems(copy, int(sample_rate_hz), min_s, max_s)
    if not problems and copy.size * 4 + WAV_HEADER_ALLOWANCE > MAX_AUDIO_BYTES:
        problems.append(
            f"is {copy.size * 4 / MiB:.2f} MiB as float32 ({copy.size / sample_rate_hz:.1f} s at {sample_rate_hz} Hz); "
            f"a saved voice keeps at most {MAX_AUDIO_BYTES / MiB:g} MiB: use a shorter clip or a lower sample rate"
        )
    return [("reference_audio", p) for p in problems], (None if problems else copy)


def check_new_voice(
    name: str,
    *,
    base_voice: str,
    samples: NDArray[Any],
    sample_rate_hz: int,
    reference_text: str = "",
    description: str = "",
    min_reference_s: float,
    max_reference_s: float,
) -> NewVoice:
    """Every field check at once: InvalidArgument listing every problem, else the voice to store."""
    reference_text, description, base_voice = reference_text.strip(), description.strip(), base_voice.strip()
    violations: list[tuple[str, str]] = []
    problem = name_problem(name)
    if problem:
        violations.append(("name", problem))
    problem = _base_voice_problem(base_voice)
    if problem:
        violations.append(("base_voice", problem))
    audio_violations, copy = _audio_problems(np.asarray(samples), sample_rate_hz, min_reference_s, max_reference_s)
    violations += audio_violations
    for field_name, text, limit in (
        ("reference_text", reference_text, MAX_REFERENCE_TEXT_CHARS),
        ("description", description, MAX_DESCRIPTION_CHARS),
    ):
        problem = _text_problem(text, limit)
        if problem:
            violations.append((field_name, problem))
    if violations:
        raise InvalidArgument(violations)
    assert copy is not None
    return NewVoice(name, base_voice, reference_text, description, int(sample_rate_hz), copy)


def check_quota(count: int, used_bytes: int, size_bytes: int, max_voices: int, max_total_bytes: int) -> None:
    """ResourceExhausted when one more voice of `size_bytes` would pass a quota (`count` voices of `used_bytes` now)."""
    if count + 1 > max_voices:
        raise ResourceExhausted(
            f"saved voice limit reached: {count} of {max_voices} voices are saved; "
            "delete a saved voice you no longer need, then create this one",
            retry_after_s=QUOTA_RETRY_AFTER_S,
        )
    if used_bytes + size_bytes > max_total_bytes:
        if size_bytes > max_total_bytes:
            advice = "use a shorter or lower-rate reference clip"
        else:
            advice = "delete saved voices you no longer need, or use a shorter reference clip"
        raise ResourceExhausted(
            f"saved voice storage limit reached: this voice needs {size_bytes / MiB:.2f} MiB and "
            f"{used_bytes / MiB:.2f} of {max_total_bytes / MiB:.2f} MiB are in use; {advice}",
            retry_after_s=QUOTA_RETRY_AFTER_S,
        )


def already_exists(name: str) -> AlreadyExists:
    return AlreadyExists(
        f"saved voice {shown(name)} already exists; delete it first or choose another name",
        resource_type="saved_voice",
        resource_name=name,
    )


def not_found(name: object) -> NotFound:
    return NotFound(f"no saved voice named {shown(name)}", resource_type="saved_voice", resource_name=str(name))


def encode_wav(samples: NDArray[np.float32], sample_rate_hz: int) -> bytes:
    """The stored form of a clip: a mono float32 WAV (lossless; the same bytes in every store)."""
    buffer = io.BytesIO()
    sf.write(buffer, samples, sample_rate_hz, subtype="FLOAT", format="WAV")
    return buffer.getvalue()


def decode_wav(data: bytes | io.BufferedIOBase | str, sample_rate_hz: int) -> NDArray[np.float32]:
    """A stored clip back as read-only mono float32 samples; ValueError when it is not what the metadata says."""
    source = io.BytesIO(data) if isinstance(data, bytes) else data
    samples, wav_rate = sf.read(source, dtype="float32", always_2d=True)
    if samples.shape[1] != 1:
        raise ValueError(f"the stored clip has {samples.shape[1]} channels, not 1")
    if wav_rate != sample_rate_hz:
        raise ValueError(f"the stored clip is at {wav_rate} Hz but its metadata says {sample_rate_hz} Hz")
    if samples.shape[0] == 0:
        raise ValueError("the stored clip holds no samples")
    return read_only(np.ascontiguousarray(samples[:, 0]))


ChangeListener = Callable[[str], None]


class SavedVoiceStore(abc.ABC):
    """The saved voices, kept whole in memory (`get`/`list` never wait on I/O) and persisted by a subclass.

    `reserved_names()` (the configured voices) is asked on every create, so a saved voice can never shadow a configured
    one. Listeners added with `on_change` hear the name of every voice that appears, changes or disappears (created
    here or, for a shared store, by another replica), so caches keyed by a saved voice can drop it."""

    kind = "abstract"

    def __init__(
        self,
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
        self.max_voices = max_voices
        self.max_total_bytes = max_total_bytes
        self.min_reference_s = min_reference_s
        self.max_reference_s = max_reference_s
        self._reserved_names = reserved_names
        self._lock = threading.Lock()  # guards _voices (the directory store mutates it from worker threads)
        self._voices: dict[str, SavedVoice] = {}
        self._listeners: list[ChangeListener] = []

    # ------------------------------------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Begin serving (connect, load); a store that needs nothing here does nothing."""
        return None

    async def close(self) -> None:
        """Release connections and background tasks."""
        return None

    @abc.abstractmethod
    def health(self) -> StoreHealth: ...

    def require_available(self) -> None:
        """Unavailable (naming the backing store, never a secret) while the store cannot be used."""
        health = self.health()
        if not health.available:
            detail = f": {health.last_error}" if health.last_error else ""
            raise Unavailable(
                f"the saved-voice {health.kind} store at {health.target} is unavailable{detail}; configured voices "
                "still work, saved voices come back when it does",
                retry_after_s=UNAVAILABLE_RETRY_AFTER_S,
            )

    def on_change(self, listener: ChangeListener) -> None:
        self._listeners.append(listener)

    def _changed(self, name: str) -> None:
        for listener in self._listeners:
            try:
                listener(name)
            except Exception:  # a listener's failure must not undo a committed change
                logger.exception("saved-voice change listener failed for %r", name)

    # ---------------------------------------------------------------------------------------------- queries

    def get(self, name: str) -> SavedVoice:
        """The saved voice called `name`. NotFound when there is none; Unavailable when the store cannot say (it
        lost its backing service and does not hold the voice)."""
        with self._lock:
            voice = self._voices.get(name) if isinstance(name, str) else None
        if voice is None:
            if isinstance(name, str) and name_problem(name) is None:
                self.require_available()
            raise not_found(name)
        return voice

    def list(self) -> list[SavedVoice]:
        """Every saved voice, sorted by name (what the store last knew, when it is unavailable)."""
        with self._lock:
            return [self._voices[name] for name in sorted(self._voices)]

    def __contains__(self, name: object) -> bool:
        with self._lock:
            return isinstance(name, str) and name in self._voices

    def __len__(self) -> int:
        with self._lock:
            return len(self._voices)

    # -------------------------------------------------------------------------------------------- mutations

    async def create(
        self,
        name: str,
        *,
        base_voice: str,
        samples: NDArray[Any],
        sample_rate_hz: int,
        reference_text: str = "",
        description: str = "",
    ) -> SavedVoice:
        """Validate, persist and register a new voice. Errors, in order: InvalidArgument (every field problem at
        once), AlreadyExists (configured or saved name), ResourceExhausted (count or bytes quota), Unavailable (the
        backing store cannot be reached), FailedPrecondition (store-specific damage)."""
        new = check_new_voice(
            name,
            base_voice=base_voice,
            samples=samples,
            sample_rate_hz=sample_rate_hz,
            reference_text=reference_text,
            description=description,
            min_reference_s=self.min_reference_s,
            max_reference_s=self.max_reference_s,
        )
        return await self._create(new)

    @abc.abstractmethod
    async def _create(self, new: NewVoice) -> SavedVoice:
        """Persist and register a voice whose fields passed the checks (the errors after InvalidArgument above)."""

    @abc.abstractmethod
    async def delete(self, name: str) -> SavedVoice:
        """Remove a saved voice and return it (samples included). InvalidArgument for a malformed name, NotFound
        for an unknown one, Unavailable when the backing store cannot be reached."""

    # ------------------------------------------------------------------------------------------------ helpers

    def _check_not_reserved(self, name: str) -> None:
        """AlreadyExists when a configured voice has this name."""
        if name in set(self._reserved_names()):
            raise AlreadyExists(
                f"voice {shown(name)} already exists as a configured voice; choose another name",
                resource_type="voice",
                resource_name=name,
            )

    def _check_name(self, name: str) -> None:
        problem = name_problem(name)
        if problem:
            raise InvalidArgument([("name", problem)])
