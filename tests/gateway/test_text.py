"""Sentence splitting: whole text and incremental (no services needed)."""

from __future__ import annotations

import pytest

from services.tts_gateway.text import (
    FIRST_PIECE_CHARS,
    IncrementalSplitter,
    cut_long,
    normalize,
    split_sentences,
    split_text,
)

PARAGRAPH = "Hello there. How are you today?  I am fine!\nThanks for asking."


def test_normalize_collapses_whitespace() -> None:
    assert normalize("  a \n\t b  ") == "a b"


def test_sentences_in_order_and_nothing_lost() -> None:
    pieces = split_sentences(PARAGRAPH)
    assert pieces == ["Hello there.", "How are you today?", "I am fine!", "Thanks for asking."]
    assert " ".join(pieces) == normalize(PARAGRAPH)


@pytest.mark.parametrize(
    "text",
    [
        "Dr. Smith met Mr. Jones at 3.14 p.m. in St. Louis.",
        "The value is 3.5 and rising.",
        "J. R. R. Tolkien wrote books.",
    ],
)
def test_abbreviations_initials_and_decimals_do_not_split(text: str) -> None:
    assert split_sentences(text) == [text]


def test_first_piece_is_cut_short_at_a_clause() -> None:
    first = "When the morning light finally arrived over the quiet hills, the travellers packed up their camp."
    pieces = split_text(first + " Then they left.")
    assert pieces[0] == "When the morning light finally arrived over the quiet hills,"
    assert len(pieces[0]) <= FIRST_PIECE_CHARS
    assert " ".join(pieces) == normalize(first + " Then they left.")


def test_short_first_sentence_is_kept_whole() -> None:
    assert split_text("Hi. This is long enough, with a clause, to not matter at all here.")[0] == "Hi."


def test_long_sentences_are_cut_under_the_limit() -> None:
    sentence = ", ".join(f"clause number {i} goes here" for i in range(40)) + "."
    parts = cut_long(sentence, 100)
    assert all(len(p) <= 100 for p in parts)
    assert " ".join(parts) == sentence
    assert all(p.endswith(",") for p in parts[:-1])  # cut at clause ends, not mid-clause


def test_one_enormous_word_is_still_cut() -> None:
    parts = cut_long("x" * 250, 100)
    assert [len(p) for p in parts] == [100, 100, 50]


def test_incremental_emits_sentences_as_they_complete() -> None:
    splitter = IncrementalSplitter()
    out: list[str] = []
    deltas = ["Hel", "lo the", "re. How", " are you", "?", " I am ", "fine"]
    emitted_after = []
    for delta in deltas:
        out += splitter.feed(delta)
        emitted_after.append(len(out))
    # "Hello there." completes when the space after it arrives (in " How"... i.e. the 3rd delta).
    assert emitted_after == [0, 0, 1, 1, 1, 2, 2]
    out += splitter.flush()
    assert out == ["Hello there.", "How are you?", "I am fine"]


def test_incremental_waits_for_the_character_after_a_period() -> None:
    splitter = IncrementalSplitter()
    assert splitter.feed("Pi is 3.") == []
    assert splitter.feed("14 roughly. Next") == ["Pi is 3.14 roughly."]
    assert splitter.flush() == ["Next"]


def test_incremental_flush_mid_sentence_and_run_on_cap() -> None:
    splitter = IncrementalSplitter(max_chars=50)
    assert splitter.feed("no punctuation at all ") == []
    assert splitter.flush() == ["no punctuation at all"]
    pieces = splitter.feed("word " * 30)
    assert pieces and all(len(p) <= 50 for p in pieces)
