"""Cutting a stream of audio into utterances by voice activity (pure logic; no gRPC, no model).

A voice-activity detector (services/tts_gateway/vad.py: Silero VAD, or the energy fallback) turns each frame of
audio into a speech probability; the `Endpointer` turns those probabilities into utterances with hysteresis:

* speech starts after `min_speech_s` of frames at or above `start_threshold`; the utterance then begins
  `pre_roll_s` before the first of those frames (so the first phoneme is not clipped);
* it ends after `end_silence_s` of frames below `end_threshold` (the end is placed `post_roll_s` after the last
  speech frame), or when it reaches `max_utterance_s` (forced: long monologues still get final results), or when the
  audio ends (`finish`).

The `Segmenter` keeps the audio itself: feed it samples at the VAD rate, and it returns the events (speech start,
utterance end with the utterance's samples and offsets) and exposes the utterance in progress for interim results.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray


@dataclass(frozen=True)
class EndpointerSettings:
    start_threshold: float = 0.5
    end_threshold: float = 0.35
    min_speech_s: float = 0.1
    end_silence_s: float = 0.6
    pre_roll_s: float = 0.2
    post_roll_s: float = 0.15
    max_utterance_s: float = 30.0

    def problems(self) -> list[str]:
        out = []
        if not 0.0 < self.end_threshold <= self.start_threshold < 1.0:
            out.append("thresholds must satisfy 0 < end_threshold <= start_threshold < 1")
        if self.end_silence_s <= 0 or self.max_utterance_s <= 1.0:
            out.append("end_silence_s must be > 0 and max_utterance_s > 1")
        if min(self.min_speech_s, self.pre_roll_s, self.post_roll_s) < 0:
            out.append("min_speech_s, pre_roll_s and post_roll_s must be >= 0")
        return out


@dataclass(frozen=True)
class SpeechStart:
    """Speech began; `start_s` from the beginning of the audio (pre-roll included)."""

    start_s: float


@dataclass(frozen=True)
class UtteranceEnd:
    """An utterance ended: its frames [start_frame, end_frame) and why (silence, max_length, end_of_audio)."""

    start_frame: int
    end_frame: int
    reason: str


class Endpointer:
    """Frame-level speech/non-speech state machine. `push(probability)` per frame; `finish()` at the end of audio."""

    def __init__(self, frame_s: float, settings: EndpointerSettings | None = None) -> None:
        self.settings = settings or EndpointerSettings()
        problems = self.settings.problems()
        if problems:
            raise ValueError("; ".join(problems))
        self.frame_s = frame_s
        s = self.settings
        self.min_speech_frames = max(1, round(s.min_speech_s / frame_s))
        self._end_silence = max(1, round(s.end_silence_s / frame_s))
        self.pre_roll_frames = round(s.pre_roll_s / frame_s)
        self._post_roll = round(s.post_roll_s / frame_s)
        self._max_frames = max(self.min_speech_frames + 1, round(s.max_utterance_s / frame_s))
        self.frames = 0  # frames pushed so far
        self.in_speech = False
        self.start_frame = 0  # of the utterance in progress (pre-roll included)
        self._run = 0  # consecutive frames over start_threshold while not in speech
        self._last_speech = 0  # last frame (exclusive) at or above end_threshold in the utterance
        self.earliest_frame = 0  # an utterance never starts before the previous one ended

    def push(self, probability: float) -> list[SpeechStart | UtteranceEnd]:
        s = self.settings
        index = self.frames
        self.frames += 1
        events: list[SpeechStart | UtteranceEnd] = []
        if not self.in_speech:
            self._run = self._run + 1 if probability >= s.start_threshold else 0
            if self._run >= self.min_speech_frames:
                self.in_speech = True
                first = index + 1 - self._run
                self.start_frame = max(self.earliest_frame, first - self.pre_roll_frames)
                self._last_speech = index + 1
                self._run = 0
                events.append(SpeechStart(self.start_frame * self.frame_s))
            return events
        if probability >= s.end_threshold:
            self._last_speech = index + 1
        if self.frames - self._last_speech >= self._end_silence:
            events.append(self._end(min(self.frames, self._last_speech + self._post_roll), "silence"))
        elif self.frames - self.start_frame >= self._max_frames:
            events.append(self._end(self.frames, "max_length"))
        return events

    def finish(self) -> list[SpeechStart | UtteranceEnd]:
        """The audio ended: close the utterance in progress, if any."""
        if not self.in_speech:
            return []
        return [self._end(self.frames, "end_of_audio")]

    def _end(self, end_frame: int, reason: str) -> UtteranceEnd:
        self.in_speech = False
        self.earliest_frame = end_frame
        self._run = 0
        return UtteranceEnd(self.start_frame, end_frame, reason)


@dataclass
class Utterance:
    """A finished utterance's audio (at the segmenter's rate) and its place in the stream."""

    index: int
    samples: NDArray[np.float32]
    start_s: float
    end_s: float
    reason: str


@dataclass
class Segmenter:
    """Audio in (mono float32 at `rate`), utterances out. `vad(frame)` gives the speech probability of one frame
    of `frame_samples` samples (a stateful detector: one Segmenter per stream)."""

    rate: int
    frame_samples: int
    vad: Callable[[NDArray[np.float32]], float]
    settings: EndpointerSettings = field(default_factory=EndpointerSettings)
    # Audio kept before the utterance in progress: enough for the pre-roll.
    _buffer: NDArray[np.float32] = field(default_factory=lambda: np.zeros(0, dtype=np.float32))
    _buffer_start: int = 0  # sample index of _buffer[0] in the stream
    _pending: NDArray[np.float32] = field(default_factory=lambda: np.zeros(0, dtype=np.float32))
    utterances: int = 0

    def __post_init__(self) -> None:
        self.endpointer = Endpointer(self.frame_samples / self.rate, self.settings)

    @property
    def received_s(self) -> float:
        return (self._buffer_start + self._buffer.size + self._pending.size) / self.rate

    @property
    def in_speech(self) -> bool:
        return self.endpointer.in_speech

    def current(self) -> tuple[NDArray[np.float32], float]:
        """The utterance in progress so far (its samples and start offset); empty outside speech."""
        if not self.in_speech:
            return np.zeros(0, dtype=np.float32), 0.0
        start = self.endpointer.start_frame * self.frame_samples
        return self._buffer[start - self._buffer_start :].copy(), start / self.rate

    def feed(self, samples: NDArray[Any]) -> list[SpeechStart | Utterance]:
        audio = np.concatenate([self._pending, np.asarray(samples, dtype=np.float32).reshape(-1)])
        whole = audio.size - audio.size % self.frame_samples
        self._pending = audio[whole:]
        out: list[SpeechStart | Utterance] = []
        # One copy per feed (not per frame): events only ever reach frames already pushed.
        self._buffer = np.concatenate([self._buffer, audio[:whole]])
        for offset in range(0, whole, self.frame_samples):
            frame = audio[offset : offset + self.frame_samples]
            out += self._handle(self.endpointer.push(self.vad(frame)))
        self._trim()
        return out

    def finish(self) -> list[SpeechStart | Utterance]:
        """End of audio: the partial last frame joins the utterance in progress, which ends."""
        if self.in_speech and self._pending.size:
            self._buffer = np.concatenate([self._buffer, self._pending])
        self._pending = np.zeros(0, dtype=np.float32)
        events = self.endpointer.finish()
        if events:
            end = events[0]
            assert isinstance(end, UtteranceEnd)
            # Up to the last sample received, not only whole frames.
            last = (self._buffer_start + self._buffer.size + self.frame_samples - 1) // self.frame_samples
            events = [UtteranceEnd(end.start_frame, max(end.end_frame, last), end.reason)]
        return self._handle(events)

    def _handle(self, events: list[SpeechStart | UtteranceEnd]) -> list[SpeechStart | Utterance]:
        out: list[SpeechStart | Utterance] = []
        for event in events:
            if isinstance(event, SpeechStart):
                out.append(event)
                continue
            start = event.start_frame * self.frame_samples
            end = min(event.end_frame * self.frame_samples, self._buffer_start + self._buffer.size)
            samples = self._buffer[start - self._buffer_start : end - self._buffer_start].copy()
            out.append(Utterance(self.utterances, samples, start / self.rate, end / self.rate, event.reason))
            self.utterances += 1
        return out

    def _trim(self) -> None:
        """Drop audio no utterance can reach any more (everything before the pre-roll window outside speech)."""
        if self.in_speech:
            keep_from = self.endpointer.start_frame * self.frame_samples
        else:
            # A start may reach back over the frames of its speech run plus the pre-roll.
            reach = self.endpointer.min_speech_frames + self.endpointer.pre_roll_frames
            keep_from = (self.endpointer.frames - reach) * self.frame_samples
            keep_from = max(keep_from, self.endpointer.earliest_frame * self.frame_samples)
        drop = keep_from - self._buffer_start
        if drop > 0:
            self._buffer = self._buffer[drop:]
            self._buffer_start += drop
