"""Text-in streaming sessions: streamed text cut at word boundaries, and a bounded table of open sessions.

Pure Python (no torch, no Triton), so the rules are tested on their own.

A session is one utterance whose text arrives in increments (the gateway's StreamingSynthesize in incremental mode):
the client names it with a `session_id` and marks its first and last request (session_start / session_end), as
Triton's sequence batcher does with its START/END controls and correlation id. Why not the sequence batcher itself:
the orchestrator is a decoupled python model that serves requests on its own threads, and the sequence batcher's
idle timeout frees its slot without telling the model, so the model would need this table to release the LLM's KV
cache anyway; one mechanism, the model's own, keeps the rules in one place (bounded count, idle expiry, cancellation).
"""

from __future__ import annotations

import contextlib
import threading
import time
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any


def _is_wide(char: str) -> bool:
    """Characters of scripts written without spaces (CJK ideographs, kana, hangul, their punctuation)."""
    return unicodedata.east_asian_width(char) in ("W", "F")


def last_boundary(text: str) -> int:
    """Where streamed text can be cut so that tokenizing the two parts gives the tokens of the whole: before the last
    whitespace (byte-level BPE joins a space to the word after it), or after the last wide character (scripts without
    spaces); 0 when there is no such place yet."""
    for index in range(len(text) - 1, -1, -1):
        char = text[index]
        if char.isspace():
            return index
        if _is_wide(char):
            return index + 1
    return 0


class TextIncrements:
    """Token ids of streamed text: `feed` returns the ids of the complete words so far, `rest` those of the tail."""

    def __init__(self, encode: Callable[[str], list[int]]) -> None:
        self.encode = encode
        self.buffer = ""
        self.received_chars = 0

    def feed(self, delta: str) -> list[int]:
        self.buffer += delta
        self.received_chars += len(delta)
        cut = last_boundary(self.buffer)
        if cut <= 0:
            return []
        head, self.buffer = self.buffer[:cut], self.buffer[cut:]
        return self.encode(head) if head.strip() else []

    def rest(self) -> list[int]:
        head, self.buffer = self.buffer, ""
        return self.encode(head) if head.strip() else []


class SessionLimit(Exception):
    """Every session slot is taken."""


class UnknownSession(KeyError):
    """No open session has this id (never started, already ended, or expired)."""


@dataclass
class Session:
    id: str
    state: Any
    last_used: float
    busy: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


class SessionTable:
    """Open sessions by id: at most `max_sessions`; one idle (no request in it) for `idle_timeout_s` is expired by
    `expire()`. Thread-safe; a session's own `lock` serialises the requests of that session."""

    def __init__(self, max_sessions: int, idle_timeout_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_sessions = max_sessions
        self.idle_timeout_s = idle_timeout_s
        self.clock = clock
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._sessions)

    def open(self, session_id: str, state: Any) -> Session:
        with self._lock:
            if session_id in self._sessions:
                raise ValueError(f"session {session_id!r} is already open")
            if len(self._sessions) >= self.max_sessions:
                raise SessionLimit(f"all {self.max_sessions} text-input sessions are open")
            session = Session(session_id, state, self.clock())
            self._sessions[session_id] = session
            return session

    def get(self, session_id: str) -> Session:
        with self._lock:
            session = self._sessions.get(session_id)
        if session is None:
            raise UnknownSession(session_id)
        return session

    @contextlib.contextmanager
    def use(self, session: Session) -> Iterator[Session]:
        """Hold the session for one request: never expired while held; its idle time restarts when released."""
        with self._lock:
            session.busy += 1
        try:
            with session.lock:
                yield session
        finally:
            with self._lock:
                session.busy -= 1
                session.last_used = self.clock()

    def close(self, session_id: str) -> Session | None:
        with self._lock:
            return self._sessions.pop(session_id, None)

    def expire(self) -> list[Session]:
        """Remove and return the sessions idle for longer than the timeout."""
        now = self.clock()
        with self._lock:
            stale = [s for s in self._sessions.values() if not s.busy and now - s.last_used > self.idle_timeout_s]
            for session in stale:
                del self._sessions[session.id]
        return stale


__all__ = ["Session", "SessionLimit", "SessionTable", "TextIncrements", "UnknownSession", "last_boundary"]
