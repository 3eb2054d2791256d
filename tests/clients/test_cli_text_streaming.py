"""voice-cli's streamed text input: stdin sent as it arrives (`say --incremental -`), --words-per-second pacing and
--text-input (StreamingSynthesizeConfig.text_input_mode), against the real gateway with the Piper voice; plus the
stdin reader and the pacer on their own, with a pipe and a clock."""

from __future__ import annotations

import json
import os
import select
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.clients.audio_checks import assert_speech_like, pcm16_samples, read_finalized_wav
from tests.clients.conftest import REPO_ROOT, VOICE_CLI, Cli, Stack, client_env
from voice.v1 import tts_gateway_pb2
from voice_client import TEXT_INPUT_MODES, text_input_mode_value
from voice_client.cli import LiveText, UsageError, _paced

FIRST = "The quick brown fox jumps over the lazy dog. Then"  # the first sentence is complete once "Then" arrives
REST = " it naps in the warm afternoon sun."
TEXT = FIRST + REST


def _collect(reader: LiveText) -> tuple[list[tuple[float, str]], threading.Thread]:
    got: list[tuple[float, str]] = []

    def consume() -> None:
        for delta in reader:
            got.append((time.monotonic(), delta))

    thread = threading.Thread(target=consume, daemon=True)
    thread.start()
    return got, thread


