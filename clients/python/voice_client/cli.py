"""voice-cli: command-line client for the TTS gateway and the voice-conversion service.

    voice-cli say "Hello there." --voice NAME -o hello.wav
    voice-cli say "Hello there." --voice NAME -o - | aplay -f S16_LE -r 22050 -c 1
    llm ... | voice-cli say --incremental - --voice NAME -o out.wav      # speaks while the text is being written
    voice-cli voices | status | models
    voice-cli convert in.wav -o out.wav --model NAME --pitch 3
    voice-cli transcribe hello.wav [--words | --json]                    # speech to text (Recognize)
    arecord -f S16_LE -r 16000 | voice-cli transcribe --stream - --rate 16000 --interim   # live, StreamingRecognize
    voice-cli recognition-models

(`python -m voice_client ...` is the same.) Progress and the final timing line go to stderr; audio goes to the output
file or stdout. A failure prints ONE line, `voice-cli: error: CODE: message [field: violation; ...]` for a failed call
or `voice-cli: error: cannot read in.wav: <reason>` for a bad local file, and exits with the status documented in
clients/python/README.md; never a traceback.
"""

from __future__ import annotations

import argparse
import codecs
import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO, TextIO, TypeVar, cast

import grpc
from google.protobuf import json_format

from voice.v1 import audio_pb2, conversion_pb2, recognition_pb2, tts_gateway_pb2, voice_conversion_pb2
from voice_client.client import (
    DEFAULT_MAX_RETRIES,
    DEFAULT_RVC_TARGET,
    DEFAULT_TTS_TARGET,
    ENCODINGS,
    EXIT_LOCAL_ERROR,
    EXIT_OK,
    F0_METHODS,
    RAW_ENCODINGS,
    RAW_SAMPLE_BYTES,
    TEXT_INPUT_MODES,
    ConversionClient,
    RecognitionClient,
    RetryNotice,
    StreamStats,
    SynthesisOptions,
    TextInputModeName,
    TtsClient,
    UnreadableAudioError,
    audio_input_from_file,
    conversion_settings,
    describe_rpc_error,
    exit_code_for,
    pcm_blocks,
    raw_blocks,
    raw_format,
    read_mono,
)
from voice_client.wav import WavFileWriter, WavStreamError

PROG = "voice-cli"
EXIT_USAGE = 2  # argparse's own status for bad command lines; the same as INVALID_ARGUMENT on purpose
EXIT_INTERRUPTED = 130

_V = TypeVar("_V")

_EXTENSION_FORMATS = {".wav": "wav", ".opus": "opus", ".ogg": "opus", ".pcm": "pcm16", ".raw": "pcm16"}


class UsageError(Exception):
    """A command line that parses but makes no sense (e.g. --reference-text without --reference)."""


# --------------------------------------------------------------------------------------------------------------------
# Argument parsing
# --------------------------------------------------------------------------------------------------------------------


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text!r}")
    return value


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be 0 or a positive number, got {text!r}")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text!r}")
    return value


def _env(name: str, parse: Callable[[str], _V], fallback: _V) -> _V:
    """An environment default, checked like the flag (a bad value is a usage error, not a traceback)."""
    value = os.environ.get(name)
    if not value:
        return fallback
    try:
        return parse(value)
    except argparse.ArgumentTypeError as error:
        raise UsageError(f"environment variable {name}: {error}") from None


