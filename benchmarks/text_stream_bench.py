#!/usr/bin/env python3
"""Text-in streaming vs sentence by sentence: one paragraph fed word by word at an LLM's pace through
StreamingSynthesize, on CPU with the tiny random CosyVoice2 checkpoint.

Starts Triton with cosyvoice2 (and its speech tokenizer, speaker embedding and token2wav models) on a freshly written
tiny checkpoint (voice_triton.tiny.cosyvoice2, with the registry's tiny parameters) plus Piper's streaming model, and
a gateway with the voices "cosyvoice2" and "joe" on loopback ports. Then, on that one stack, it sends the paragraph as
word-sized text deltas, one every 1 / --words-per-second seconds (default 4 words per second), in three cases:

1. cosyvoice2, TEXT_INPUT_MODE_INCREMENTAL: every delta goes to the model as it arrives (text-in streaming);
2. cosyvoice2, TEXT_INPUT_MODE_SENTENCES: the gateway waits for each complete sentence;
3. joe (Piper), the voice's default mode (sentences: Piper does not stream text input).

CosyVoice2 speaks as the preset speaker tiny_female (no prompt speech) with the same seed in every run. Per case,
over --repeats runs (the cases take turns, so background load hits them alike): time to first audio (TTFA, from
sending the first text delta to the first AudioChunk with audio) p50 and min, total stream time, seconds of audio,
the increments the model received (Triton's cosyvoice2_text_increments_total, before/after each run) and the
requests the gateway sent in incremental mode (tts_gateway_text_increments_total), and what a real-time listener with
100 ms pre-roll hears (benchmarks/listener.py: underruns, worst gap) from the chunks' arrival times. Then the goal:
TTFA p50 (text-in) / TTFA p50 (sentence by sentence) for cosyvoice2 at most 0.5.

The checkpoint has random weights and runs on CPU: absolute times say nothing about the real model. The ratio
measures what text-in streaming buys: audio starts before the first sentence's text is complete. The last line
printed is one JSON object with every figure.

Run: .venv/bin/python benchmarks/text_stream_bench.py [--repeats 3] [--words-per-second 4]
     .venv/bin/python benchmarks/text_stream_bench.py --quick     (1 repeat, a shorter paragraph; a few minutes)
"""

from __future__ import annotations

import argparse
import json
import math
import re
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from benchmarks.gateway_bench import chunk_seconds
from benchmarks.listener import DEFAULT_PREROLL_S, Arrival, describe, percentile, play
from tests.fixtures.gateway import GatewayProcess, start_gateway
from tests.fixtures.triton_server import TritonServer, free_ports, start_triton, tiny_params, write_tiny_checkpoint
from tests.prometheus import metric, scrape
from voice.v1 import audio_pb2, tts_gateway_pb2, tts_gateway_pb2_grpc
from voice_triton import registry

# About sixty words in five sentences; the first sentence is a typical one (about a dozen words), so sentence by
# sentence has to wait for all of it before any audio, while text-in streaming can start after the first few words.
PARAGRAPH = (
    "The morning train to the coast leaves the central station at nine every weekday. "
    "Please be on the platform ten minutes early with your ticket ready. "
    "The first two carriages are quiet zones, so keep phone calls short. "
    "Coffee and small snacks are sold in the middle of the train. "
    "We hope you enjoy the ride and the view of the sea."
)
# --quick: the same first sentence and one more (about twenty-five words).
QUICK_PARAGRAPH = (
    "The morning train to the coast leaves the central station at nine every weekday. "
    "Please be on the platform ten minutes early with your ticket ready."
)
COSY_VOICE = "cosyvoice2"
PIPER_VOICE = "joe"
SPEAKER = "tiny_female"
DEFAULT_SEED = 7
DEFAULT_WPS = 4.0
DEFAULT_REPEATS = 3
GOAL_RATIO = 0.5
STREAM_TIMEOUT_S = 600.0
COSY = registry.get("cosyvoice2")
MODELS = [*COSY.models, "piper_tts"]
TRITON_INCREMENTS = "cosyvoice2_text_increments_total"
GATEWAY_INCREMENTS = "tts_gateway_text_increments_total"
PIPER_VOICE_TOML = f"""
[[voice]]
name = "{PIPER_VOICE}"
description = "Piper en_US joe (cannot stream text input)"
tts_model = "piper_tts"
speaker = "joe"
"""
NOTE = (
    "tiny random-weight CosyVoice2 checkpoint on CPU: absolute times say nothing about the real model; the TTFA "
    "ratio measures what text-in streaming buys (audio starts before the first sentence's text is complete)"
)
PCM16 = audio_pb2.AudioFormat(encoding=audio_pb2.AUDIO_ENCODING_PCM16)


