"""`voice-cli transcribe` and `recognition-models` (issue 25) against the real gateway: Piper joe speaks a known
sentence (through `voice-cli say`), and PocketSphinx on Triton, behind the gateway's RecognitionService, must hear
most of its words, through Recognize, StreamingRecognize from a file and from stdin, and the library's typed calls.
Errors keep the CLI's contract: one line on stderr and a documented exit status."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest

from tests.clients.conftest import Cli, Stack
from tests.recognition.wer import normalize, wer
from voice.v1 import audio_pb2, recognition_pb2
from voice_client import RecognitionClient, audio_input_from_file, raw_format
from voice_client.cli import TranscriptPrinter

# Two everyday sentences in PocketSphinx's language model (see tests/recognition): about 0.1 WER measured there.
TEXT = "The weather is going to be sunny and warm tomorrow. Please call me back when you get home tonight."
WER_BOUND = 0.35
VOICE = "joe"
PREFIX = "voice-cli: error: "
WORD_LINE = re.compile(r"^  +(\d+\.\d{3}) +(\d+\.\d{3})  (\S+)$")


@pytest.fixture(scope="module")
def speech(cli: Cli, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """TEXT spoken by joe, as a WAV file at the voice's native rate."""
    out = tmp_path_factory.mktemp("transcribe") / "joe.wav"
    result = cli("say", TEXT, "--voice", VOICE, "-o", str(out), "-q")
    assert result.returncode == 0, result.stderr
    return out


@pytest.fixture(scope="module")
def speech_pcm16k(cli: Cli) -> bytes:
    """TEXT spoken by joe as raw PCM16 at 16 kHz (what `arecord -f S16_LE -r 16000` would give)."""
    result = cli("say", TEXT, "--voice", VOICE, "-o", "-", "--rate", "16000", "-q")
    assert result.returncode == 0, result.stderr
    assert result.stdout[:4] != b"RIFF"
    return result.stdout


def finals_of(stdout: bytes) -> list[str]:
    return [line for line in stdout.decode().splitlines() if line and not line.startswith(("[interim] ", "  "))]


def test_transcribe_prints_the_words_of_the_speech(cli: Cli, speech: Path) -> None:
    result = cli("transcribe", str(speech))
    assert result.returncode == 0, result.stderr
    lines = finals_of(result.stdout)
    assert lines, f"no transcript: {result.stderr}"
    error = wer(TEXT, " ".join(lines))
    assert error < WER_BOUND, (error, lines)
    timing = result.stderr_lines[-1]
    assert re.search(rf"^{len(lines)} utterances in \d+\.\d\d s of audio, model pocketsphinx; round trip", timing)
    assert "RTF" in timing and "[request_id=" in timing


def test_transcribe_words_prints_word_timings_in_order(cli: Cli, speech: Path) -> None:
    result = cli("transcribe", str(speech), "--words", "-q")
    assert result.returncode == 0, result.stderr
    assert result.stderr_lines == []
    words = [WORD_LINE.match(line) for line in result.stdout.decode().splitlines() if line.startswith("  ")]
    assert len(words) >= 10 and all(words), result.stdout.decode()
    starts = [float(m.group(1)) for m in words if m]
    assert starts == sorted(starts)
    assert all(float(m.group(1)) <= float(m.group(2)) for m in words if m)
    spoken = " ".join(m.group(3) for m in words if m)
    assert normalize(spoken) == normalize(" ".join(finals_of(result.stdout)))


def test_transcribe_json_is_the_recognize_response(cli: Cli, speech: Path) -> None:
    result = cli("transcribe", str(speech), "--json", "--model", "pocketsphinx", "--language", "en-US")
    assert result.returncode == 0, result.stderr
    response = json.loads(result.stdout)
    assert response["model"] == "pocketsphinx" and response["requestId"]
    assert all(r["isFinal"] for r in response["results"])
    transcript = " ".join(r["alternatives"][0]["transcript"] for r in response["results"])
    assert wer(TEXT, transcript) < WER_BOUND


def test_stream_gives_finals_as_good_as_recognize_and_interim_results(cli: Cli, speech: Path) -> None:
    unary = cli("transcribe", str(speech), "-q")
    assert unary.returncode == 0, unary.stderr
    result = cli("transcribe", "--stream", "--interim", str(speech))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.decode().splitlines()
    assert any(line.startswith("[interim] ") for line in lines), "no interim result printed"
    # The same words within the bound (chunked input may shift an utterance's edges by a frame, so not identical).
    assert wer(TEXT, " ".join(finals_of(result.stdout))) < WER_BOUND
    assert wer(TEXT, " ".join(finals_of(unary.stdout))) < WER_BOUND
    assert re.search(r"after the end of the audio", result.stderr_lines[-1]), result.stderr


def test_stream_json_prints_one_response_per_line(cli: Cli, speech: Path) -> None:
    result = cli("transcribe", "--stream", "--json", "--single-utterance", str(speech))
    assert result.returncode == 0, result.stderr
    messages = [json.loads(line) for line in result.stdout.decode().splitlines()]
    events = [m.get("speechEventType") for m in messages]
    assert "SPEECH_EVENT_TYPE_SPEECH_START" in events
    assert events[-1] == "SPEECH_EVENT_TYPE_END_OF_SINGLE_UTTERANCE"
    finals = [r for m in messages for r in m.get("results", []) if r.get("isFinal")]
    assert len(finals) == 1