def _wait_for(got: list[tuple[float, str]], count: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        time.sleep(0.005)
    assert len(got) >= count, f"expected {count} deltas, got {got}"


def test_live_text_yields_each_read_while_the_writer_is_still_writing() -> None:
    read_fd, write_fd = os.pipe()
    try:
        reader = LiveText(read_fd)
        got, thread = _collect(reader)
        os.write(write_fd, b"Hello ")
        sent = time.monotonic()
        _wait_for(got, 1)
        assert got[0][1] == "Hello " and got[0][0] - sent < 2.0, "the first read is handed on at once, not at EOF"
        # A character split across two writes arrives whole, in the delta that completes it.
        os.write(write_fd, b"caf" + "é".encode()[:1])
        _wait_for(got, 2)
        os.write(write_fd, "é".encode()[1:] + b" au lait.")
        _wait_for(got, 3)
        assert [delta for _, delta in got] == ["Hello ", "caf", "é au lait."]
        assert thread.is_alive(), "the deltas end only at end of file"
    finally:
        os.close(write_fd)
    thread.join(timeout=5)
    assert not thread.is_alive() and reader.error is None
    os.close(read_fd)


def test_live_text_stops_at_text_that_is_not_utf8() -> None:
    read_fd, write_fd = os.pipe()
    try:
        reader = LiveText(read_fd)
        got, thread = _collect(reader)
        os.write(write_fd, b"fine ")
        _wait_for(got, 1)
        os.write(write_fd, b"ok \xff more")
        thread.join(timeout=5)
        assert not thread.is_alive(), "bad input ends the deltas without waiting for end of file"
    finally:
        os.close(write_fd)
        os.close(read_fd)
    assert [delta for _, delta in got] == ["fine "]
    assert isinstance(reader.error, UsageError)
    assert "not UTF-8" in str(reader.error) and "at byte 8" in str(reader.error), reader.error
    with pytest.raises(UsageError):
        reader.raise_error()


def test_paced_words_take_at_least_their_share_of_time() -> None:
    words = [f"w{i} " for i in range(7)]
    started = time.monotonic()
    times = []
    for word in _paced(words, 20.0):
        times.append(time.monotonic() - started)
        assert word == words[len(times) - 1]
    expected = (len(words) - 1) / 20.0
    assert times[-1] / expected >= 0.99, times
    assert times[-1] / expected < 3.0, f"pacing is far slower than asked: {times}"
    assert list(_paced(words, 0)) == words


def test_text_input_mode_names() -> None:
    assert text_input_mode_value("auto") == tts_gateway_pb2.TEXT_INPUT_MODE_UNSPECIFIED
    assert text_input_mode_value("sentences") == tts_gateway_pb2.TEXT_INPUT_MODE_SENTENCES
    assert text_input_mode_value(tts_gateway_pb2.TEXT_INPUT_MODE_INCREMENTAL) == 2
    assert set(TEXT_INPUT_MODES) == {"auto", "sentences", "incremental"}
    with pytest.raises(ValueError, match="unknown text input mode"):
        text_input_mode_value("words")
    with pytest.raises(ValueError):
        text_input_mode_value(7)


def test_streamed_text_usage_errors_are_one_line(tmp_path: Path) -> None:
    cli = Cli(Stack(tts_target="127.0.0.1:1", rvc_target="127.0.0.1:1"))  # refused before any call
    out = str(tmp_path / "x.wav")
    cases = [
        (["say", "Hi.", "--voice", "x", "-o", out, "--words-per-second", "3"], "--words-per-second needs"),
        (["say", "-", "--incremental", "--voice", "x", "-o", out, "--words-per-second", "3"], "--words-per-second"),
        (["say", "--voice", "x", "-o", out], "say needs the text to speak"),
    ]
    for args, start in cases:
        result = cli(*args, stdin=b"Hi.")
        assert result.returncode == 2, result.stderr
        assert len(result.stderr_lines) == 1 and result.stderr_lines[0].startswith(f"voice-cli: error: {start}")
    bad = cli("say", "Hi.", "--voice", "x", "-o", out, "--text-input", "words")
    assert bad.returncode == 2 and "invalid choice" in bad.stderr
    bad = cli("say", "Hi.", "--voice", "x", "-o", out, "--incremental", "--words-per-second", "-1")
    assert bad.returncode == 2 and "must be 0 or a positive number" in bad.stderr
    assert list(tmp_path.iterdir()) == []


def _read_available(stream: int, into: bytearray, timeout: float) -> None:
    ready, _, _ = select.select([stream], [], [], timeout)
    if ready:
        data = os.read(stream, 65536)
        into.extend(data)


def test_say_incremental_stdin_speaks_before_the_text_is_complete(
    stack: Stack, plain_voice: tts_gateway_pb2.Voice
) -> None:
    """The first sentence is written to voice-cli's stdin and the pipe is kept open: its audio must come back on
    stdout before the rest of the text is written. A client that read stdin to the end first would send nothing."""
    env = client_env(VOICE_TARGET=stack.tts_target)
    args = [str(VOICE_CLI), "say", "--incremental", "-", "--voice", plain_voice.name, "-o", "-", "--rate", "16000"]
    process = subprocess.Popen(
        args, cwd=REPO_ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert process.stdin is not None and process.stdout is not None and process.stderr is not None
    audio = bytearray()
    try:
        process.stdin.write(FIRST.encode())
        process.stdin.flush()
        deadline = time.monotonic() + 120
        while len(audio) < 16000 and time.monotonic() < deadline and process.poll() is None:
            _read_available(process.stdout.fileno(), audio, 0.5)
        assert process.poll() is None, f"voice-cli ended early: {process.stderr.read().decode()}"
        assert len(audio) >= 16000, "half a second of the first sentence arrived while stdin was still open"
        rest, errors = process.communicate(REST.encode(), timeout=120)  # the rest, then end of file
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, errors.decode()
    samples = pcm16_samples(bytes(audio) + rest)
    assert_speech_like(samples, 16000, TEXT)
    assert "2 segments" in errors.decode().splitlines()[-1], errors.decode()


@pytest.mark.parametrize("mode", ["sentences", "auto"])
def test_say_text_input_modes_on_the_piper_voice(
    cli: Cli, plain_voice: tts_gateway_pb2.Voice, tmp_path: Path, mode: str
) -> None:
    # --text-input implies StreamingSynthesize; "auto" is the voice's default, which for Piper is sentences.
    out = tmp_path / f"{mode}.wav"
    result = cli("say", TEXT, "--voice", plain_voice.name, "-o", str(out), "--text-input", mode)
    assert result.returncode == 0, result.stderr
    samples, rate = read_finalized_wav(out.read_bytes())
    assert rate == plain_voice.native_sample_rate_hz
    assert_speech_like(samples, rate, TEXT)
    assert "2 segments" in result.stderr_lines[-1], result.stderr


def test_say_text_from_a_pipe_may_be_left_out(cli: Cli, plain_voice: tts_gateway_pb2.Voice, tmp_path: Path) -> None:
    out = tmp_path / "piped.wav"
    result = cli("say", "--incremental", "--voice", plain_voice.name, "-o", str(out), stdin=TEXT.encode())
    assert result.returncode == 0, result.stderr
    samples, rate = read_finalized_wav(out.read_bytes())
    assert_speech_like(samples, rate, TEXT)
    # Not UTF-8 halfway through: the call fails and no file is left.
    bad = cli("say", "--incremental", "-", "--voice", plain_voice.name, "-o", str(out), stdin=b"Hello. \xff there.")
    assert bad.returncode == 2, bad.stderr
    assert bad.stderr_lines[-1].startswith("voice-cli: error: cannot read the text from stdin: it is not UTF-8")


def test_say_words_per_second_paces_the_text(cli: Cli, plain_voice: tts_gateway_pb2.Voice, tmp_path: Path) -> None:
    text = "One two three four five six seven eight nine ten."
    rate = 8.0
    out = tmp_path / "paced.wav"
    started = time.monotonic()
    args = ["say", text, "--voice", plain_voice.name, "-o", str(out), "--incremental", "--words-per-second", "8"]
    result = cli(*args)
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    words = len(text.split())
    assert elapsed / ((words - 1) / rate) >= 1.0, f"{words} words at {rate}/s took only {elapsed:.2f} s"
    samples, sample_rate = read_finalized_wav(out.read_bytes())
    assert_speech_like(samples, sample_rate, text)


def test_voices_shows_whether_each_voice_streams_text_input(cli: Cli, voices: list[tts_gateway_pb2.Voice]) -> None:
    result = cli("voices")
    assert result.returncode == 0, result.stderr
    header, *rows = result.stdout.decode().splitlines()
    assert "TEXT INPUT" in header
    column = header.index("TEXT INPUT")
    for voice, row in zip(voices, rows, strict=True):
        expected = "incremental" if voice.streams_text_input else "sentences"
        assert row[column:].split()[0] == expected, row
    listed = json.loads(cli("voices", "--json").stdout)["voices"]
    assert [v["name"] for v in listed] == [v.name for v in voices]
    assert all("streamsTextInput" in v for v in listed), "false is printed too: the JSON is complete"
    assert [v["streamsTextInput"] for v in listed] == [v.streams_text_input for v in voices]