@dataclass(frozen=True)
class Case:
    """One way of speaking the paragraph."""

    key: str
    label: str
    voice: str
    mode: tts_gateway_pb2.TextInputMode

    @property
    def cosyvoice(self) -> bool:
        return self.voice == COSY_VOICE


CASES = (
    Case("text_in", "cosyvoice2 text-in (INCREMENTAL)", COSY_VOICE, tts_gateway_pb2.TEXT_INPUT_MODE_INCREMENTAL),
    Case("sentences", "cosyvoice2 sentences (SENTENCES)", COSY_VOICE, tts_gateway_pb2.TEXT_INPUT_MODE_SENTENCES),
    Case("piper", "joe (Piper, default = sentences)", PIPER_VOICE, tts_gateway_pb2.TEXT_INPUT_MODE_UNSPECIFIED),
)


# ---- pure parts: the deltas, their pace, the figures -------------------------------------------------------------


def word_deltas(text: str) -> list[str]:
    """Word-sized deltas that keep their trailing whitespace, so joined they are the text again (as voice-cli's
    --words-per-second sends them)."""
    return re.findall(r"\S+\s*", text.strip())


def send_offsets(count: int, words_per_second: float) -> list[float]:
    """Delta i is sent i / words_per_second after the first; 0 (or less) sends them all at once."""
    if words_per_second <= 0:
        return [0.0] * count
    return [index / words_per_second for index in range(count)]


def first_sentence_offset(deltas: Sequence[str], offsets: Sequence[float]) -> float | None:
    """When the first sentence's text is complete: the send offset of the first delta ending in . ! or ?."""
    for delta, offset in zip(deltas, offsets, strict=True):
        if delta.rstrip().endswith((".", "!", "?")):
            return offset
    return None


def counter_delta(before: str, after: str, name: str, **labels: str) -> int:
    """How much a counter grew between two scrapes of a Prometheus text exposition."""
    return round(metric(after, name, **labels) - metric(before, name, **labels))


def finite(value: float | None) -> float | None:
    """JSON has no NaN: an undefined figure is null."""
    return None if value is None or not math.isfinite(value) else round(value, 6)


def ttfa_ratio(text_in_s: float | None, sentences_s: float | None) -> float | None:
    if text_in_s is None or not sentences_s or not math.isfinite(text_in_s) or not math.isfinite(sentences_s):
        return None
    return text_in_s / sentences_s


def verdict(ratio: float | None, goal: float = GOAL_RATIO) -> str:
    if ratio is None:
        return f"goal at most {goal:g}: not measured"
    return f"goal at most {goal:g}: {'MET' if ratio <= goal else 'MISSED'}"


@dataclass
class Run:
    """One stream: times in seconds from sending the first text delta."""

    ttfa_s: float
    total_s: float
    audio_s: float
    underruns: int
    worst_gap_s: float
    model_increments: int | None  # Triton's counter (cosyvoice2 only)
    gateway_increments: int
    summary_ttfa_s: float | None = None


