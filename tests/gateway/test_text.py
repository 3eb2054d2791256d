"""Sentence splitting: whole text and incremental (no services needed)."""

from __future__ import annotations

import pytest

from services.tts_gateway.text import (
    FIRST_PIECE_CHARS,
    FIRST_PIECE_CJK_CHARS,
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


# --- Chinese and Japanese ---------------------------------------------------------------------------------------

CHINESE_PARAGRAPH = "今天天气很好。我们去公园散步吧！你觉得怎么样？"
# Thirty sentences of 6-15 characters, each under the CJK first-piece size so that none is shortened.
CHINESE_SENTENCES = [
    f"第{number}句话{'很长' * (number % 5)}{terminator}"
    for number, terminator in zip(range(1, 31), "。！？；…" * 6, strict=True)
]
# 1000 different-looking hanzi with no punctuation and no spaces at all.
HANZI_RUN = "".join(chr(0x4E00 + (index * 7919) % 20000) for index in range(1000))


def feed_one_character_at_a_time(text: str, **limits: int) -> list[str]:
    splitter = IncrementalSplitter(**limits)
    pieces: list[str] = []
    for char in text:
        pieces += splitter.feed(char)
    return pieces + splitter.flush()


def test_chinese_sentences_end_at_full_width_stops_without_spaces() -> None:
    assert split_text(CHINESE_PARAGRAPH) == ["今天天气很好。", "我们去公园散步吧！", "你觉得怎么样？"]


def test_a_long_chinese_paragraph_splits_into_one_piece_per_sentence() -> None:
    assert all(len(sentence) <= FIRST_PIECE_CJK_CHARS for sentence in CHINESE_SENTENCES)
    assert split_text("".join(CHINESE_SENTENCES)) == CHINESE_SENTENCES


def test_a_long_first_chinese_sentence_is_cut_near_the_cjk_first_piece_size() -> None:
    first = "这是一个非常非常长的句子，它有很多个分句，我们需要在合适的地方把它切开。"
    pieces = split_text(first + "第二句。")
    assert pieces == ["这是一个非常非常长的句子，", "它有很多个分句，我们需要在合适的地方把它切开。", "第二句。"]
    # Without a comma in reach the lead-in is cut between characters, at the CJK size (18 = 60 Latin characters).
    assert FIRST_PIECE_CJK_CHARS == 18
    pieces = split_text(HANZI_RUN[:100] + "。")
    assert pieces == [HANZI_RUN[:18], HANZI_RUN[18:100] + "。"]


@pytest.mark.parametrize("max_chars", [400, 100, 37])
def test_an_unpunctuated_hanzi_run_is_cut_under_the_limit_and_nothing_is_lost(max_chars: int) -> None:
    pieces = split_text(HANZI_RUN, max_chars=max_chars)
    assert all(0 < len(piece) <= max_chars for piece in pieces)
    assert "".join(pieces) == HANZI_RUN
    assert len(pieces[0]) == FIRST_PIECE_CJK_CHARS
    assert len(pieces) >= len(HANZI_RUN) // max_chars


def test_over_long_chinese_sentences_are_cut_at_full_width_commas() -> None:
    sentence = "，".join(f"这是第{index}个分句的内容" for index in range(40)) + "。"
    parts = cut_long(sentence, 50)
    assert all(len(part) <= 50 for part in parts)
    assert "".join(parts) == sentence
    assert all(part.endswith("，") for part in parts[:-1])
    # The enumeration comma and the colon are clause ends too, and a closing quote stays with its clause.
    assert cut_long("他说：“苹果、香蕉、橘子、葡萄、西瓜，”然后走了", 12) == [
        "他说：“苹果、香蕉、",
        "橘子、葡萄、西瓜，”",
        "然后走了",
    ]


def test_character_cuts_never_separate_combining_marks_or_strand_punctuation() -> None:
    decomposed_ga = "か\u3099"  # が as kana plus a combining voiced-sound mark
    parts = cut_long(decomposed_ga * 300, 101)
    assert all(len(part) <= 101 and not part.startswith("\u3099") for part in parts)
    assert "".join(parts) == decomposed_ga * 300
    # A cut falling just before a stop or a closing bracket moves back so that they stay with their text.
    parts = cut_long(HANZI_RUN[:20] + "」。" + HANZI_RUN[:30], 21)
    assert parts[0] == HANZI_RUN[:19]
    assert parts[1].startswith(HANZI_RUN[19] + "」。")


def test_mixed_chinese_and_english_split_at_every_sentence_end() -> None:
    assert split_text("我喜欢Python。It is great! 真的吗？") == ["我喜欢Python。", "It is great!", "真的吗？"]
    assert split_text("Dr. Smith说：3.14很重要。我是Dr. Li，e.g. 你好。") == [
        "Dr. Smith说：3.14很重要。",
        "我是Dr. Li，e.g. 你好。",
    ]


@pytest.mark.parametrize(
    ("text", "pieces"),
    [
        (
            "東京は日本の首都です。人口は約1400万人です！すごいですね？",
            ["東京は日本の首都です。", "人口は約1400万人です！", "すごいですね？"],
        ),
        ("他说：「你好。」然后走了。", ["他说：「你好。」", "然后走了。"]),
        ("『ありがとう！』と言った｡次へ", ["『ありがとう！』", "と言った｡", "次へ"]),
        ("真的吗？！太好了‼我……我不知道⁉好；走吧", ["真的吗？！", "太好了‼", "我……", "我不知道⁉", "好；", "走吧"]),
        ("真的吗?好的!再见.明天见", ["真的吗?", "好的!", "再见.", "明天见"]),  # half-width marks typed in Chinese
        ("版本是3.14。文件名是报告.pdf，对吧", ["版本是3.14。", "文件名是报告.pdf，对吧"]),
        ("他终于来了——那个我们等了很久的人。", ["他终于来了——那个我们等了很久的人。"]),  # a dash is no sentence end
    ],
)
def test_cjk_sentence_ends_and_non_ends(text: str, pieces: list[str]) -> None:
    assert split_text(text) == pieces


def test_normalize_joins_wrapped_cjk_lines_without_inserting_spaces() -> None:
    assert normalize("今天\n天气 很好。\r\n我们去\u3000公园。") == "今天天气很好。我们去公园。"
    assert normalize("我喜欢\nPython and\n  Go") == "我喜欢 Python and Go"
    assert normalize("标题\n\n正文") == "标题 正文"  # a blank line is a real gap, not a line wrap
    assert split_text("今天天气\n很好。我们\n去公园。") == ["今天天气很好。", "我们去公园。"]


@pytest.mark.parametrize(
    "text",
    [
        CHINESE_PARAGRAPH,
        "".join(CHINESE_SENTENCES),
        HANZI_RUN,
        "我喜欢Python。It is great! 真的吗？Dr. Smith说：3.14很重要。",
        "他说：「你好。」然后走了。『ありがとう！』と言った。真的吗?好的!我……我不知道。",
        "这是一个非常非常长的句子，它有很多个分句，我们需要在合适的地方把它切开。第二句。",
    ],
)
@pytest.mark.parametrize("max_chars", [400, 40])
def test_incremental_one_character_at_a_time_matches_whole_text(text: str, max_chars: int) -> None:
    assert feed_one_character_at_a_time(text, max_chars=max_chars) == split_text(text, max_chars=max_chars)


def test_incremental_emits_a_chinese_sentence_with_the_next_character_without_waiting_for_a_space() -> None:
    splitter = IncrementalSplitter()
    assert splitter.feed("今天天气很好。") == []  # a closing quote could still follow the stop
    assert splitter.feed("我") == ["今天天气很好。"]
    assert splitter.feed("们去公园散步吧！你觉得") == ["我们去公园散步吧！"]
    assert splitter.feed("怎么样？") == []
    assert splitter.flush() == ["你觉得怎么样？"]


def test_incremental_keeps_a_closing_quote_that_arrives_in_the_next_delta() -> None:
    splitter = IncrementalSplitter()
    assert splitter.feed("他说：「你好。") == []
    assert splitter.feed("」") == []
    assert splitter.feed("然后") == ["他说：「你好。」"]
    assert splitter.feed("走了……") == []
    assert splitter.feed("…") == []  # the ellipsis is still growing
    assert splitter.feed("”") == []
    assert splitter.feed("好") == ["然后走了………”"]
    assert splitter.flush() == ["好"]


def test_incremental_still_waits_for_the_character_after_an_ascii_period_next_to_chinese() -> None:
    splitter = IncrementalSplitter()
    assert splitter.feed("文件名是报告.") == []
    assert splitter.feed("pdf，版本3.") == []
    assert splitter.feed("14。好") == ["文件名是报告.pdf，版本3.14。"]
    assert splitter.flush() == ["好"]


def test_incremental_run_of_hanzi_is_capped_at_character_boundaries() -> None:
    splitter = IncrementalSplitter(max_chars=50)
    pieces: list[str] = []
    for start in range(0, 300, 7):
        pieces += splitter.feed(HANZI_RUN[start : start + 7])
    pieces += splitter.flush()
    assert all(len(piece) <= 50 for piece in pieces)
    assert "".join(pieces) == HANZI_RUN[:301]