def test_stream_from_stdin_transcribes_raw_pcm16(cli: Cli, speech_pcm16k: bytes) -> None:
    result = cli("transcribe", "--stream", "-", "--rate", "16000", stdin=speech_pcm16k)
    assert result.returncode == 0, result.stderr
    lines = finals_of(result.stdout)
    error = wer(TEXT, " ".join(lines))
    assert error < WER_BOUND, (error, lines)
    seconds = len(speech_pcm16k) / 2 / 16000
    received = re.search(r"in (\d+\.\d\d) s of audio", result.stderr_lines[-1])
    assert received and abs(float(received.group(1)) - seconds) < 0.11, result.stderr


def test_raw_pcm_file_and_stdin_without_streaming(cli: Cli, speech_pcm16k: bytes, tmp_path: Path) -> None:
    raw = tmp_path / "speech.pcm"
    raw.write_bytes(speech_pcm16k)
    from_file = cli("transcribe", str(raw), "--rate", "16000", "-q")
    assert from_file.returncode == 0, from_file.stderr
    assert wer(TEXT, " ".join(finals_of(from_file.stdout))) < WER_BOUND
    from_stdin = cli("transcribe", "-", "--rate", "16000", "--encoding", "pcm16", "-q", stdin=speech_pcm16k)
    assert from_stdin.returncode == 0, from_stdin.stderr
    assert from_stdin.stdout == from_file.stdout


def test_recognition_models_lists_pocketsphinx_first(cli: Cli) -> None:
    table = cli("recognition-models")
    assert table.returncode == 0, table.stderr
    rows = table.stdout.decode().splitlines()
    assert rows[0].split()[:3] == ["NAME", "LANGUAGES", "RATE"]
    assert rows[1].split()[:2] == ["pocketsphinx", "en-US"]
    listed = json.loads(cli("recognition-models", "--json").stdout)
    assert listed["models"][0]["name"] == "pocketsphinx" and listed["models"][0]["available"] is True


def test_unknown_model_is_one_not_found_line(cli: Cli, speech: Path) -> None:
    for extra in ([], ["--stream"]):
        result = cli("transcribe", str(speech), "--model", "no-such-model", *extra)
        assert result.returncode == 3, result.stderr
        assert len(result.stderr_lines) == 1, result.stderr
        assert result.stderr_lines[0].startswith(PREFIX + "NOT_FOUND: "), result.stderr
        assert result.stdout == b""


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["missing.wav"], "cannot read missing.wav: No such file or directory"),
        (["not-audio.txt"], "cannot read not-audio.txt: not an audio file"),
        (["not-audio.txt", "--stream"], "cannot read not-audio.txt: not an audio file"),
        (["."], "cannot read .: Is a directory"),
        (["speech.pcm"], "raw audio from speech.pcm needs --rate"),
        (["speech.pcm", "--rate", "4000"], "--rate must be 8000..48000 Hz"),
        (["speech.pcm", "--interim"], "--interim needs --stream"),
        (["speech.pcm", "--rate", "16000", "--encoding", "opus"], "invalid choice"),
    ],
)
def test_bad_input_is_a_usage_error(cli: Cli, tmp_path: Path, args: list[str], says: str) -> None:
    (tmp_path / "not-audio.txt").write_text("hello, not audio\n")
    (tmp_path / "speech.pcm").write_bytes(b"\0\0" * 1600)
    result = cli("transcribe", *args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert len(result.stderr_lines) == 1 or "usage:" in result.stderr, result.stderr
    assert says in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_library_recognize_and_streaming_recognize(stack: Stack, speech: Path, speech_pcm16k: bytes) -> None:
    with RecognitionClient(stack.tts_target, timeout=120) as client:
        response = client.recognize(audio_input_from_file(speech), word_time_offsets=True)
        assert response.model == "pocketsphinx"
        assert all(r.alternatives[0].words for r in response.results)
        unary = " ".join(r.alternatives[0].transcript for r in response.results)
        assert wer(TEXT, unary) < WER_BOUND
        step = 3200  # 100 ms of PCM16 at 16 kHz
        chunks = (speech_pcm16k[i : i + step] for i in range(0, len(speech_pcm16k), step))
        messages = list(
            client.streaming_recognize(
                chunks, input_format=raw_format("pcm16", 16000), interim_results=True, request_id="lib-stream"
            )
        )
    assert {m.request_id for m in messages} == {"lib-stream"}
    results = [r for m in messages for r in m.results]
    assert any(not r.is_final for r in results)
    streamed = " ".join(r.alternatives[0].transcript for r in results if r.is_final)
    assert wer(TEXT, streamed) < WER_BOUND
    assert raw_format("mulaw", 8000).encoding == audio_pb2.AUDIO_ENCODING_MULAW


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_interim_results_overwrite_the_line_on_a_terminal() -> None:
    def result(text: str, final: bool) -> recognition_pb2.SpeechRecognitionResult:
        alternative = recognition_pb2.SpeechRecognitionAlternative(transcript=text)
        return recognition_pb2.SpeechRecognitionResult(alternatives=[alternative], is_final=final)

    terminal = _Terminal()
    printer = TranscriptPrinter(terminal, words=False, interim=True)
    for text, final in (("the", False), ("the weather", False), ("the weather is fine", True), ("and", False)):
        printer.result(result(text, final))
    printer.close()
    assert terminal.getvalue() == ("\r\033[Kthe\r\033[Kthe weather\r\033[Kthe weather is fine\n\r\033[Kand\r\033[K")
    piped = io.StringIO()
    printer = TranscriptPrinter(piped, words=False, interim=True)
    for text, final in (("the", False), ("the weather is fine", True)):
        printer.result(result(text, final))
    assert piped.getvalue() == "[interim] the\nthe weather is fine\n"