@dataclass
class CaseFigures:
    case: Case
    runs: list[Run] = field(default_factory=list)

    def p50(self, attribute: str) -> float | None:
        values = [float(getattr(run, attribute)) for run in self.runs if getattr(run, attribute) is not None]
        return finite(percentile(values, 50))

    def as_dict(self) -> dict[str, Any]:
        return {
            "voice": self.case.voice,
            "mode": tts_gateway_pb2.TextInputMode.Name(self.case.mode),
            "runs": len(self.runs),
            "ttfa_s": {"p50": self.p50("ttfa_s"), "min": finite(min((r.ttfa_s for r in self.runs), default=math.nan))},
            "total_s_p50": self.p50("total_s"),
            "audio_s_p50": self.p50("audio_s"),
            "underruns": [r.underruns for r in self.runs],
            "worst_gap_s": finite(max((r.worst_gap_s for r in self.runs), default=math.nan)),
            "model_increments": [r.model_increments for r in self.runs],
            "gateway_increments": [r.gateway_increments for r in self.runs],
            "summary_ttfa_s_p50": self.p50("summary_ttfa_s"),
        }


def fmt_s(value: float | None, width: int = 7) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:{width}.2f}"


def fmt_counts(values: Sequence[int | None]) -> str:
    shown = [str(v) for v in values if v is not None]
    return "/".join(shown) if shown else "-"


# ---- one stream --------------------------------------------------------------------------------------------------


def config(case: Case, seed: int) -> tts_gateway_pb2.StreamingSynthesizeConfig:
    settings = tts_gateway_pb2.StreamingSynthesizeConfig(
        voice=case.voice, output_format=PCM16, text_input_mode=case.mode
    )
    if case.cosyvoice:
        settings.preset_speaker.CopyFrom(tts_gateway_pb2.PresetSpeaker(speaker=SPEAKER))
        settings.seed = seed
    return settings


class PacedRequests:
    """The request stream: the config, then each delta at its offset from the first. `started` is when the first
    delta was handed to gRPC (perf_counter)."""

    def __init__(self, settings: tts_gateway_pb2.StreamingSynthesizeConfig, deltas: Sequence[str], wps: float) -> None:
        self.settings = settings
        self.deltas = list(deltas)
        self.offsets = send_offsets(len(self.deltas), wps)
        self.started: float | None = None
        self.first_sent = threading.Event()

    def __iter__(self) -> Iterator[tts_gateway_pb2.StreamingSynthesizeRequest]:
        yield tts_gateway_pb2.StreamingSynthesizeRequest(config=self.settings)
        for delta, offset in zip(self.deltas, self.offsets, strict=True):
            if self.started is None:
                self.started = time.perf_counter()
                self.first_sent.set()
            else:
                wait = self.started + offset - time.perf_counter()
                if wait > 0:
                    time.sleep(wait)
            yield tts_gateway_pb2.StreamingSynthesizeRequest(text=delta)


def stream_once(
    stub: tts_gateway_pb2_grpc.TtsGatewayServiceStub,
    triton: TritonServer,
    gateway: GatewayProcess,
    case: Case,
    deltas: Sequence[str],
    wps: float,
    seed: int,
) -> Run:
    triton_before, gateway_before = scrape(triton.metrics_url), scrape(gateway.metrics_url)
    requests = PacedRequests(config(case, seed), deltas, wps)
    arrivals: list[Arrival] = []
    summary_ttfa = None
    for chunk in stub.StreamingSynthesize(iter(requests), timeout=STREAM_TIMEOUT_S):
        now = time.perf_counter()
        if chunk.audio:
            arrivals.append(Arrival(now, chunk_seconds(chunk)))
        if chunk.is_final and chunk.HasField("summary"):
            summary_ttfa = chunk.summary.time_to_first_audio.ToNanoseconds() / 1e9
    ended = time.perf_counter()
    if requests.started is None or not arrivals:
        raise RuntimeError(f"{case.label}: the stream ended without audio")
    heard = play(requests.started, arrivals, preroll_s=DEFAULT_PREROLL_S)
    triton_after, gateway_after = scrape(triton.metrics_url), scrape(gateway.metrics_url)
    return Run(
        ttfa_s=heard.ttfa_s,
        total_s=ended - requests.started,
        audio_s=heard.audio_s,
        underruns=heard.underruns,
        worst_gap_s=heard.worst_stall_s,
        model_increments=counter_delta(triton_before, triton_after, TRITON_INCREMENTS) if case.cosyvoice else None,
        gateway_increments=counter_delta(gateway_before, gateway_after, GATEWAY_INCREMENTS, voice=case.voice),
        summary_ttfa_s=summary_ttfa,
    )


