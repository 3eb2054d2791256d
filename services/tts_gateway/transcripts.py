"""Transcripts of reference clips, for zero-shot cloning requests and CreateVoice calls that bring no reference_text.

The gateway's recognition (the default recognition model, or the one `--transcript-model` names) transcribes each
distinct reference once: results are kept in a bounded LRU keyed by a hash of the decoded samples and their rate, and
concurrent requests for the same clip share one recognition. A request's own non-empty reference_text always wins
(nothing here is called). `Recognizer` is the seam: validation takes any object with its `transcribe` coroutine, so
it is testable without Triton (tests use an in-process fake).

Failures (recognition unavailable or failing, an empty transcript for silence or unintelligible audio, a transcript
over the length limit) come back as `TranscriptUnavailable` with a reason; the caller turns it into its own error
(`untranscribed_problem` words the INVALID_ARGUMENT) or falls back, as CreateVoice does to cross-lingual cloning.
Logs carry the transcript's length, never its text.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

import numpy as np
from cachetools import LRUCache
from numpy.typing import NDArray
from prometheus_client import Counter

from services.common.audio import resample
from services.common.errors import InvalidArgument, ServiceError
from services.tts_gateway.asr_client import AsrModelInfo, TritonAsr

log = logging.getLogger(__name__)

REFERENCE_TRANSCRIPTS = Counter(
    "tts_gateway_reference_transcripts_total",
    "Reference clips needing a transcript (zero-shot cloning without reference_text), by result: hit (from the "
    "cache, or shared with a recognition in flight), miss (recognised now), failed (recognition failed or gave no "
    "usable transcript).",
    ["result"],
)
for _result in ("hit", "miss", "failed"):
    REFERENCE_TRANSCRIPTS.labels(_result)


ModelResolver = Callable[[str], Awaitable[AsrModelInfo]]


class TranscriptUnavailable(Exception):
    """The reference could not be transcribed; `reason` says why, worded to follow "could not be transcribed"."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Recognizer(Protocol):
    """Speech to text for one reference clip. `language` is the voice's language code ("" = the model's default),
    a hint the recognizer may map to one of its own. Returns the transcript ("" when nothing was recognised);
    raises ServiceError when recognition fails or is unavailable."""

    async def transcribe(
        self, samples: NDArray[np.float32], sample_rate_hz: int, language: str, request_id: str
    ) -> str: ...


def model_language(model: AsrModelInfo, voice_language: str) -> str:
    """The model's language for the voice's: one the model lists that matches (exactly or by its primary subtag),
    else the model's default."""
    if voice_language:
        try:
            return model.language(voice_language)
        except InvalidArgument:
            pass
    return model.language("")


class TritonRecognizer:
    """Recognizer over the gateway's recognition models on Triton. `resolve_model(name)` picks the model as the
    recognition service does ("" = its default model)."""

    def __init__(self, asr: TritonAsr, resolve_model: ModelResolver, model: str = "") -> None:
        self.asr = asr
        self.resolve_model = resolve_model
        self.model = model

    async def transcribe(
        self, samples: NDArray[np.float32], sample_rate_hz: int, language: str, request_id: str
    ) -> str:
        model = await self.resolve_model(self.model)
        audio = samples
        if sample_rate_hz != model.sample_rate_hz:
            audio = await asyncio.to_thread(resample, samples, sample_rate_hz, model.sample_rate_hz)
        result = await self.asr.recognize(model, audio, model_language(model, language), False, request_id)
        return result.transcript


def samples_key(samples: NDArray[np.float32], sample_rate_hz: int) -> str:
    """The cache key of a decoded clip: SHA-256 of its float32 samples and their rate."""
    digest = hashlib.sha256(np.ascontiguousarray(samples, dtype="<f4").tobytes())
    digest.update(f"|{sample_rate_hz}".encode())
    return digest.hexdigest()


def untranscribed_problem(reason: str, *, cross_lingual: bool) -> str:
    """The field violation for an empty reference_text whose reference could not be transcribed."""
    text = (
        f"is empty and the reference audio could not be transcribed ({reason}): "
        "give the transcript of reference_audio as reference_text"
    )
    if cross_lingual:
        text += ", or use cross_lingual, which clones without a transcript"
    return text


class ReferenceTranscripts:
    """Transcripts of reference clips, each recognised once: a bounded LRU (`capacity` entries; 0 or less keeps
    nothing) plus the recognitions in flight, which concurrent requests for the same clip share."""

    def __init__(self, recognizer: Recognizer, *, capacity: int = 256, max_chars: int = 1000) -> None:
        self.recognizer = recognizer
        self.capacity = capacity
        self.max_chars = max_chars
        self._items: LRUCache[str, str] = LRUCache(maxsize=max(1, capacity))
        self._pending: dict[str, asyncio.Task[str]] = {}
        self.recognitions = 0  # calls made to the recognizer

    async def transcript(
        self, samples: NDArray[np.float32], sample_rate_hz: int, *, language: str = "", request_id: str = ""
    ) -> str:
        """The transcript of the clip (stripped, non-empty); raises TranscriptUnavailable."""
        key = await asyncio.to_thread(samples_key, samples, sample_rate_hz)
        cached = self._items.get(key)
        task = self._pending.get(key)
        if cached is not None or task is not None:
            REFERENCE_TRANSCRIPTS.labels("hit").inc()
            text = cached if cached is not None else await asyncio.shield(task)  # type: ignore[arg-type]
            return self._usable(text)
        task = asyncio.create_task(self._recognize(key, samples, sample_rate_hz, language, request_id))
        self._pending[key] = task
        task.add_done_callback(lambda done: self._done(key, done))
        try:
            text = await asyncio.shield(task)  # a cancelled request leaves the recognition to finish for the cache
        except TranscriptUnavailable:
            REFERENCE_TRANSCRIPTS.labels("failed").inc()
            raise
        try:
            usable = self._usable(text)
        except TranscriptUnavailable:
            REFERENCE_TRANSCRIPTS.labels("failed").inc()
            raise
        REFERENCE_TRANSCRIPTS.labels("miss").inc()
        return usable

    def _done(self, key: str, task: asyncio.Task[str]) -> None:
        self._pending.pop(key, None)
        if not task.cancelled():
            task.exception()  # retrieved: the request that started it may have been cancelled before it failed

    def _usable(self, text: str) -> str:
        if not text:
            raise TranscriptUnavailable("no words were recognised in it: silence, noise or unintelligible speech")
        if len(text) > self.max_chars:
            raise TranscriptUnavailable(
                f"its transcript has {len(text)} characters, over the {self.max_chars} limit: use a shorter clip"
            )
        return text

    async def _recognize(
        self, key: str, samples: NDArray[np.float32], sample_rate_hz: int, language: str, request_id: str
    ) -> str:
        started = time.perf_counter()
        self.recognitions += 1
        try:
            text = (await self.recognizer.transcribe(samples, sample_rate_hz, language, request_id)).strip()
        except ServiceError as exc:
            log.warning("reference transcription failed (request %s): %s", request_id, exc)
            raise TranscriptUnavailable(f"recognition failed: {exc}") from None
        # An empty transcript is the model's answer for this clip too: cached, so the same clip is not recognised
        # again only to be refused again.
        if self.capacity > 0:
            self._items[key] = text
        log.info(
            "reference transcribed in %.2f s: %d characters (%.1f s of audio, request %s)",
            time.perf_counter() - started,
            len(text),
            samples.size / sample_rate_hz,
            request_id,
        )
        return text
