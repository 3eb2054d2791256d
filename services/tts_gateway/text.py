"""Text to pieces: normalization and sentence splitting, whole-text and incremental.

The first piece is kept short (cut at a clause or word boundary) so that the first audio leaves early; the rest are
whole sentences, with over-long sentences cut at clause or word boundaries so no piece exceeds the model's limit.
"""

from __future__ import annotations

import re
import unicodedata

# Words whose trailing period does not end a sentence.
_ABBREVIATIONS = frozenset(
    {
        "mr",
        "mrs",
        "ms",
        "dr",
        "prof",
        "sr",
        "jr",
        "st",
        "vs",
        "etc",
        "e.g",
        "i.e",
        "no",
        "fig",
        "approx",
        "inc",
        "ltd",
        "a.m",
        "p.m",
    }
)
# A sentence ends at terminal punctuation (plus closing quotes/brackets) followed by whitespace.
_SENTENCE_END = re.compile(r"[.!?…]+[\"')\]»”’]*(?=\s)|[;:](?=\s)|\n{2,}")
_CLAUSE_END = re.compile(r"[,;:—–](?=\s)")
_WHITESPACE = re.compile(r"\s+")

FIRST_PIECE_CHARS = 60  # longer first sentences are cut near here (about 0.6-1 s of speech at 15 chars/s)
MAX_PIECE_CHARS = 400  # longer sentences are cut at clause, then word boundaries


NOTHING_TO_SPEAK = "has nothing to speak: it needs at least one letter or digit (not only emoji or punctuation)"
_ALLOWED_CONTROLS = frozenset("\t\n\r")


def first_control_character(text: str) -> int | None:
    """Index of the first control character other than tab and line breaks (NUL, ESC, ...), or None."""
    for index, char in enumerate(text):
        if char not in _ALLOWED_CONTROLS and unicodedata.category(char) == "Cc":
            return index
    return None


def control_character_problem(text: str) -> str | None:
    """What to tell a client whose text holds a control character, or None when it holds none."""
    index = first_control_character(text)
    if index is None:
        return None
    return f"contains control character U+{ord(text[index]):04X} at offset {index}; remove it"


def is_pronounceable(text: str) -> bool:
    """True when the text holds a letter or a digit: something a TTS model can say (not only emoji or punctuation)."""
    return any(unicodedata.category(char)[0] in "LN" for char in text)


def normalize(text: str) -> str:
    """Collapse runs of whitespace to one space and trim."""
    return _WHITESPACE.sub(" ", text).strip()


def _is_abbreviation(text: str, end: int) -> bool:
    """True when the period just before `end` belongs to an abbreviation or an initial ("Dr.", "J.")."""
    start = end
    while start > 0 and not text[start - 1].isspace():
        start -= 1
    word = text[start:end].rstrip(".").lower()
    return word in _ABBREVIATIONS or (len(word) == 1 and word.isalpha())


def _sentence_ends(text: str) -> list[int]:
    """Offsets just past each sentence terminator in `text` (not including a final unterminated remainder)."""
    ends = []
    for match in _SENTENCE_END.finditer(text):
        if (
            match.group().startswith(".")
            and match.group().rstrip("\"')]»”’") == "."
            and _is_abbreviation(text, match.start() + 1)
        ):
            continue
        following = text[match.end() :].lstrip()[:1]
        if following.islower():
            continue  # "p.m. in", "etc. and": a lowercase word goes on with the same sentence
        ends.append(match.end())
    return ends


def cut_long(piece: str, limit: int) -> list[str]:
    """Cut `piece` into parts of at most `limit` characters, preferring clause ends, then spaces."""
    parts: list[str] = []
    rest = piece.strip()
    while len(rest) > limit:
        window = rest[: limit + 1]
        cut = max((m.end() for m in _CLAUSE_END.finditer(window) if m.end() >= limit // 3), default=0)
        if cut == 0:
            cut = window.rfind(" ")
        if cut <= 0:
            cut = limit  # one enormous word: cut it anywhere rather than exceed the limit
        parts.append(rest[:cut].strip())
        rest = rest[cut:].strip()
    if rest:
        parts.append(rest)
    return parts


def shorten_first(piece: str, target: int = FIRST_PIECE_CHARS) -> list[str]:
    """Split a long first sentence into a short lead-in and the rest, at a clause end or else a word boundary."""
    if len(piece) <= target:
        return [piece]
    window = piece[: target + 1]
    clause = [m.end() for m in _CLAUSE_END.finditer(window) if m.end() >= target // 3]
    cut = clause[-1] if clause else window.rfind(" ")
    if cut <= target // 3:
        return [piece]
    return [piece[:cut].strip(), piece[cut:].strip()]


def split_sentences(text: str, *, max_chars: int = MAX_PIECE_CHARS) -> list[str]:
    """Whole sentences of normalized text, each at most `max_chars` long."""
    text = normalize(text)
    if not text:
        return []
    pieces: list[str] = []
    start = 0
    for end in _sentence_ends(text + " "):
        if end > len(text):
            end = len(text)
        sentence = text[start:end].strip()
        start = end
        if sentence:
            pieces.extend(cut_long(sentence, max_chars))
    tail = text[start:].strip()
    if tail:
        pieces.extend(cut_long(tail, max_chars))
    return pieces


def split_text(text: str, *, max_chars: int = MAX_PIECE_CHARS, first_chars: int = FIRST_PIECE_CHARS) -> list[str]:
    """Pieces to synthesize in order: sentences, with the first one cut short when it is long."""
    pieces = [p for p in split_sentences(text, max_chars=max_chars) if is_pronounceable(p)]
    if pieces:
        pieces[:1] = shorten_first(pieces[0], first_chars)
    return pieces


class IncrementalSplitter:
    """Sentence splitter for text that arrives in deltas (an LLM token stream).

    `feed` returns the sentences completed by the new text; `flush` returns whatever is buffered. A sentence counts
    as complete once the whitespace after its terminator has arrived, so "3." followed later by "14" is not cut.
    """

    def __init__(self, *, max_chars: int = MAX_PIECE_CHARS, first_chars: int = FIRST_PIECE_CHARS) -> None:
        self.max_chars = max_chars
        self.first_chars = first_chars
        self._buffer = ""
        self._emitted = 0
        self.received_chars = 0

    def _emit(self, pieces: list[str]) -> list[str]:
        out: list[str] = []
        for piece in pieces:
            piece = normalize(piece)
            if not piece:
                continue
            parts = [p for p in cut_long(piece, self.max_chars) if is_pronounceable(p)]
            if self._emitted == 0 and parts:
                parts[:1] = shorten_first(parts[0], self.first_chars)
            self._emitted += len(parts)
            out.extend(parts)
        return out

    def feed(self, delta: str) -> list[str]:
        self.received_chars += len(delta)
        self._buffer += delta
        ends = _sentence_ends(self._buffer)
        pieces: list[str] = []
        start = 0
        for end in ends:
            pieces.append(self._buffer[start:end])
            start = end
        self._buffer = self._buffer[start:]
        # A run-on without punctuation must not grow without bound: cut it at a word boundary.
        while len(self._buffer) > self.max_chars:
            cut = self._buffer.rfind(" ", 0, self.max_chars + 1)
            cut = cut if cut > 0 else self.max_chars
            pieces.append(self._buffer[:cut])
            self._buffer = self._buffer[cut:]
        return self._emit(pieces)

    def flush(self) -> list[str]:
        rest, self._buffer = self._buffer, ""
        return self._emit([rest])

    @property
    def buffered(self) -> str:
        return self._buffer