def wait_for_voice(stub: tts_gateway_pb2_grpc.TtsGatewayServiceStub, name: str, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        voice = stub.GetVoice(tts_gateway_pb2.GetVoiceRequest(name=name), timeout=10).voice
        if voice.available:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"voice {name!r} still unavailable after {timeout_s:.0f} s: {voice.unavailable_reason}")
        time.sleep(0.25)


# ---- printing ----------------------------------------------------------------------------------------------------


def print_table(figures: Sequence[CaseFigures], first_sentence_s: float | None) -> None:
    header = ("TTFA p50", "TTFA min", "total", "audio", "underrun", "worst gap", "model inc", "gw inc")
    print(f"\n{'s (per run: a/b/c)':<34}" + "".join(f"{h:>10}" for h in header))
    for fig in figures:
        runs = fig.runs
        worst = max((r.worst_gap_s for r in runs), default=None)
        cells = [
            fmt_s(fig.p50("ttfa_s"), 10),
            fmt_s(min((r.ttfa_s for r in runs), default=None), 10),
            fmt_s(fig.p50("total_s"), 10),
            fmt_s(fig.p50("audio_s"), 10),
            f"{fmt_counts([r.underruns for r in runs]):>10}",
            fmt_s(worst, 10),
            f"{fmt_counts([r.model_increments for r in runs]):>10}",
            f"{fmt_counts([r.gateway_increments for r in runs]):>10}",
        ]
        print(f"{fig.case.label:<34}" + "".join(cells))
    if first_sentence_s is not None:
        print(f"(the first sentence's last word is sent {first_sentence_s:.2f} s after the first word)")


# ---- driver ------------------------------------------------------------------------------------------------------


