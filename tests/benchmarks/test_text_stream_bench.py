"""The pure parts of benchmarks/text_stream_bench.py: the paced deltas, the figures and the goal verdict. No stack."""

from __future__ import annotations

import math
import time

import pytest

from benchmarks.text_stream_bench import (
    CASES,
    PARAGRAPH,
    QUICK_PARAGRAPH,
    CaseFigures,
    PacedRequests,
    Run,
    config,
    counter_delta,
    first_sentence_offset,
    parse_args,
    send_offsets,
    ttfa_ratio,
    verdict,
    word_deltas,
)
from voice.v1 import tts_gateway_pb2


def test_word_deltas_keep_their_whitespace_and_join_to_the_text() -> None:
    assert word_deltas("Hello there.  How are you?") == ["Hello ", "there.  ", "How ", "are ", "you?"]
    assert "".join(word_deltas(PARAGRAPH)) == PARAGRAPH.strip()
    assert word_deltas("   ") == []


def test_the_paragraphs_are_about_sixty_and_twenty_five_words_in_several_sentences() -> None:
    assert 55 <= len(word_deltas(PARAGRAPH)) <= 65
    assert PARAGRAPH.count(".") >= 4
    assert len(word_deltas(QUICK_PARAGRAPH)) < len(word_deltas(PARAGRAPH))
    assert PARAGRAPH.startswith(QUICK_PARAGRAPH.split(". ")[0])  # same first sentence: same TTFA question


def test_send_offsets_pace_the_deltas_and_zero_sends_them_at_once() -> None:
    assert send_offsets(4, 4.0) == [0.0, 0.25, 0.5, 0.75]
    assert send_offsets(3, 0.0) == [0.0, 0.0, 0.0]
    assert send_offsets(0, 4.0) == []


def test_first_sentence_is_complete_at_its_last_words_offset() -> None:
    deltas = word_deltas("One two three. Four five? Six")
    assert first_sentence_offset(deltas, send_offsets(len(deltas), 2.0)) == pytest.approx(1.0)
    assert first_sentence_offset(["no ", "end"], [0.0, 0.5]) is None


def test_ratio_and_verdict() -> None:
    assert ttfa_ratio(1.0, 4.0) == pytest.approx(0.25)
    assert verdict(ttfa_ratio(1.0, 4.0)).endswith("MET")
    assert verdict(0.5).endswith("MET")  # at most 0.5
    assert verdict(0.51).endswith("MISSED")
    assert ttfa_ratio(None, 4.0) is None and ttfa_ratio(1.0, 0.0) is None and ttfa_ratio(1.0, math.nan) is None
    assert verdict(None).endswith("not measured")


EXPOSITION_BEFORE = """# HELP cosyvoice2_text_increments_total Text deltas received by text-in streaming sessions
# TYPE cosyvoice2_text_increments_total counter
cosyvoice2_text_increments_total{model="cosyvoice2",version="1"} 3
tts_gateway_text_increments_total{voice="cosyvoice2"} 5.0
tts_gateway_text_increments_total{voice="joe"} 0.0
"""
EXPOSITION_AFTER = """cosyvoice2_text_increments_total{model="cosyvoice2",version="1"} 17
tts_gateway_text_increments_total{voice="cosyvoice2"} 16.0
tts_gateway_text_increments_total{voice="joe"} 0.0
"""


def test_counter_delta_reads_two_scrapes() -> None:
    assert counter_delta(EXPOSITION_BEFORE, EXPOSITION_AFTER, "cosyvoice2_text_increments_total") == 14
    assert counter_delta(EXPOSITION_BEFORE, EXPOSITION_AFTER, "tts_gateway_text_increments_total", voice="joe") == 0
    name = "tts_gateway_text_increments_total"
    assert counter_delta(EXPOSITION_BEFORE, EXPOSITION_AFTER, name, voice="cosyvoice2") == 11
    assert counter_delta("", EXPOSITION_AFTER, "absent_total") == 0


def run(ttfa: float, underruns: int = 0, gap: float = 0.0) -> Run:
    return Run(ttfa, ttfa + 5.0, 4.0, underruns, gap, model_increments=7, gateway_increments=6)


def test_case_figures_take_p50_and_worst() -> None:
    figures = CaseFigures(CASES[0], [run(3.0), run(1.0, 2, 0.4), run(2.0, 1, 0.1)])
    out = figures.as_dict()
    assert out["mode"] == "TEXT_INPUT_MODE_INCREMENTAL"
    assert out["ttfa_s"] == {"p50": 2.0, "min": 1.0}
    assert out["underruns"] == [0, 2, 1] and out["worst_gap_s"] == pytest.approx(0.4)
    assert out["summary_ttfa_s_p50"] is None  # no run had a summary
    assert CaseFigures(CASES[2]).p50("ttfa_s") is None


def test_cosyvoice_cases_carry_speaker_seed_and_mode_and_piper_leaves_the_mode_unset() -> None:
    text_in, sentences, piper = (config(case, seed=7) for case in CASES)
    assert text_in.text_input_mode == tts_gateway_pb2.TEXT_INPUT_MODE_INCREMENTAL
    assert sentences.text_input_mode == tts_gateway_pb2.TEXT_INPUT_MODE_SENTENCES
    for settings in (text_in, sentences):
        assert settings.voice == "cosyvoice2" and settings.preset_speaker.speaker == "tiny_female"
        assert settings.seed == 7
    assert piper.voice == "joe" and piper.text_input_mode == tts_gateway_pb2.TEXT_INPUT_MODE_UNSPECIFIED
    assert piper.WhichOneof("mode") is None and piper.seed == 0


def test_paced_requests_send_the_config_then_the_deltas_at_their_pace() -> None:
    requests = PacedRequests(config(CASES[0], seed=7), ["a ", "b ", "c"], 50.0)
    sent: list[tuple[float, tts_gateway_pb2.StreamingSynthesizeRequest]] = []
    for message in requests:
        sent.append((time.perf_counter(), message))
    assert sent[0][1].WhichOneof("request") == "config"
    assert [m.text for _, m in sent[1:]] == ["a ", "b ", "c"]
    assert requests.started is not None and requests.first_sent.is_set()
    assert sent[-1][0] - requests.started >= 2 / 50.0 - 1e-3  # the third delta waits two intervals


def test_quick_is_one_repeat_and_bad_arguments_are_refused() -> None:
    assert parse_args(["--quick"]).repeats == 1
    assert parse_args([]).repeats == 3 and parse_args([]).words_per_second == 4.0
    for bad in (["--repeats=0"], ["--words-per-second=0"], ["--seed=0"]):
        with pytest.raises(SystemExit):
            parse_args(bad)
