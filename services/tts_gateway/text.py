"""Text to pieces: normalization and sentence splitting, whole-text and incremental.

The first piece is kept short (cut at a clause or word boundary) so that the first audio leaves early; the rest are
whole sentences, with over-long sentences cut at clause or word boundaries so no piece exceeds the model's limit.

Chinese and Japanese are handled too: their full-width stops (。！？；…) end a sentence with no space after them,
their commas (，、：) are clause boundaries, and text with no spaces at all is cut between characters.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator
from fractions import Fraction

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

# Characters of scripts written without spaces between words (regex class ranges): Han ideographs (with their
# iteration marks), hiragana, katakana (with the long-vowel mark), bopomofo, halfwidth katakana.
_CJK_LETTER_RANGES = (
    r"\u3005-\u3007\u3021-\u3029\u3031-\u3035\u303b\u303c\u3040-\u30ff\u3100-\u312f\u31a0-\u31bf\u31f0-\u31ff"
    r"\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff66-\uff9f\U00020000-\U0003134f"
)
# CJK letters plus CJK punctuation and full-width forms: text around which no space is expected.
_CJK_RANGES = _CJK_LETTER_RANGES + r"\u3000-\u303f\uff00-\uffef"
_CJK_LETTER = re.compile(f"[{_CJK_LETTER_RANGES}]")
_CJK = re.compile(f"[{_CJK_RANGES}]")

# Closing quotes and brackets stay with the sentence or clause they close.
_CLOSERS = "\"')]}»›”’」』）】》〉〕〗〙〛｣］｝〞〟"
_OPENERS = "([{«‹“‘「『（【《〈〔〖〘〚｢［｛〝"
_CJK_OPENERS = "「『（【《〈〔〖〘〚｢［｛〝"
# Full-width stops end a sentence by themselves (ideographic and halfwidth full stop, full-width ! ? ;, the
# double marks); a run of them, possibly mixed with ! ? and ellipses, is one terminator.
_CJK_STOPS = "。｡！？；‼⁇⁈⁉"
_STOP_RUN = "。｡！？‼⁇⁈⁉…⋯!?."
_ELLIPSES = "…⋯"
# Characters that must not begin a piece: they belong to the text before them (closers, stops, commas, small kana).
_NO_PIECE_START = frozenset(
    _CLOSERS + _STOP_RUN + "；，、：．.,;:%‰℃ー々ゝゞヽヾぁぃぅぇぉっゃゅょゎゕゖァィゥェォッャュョヮヵヶ"
)

_CLOSE = re.escape(_CLOSERS)
_SENTENCE_END = re.compile(
    # CJK: a full-width stop (the full-width period not inside a number), or an ellipsis right after CJK text, ends
    # the sentence at once; no space follows in CJK text.
    rf"(?P<cjk>(?:[{_CJK_STOPS}]|．(?![0-9０-９])|[{_ELLIPSES}](?<=[{_CJK_RANGES}][{_ELLIPSES}]))[{_STOP_RUN}]*[{_CLOSE}]*"
    # Half-width ! ? (or a . right after CJK text) directly followed by CJK text, as in casually typed Chinese.
    rf"|(?:[!?]|\.(?<=[{_CJK_RANGES}]\.))[{_STOP_RUN}]*[{_CLOSE}]*(?=[{_CJK_LETTER_RANGES}{_CJK_OPENERS}]))"
    # Latin: terminal punctuation (plus closing quotes/brackets) followed by whitespace.
    rf"|(?P<latin>[.!?…]+[{_CLOSE}]*(?=\s))"
    r"|[;:](?=\s)|\n{2,}"
)
# Every alternative above begins with one of these: scanning for them first is ~10x faster than `finditer` over
# CJK text (the incremental splitter rescans its buffer on every delta).
_SENTENCE_END_FIRST = re.compile(r"[。｡！？；‼⁇⁈⁉．…⋯!?.;:\n]")
_CLAUSE_END = re.compile(
    r"[,;:—–](?=\s)"  # Latin: followed by a space
    rf"|[，、：﹐﹑︰][{_CLOSE}]*"  # full-width comma, enumeration comma, colon: no space follows them
    rf"|[,;:](?<=[{_CJK_RANGES}][,;:])[{_CLOSE}]*(?=[{_CJK_LETTER_RANGES}{_CJK_OPENERS}])"  # half-width, in CJK text
    r"|—{2,}"  # the Chinese dash "——": a pause inside a sentence, so a clause boundary rather than a sentence end
)
_WHITESPACE = re.compile(r"\s+")
# Whitespace with at most one line break between CJK characters is a line wrap, not a gap; a blank line is kept.
_WHITESPACE_BETWEEN_CJK = re.compile(rf"([{_CJK_RANGES}])(?:[^\S\n]+\n?|\n)[^\S\n]*(?=[{_CJK_RANGES}])")
# Clause ends are searched this far past the cut limit, so a closing quote just past it is seen as part of the clause.
_CLAUSE_LOOKAHEAD = 16
_ZERO_WIDTH_JOINER = "\u200d"

# How much speech one character carries, in Latin characters: people say about 15 Latin characters a second but only
# about 4-5 Chinese characters (Japanese kana-kanji text is a little faster), so a CJK character counts 10/3 Latin
# characters when sizing the first piece. Piece limits (max_chars) stay in plain characters: they bound the model input.
CJK_CHAR_WEIGHT = Fraction(10, 3)  # exact: 18 CJK characters weigh exactly 60 Latin ones
FIRST_PIECE_CHARS = 60  # longer first sentences are cut near here (Latin characters: about 4 s of speech at 15/s)
# The same ~4 s of speech in CJK-only text: 18 characters at ~4.5/s. Mixed text is weighed character by character.
FIRST_PIECE_CJK_CHARS = round(FIRST_PIECE_CHARS / CJK_CHAR_WEIGHT)
MAX_PIECE_CHARS = 400  # longer sentences are cut at clause, then word (or, in CJK text, character) boundaries


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


def _join_cjk_lines(text: str) -> str:
    """Drop the spaces and single line breaks between CJK characters."""
    if _WHITESPACE.search(text) is None or _CJK.search(text) is None:
        return text  # nothing to join: much faster to check than to substitute
    return _WHITESPACE_BETWEEN_CJK.sub(r"\1", text)


def normalize(text: str) -> str:
    """Collapse runs of whitespace to one space and trim; drop spaces and single line breaks between CJK characters.

    CJK text puts no spaces between words, so a line break inside it (hard-wrapped text) must not become a space.
    """
    return _WHITESPACE.sub(" ", _join_cjk_lines(text)).strip()


def _is_cjk(char: str) -> bool:
    """True for a Chinese or Japanese character, CJK punctuation or a full-width form: text written without spaces."""
    return _CJK.match(char) is not None


def _prefix_within(text: str, budget: int) -> int:
    """Length of the longest prefix of `text` whose speech, in Latin characters, is at most `budget`."""
    spoken = Fraction(0)
    for index, char in enumerate(text):
        spoken += CJK_CHAR_WEIGHT if _CJK_LETTER.match(char) else 1
        if spoken > budget:
            return index
    return len(text)


def _is_abbreviation(text: str, end: int) -> bool:
    """True when the period just before `end` belongs to an abbreviation or an initial ("Dr.", "J.")."""
    start = end
    # The word starts after whitespace or after CJK text: "我是Dr. Li" holds the abbreviation "Dr.".
    while start > 0 and not text[start - 1].isspace() and not _is_cjk(text[start - 1]):
        start -= 1
    word = text[start:end].rstrip(".").lower()
    return word in _ABBREVIATIONS or (len(word) == 1 and word.isalpha())


def _sentence_end_matches(text: str, start: int) -> Iterator[re.Match[str]]:
    """What `_SENTENCE_END.finditer(text, start)` yields, found faster."""
    position = start
    while (candidate := _SENTENCE_END_FIRST.search(text, position)) is not None:
        match = _SENTENCE_END.match(text, candidate.start())
        if match is None:
            position = candidate.start() + 1
        else:
            yield match
            position = match.end()


def _sentence_ends(text: str, start: int = 0) -> list[int]:
    """Offsets just past each sentence terminator in `text[start:]` (not including a final unterminated remainder).

    Text before `start` is only context: whether a "." or "…" follows CJK text.
    """
    ends = []
    for match in _sentence_end_matches(text, start):
        if match.group("cjk") is None:
            latin = match.group("latin") or ""
            if latin.rstrip(_CLOSERS) == "." and _is_abbreviation(text, match.start() + 1):
                continue
            following = text[match.end() :].lstrip()[:1]
            if following.islower():
                continue  # "p.m. in", "etc. and": a lowercase word goes on with the same sentence
        ends.append(match.end())
    return ends


def _splits_cluster(text: str, index: int) -> bool:
    """True when cutting before `text[index]` would separate it from the character it belongs to.

    That is a combining mark (accents, variation selectors), an emoji skin-tone modifier, either side of a zero-width
    joiner, or the low half of a surrogate pair (only present in text decoded with surrogateescape).
    """
    char, before = text[index], text[index - 1]
    return (
        unicodedata.category(char) in ("Mn", "Mc", "Me")
        or "\U0001f3fb" <= char <= "\U0001f3ff"
        or _ZERO_WIDTH_JOINER in (char, before)
        or ("\ud800" <= before <= "\udbff" and "\udc00" <= char <= "\udfff")
    )


def _character_cut(text: str, limit: int, floor: int, *, cjk_only: bool) -> int | None:
    """The last index in (floor, limit] where `text` can be cut between two characters, or None.

    Punctuation stays with the text before it, an opening bracket with the text after it. With `cjk_only`, a cut
    must touch CJK text (between two Latin letters it would split a word).
    """
    for cut in range(min(limit, len(text) - 1), floor, -1):
        before, char = text[cut - 1], text[cut]
        if _splits_cluster(text, cut) or char in _NO_PIECE_START or before in _OPENERS:
            continue
        if cjk_only and not (_is_cjk(before) or _is_cjk(char)):
            continue
        return cut
    return None


def _clause_cut(text: str, limit: int, floor: int) -> int | None:
    """The last clause end in [floor, limit] of `text`, or None."""
    ends = [m.end() for m in _CLAUSE_END.finditer(text, 0, limit + _CLAUSE_LOOKAHEAD) if floor <= m.end() <= limit]
    return ends[-1] if ends else None


def _space_cut(text: str, limit: int, floor: int) -> int | None:
    """The last whitespace in (floor, limit] of `text`, or None."""
    for cut in range(min(limit, len(text) - 1), floor, -1):
        if text[cut].isspace():
            return cut
    return None


def _forced_cut(text: str, limit: int) -> int:
    """Where to cut `text` when nothing better is found: a character boundary at or before `limit`, never past it."""
    return _character_cut(text, limit, 0, cjk_only=False) or limit


def _long_cut(text: str, limit: int) -> int:
    """Where `cut_long` cuts `text` (longer than `limit`): never past `limit`, and not too early when avoidable.

    In order: the last clause end in the last two thirds, the last space there, the last boundary between CJK
    characters there, any earlier space (a Latin word is not cut), and at last the character boundary at the limit.
    """
    floor = limit // 3
    return (
        _clause_cut(text, limit, floor)
        or _space_cut(text, limit, floor)
        or _character_cut(text, limit, floor, cjk_only=True)
        or _space_cut(text, limit, 0)
        or _forced_cut(text, limit)
    )


def cut_long(piece: str, limit: int) -> list[str]:
    """Cut `piece` into parts of at most `limit` characters: at clause ends, else spaces, else between CJK letters."""
    limit = max(1, limit)
    parts: list[str] = []
    rest = piece.strip()
    while len(rest) > limit:
        cut = _long_cut(rest, limit)
        parts.append(rest[:cut].strip())
        rest = rest[cut:].strip()
    if rest:
        parts.append(rest)
    return parts


def shorten_first(piece: str, target: int = FIRST_PIECE_CHARS) -> list[str]:
    """Split a long first sentence into a short lead-in and the rest, at a clause end or else a word boundary.

    `target` is in Latin characters of speech: in CJK text the lead-in is about `target / CJK_CHAR_WEIGHT` characters.
    CJK text with no clause end in reach is cut between characters; Latin text is never cut inside a word.
    """
    reach = _prefix_within(piece, target)
    if reach >= len(piece):
        return [piece]
    floor = reach // 3
    cut = _clause_cut(piece, reach, floor)
    if cut is None:
        cut = _space_cut(piece, reach, floor) or _character_cut(piece, reach, floor, cjk_only=True)
    if cut is None or cut <= floor:
        return [piece]  # no boundary past the first third: a lead-in that short would sound clipped
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
    """Pieces to synthesize in order: sentences, with the first one cut short when it is long.

    `first_chars` is in Latin characters of speech (see `shorten_first`); `max_chars` in plain characters.
    """
    pieces = [p for p in split_sentences(text, max_chars=max_chars) if is_pronounceable(p)]
    if pieces:
        pieces[:1] = shorten_first(pieces[0], first_chars)
    return pieces


class IncrementalSplitter:
    """Sentence splitter for text that arrives in deltas (an LLM token stream).

    `feed` returns the sentences completed by the new text; `flush` returns whatever is buffered. A sentence counts
    as complete once the next non-space character after its terminator has arrived: so "3." followed later by "14"
    is not cut, and a closing quote arriving after "。" in a later delta stays with its sentence ("你好。" + "」").
    A Chinese sentence therefore leaves with the first character of the next one, or at `flush`.
    """

    def __init__(self, *, max_chars: int = MAX_PIECE_CHARS, first_chars: int = FIRST_PIECE_CHARS) -> None:
        self.max_chars = max(1, max_chars)
        self.first_chars = first_chars
        self._buffer = ""
        self._context = ""
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
        # The character before the buffer (already emitted) is context: whether a "." or "…" follows CJK text.
        text = self._context + self._buffer + delta
        # As `normalize` does for whole text: a line break inside CJK text is no gap (and no sentence end).
        text = _join_cjk_lines(text)
        pieces: list[str] = []
        start = len(self._context)
        for end in _sentence_ends(text, start):
            if not text[end:].strip():
                break  # the terminator may still grow ("。" + "」", "…" + "…"): wait for what follows it
            pieces.append(text[start:end])
            start = end
        self._context, rest = text[start - 1 : start], text[start:]
        unfinished = normalize(rest) if len(rest) > self.max_chars else rest
        if len(unfinished) > self.max_chars:
            # A run-on must not grow without bound: emit the parts `cut_long` cuts off, whatever text comes next.
            content = unfinished
            *complete, unfinished = cut_long(content, self.max_chars)
            pieces.extend(complete)
            self._context = content[-len(unfinished) - 1]  # the tail is a suffix of `content`: a space or a letter
            rest = unfinished + rest[len(rest.rstrip()) :]  # trailing whitespace may still end a sentence
        self._buffer = rest
        return self._emit(pieces)

    def flush(self) -> list[str]:
        rest, self._buffer, self._context = self._buffer, "", ""
        return self._emit([rest])