def _connection_options(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    """Connection flags are accepted before and after the command; after it they must not reset values given before
    it, hence SUPPRESS defaults on the sub-command copies."""

    def default(value: object) -> object:
        return argparse.SUPPRESS if suppress else value

    group = parser.add_argument_group("connection")
    group.add_argument(
        "--target",
        default=default(os.environ.get("VOICE_TARGET", DEFAULT_TTS_TARGET)),
        help=f"TTS gateway host:port (env VOICE_TARGET, default {DEFAULT_TTS_TARGET})",
    )
    group.add_argument(
        "--rvc-target",
        default=default(os.environ.get("VOICE_RVC_TARGET", DEFAULT_RVC_TARGET)),
        help=f"voice-conversion service host:port (env VOICE_RVC_TARGET, default {DEFAULT_RVC_TARGET})",
    )
    group.add_argument(
        "--token",
        default=default(os.environ.get("VOICE_TOKEN")),
        help="bearer token sent as 'authorization: Bearer <token>' (env VOICE_TOKEN)",
    )
    group.add_argument(
        "--tls",
        action="store_true",
        default=default(os.environ.get("VOICE_TLS", "") not in ("", "0", "false")),
        help="use TLS with the system roots (env VOICE_TLS=1)",
    )
    group.add_argument(
        "--ca-cert",
        type=Path,
        default=default(Path(os.environ["VOICE_CA_CERT"]) if os.environ.get("VOICE_CA_CERT") else None),
        help="PEM CA bundle to verify the server; implies --tls (env VOICE_CA_CERT)",
    )
    group.add_argument(
        "--timeout",
        type=_positive_seconds,
        default=default(_env("VOICE_TIMEOUT", _positive_seconds, 300.0)),
        help="deadline in seconds for each call, whole streams and retries included (env VOICE_TIMEOUT, default 300)",
    )
    group.add_argument(
        "--max-retries",
        type=_count,
        default=default(_env("VOICE_MAX_RETRIES", _count, DEFAULT_MAX_RETRIES)),
        help="retries of a call refused with RESOURCE_EXHAUSTED or UNAVAILABLE and a RetryInfo delay, before any "
        f"audio arrived; each waits the delay asked for, at most 10 s (env VOICE_MAX_RETRIES, default "
        f"{DEFAULT_MAX_RETRIES}; 0 never retries)",
    )


def _conversion_options(parser: argparse.ArgumentParser, *, model_flag: str, model_required: bool) -> None:
    group = parser.add_argument_group("voice conversion")
    group.add_argument(
        model_flag,
        dest="model",
        required=model_required,
        help="conversion model name (see `models`)" + ("" if model_required else "; turns conversion on"),
    )
    group.add_argument("--pitch", type=float, help="pitch shift in semitones, -24..24")
    group.add_argument("--formant", type=float, help="formant shift in semitones, -12..12 (world engine)")
    group.add_argument("--f0-method", choices=sorted(F0_METHODS), help="pitch estimator (default: the service's)")
    group.add_argument("--index-rate", type=float, help="weight of retrieved index features, 0..1")
    group.add_argument("--protect", type=float, help="protection of voiceless consonants, 0..0.5")
    group.add_argument("--rms-mix-rate", type=float, help="output loudness envelope kept, 0..1")
    group.add_argument("--filter-radius", type=int, help="median filter radius for harvest F0, 0..7")
    group.add_argument("--speaker-id", type=int, help="speaker inside a multi-speaker conversion model")


def _output_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--output", required=True, help="output file, or - for stdout")
    parser.add_argument(
        "--format",
        choices=sorted(ENCODINGS),
        help="audio encoding; default from the file extension (.wav .opus .ogg .pcm .raw), pcm16 for stdout",
    )
    parser.add_argument("--rate", type=int, default=0, help="output sample rate in Hz; 0 (default) is native")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress or timing on stderr, only errors")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Client for voice.v1.TtsGatewayService, voice.v1.RecognitionService and "
        "voice.v1.VoiceConversionService.",
        epilog="Exit status: 0 ok, 1 local error, 2 usage or INVALID_ARGUMENT, 3 NOT_FOUND, 4 FAILED_PRECONDITION, "
        "5 UNAVAILABLE or DEADLINE_EXCEEDED, 6 RESOURCE_EXHAUSTED, 7 UNAUTHENTICATED or PERMISSION_DENIED, "
        "8 other server errors, 130 interrupted.",
    )
    _connection_options(parser, suppress=False)
    connection = argparse.ArgumentParser(add_help=False)
    _connection_options(connection, suppress=True)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    say = commands.add_parser("say", parents=[connection], help="synthesize text to a file or stdout")
    say.add_argument(
        "text",
        nargs="?",
        help="text to speak; - reads it from stdin (with --incremental: as it arrives, so may be left out when stdin "
        "is a pipe)",
    )
    say.add_argument("--voice", help="voice name (see `voices`); default: the first voice listed")
    _output_options(say)
    mode = say.add_argument_group("speaker mode")
    mode.add_argument("--speaker", help="preset speaker of the voice (default: its first)")
    mode.add_argument("--reference", type=Path, help="reference audio to clone (zero-shot / cross-lingual voices)")
    mode.add_argument("--reference-text", help="transcript of --reference (zero-shot); omit for cross-lingual")
    mode.add_argument("--instruct", help="style instruction, e.g. 'speak slowly and warmly'")
    mode.add_argument("--gender", choices=["female", "male"], help="design a new voice (voice_design voices)")
    levels = ["very_low", "low", "moderate", "high", "very_high"]
    mode.add_argument("--pitch-level", choices=levels, help="pitch of the designed voice (with --gender)")
    mode.add_argument("--speed-level", choices=levels, help="speed of the designed voice (with --gender)")
    say.add_argument("--seed", type=int, default=0, help="sampling seed for reproducible audio (0: random)")
    say.add_argument("--speaking-rate", type=float, default=0.0, help="0.5..2.0; 0 (default) is normal speed")
    say.add_argument("--request-id", default="", help="request id echoed on every chunk (default: server-made)")
    say.add_argument(
        "--incremental",
        action="store_true",
        help="use StreamingSynthesize: the text is sent word by word, as an LLM token stream would be; stdin (-) is "
        "sent as it arrives, each read as one text delta, so `llm ... | voice-cli say --incremental - ...` speaks "
        "while the text is being written",
    )
    say.add_argument(
        "--words-per-second",
        type=_rate,
        default=0.0,
        metavar="N",
        help="with --incremental: send the words of the text argument at N words per second (default 0: as fast "
        "as possible); stdin is always sent as it arrives",
    )
    say.add_argument(
        "--text-input",
        choices=list(TEXT_INPUT_MODES),
        help="how the gateway hands streamed text to the model: incremental (every delta at once; voices that "
        "stream text input, see `voices`), sentences (sentence by sentence), auto (the voice's default); implies "
        "--incremental",
    )
    _conversion_options(say, model_flag="--rvc-model", model_required=False)
    say.add_argument("--no-conversion", action="store_true", help="skip the voice's default conversion")
    say.set_defaults(handler=cmd_say)

    voices = commands.add_parser("voices", parents=[connection], help="list the gateway's voices")
    voices.add_argument("--language", default="", help="BCP-47 prefix filter, e.g. en or en-US")
    voices.add_argument("--json", action="store_true", help="print the ListVoices response as JSON")
    voices.set_defaults(handler=cmd_voices)

    status = commands.add_parser("status", parents=[connection], help="health and status of the gateway")
    status.add_argument("--conversion", action="store_true", help="report on the voice-conversion service instead")
    status.add_argument("--json", action="store_true", help="print the GetStatus response as JSON")
    status.set_defaults(handler=cmd_status)

    convert = commands.add_parser("convert", parents=[connection], help="convert a recording (--rvc-target)")
    convert.add_argument("input", type=Path, help="input audio: WAV, Ogg-Opus, or anything libsndfile reads")
    _output_options(convert)
    _conversion_options(convert, model_flag="--model", model_required=True)
    convert.add_argument(
        "--stream", action="store_true", help="use the streaming Convert call (0.5 s blocks) instead of ConvertClip"
    )
    convert.add_argument("--request-id", default="", help="request id echoed back")
    convert.set_defaults(handler=cmd_convert)

    models = commands.add_parser("models", parents=[connection], help="list conversion models (--rvc-target)")
    models.add_argument("--json", action="store_true", help="print the ListModels response as JSON")
    models.set_defaults(handler=cmd_models)

    transcribe = commands.add_parser(
        "transcribe",
        parents=[connection],
        help="speech to text: transcribe a recording, or stream audio from stdin",
        description="Prints one line per utterance (final results) on stdout; the timing line goes to stderr.",
    )
    transcribe.add_argument(
        "input",
        help="audio: WAV, Ogg-Opus or anything libsndfile reads; raw audio (.pcm/.raw, or --encoding) needs --rate; "
        "- reads stdin (raw audio; with --stream sent as it arrives)",
    )
    transcribe.add_argument(
        "--model", default="", help="recognition model (see `recognition-models`; default: the server's)"
    )
    transcribe.add_argument("--language", default="", help="BCP-47 language, e.g. en-US (default: the model's)")
    transcribe.add_argument(
        "--encoding", choices=list(RAW_ENCODINGS), help="the input is raw (headerless) audio in this encoding"
    )
    transcribe.add_argument("--rate", type=int, help="sample rate of raw input in Hz (8000..48000)")
    transcribe.add_argument(
        "--words", action="store_true", help="ask for word timings and print each word as '  START END WORD'"
    )
    transcribe.add_argument(
        "--json",
        action="store_true",
        help="print the RecognizeResponse as JSON (with --stream: each StreamingRecognizeResponse, one per line)",
    )
    transcribe.add_argument("--request-id", default="", help="request id echoed back")
    transcribe.add_argument("-q", "--quiet", action="store_true", help="no timing line on stderr, only errors")
    live = transcribe.add_argument_group("streaming")
    live.add_argument(
        "--stream",
        action="store_true",
        help="use StreamingRecognize: the audio goes up in 100 ms chunks, final lines are printed as they come",
    )
    live.add_argument(
        "--realtime", action="store_true", help="with --stream: send a file at real-time pace (stdin: as it arrives)"
    )
    live.add_argument(
        "--interim",
        action="store_true",
        help="with --stream: print interim results too (on a terminal they overwrite the line; else as lines "
        "starting with '[interim] ')",
    )
    live.add_argument(
        "--single-utterance", action="store_true", help="with --stream: stop after the first utterance's final result"
    )
    transcribe.set_defaults(handler=cmd_transcribe)

    recognition_models = commands.add_parser(
        "recognition-models", parents=[connection], help="list the gateway's speech recognition models"
    )
    recognition_models.add_argument(
        "--json", action="store_true", help="print the ListRecognitionModels response as JSON"
    )
    recognition_models.set_defaults(handler=cmd_recognition_models)
    return parser


