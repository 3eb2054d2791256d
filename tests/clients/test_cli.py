"""voice-cli (the installed console script of clients/python) against the real gateway, Triton and voice-conversion
service; and what it does with hostile input: one line on stderr, a documented exit status, never a traceback."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import soundfile as sf

from tests.clients.audio_checks import assert_speech_like, pcm16_samples, read_finalized_wav
from tests.clients.conftest import Cli, CliResult, Stack, client_env
from voice.v1 import tts_gateway_pb2

TEXT = "The quick brown fox jumps over the lazy dog. Then it naps in the warm afternoon sun."
# One error line: "voice-cli: error: CODE: message ..." with a gRPC status name.
ERROR_LINE = re.compile(r"^voice-cli: error: [A-Z_]+: \S.*$")
PREFIX = "voice-cli: error: "


def test_say_writes_a_valid_wav_of_plausible_duration(
    cli: Cli, plain_voice: tts_gateway_pb2.Voice, tmp_path: Path
) -> None:
    out = tmp_path / "hello.wav"
    result = cli("say", TEXT, "--voice", plain_voice.name, "-o", str(out))
    assert result.returncode == 0, result.stderr
    samples, rate = read_finalized_wav(out.read_bytes())
    assert rate == plain_voice.native_sample_rate_hz
    assert_speech_like(samples, rate, TEXT)
    assert not (tmp_path / "hello.wav.part").exists()
    # The closing line reports client-side time to first audio and real-time factor.
    final = result.stderr_lines[-1]
    assert re.search(r"time to first audio \d+\.\d{3} s, RTF \d+\.\d{3}", final), final
    assert f"wrote {out}" in final


def test_say_resamples_when_asked(cli: Cli, plain_voice: tts_gateway_pb2.Voice, tmp_path: Path) -> None:
    out = tmp_path / "rate.wav"
    result = cli("say", "Resampled speech.", "--voice", plain_voice.name, "-o", str(out), "--rate", "48000", "-q")
    assert result.returncode == 0, result.stderr
    assert result.stderr_lines == [], "--quiet prints nothing on success"
    samples, rate = read_finalized_wav(out.read_bytes())
    assert rate == 48000
    assert_speech_like(samples, rate, "Resampled speech.")


def test_say_to_stdout_writes_raw_pcm(cli: Cli, plain_voice: tts_gateway_pb2.Voice) -> None:
    text = "Straight to the speakers."
    result = cli("say", text, "--voice", plain_voice.name, "-o", "-", "--rate", "16000")
    assert result.returncode == 0, result.stderr
    assert result.stdout[:4] != b"RIFF", "stdout must carry headerless PCM16 by default"
    assert_speech_like(pcm16_samples(result.stdout), 16000, text)
    # Progress and timing stay on stderr, with what a player needs to know.
    assert any("PCM16 mono 16000 Hz" in line for line in result.stderr_lines), result.stderr


def test_say_reads_text_from_stdin_and_streams_it_incrementally(
    cli: Cli, plain_voice: tts_gateway_pb2.Voice, tmp_path: Path
) -> None:
    out = tmp_path / "incremental.wav"
    result = cli("say", "-", "--voice", plain_voice.name, "-o", str(out), "--incremental", stdin=TEXT.encode())
    assert result.returncode == 0, result.stderr
    samples, rate = read_finalized_wav(out.read_bytes())
    assert_speech_like(samples, rate, TEXT)
    assert "2 segments" in result.stderr_lines[-1], "two sentences, synthesized as they completed"


def test_say_unknown_voice_fails_with_one_clear_line(cli: Cli, tmp_path: Path) -> None:
    out = tmp_path / "never.wav"
    result = cli("say", "Hello.", "--voice", "no-such-voice", "-o", str(out))
    assert result.returncode == 3, f"NOT_FOUND maps to exit status 3, got {result.returncode}: {result.stderr}"
    assert len(result.stderr_lines) == 1, result.stderr
    line = result.stderr_lines[0]
    assert ERROR_LINE.match(line), line
    assert line.startswith(PREFIX + "NOT_FOUND: ")
    assert "no-such-voice" in line
    assert not out.exists() and not (tmp_path / "never.wav.part").exists(), "no partial file is left behind"


def test_say_invalid_argument_names_the_field_and_exits_2(
    cli: Cli, plain_voice: tts_gateway_pb2.Voice, tmp_path: Path
) -> None:
    result = cli("say", "Hello.", "--voice", plain_voice.name, "-o", str(tmp_path / "x.wav"), "--rate", "7")
    assert result.returncode == 2, result.stderr
    assert len(result.stderr_lines) == 1, result.stderr
    line = result.stderr_lines[0]
    assert line.startswith(PREFIX + "INVALID_ARGUMENT: "), line
    assert "output_format.sample_rate_hz" in line, "the BadRequest field violation is shown"


def assert_one_line(result: CliResult, status: int, start: str) -> str:
    assert result.returncode == status, f"exit {result.returncode}, expected {status}: {result.stderr}"
    assert len(result.stderr_lines) == 1, result.stderr
    line = result.stderr_lines[0]
    assert line.startswith(PREFIX + start), line
    assert "Traceback" not in result.stderr
    return line


def test_local_errors_are_one_line_too(cli: Cli, tmp_path: Path) -> None:
    # An output name without a known extension is refused before any call is made.
    result = cli("say", "Hi.", "--voice", "x", "-o", str(tmp_path / "x"))
    assert "--format" in assert_one_line(result, 2, "cannot tell the format")
    # A reference file that does not exist.
    missing = tmp_path / "no.wav"
    result = cli("say", "Hi.", "--voice", "x", "-o", str(tmp_path / "x.wav"), "--reference", str(missing))
    assert assert_one_line(result, 2, f"cannot read {missing}: ").endswith("No such file or directory")
    assert not (tmp_path / "x.wav.part").exists()


def test_convert_refuses_input_it_cannot_read_in_one_line(cli: Cli, tmp_path: Path) -> None:
    """A hostile user's inputs: each is refused before any call, with the file named and the reason given."""
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    text = tmp_path / "notes.wav"
    text.write_text("these are not samples\n")
    unreadable = tmp_path / "locked.wav"
    unreadable.write_bytes(b"RIFF")
    unreadable.chmod(0)
    cases = {
        tmp_path / "input.wav": "No such file or directory",
        tmp_path: "Is a directory",
        empty: "the file is empty",
        text: "not an audio file libsndfile can read",
    }
    if os.geteuid() != 0:  # root reads any file
        cases[unreadable] = "Permission denied"
    out = tmp_path / "out.wav"
    for stream in ([], ["--stream"]):
        for path, reason in cases.items():
            result = cli("convert", str(path), "-o", str(out), "--model", "world-default", *stream)
            line = assert_one_line(result, 2, f"cannot read {path}: ")
            assert reason in line, line
            assert not out.exists() and not (tmp_path / "out.wav.part").exists()


