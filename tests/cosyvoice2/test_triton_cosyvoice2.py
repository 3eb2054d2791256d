"""The cosyvoice2 Triton models on the tiny checkpoint, through a direct Triton stream (no gateway): whole pieces,
text-in streaming sessions, their limits and errors, the reference cache, many sessions on one server.

Lengths follow from the published timing: every speech token is 960 samples at 24 kHz, and the tiny checkpoint's
max_token_text_ratio (3, registry tiny_params) bounds a piece of N text tokens to 3 N speech tokens (the random model
never ends a piece itself).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from transformers import AutoTokenizer

from tests.fixtures.cosyvoice2 import SAMPLES_PER_TOKEN, CosyVoice2Stream, Result, cosyvoice2_inputs, voiced
from tests.fixtures.triton_server import TritonServer
from tests.prometheus import metric, scrape
from tests.waiting import wait_until
from voice_triton import registry

pytestmark = pytest.mark.timeout(600)
TEXT = "Hello there, this is a short test of the tiny model."
WORDS = "The quick brown fox jumps over the lazy dog and keeps running far away into the green hills today."
RATIO = int(registry.get("cosyvoice2").tiny_params["max_token_text_ratio"])


@pytest.fixture
def stream(cosyvoice2_triton: TritonServer) -> Iterator[CosyVoice2Stream]:
    client = CosyVoice2Stream(cosyvoice2_triton)
    yield client
    client.close()


def text_tokens(checkpoint: Path, text: str) -> int:
    tokenizer = AutoTokenizer.from_pretrained(checkpoint / "CosyVoice-BlankEN")
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def counter(triton: TritonServer, name: str, **labels: str) -> float:
    return metric(scrape(triton.metrics_url), name, model="cosyvoice2", **labels)


def session_words(stream: CosyVoice2Stream, words: list[str], seed: int, **speaker: object) -> tuple[Result, list[int]]:
    """One session fed a word per request; the audio of all requests and how many samples each request gave."""
    session = uuid.uuid4().hex
    total = Result()
    per_request = []
    for index, word in enumerate(words):
        extra = dict(speaker, seed=seed) if index == 0 else {}
        result = stream.run(cosyvoice2_inputs(word, session_id=session, start=index == 0, **extra))  # type: ignore[arg-type]
        assert not result.error, result.error
        total.chunks += result.chunks
        per_request.append(result.audio.size)
    result = stream.run(cosyvoice2_inputs("", session_id=session, end=True))
    assert not result.error, result.error
    total.chunks += result.chunks
    per_request.append(result.audio.size)
    return total, per_request


def test_whole_piece_length_follows_the_token_count(
    stream: CosyVoice2Stream, tiny_checkpoints: dict[str, Path]
) -> None:
    result = stream.run(cosyvoice2_inputs(TEXT, speaker_id=0, seed=3))
    assert not result.error
    audio = result.audio
    assert audio.dtype == np.float32 and np.isfinite(audio).all()
    # Whole tokens, each 960 samples; at least the minimum ratio (2) and at most the tiny bound (3) per text token.
    n = text_tokens(tiny_checkpoints["cosyvoice2"], TEXT)
    assert audio.size % SAMPLES_PER_TOKEN == 0
    assert 2 * n <= audio.size // SAMPLES_PER_TOKEN <= RATIO * n
    # Streamed: the first chunk is the published first hop (15 tokens, less the 3840 samples held for the join).
    assert len(result.chunks) >= 2
    assert result.chunks[0].size == 15 * SAMPLES_PER_TOKEN - 3840


def test_same_seed_same_audio_other_seed_other_audio(stream: CosyVoice2Stream) -> None:
    first = stream.run(cosyvoice2_inputs(TEXT, speaker_id=1, seed=11)).audio
    again = stream.run(cosyvoice2_inputs(TEXT, speaker_id=1, seed=11)).audio
    other = stream.run(cosyvoice2_inputs(TEXT, speaker_id=1, seed=12)).audio
    assert np.array_equal(first, again)
    assert not (first.size == other.size and np.allclose(first, other))


def test_two_references_give_two_voices_and_features_are_cached(
    stream: CosyVoice2Stream, cosyvoice2_triton: TritonServer
) -> None:
    low, high = voiced(2.0, f0=110.0, seed=1), voiced(2.0, f0=220.0, seed=2)
    misses = counter(cosyvoice2_triton, "cosyvoice2_reference_features_total", result="miss")
    hits = counter(cosyvoice2_triton, "cosyvoice2_reference_features_total", result="hit")
    a = stream.run(cosyvoice2_inputs(TEXT, reference=low, reference_text="A low voice.", seed=5))
    b = stream.run(cosyvoice2_inputs(TEXT, reference=high, reference_text="A low voice.", seed=5))
    again = stream.run(cosyvoice2_inputs(TEXT, reference=low, reference_text="A low voice.", seed=5))
    assert not (a.error or b.error or again.error)
    assert not (a.audio.size == b.audio.size and np.allclose(a.audio, b.audio))
    assert np.array_equal(a.audio, again.audio)
    assert counter(cosyvoice2_triton, "cosyvoice2_reference_features_total", result="miss") == misses + 2
    assert counter(cosyvoice2_triton, "cosyvoice2_reference_features_total", result="hit") == hits + 1
    # Cross-lingual (no transcript) and instruct use the same features again, and speak.
    cross = stream.run(cosyvoice2_inputs(TEXT, reference=low, seed=5))
    instruct = stream.run(cosyvoice2_inputs(TEXT, reference=low, instruct_text="Speak slowly.", seed=5))
    assert cross.audio.size > 0 and instruct.audio.size > 0
    assert counter(cosyvoice2_triton, "cosyvoice2_reference_features_total", result="hit") == hits + 3


def test_text_in_session_speaks_before_the_text_ends(
    stream: CosyVoice2Stream, cosyvoice2_triton: TritonServer, tiny_checkpoints: dict
) -> None:
    words = [w + " " for w in WORDS.split()]
    increments = counter(cosyvoice2_triton, "cosyvoice2_text_increments_total")
    result, per_request = session_words(stream, words, seed=21, speaker_id=0)
    assert counter(cosyvoice2_triton, "cosyvoice2_text_increments_total") == increments + len(words)
    # Audio left while words were still arriving: some request before the last word answered with audio.
    first_audio = next(i for i, size in enumerate(per_request) if size)
    assert first_audio < len(words) - 1
    assert result.audio.size % SAMPLES_PER_TOKEN == 0
    n = text_tokens(tiny_checkpoints["cosyvoice2"], WORDS)
    assert result.audio.size // SAMPLES_PER_TOKEN >= 3 * (n // 5)  # 15 speech tokens per 5 text tokens at least


def test_session_audio_does_not_depend_on_how_the_text_was_cut(stream: CosyVoice2Stream) -> None:
    by_word, _ = session_words(stream, [w + " " for w in WORDS.split()], seed=8, speaker_id=1)
    halves = WORDS.split()
    cut = [" ".join(halves[:7]) + " ", " ".join(halves[7:])]
    by_half, _ = session_words(stream, cut, seed=8, speaker_id=1)
    assert by_word.audio.size > 0 and np.array_equal(by_word.audio, by_half.audio)


def test_zero_shot_session_interleaves_the_prompt_first(stream: CosyVoice2Stream) -> None:
    reference = voiced(2.0, f0=160.0, seed=4)  # 50 prompt speech tokens: 4 blocks of text before speech
    result, per_request = session_words(
        stream, [w + " " for w in WORDS.split()], seed=2, reference=reference, reference_text="A prompt."
    )
    assert result.audio.size > 0 and result.audio.size % SAMPLES_PER_TOKEN == 0
    assert per_request[0] == 0  # one word cannot interleave the prompt's speech


def test_session_errors_name_the_problem(stream: CosyVoice2Stream) -> None:
    unknown = stream.run(cosyvoice2_inputs("hello", session_id="never-started"))
    assert "FAILED_PRECONDITION: no open text-input session 'never-started'" in unknown.error
    session = uuid.uuid4().hex
    assert not stream.run(cosyvoice2_inputs("Hello ", session_id=session, start=True, speaker_id=0)).error
    twice = stream.run(cosyvoice2_inputs("again ", session_id=session, start=True, speaker_id=0))
    assert "FAILED_PRECONDITION" in twice.error and "new session_id" in twice.error
    # The refused second start leaves the open session as it was; a request that fails inside a session ends it.
    assert not stream.run(cosyvoice2_inputs("world ", session_id=session)).error
    too_long = stream.run(cosyvoice2_inputs("x" * 20_001, session_id=session))
    assert "exceeds 20000 characters" in too_long.error
    assert "FAILED_PRECONDITION: no open" in stream.run(cosyvoice2_inputs("x", session_id=session)).error
    empty = stream.run(cosyvoice2_inputs("x", session_id=" ", start=True, speaker_id=0))
    assert "session_id is empty" in empty.error
    bad_speaker = stream.run(cosyvoice2_inputs("hello", speaker_id=7))
    assert "speaker_id 7 is out of range 0..1" in bad_speaker.error
    short = stream.run(cosyvoice2_inputs("hello", reference=np.zeros(100, np.float32), reference_text="x"))
    assert "at least 400" in short.error
    assert "target_text is empty" in stream.run(cosyvoice2_inputs("  ", speaker_id=0)).error
    # The server still serves.
    assert stream.run(cosyvoice2_inputs("Still here.", speaker_id=0, seed=1)).audio.size > 0


def test_sessions_are_bounded_cancelled_and_expire(stream: CosyVoice2Stream, cosyvoice2_triton: TritonServer) -> None:
    limit = 16  # config.pbtxt max_sessions
    # Sessions of earlier tests are gone (ended, or expired after 8 s idle).
    wait_until(lambda: counter(cosyvoice2_triton, "cosyvoice2_sessions_open") == 0, within=20, what="no sessions")
    sessions = [uuid.uuid4().hex for _ in range(limit)]
    for session in sessions:
        assert not stream.run(cosyvoice2_inputs("Hello ", session_id=session, start=True, speaker_id=0)).error
    refused = counter(cosyvoice2_triton, "cosyvoice2_sessions_total", event="refused")
    extra = stream.run(cosyvoice2_inputs("Hello ", session_id=uuid.uuid4().hex, start=True, speaker_id=0))
    assert "RESOURCE_EXHAUSTED: all 16 text-input sessions are open" in extra.error
    assert counter(cosyvoice2_triton, "cosyvoice2_sessions_total", event="refused") == refused + 1
    # session_cancel frees a slot at once.
    for session in sessions[:8]:
        assert not stream.run(cosyvoice2_inputs("", session_id=session, cancel=True)).error
    assert counter(cosyvoice2_triton, "cosyvoice2_sessions_open") == limit - 8
    # The rest expire once idle for longer than session_idle_timeout_s (8 s in the tiny parameters).
    expired = counter(cosyvoice2_triton, "cosyvoice2_sessions_total", event="expired")
    wait_until(lambda: counter(cosyvoice2_triton, "cosyvoice2_sessions_open") == 0, within=30, what="expiry")
    assert counter(cosyvoice2_triton, "cosyvoice2_sessions_total", event="expired") == expired + 8
    late = stream.run(cosyvoice2_inputs("late ", session_id=sessions[-1]))
    assert "was idle for more than 8 s" in late.error


def test_a_cancelled_stream_frees_its_session(cosyvoice2_triton: TritonServer) -> None:
    client = CosyVoice2Stream(cosyvoice2_triton)
    session = uuid.uuid4().hex
    assert not client.run(cosyvoice2_inputs("Hello ", session_id=session, start=True, speaker_id=0)).error
    cancelled = counter(cosyvoice2_triton, "cosyvoice2_sessions_total", event="cancelled")
    # A long delta keeps the model writing speech for seconds; the client goes away at its first audio.
    client.client.async_stream_infer(
        "cosyvoice2", cosyvoice2_inputs(WORDS * 6, session_id=session), enable_empty_final_response=True
    )
    response, error = client.responses.get(timeout=60)
    assert error is None and response.as_numpy("waveform").size > 0
    client.close()
    # Freed by the cancellation, well before the 8 s idle expiry could do it.
    started = time.monotonic()
    wait_until(
        lambda: counter(cosyvoice2_triton, "cosyvoice2_sessions_total", event="cancelled") == cancelled + 1,
        within=20,
        what="the cancelled session",
    )
    assert time.monotonic() - started < 8.0
    assert counter(cosyvoice2_triton, "cosyvoice2_sessions_open") == 0


def test_many_sequential_and_concurrent_sessions_on_one_server(cosyvoice2_triton: TritonServer) -> None:
    """CosyVoice issues 1866 and 980: decoupled serving that works once, and bi-streaming garbled across calls. The
    same session, repeated and run side by side, gives the same audio every time."""
    words = [w + " " for w in WORDS.split()[:10]]
    reference_stream = CosyVoice2Stream(cosyvoice2_triton)
    try:
        expected = session_words(reference_stream, words, seed=99, speaker_id=0)[0].audio
        for _ in range(4):
            assert np.array_equal(session_words(reference_stream, words, seed=99, speaker_id=0)[0].audio, expected)
    finally:
        reference_stream.close()
    results: list[np.ndarray] = []
    errors: list[BaseException] = []

    def one() -> None:
        client = CosyVoice2Stream(cosyvoice2_triton)
        try:
            results.append(session_words(client, words, seed=99, speaker_id=0)[0].audio)
        except BaseException as exc:
            errors.append(exc)
        finally:
            client.close()

    threads = [threading.Thread(target=one) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not errors and len(results) == 4
    assert all(np.array_equal(audio, expected) for audio in results)
    assert counter(cosyvoice2_triton, "cosyvoice2_sessions_open") == 0