def _read_local(path: Path) -> bytes:
    """A file named on the command line, or a UsageError that says why it cannot be read."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise UsageError(f"cannot read {path}: {error.strerror or type(error).__name__}") from None
    if not data:
        raise UsageError(f"cannot read {path}: the file is empty")
    return data


def _client_kwargs(args: argparse.Namespace, progress: Progress) -> dict[str, Any]:
    def on_retry(notice: RetryNotice) -> None:
        progress.done(
            f"{notice.code.name}: {notice.message or 'no details'}; retrying in {notice.delay_s:.2f} s "
            f"(retry {notice.retry} of {notice.max_retries})"
        )

    return {
        "tls": bool(args.tls),
        "root_certificates": _read_local(args.ca_cert) if args.ca_cert else None,
        "token": args.token,
        "timeout": args.timeout,
        "max_retries": args.max_retries,
        "on_retry": on_retry,
    }


def _settings_from_args(args: argparse.Namespace) -> conversion_pb2.ConversionSettings | None:
    return conversion_settings(
        args.model,
        pitch_shift_semitones=args.pitch,
        formant_shift_semitones=args.formant,
        f0_method=args.f0_method,
        index_rate=args.index_rate,
        protect=args.protect,
        rms_mix_rate=args.rms_mix_rate,
        filter_radius=args.filter_radius,
        speaker_id=args.speaker_id,
    )


def _resolve_format(args: argparse.Namespace) -> str:
    if args.format:
        return str(args.format)
    if args.output == "-":
        return "pcm16"  # what players read from a pipe
    suffix = Path(args.output).suffix.lower()
    if suffix not in _EXTENSION_FORMATS:
        raise UsageError(
            f"cannot tell the format from '{args.output}'; pass --format {{{','.join(sorted(ENCODINGS))}}}"
        )
    return _EXTENSION_FORMATS[suffix]


# --------------------------------------------------------------------------------------------------------------------
# Output and progress
# --------------------------------------------------------------------------------------------------------------------


class AudioSink:
    """Writes audio to stdout as it arrives, or to `<output>.part`, renamed on success. A WAV file is written by
    libsndfile from the streamed samples (the streamed header's sizes say 'unknown length'; the file's are true).

    The .part file is created at once, so an output path that cannot be written fails before any call is made."""

    def __init__(self, output: str, encoding: str) -> None:
        self.output = output
        self.encoding = encoding
        self._path = None if output == "-" else Path(output)
        self._part = None if self._path is None else self._path.with_name(self._path.name + ".part")
        self._wav: WavFileWriter | None = None
        self._file: BinaryIO | None = None
        if self._path is None or self._part is None:
            self._file = sys.stdout.buffer
            return
        if self._path.is_dir():
            raise UsageError(f"cannot write {output}: Is a directory")
        try:
            self._file = self._part.open("wb")
        except OSError as error:
            raise UsageError(f"cannot write {output}: {error.strerror or type(error).__name__}") from None
        if encoding == "wav":
            self._file.close()
            self._file = None
            self._wav = WavFileWriter(self._part)

    def write(self, data: bytes) -> None:
        if not data:
            return
        if self._wav is not None:
            self._wav.write(data)
            return
        assert self._file is not None
        self._file.write(data)
        if self._part is None:
            self._file.flush()  # a player on the other end of the pipe should hear it now

    def commit(self) -> None:
        if self._part is None or self._path is None:
            assert self._file is not None
            self._file.flush()
            return
        if self._wav is not None:
            self._wav.close()
        elif self._file is not None:
            self._file.close()
        self._part.replace(self._path)

    def discard(self) -> None:
        if self._part is None:
            return
        if self._wav is not None:
            self._wav.abort()
        elif self._file is not None:
            self._file.close()
        self._part.unlink(missing_ok=True)


class Progress:
    """Progress on stderr while audio arrives: a self-overwriting line on a terminal, else a line every second."""

    def __init__(self, stream: TextIO, enabled: bool) -> None:
        self.stream = stream
        self.enabled = enabled
        self.tty = stream.isatty()
        self._last = 0.0

    def update(self, stats: StreamStats) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not self.tty and now - self._last < 1.0:
            return
        self._last = now
        text = f"receiving: {stats.chunks} chunks, {stats.audio_seconds:.2f} s of audio, {stats.segments} segments"
        self.stream.write(f"\r\033[K{text}" if self.tty else text + "\n")
        self.stream.flush()

    def done(self, line: str) -> None:
        if self.enabled:
            self.stream.write(("\r\033[K" if self.tty else "") + line + "\n")
            self.stream.flush()


def _format_name(encoding: int) -> str:
    return audio_pb2.AudioEncoding.Name(encoding).removeprefix("AUDIO_ENCODING_") if encoding else "?"


def _timing_line(stats: StreamStats, destination: str) -> str:
    ttfa = stats.time_to_first_audio
    rtf = stats.real_time_factor
    line = (
        f"{destination}: {stats.audio_seconds:.2f} s of audio, {_format_name(stats.encoding)} "
        f"{stats.sample_rate_hz} Hz, {stats.chunks} chunks, {stats.segments} segments; "
    )
    line += f"time to first audio {ttfa:.3f} s" if ttfa is not None else "time to first audio n/a"
    line += f", RTF {rtf:.3f}" if rtf is not None else ", RTF n/a"
    summary = stats.summary
    if summary is not None and summary.HasField("total_time"):
        line += (
            f" (server: first audio {summary.time_to_first_audio.ToTimedelta().total_seconds():.3f} s, "
            f"RTF {summary.real_time_factor:.3f})"
        )
    if stats.request_id:
        line += f" [request_id={stats.request_id}]"
    return line


def _stream_to_sink(
    chunks: Iterable[audio_pb2.AudioChunk],
    sink: AudioSink,
    progress: Progress,
    stats: StreamStats,
    reader: LiveText | None = None,
) -> None:
    announced = False
    for chunk in chunks:
        if reader is not None:
            reader.raise_error()  # leaving the loop cancels the call: text that is not UTF-8 is not spoken
        stats.observe(chunk)
        if not announced and sink.output == "-" and chunk.format.sample_rate_hz and progress.enabled:
            announced = True
            rate = chunk.format.sample_rate_hz
            progress.done(
                f"streaming {_format_name(chunk.format.encoding)} mono {rate} Hz to stdout "
                f"(e.g. | aplay -f S16_LE -c 1 -r {rate})"
            )
        sink.write(chunk.audio)
        progress.update(stats)


# --------------------------------------------------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------------------------------------------------


def _words(text: str) -> Iterator[str]:
    """Word-sized deltas that keep their whitespace, so the server sees the original text once joined."""
    start = 0
    for index, char in enumerate(text):
        if char.isspace() and index > start:
            yield text[start : index + 1]
            start = index + 1
    if start < len(text):
        yield text[start:]


class LiveText:
    """Text deltas read from a file descriptor (stdin) as they arrive: a thread takes whatever each read returns
    (`os.read`, unbuffered, up to `read_bytes`) and decodes it as UTF-8 incrementally, so a character split across
    two reads is whole in the second delta. Iterating yields the deltas in order and ends at end of file.

    Text that is not UTF-8 (or a failed read) ends the deltas early and sets `error`; check it (`raise_error`) while
    the audio arrives and after, so such a stream fails instead of passing for complete."""

    def __init__(self, fd: int, *, read_bytes: int = 4096) -> None:
        self.error: UsageError | None = None
        self._deltas: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self._thread = threading.Thread(
            target=self._read, args=(fd, read_bytes), name="voice-cli-text-reader", daemon=True
        )
        self._thread.start()

    def _read(self, fd: int, read_bytes: int) -> None:
        decoder = codecs.getincrementaldecoder("utf-8")()
        position = 0  # bytes read so far
        try:
            while True:
                try:
                    data = os.read(fd, read_bytes)
                except OSError as error:
                    reason = error.strerror or type(error).__name__
                    self.error = UsageError(f"cannot read the text from stdin: {reason}")
                    return
                held = len(decoder.getstate()[0])  # the start of a character the last read split
                try:
                    text = decoder.decode(data, final=not data)
                except UnicodeDecodeError as error:
                    at = position - held + error.start
                    self.error = UsageError(
                        f"cannot read the text from stdin: it is not UTF-8 ({error.reason} at byte {at})"
                    )
                    return
                position += len(data)
                if text:
                    self._deltas.put(text)
                if not data:
                    return
        finally:
            self._deltas.put(None)

    def __iter__(self) -> Iterator[str]:
        while (delta := self._deltas.get()) is not None:
            yield delta

    def raise_error(self) -> None:
        if self.error is not None:
            raise self.error


def _paced(pieces: Iterable[_V], per_second: float) -> Iterator[_V]:
    """`pieces` at `per_second` a second: piece i is handed on no earlier than i / per_second after the first (so
    n pieces take at least (n - 1) / per_second); 0 is as fast as they come."""
    if per_second <= 0:
        yield from pieces
        return
    start = time.monotonic()
    for index, piece in enumerate(pieces):
        wait = start + index / per_second - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        yield piece


def _read_text(spec: str) -> str:
    if spec != "-":
        return spec
    try:
        return sys.stdin.buffer.read().decode("utf-8")
    except UnicodeDecodeError as error:
        raise UsageError(
            f"cannot read the text from stdin: it is not UTF-8 ({error.reason} at byte {error.start})"
        ) from None


def _check_mode(args: argparse.Namespace) -> None:
    if args.reference_text and not args.reference:
        raise UsageError("--reference-text needs --reference")
    if args.reference and args.instruct:
        raise UsageError("--reference and --instruct cannot be combined")
    if (args.pitch_level or args.speed_level) and not args.gender:
        raise UsageError("--pitch-level and --speed-level need --gender")


def _check_text(args: argparse.Namespace) -> bool:
    """Settles what --incremental, --text-input and --words-per-second imply; True when stdin is streamed."""
    if args.text_input is not None:
        args.incremental = True
    if args.text is None:
        if not args.incremental:
            raise UsageError("say needs the text to speak (or - to read it from stdin)")
        if sys.stdin.isatty():
            raise UsageError("say needs the text to speak, or - to type it on stdin (end it with Ctrl-D)")
        args.text = "-"
    live = args.incremental and args.text == "-"
    if args.words_per_second and not args.incremental:
        raise UsageError("--words-per-second needs --incremental")
    if args.words_per_second and live:
        raise UsageError("--words-per-second paces the text argument; text from stdin is sent as it arrives")
    return bool(live)


def cmd_say(args: argparse.Namespace) -> int:
    live = _check_text(args)
    text = "" if live else _read_text(args.text)
    encoding = _resolve_format(args)
    _check_mode(args)
    settings = _settings_from_args(args)
    reference = audio_input_from_file(args.reference) if args.reference else None  # read before any call
    progress = Progress(sys.stderr, not args.quiet)
    kwargs = _client_kwargs(args, progress)
    sink = AudioSink(args.output, encoding)  # a path that cannot be written fails here, before any call
    stats = StreamStats()
    try:
        with TtsClient(args.target, **kwargs) as client:
            voice = args.voice
            if not voice:
                voices = client.list_voices()
                if not voices:
                    raise UsageError("the gateway lists no voices")
                voice = voices[0].name
                progress.done(f"using voice '{voice}' (pass --voice to choose)")
            options = SynthesisOptions(
                voice=voice,
                encoding=encoding,
                sample_rate_hz=args.rate,
                speaker=args.speaker,
                reference=reference,
                reference_text=args.reference_text,
                instruction=args.instruct,
                conversion=settings,
                disable_conversion=args.no_conversion,
                speaking_rate=args.speaking_rate,
                request_id=args.request_id,
                gender=args.gender,
                pitch=args.pitch_level,
                speed=args.speed_level,
                seed=args.seed,
            )
            reader: LiveText | None = None
            if args.incremental:
                if live:
                    if sys.stdin.isatty():
                        progress.done("reading the text from stdin as you type it (end it with Ctrl-D)")
                    reader = LiveText(sys.stdin.fileno())
                    pieces: Iterable[str] = reader
                else:
                    pieces = _paced(_words(text), args.words_per_second)
                mode = cast(TextInputModeName, args.text_input or "auto")  # argparse checked the choice
                chunks = client.streaming_synthesize(pieces, options, text_input_mode=mode)
            else:
                chunks = client.synthesize_with(text, options)
            _stream_to_sink(chunks, sink, progress, stats, reader)
            if reader is not None:
                reader.raise_error()
        sink.commit()
    except BaseException:
        sink.discard()
        raise
    progress.done(_timing_line(stats, "stdout" if args.output == "-" else f"wrote {args.output}"))
    return EXIT_OK


def cmd_convert(args: argparse.Namespace) -> int:
    encoding = _resolve_format(args)
    settings = _settings_from_args(args)
    assert settings is not None  # --model is required, so settings always carry the model name
    # The input is read (and, for --stream or formats other than WAV/Ogg, decoded) before any call is made.
    if args.stream:
        samples, rate = read_mono(args.input)
        clip = None
    else:
        clip = audio_input_from_file(args.input)
    progress = Progress(sys.stderr, not args.quiet)
    kwargs = _client_kwargs(args, progress)
    sink = AudioSink(args.output, encoding)
    destination = "stdout" if args.output == "-" else f"wrote {args.output}"
    try:
        with ConversionClient(args.rvc_target, **kwargs) as client:
            if clip is None:
                stats = StreamStats()
                input_format = audio_pb2.AudioFormat(encoding=audio_pb2.AUDIO_ENCODING_PCM16, sample_rate_hz=rate)
                chunks = client.convert(
                    pcm_blocks(samples, rate),
                    settings,
                    input_format=input_format,
                    encoding=encoding,
                    sample_rate_hz=args.rate,
                    request_id=args.request_id,
                )
                _stream_to_sink(chunks, sink, progress, stats)
                sink.commit()
                progress.done(_timing_line(stats, destination))
                return EXIT_OK
            started = time.monotonic()
            response = client.convert_clip(
                clip, settings, encoding=encoding, sample_rate_hz=args.rate, request_id=args.request_id
            )
            sink.write(response.audio)
            sink.commit()
    except BaseException:
        sink.discard()
        raise
    elapsed = time.monotonic() - started
    audio_s = response.audio_duration.ToTimedelta().total_seconds()
    progress.done(
        f"{destination}: {audio_s:.2f} s of audio, "
        f"{_format_name(response.format.encoding)} {response.format.sample_rate_hz} Hz; "
        f"round trip {elapsed:.3f} s, conversion {response.conversion_time.ToTimedelta().total_seconds():.3f} s, "
        f"RTF {response.real_time_factor:.3f} [request_id={response.request_id}]"
    )
    return EXIT_OK


def _modes(voice: tts_gateway_pb2.Voice) -> str:
    names = [
        tts_gateway_pb2.SynthesisMode.Name(m).removeprefix("SYNTHESIS_MODE_").lower() for m in voice.supported_modes
    ]
    return ",".join(names) or "-"


def _conversion_text(settings: conversion_pb2.ConversionSettings) -> str:
    parts = [settings.model]
    if settings.HasField("pitch_shift_semitones"):
        parts.append(f"pitch {settings.pitch_shift_semitones:+g}")
    if settings.HasField("formant_shift_semitones"):
        parts.append(f"formant {settings.formant_shift_semitones:+g}")
    return " ".join(parts)


def _print_table(rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def cmd_voices(args: argparse.Namespace) -> int:
    with TtsClient(args.target, **_client_kwargs(args, Progress(sys.stderr, True))) as client:
        voices = client.list_voices(args.language)
    if args.json:
        # Every field, false and empty ones included (streams_text_input: false says something too).
        response = tts_gateway_pb2.ListVoicesResponse(voices=voices)
        print(json_format.MessageToJson(response, always_print_fields_with_no_presence=True))
        return EXIT_OK
    # TEXT INPUT: how StreamingSynthesize feeds the model by default (incremental: audio starts mid-sentence).
    rows = [["NAME", "LANGUAGE", "TTS MODEL", "RATE", "STREAMING", "TEXT INPUT", "MODES", "CONVERSION", "DESCRIPTION"]]
    for voice in voices:
        rows.append(
            [
                voice.name,
                voice.language_code,
                voice.tts_model,
                str(voice.native_sample_rate_hz),
                "yes" if voice.streaming else "no",
                "incremental" if voice.streams_text_input else "sentences",
                _modes(voice),
                _conversion_text(voice.default_conversion) if voice.HasField("default_conversion") else "-",
                voice.description,
            ]
        )
    _print_table(rows)
    return EXIT_OK


def _seconds(duration: object) -> str:
    return f"{duration.ToTimedelta().total_seconds():.3f} s"  # type: ignore[attr-defined]


def cmd_status(args: argparse.Namespace) -> int:
    if args.conversion:
        with ConversionClient(args.rvc_target, **_client_kwargs(args, Progress(sys.stderr, True))) as rvc:
            health = rvc.health()
            conversion_status = rvc.status()
        if args.json:
            print(json_format.MessageToJson(conversion_status))
            return EXIT_OK
        device = conversion_status.device
        print(f"voice conversion {args.rvc_target}: {health}, version {conversion_status.version or '?'}")
        print(f"device: {device.kind} {device.name} ({device.cuda_streams} CUDA streams)")
        print(
            f"workers: {conversion_status.busy_workers}/{conversion_status.workers} busy, queue "
            f"{conversion_status.queue_depth}/{conversion_status.queue_capacity}, "
            f"{conversion_status.active_streams} active streams"
        )
        loaded = ", ".join(m.name for m in conversion_status.loaded_models) or "none"
        print(f"loaded models: {loaded}")
        return EXIT_OK
    with TtsClient(args.target, **_client_kwargs(args, Progress(sys.stderr, True))) as tts:
        health = tts.health()
        gateway_status = tts.status()
    if args.json:
        print(json_format.MessageToJson(gateway_status))
        return EXIT_OK
    print(
        f"gateway {args.target}: {health}, version {gateway_status.version or '?'}, "
        f"up {gateway_status.uptime.ToTimedelta().total_seconds():.0f} s, "
        f"{gateway_status.active_streams}/{gateway_status.max_concurrent_streams} streams"
    )
    for upstream in gateway_status.upstreams:
        state = "SERVING" if upstream.serving else f"DOWN ({upstream.last_error})"
        print(f"  upstream {upstream.name} {upstream.target}: {state} {upstream.version}".rstrip())
    for stage in gateway_status.stage_latencies:
        print(
            f"  {stage.stage}: n={stage.count} p50 {_seconds(stage.p50)} p90 {_seconds(stage.p90)} "
            f"p99 {_seconds(stage.p99)}"
        )
    return EXIT_OK


def cmd_models(args: argparse.Namespace) -> int:
    with ConversionClient(args.rvc_target, **_client_kwargs(args, Progress(sys.stderr, True))) as client:
        models = client.list_models()
    if args.json:
        print(json_format.MessageToJson(voice_conversion_pb2.ListModelsResponse(models=models)))
        return EXIT_OK
    rows = [["NAME", "ENGINE", "LOADED", "VERSION", "RATE", "F0", "INDEX", "SPEAKERS", "SIZE"]]
    for model in models:
        rows.append(
            [
                model.name,
                voice_conversion_pb2.ConversionEngine.Name(model.engine).removeprefix("CONVERSION_ENGINE_").lower(),
                "yes" if model.loaded else "no",
                model.version or "-",
                str(model.sample_rate_hz or "-"),
                "yes" if model.uses_f0 else "no",
                "yes" if model.has_index else "no",
                str(model.speaker_count),
                f"{model.size_bytes / 1e6:.1f} MB" if model.size_bytes else "-",
            ]
        )
    _print_table(rows)
    return EXIT_OK


# --------------------------------------------------------------------------------------------------------------------
# Speech to text
# --------------------------------------------------------------------------------------------------------------------

CHUNK_SECONDS = 0.1  # what --stream sends per StreamingRecognize message
_CONTAINERS = (b"RIFF", b"OggS")


class LiveAudio:
    """Raw audio read from a file descriptor (stdin) as it arrives, by a thread, handed on in blocks of
    `block_bytes` (the last one shorter, cut to whole samples of `sample_bytes`). Iterating yields the blocks and
    ends at end of file; a failed read ends them early and sets `error` (see `raise_error`)."""

    def __init__(self, fd: int, block_bytes: int, sample_bytes: int) -> None:
        self.error: UsageError | None = None
        self._blocks: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._thread = threading.Thread(
            target=self._read, args=(fd, block_bytes, sample_bytes), name="voice-cli-audio-reader", daemon=True
        )
        self._thread.start()

    def _read(self, fd: int, block_bytes: int, sample_bytes: int) -> None:
        pending = b""
        try:
            while True:
                try:
                    data = os.read(fd, block_bytes)
                except OSError as error:
                    self.error = UsageError(f"cannot read the audio from stdin: {error.strerror or error}")
                    return
                if not data:
                    tail = len(pending) - len(pending) % sample_bytes
                    if tail:
                        self._blocks.put(pending[:tail])
                    return
                pending += data
                while len(pending) >= block_bytes:
                    self._blocks.put(pending[:block_bytes])
                    pending = pending[block_bytes:]
        finally:
            self._blocks.put(None)

    def __iter__(self) -> Iterator[bytes]:
        while (block := self._blocks.get()) is not None:
            yield block

    def raise_error(self) -> None:
        if self.error is not None:
            raise self.error


def _raw_input(args: argparse.Namespace) -> tuple[int, int] | None:
    """(encoding, rate) when the input is raw audio, else None; a UsageError when raw audio has no --rate."""
    suffix = Path(args.input).suffix.lower()
    raw = bool(args.encoding) or suffix in (".pcm", ".raw") or (args.input == "-" and args.stream)
    if not raw:
        if args.rate:
            raise UsageError("--rate is for raw input (.pcm/.raw, stdin, or --encoding); a file's header says its rate")
        return None
    if not args.rate:
        where = "stdin" if args.input == "-" else args.input
        raise UsageError(f"raw audio from {where} needs --rate (and --encoding unless it is pcm16)")
    if not 8000 <= args.rate <= 48000:
        raise UsageError(f"--rate must be 8000..48000 Hz, got {args.rate}")
    return int(RAW_ENCODINGS[args.encoding or "pcm16"]), int(args.rate)


def _read_input_bytes(args: argparse.Namespace) -> bytes:
    if args.input == "-":
        data = sys.stdin.buffer.read()
        if not data:
            raise UsageError("cannot read the audio from stdin: it is empty")
        return data
    return _read_local(Path(args.input))


def _check_transcribe(args: argparse.Namespace) -> None:
    if not args.stream:
        for flag, value in (
            ("--realtime", args.realtime),
            ("--interim", args.interim),
            ("--single-utterance", args.single_utterance),
        ):
            if value:
                raise UsageError(f"{flag} needs --stream")
    if args.realtime and args.input == "-":
        raise UsageError("--realtime paces a file; stdin is sent as it arrives")
    if args.input != "-" and Path(args.input).is_dir():
        raise UsageError(f"cannot read {args.input}: Is a directory")


def _offset(duration: Any) -> float:
    return float(duration.ToTimedelta().total_seconds())


class TranscriptPrinter:
    """Writes results to stdout: final transcripts one line each (word lines under them with --words); interim ones,
    when asked for, overwrite the current line on a terminal, else go out as '[interim] ' lines."""

    def __init__(self, stream: TextIO, *, words: bool, interim: bool) -> None:
        self.stream = stream
        self.words = words
        self.interim = interim
        self.tty = stream.isatty()
        self._open = False  # an interim line is on the terminal without its newline

    def result(self, result: recognition_pb2.SpeechRecognitionResult) -> None:
        best = result.alternatives[0] if result.alternatives else recognition_pb2.SpeechRecognitionAlternative()
        if not result.is_final:
            if self.interim:
                if self.tty:
                    self.stream.write(f"\r\033[K{best.transcript}")
                    self._open = True
                else:
                    self.stream.write(f"[interim] {best.transcript}\n")
                self.stream.flush()
            return
        self.stream.write(("\r\033[K" if self._open else "") + best.transcript + "\n")
        self._open = False
        if self.words:
            for word in best.words:
                self.stream.write(f"  {_offset(word.start_offset):7.3f} {_offset(word.end_offset):7.3f}  {word.word}\n")
        self.stream.flush()

    def close(self) -> None:
        if self._open:
            self.stream.write("\r\033[K")
            self.stream.flush()
            self._open = False


def cmd_transcribe(args: argparse.Namespace) -> int:
    _check_transcribe(args)
    raw = _raw_input(args)
    progress = Progress(sys.stderr, not args.quiet)
    kwargs = _client_kwargs(args, progress)
    common = {
        "model": args.model,
        "language_code": args.language,
        "word_time_offsets": bool(args.words),
        "request_id": args.request_id,
    }
    if not args.stream:
        # The input is read (and, for formats other than WAV/Ogg, decoded) before any call is made.
        if raw is not None:
            audio = audio_pb2.AudioInput(audio=_read_input_bytes(args), format=raw_format(*raw))
        elif args.input == "-":
            data = _read_input_bytes(args)
            if data[:4] not in _CONTAINERS:
                raise UsageError("audio from stdin without a WAV or Ogg header needs --rate (and --encoding)")
            container = audio_pb2.AUDIO_ENCODING_WAV if data[:4] == b"RIFF" else audio_pb2.AUDIO_ENCODING_OGG_OPUS
            audio = audio_pb2.AudioInput(audio=data, format=audio_pb2.AudioFormat(encoding=container))
        else:
            audio = audio_input_from_file(args.input)
        started = time.monotonic()
        with RecognitionClient(args.target, **kwargs) as client:
            response = client.recognize(audio, **common)
        elapsed = time.monotonic() - started
        if args.json:
            print(json_format.MessageToJson(response))
        else:
            printer = TranscriptPrinter(sys.stdout, words=args.words, interim=False)
            for result in response.results:
                printer.result(result)
        audio_s = _offset(response.audio_duration)
        rtf = f"RTF {elapsed / audio_s:.3f}" if audio_s > 0 else "RTF n/a"
        progress.done(
            f"{len(response.results)} utterances in {audio_s:.2f} s of audio, model {response.model or '?'}; "
            f"round trip {elapsed:.3f} s, {rtf} [request_id={response.request_id}]"
        )
        return EXIT_OK

    reader: LiveAudio | None = None
    encoding: int
    rate: int
    if args.input == "-":
        assert raw is not None
        encoding, rate = raw
        sample_bytes = RAW_SAMPLE_BYTES[encoding]
        if sys.stdin.isatty():
            raise UsageError("transcribe --stream - reads raw audio from a pipe, e.g. arecord -f S16_LE -r 16000 |")
        reader = LiveAudio(sys.stdin.fileno(), int(rate * CHUNK_SECONDS) * sample_bytes, sample_bytes)
        chunks: Iterable[bytes] = reader
    elif raw is not None:
        encoding, rate = raw
        chunks = raw_blocks(_read_input_bytes(args), encoding, rate, CHUNK_SECONDS)
    else:
        samples, rate = read_mono(args.input)
        encoding = audio_pb2.AUDIO_ENCODING_PCM16
        chunks = pcm_blocks(samples, rate, CHUNK_SECONDS)
    if args.realtime:
        chunks = _paced(chunks, 1.0 / CHUNK_SECONDS)
    sent: list[float] = []

    def marked(blocks: Iterable[bytes]) -> Iterator[bytes]:
        yield from blocks
        sent.append(time.monotonic())  # the end of the audio: the call is half-closed next

    printer = TranscriptPrinter(sys.stdout, words=args.words, interim=args.interim)
    started = time.monotonic()
    finals = 0
    last_final_at: float | None = None
    received = 0.0
    request_id = ""
    try:
        with RecognitionClient(args.target, **kwargs) as client:
            responses = client.streaming_recognize(
                marked(chunks),
                input_format=raw_format(encoding, rate),
                interim_results=bool(args.interim),
                single_utterance=bool(args.single_utterance),
                **common,
            )
            for message in responses:
                if reader is not None:
                    reader.raise_error()
                request_id = message.request_id or request_id
                received = _offset(message.total_audio_received) or received
                if args.json:
                    sys.stdout.write(json_format.MessageToJson(message, indent=None) + "\n")
                    sys.stdout.flush()
                for result in message.results:
                    if result.is_final:
                        finals += 1
                        last_final_at = time.monotonic()
                    if not args.json:
                        printer.result(result)
            if reader is not None:
                reader.raise_error()
    finally:
        printer.close()
    elapsed = time.monotonic() - started
    line = f"{finals} utterances in {received:.2f} s of audio; {elapsed:.3f} s"
    if sent and last_final_at is not None:
        line += f", last final {max(0.0, last_final_at - sent[0]):.3f} s after the end of the audio"
    progress.done(line + (f" [request_id={request_id}]" if request_id else ""))
    return EXIT_OK


def cmd_recognition_models(args: argparse.Namespace) -> int:
    with RecognitionClient(args.target, **_client_kwargs(args, Progress(sys.stderr, True))) as client:
        models = client.list_models()
    if args.json:
        response = recognition_pb2.ListRecognitionModelsResponse(models=models)
        print(json_format.MessageToJson(response, always_print_fields_with_no_presence=True))
        return EXIT_OK
    rows = [["NAME", "LANGUAGES", "RATE", "WORD TIMES", "AVAILABLE", "DESCRIPTION"]]
    for model in models:
        rows.append(
            [
                model.name,
                ",".join(model.language_codes) or "-",
                str(model.sample_rate_hz or "-"),
                "yes" if model.word_time_offsets else "no",
                "yes" if model.available else "no",
                model.description,
            ]
        )
    _print_table(rows)
    return EXIT_OK


# --------------------------------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------------------------------


def _fail(message: str, code: int) -> int:
    # Start on a fresh line in case a progress line is still open on a terminal.
    prefix = "\r\033[K" if sys.stderr.isatty() else ""
    sys.stderr.write(f"{prefix}{PROG}: error: {' '.join(message.split())}\n")
    sys.stderr.flush()
    return code


def main(argv: Sequence[str] | None = None) -> int:
    try:
        parser = build_parser()
    except UsageError as error:  # a bad VOICE_* environment default
        return _fail(str(error), EXIT_USAGE)
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args))
    except grpc.RpcError as error:
        return _fail(describe_rpc_error(error), exit_code_for(error))
    except (UsageError, UnreadableAudioError) as error:
        return _fail(str(error), EXIT_USAGE)
    except KeyboardInterrupt:
        return _fail("interrupted", EXIT_INTERRUPTED)
    except BrokenPipeError:
        # The player reading stdout went away (the call was cancelled on the way out). Point stdout at /dev/null so
        # the interpreter's final flush does not raise a second time.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except WavStreamError as error:
        return _fail(f"the server sent bad audio: {error}", EXIT_LOCAL_ERROR)
    except OSError as error:
        where = f" ({error.filename})" if error.filename else ""
        return _fail(f"{error.strerror or type(error).__name__}{where}", EXIT_LOCAL_ERROR)
    except Exception as error:  # a bug, but the user still gets one line and a status, not a traceback
        return _fail(f"unexpected {type(error).__name__}: {error}", EXIT_LOCAL_ERROR)


if __name__ == "__main__":
    sys.exit(main())