def test_say_refuses_bad_local_arguments_in_one_line(cli: Cli, tmp_path: Path) -> None:
    say = ["say", "Hi.", "--voice", "x"]
    result = cli(*say, "-o", str(tmp_path / "no-such-dir" / "x.wav"))
    assert "No such file or directory" in assert_one_line(result, 2, "cannot write ")
    result = cli(*say, "-o", str(tmp_path), "--format", "wav")
    assert "Is a directory" in assert_one_line(result, 2, "cannot write ")
    result = cli(*say, "-o", str(tmp_path / "x.wav"), "--ca-cert", str(tmp_path / "ca.pem"))
    assert_one_line(result, 2, f"cannot read {tmp_path / 'ca.pem'}: No such file or directory")
    result = cli("say", "-", "--voice", "x", "-o", str(tmp_path / "x.wav"), stdin=b"\xff\xfe not text")
    assert_one_line(result, 2, "cannot read the text from stdin: it is not UTF-8")
    result = cli(*say, "-o", str(tmp_path / "x.wav"), "--reference-text", "words")
    assert_one_line(result, 2, "--reference-text needs --reference")
    assert list(tmp_path.iterdir()) == [], "nothing is left behind"


def test_say_unreachable_server_exits_5(cli: Cli, tmp_path: Path) -> None:
    for target in ("127.0.0.1:1", "no-such-host.invalid:50051", ":::"):
        result = cli("--target", target, "--timeout", "5", "say", "Hi.", "--voice", "x", "-o", str(tmp_path / "x.wav"))
        assert_one_line(result, 5, "UNAVAILABLE: ")
    result = cli("--rvc-target", "127.0.0.1:1", "--timeout", "5", "models")
    assert_one_line(result, 5, "UNAVAILABLE: ")
    result = cli("--target", "127.0.0.1:1", "--timeout", "5", "status")
    assert_one_line(result, 5, "UNAVAILABLE: ")


def test_say_with_conversion_overrides_to_opus(
    cli: Cli, plain_voice: tts_gateway_pb2.Voice, conversion_models: list[str], tmp_path: Path
) -> None:
    model = next(name for name in conversion_models if name.startswith("world"))
    out = tmp_path / "bright.opus"
    text = "Converted on the way out."
    args = ["say", text, "--voice", plain_voice.name, "-o", str(out), "--rvc-model", model]
    result = cli(*args, "--pitch", "3", "--formant", "1", "--f0-method", "harvest", "--rate", "48000")
    assert result.returncode == 0, result.stderr
    data = out.read_bytes()
    assert data[:4] == b"OggS"
    with av.open(str(out)) as container:
        stream = container.streams.audio[0]
        assert stream.codec_context.name == "opus"
        frames = [frame.to_ndarray() for frame in container.decode(stream)]
    samples = np.concatenate(frames, axis=1)[0]
    assert_speech_like(samples, 48000, text)