def bench(triton: TritonServer, gateway: GatewayProcess, args: argparse.Namespace) -> dict[str, Any]:
    text = QUICK_PARAGRAPH if args.quick else PARAGRAPH
    deltas = word_deltas(text)
    first_sentence = first_sentence_offset(deltas, send_offsets(len(deltas), args.words_per_second))
    channel = grpc.insecure_channel(gateway.address)
    try:
        stub = tts_gateway_pb2_grpc.TtsGatewayServiceStub(channel)
        for voice in (COSY_VOICE, PIPER_VOICE):
            wait_for_voice(stub, voice)
        warm = time.perf_counter()
        warm_deltas = word_deltas("A short warm-up sentence.")
        for case in CASES:  # first-inference costs out of the figures
            stream_once(stub, triton, gateway, case, warm_deltas, 0.0, args.seed)
        print(f"warm-up: one short unpaced stream per case in {time.perf_counter() - warm:.1f} s", flush=True)
        print(
            f"paragraph: {len(deltas)} words at {args.words_per_second:g} words/s "
            f"({(len(deltas) - 1) / args.words_per_second if args.words_per_second > 0 else 0:.1f} s of text); "
            f"{args.repeats} run(s) per case, cases in turn; cosyvoice2 speaker {SPEAKER}, seed {args.seed}",
            flush=True,
        )
        figures = [CaseFigures(case) for case in CASES]
        for repeat in range(args.repeats):
            for fig in figures:
                run = stream_once(stub, triton, gateway, fig.case, deltas, args.words_per_second, args.seed)
                fig.runs.append(run)
                print(
                    f"  run {repeat + 1} {fig.case.label}: TTFA {run.ttfa_s:.2f} s, total {run.total_s:.2f} s, "
                    f"audio {run.audio_s:.2f} s, underruns {run.underruns}",
                    flush=True,
                )
    finally:
        channel.close()
    print_table(figures, first_sentence)
    by_key = {fig.case.key: fig for fig in figures}
    ratio = ttfa_ratio(by_key["text_in"].p50("ttfa_s"), by_key["sentences"].p50("ttfa_s"))
    print(
        f"\ncosyvoice2 TTFA p50 text-in / sentence-by-sentence = {'-' if ratio is None else f'{ratio:.3f}'} "
        f"({verdict(ratio)})"
    )
    print(
        "TTFA = first text delta sent -> first audio chunk received; model inc = increments cosyvoice2 received "
        f"({TRITON_INCREMENTS}); gw inc = {GATEWAY_INCREMENTS}; underrun / worst gap: " + describe(DEFAULT_PREROLL_S)
    )
    return {
        "benchmark": "text_stream_bench",
        "note": NOTE,
        "text": text,
        "words": len(deltas),
        "words_per_second": args.words_per_second,
        "first_sentence_complete_s": finite(first_sentence),
        "seed": args.seed,
        "speaker": SPEAKER,
        "repeats": args.repeats,
        "cases": {fig.case.key: fig.as_dict() for fig in figures},
        "ttfa_ratio": finite(ratio),
        "goal": GOAL_RATIO,
        "goal_met": ratio is not None and ratio <= GOAL_RATIO,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--words-per-second", type=float, default=DEFAULT_WPS, help=f"pace of the text deltas ({DEFAULT_WPS:g})"
    )
    parser.add_argument("--repeats", type=int, default=DEFAULT_REPEATS, help=f"runs per case ({DEFAULT_REPEATS})")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"cosyvoice2 sampling seed ({DEFAULT_SEED})")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 repeat, a shorter paragraph")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats = 1
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if args.words_per_second <= 0:
        parser.error("--words-per-second must be positive")
    if args.seed < 1:
        parser.error("--seed must be positive (0 asks the gateway for a fresh random seed per request)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so the stack this script started is stopped rather than orphaned.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    work = Path(tempfile.mkdtemp(prefix="text-stream-bench-"))
    started = time.perf_counter()
    checkpoint = write_tiny_checkpoint(COSY.name, work / COSY.models_dir_name)
    print(f"tiny checkpoint written in {time.perf_counter() - started:.1f} s ({work})", flush=True)
    voices = work / "voices.toml"
    voices.write_text(registry.voices_toml([COSY]) + PIPER_VOICE_TOML, encoding="utf-8")
    with start_triton(
        work / "triton.log", models=MODELS, checkpoints={COSY.name: checkpoint}, params=tiny_params([COSY.name])
    ) as triton:
        # Nothing listens here: neither voice has a conversion, so no conversion service is started.
        unused_rvc = f"127.0.0.1:{free_ports(1)[0]}"
        flags = [
            f"--voices={voices}",
            "--max-concurrent-streams=64",
            "--admission-target-load=0",
            "--saved-voices-dir=",
        ]
        gateway = start_gateway(triton.grpc_url, unused_rvc, *flags, log_dir=work)
        try:
            print(f"stack up in {time.perf_counter() - started:.1f} s; {NOTE}", flush=True)
            figures = bench(triton, gateway, args)
        finally:
            gateway.stop()
    figures["total_s"] = round(time.perf_counter() - started, 1)
    print(f"\ntotal {figures['total_s']:.1f} s; {NOTE}")
    print(json.dumps(figures, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