def test_say_no_conversion_on_a_converted_voice(
    cli: Cli, converted_voice: tts_gateway_pb2.Voice, tmp_path: Path
) -> None:
    out = tmp_path / "plain.wav"
    result = cli("say", "Without conversion.", "--voice", converted_voice.name, "-o", str(out), "--no-conversion")
    assert result.returncode == 0, result.stderr
    samples, rate = read_finalized_wav(out.read_bytes())
    assert_speech_like(samples, rate, "Without conversion.")
    # Conversion settings together with --no-conversion contradict each other: the gateway says so.
    bad = cli("say", "Hi.", "--voice", converted_voice.name, "-o", str(out), "--no-conversion", "--pitch", "2")
    assert bad.returncode == 2, bad.stderr
    assert bad.stderr_lines[0].startswith(PREFIX + "INVALID_ARGUMENT: ")


def test_voices_lists_the_shipped_voices(cli: Cli, voices: list[tts_gateway_pb2.Voice]) -> None:
    result = cli("voices")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.decode().splitlines()
    assert lines[0].split()[:2] == ["NAME", "LANGUAGE"]
    assert [line.split()[0] for line in lines[1:]] == [v.name for v in voices]
    as_json = cli("voices", "--json")
    assert as_json.returncode == 0
    assert all(f'"{v.name}"' in as_json.stdout.decode() for v in voices)


def test_status_reports_health_and_upstreams(cli: Cli) -> None:
    result = cli("status")
    assert result.returncode == 0, result.stderr
    text = result.stdout.decode()
    assert ": SERVING" in text.splitlines()[0]
    assert "upstream triton" in text


def test_models_and_conversion_status(cli: Cli, conversion_models: list[str]) -> None:
    result = cli("models")
    assert result.returncode == 0, result.stderr
    names = [line.split()[0] for line in result.stdout.decode().splitlines()[1:]]
    assert names == conversion_models and "world-default" in names
    status = cli("status", "--conversion")
    assert status.returncode == 0, status.stderr
    assert "SERVING" in status.stdout.decode() and "workers:" in status.stdout.decode()


def test_convert_clip_and_stream(
    cli: Cli, plain_voice: tts_gateway_pb2.Voice, conversion_models: list[str], tmp_path: Path
) -> None:
    source = tmp_path / "source.wav"
    text = "Convert this sentence."
    assert cli("say", text, "--voice", plain_voice.name, "-o", str(source), "--rate", "16000", "-q").returncode == 0
    model = "world-default" if "world-default" in conversion_models else conversion_models[0]
    clip = tmp_path / "clip.wav"
    result = cli("convert", str(source), "-o", str(clip), "--model", model, "--pitch", "3")
    assert result.returncode == 0, result.stderr
    samples, rate = read_finalized_wav(clip.read_bytes())
    assert_speech_like(samples, rate, text)
    assert "RTF" in result.stderr_lines[-1]

    streamed = tmp_path / "streamed.wav"
    result = cli("convert", str(source), "-o", str(streamed), "--model", model, "--stream")
    assert result.returncode == 0, result.stderr
    samples, rate = read_finalized_wav(streamed.read_bytes())
    source_seconds = sf.info(str(source)).duration
    assert abs(len(samples) / rate - source_seconds) < 0.25, "streamed conversion keeps the length"

    missing = cli("convert", str(source), "-o", str(clip), "--model", "no-such-model")
    assert missing.returncode in (2, 3), missing.stderr
    assert len(missing.stderr_lines) == 1 and "no-such-model" in missing.stderr_lines[0]


def test_python_dash_m_resolves_paths_from_the_callers_directory(
    stack: Stack, plain_voice: tts_gateway_pb2.Voice, tmp_path: Path
) -> None:
    """`python -m voice_client` is the same program; relative paths are the caller's, not the repository's."""
    done = subprocess.run(
        [sys.executable, "-m", "voice_client", "say", "Module.", "--voice", plain_voice.name, "-o", "module.wav", "-q"],
        cwd=tmp_path,
        env=client_env(VOICE_TARGET=stack.tts_target),
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    samples, rate = read_finalized_wav((tmp_path / "module.wav").read_bytes())
    assert_speech_like(samples, rate, "Module.")
