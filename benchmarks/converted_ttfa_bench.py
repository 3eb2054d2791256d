#!/usr/bin/env python3
"""Time to first audio of a converted voice next to the same voice unconverted, measured as an outside client does.

Issue 27: at concurrency 1, with a 100-character two-sentence English text, the first audio of `joe-world-high`
(Piper joe through the WORLD engine, +4 semitones) must stay within 1.2x of `joe` (the same Piper voice, not
converted), at the median and at p99, by both measurements this script prints:

* client: a fresh Synthesize call per request, timed on the client's clock from the call's start to the first
  AudioChunk that carries audio bytes (not the chunk's `duration` field, not a summary);
* server: the `time_to_first_audio` of the stream's summary (the gateway's clock, from receiving the request until
  its first audio chunk was handed to gRPC).

Requests alternate between the voices (the voice that goes first alternates too), so machine drift and a neighbour's
load hit both alike. Warm-up requests (not counted) load both paths first.

Run: .venv/bin/python -P benchmarks/converted_ttfa_bench.py                  (starts Triton, conversion, gateway)
     .venv/bin/python -P benchmarks/converted_ttfa_bench.py --rounds 150
     .venv/bin/python -P benchmarks/converted_ttfa_bench.py --gateway 127.0.0.1:50051   (a running stack)
     .venv/bin/python -P benchmarks/converted_ttfa_bench.py --fresh-channel   (a new connection per request too)
"""

from __future__ import annotations

import argparse
import os
import signal
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from benchmarks.listener import percentile
from services.common.durations import seconds_from_duration
from voice.v1 import audio_pb2, tts_gateway_pb2, tts_gateway_pb2_grpc

# 100 characters, two sentences; the first (57) is under the gateway's first-piece cut (60), so it is one piece.
TEXT = "The quick brown fox jumps over the lazy dog by the river. A second sentence ends the short test now."
PLAIN, CONVERTED = "joe", "joe-world-high"
GOAL = 1.2
PCM16 = audio_pb2.AudioFormat(encoding=audio_pb2.AUDIO_ENCODING_PCM16)


@dataclass
class Samples:
    client: list[float] = field(default_factory=list)
    server: list[float] = field(default_factory=list)


class FirstAudioClock:
    """The two first-audio times of one Synthesize call, fed its chunks as they arrive (sync or async clients):
    client clock from the clock's creation (just before the call) to the first chunk carrying audio bytes, and the
    server's summary time_to_first_audio."""

    def __init__(self, voice: str) -> None:
        self.voice = voice
        self.started = time.perf_counter()
        self.client: float | None = None
        self.server: float | None = None

    def observe(self, chunk: audio_pb2.AudioChunk) -> None:
        if self.client is None and chunk.audio:
            self.client = time.perf_counter() - self.started
        if chunk.is_final:
            self.server = seconds_from_duration(chunk.summary.time_to_first_audio)

    def result(self) -> tuple[float, float]:
        """(client seconds, server seconds); RuntimeError when the stream had no audio or no summary."""
        if self.client is None or self.server is None:
            raise RuntimeError(f"{self.voice}: the stream ended without audio or without a summary")
        return self.client, self.server


def one_request(stub: tts_gateway_pb2_grpc.TtsGatewayServiceStub, voice: str, text: str) -> tuple[float, float]:
    """(client-clock seconds to the first chunk with audio, server-reported time_to_first_audio)."""
    request = tts_gateway_pb2.SynthesizeRequest(text=text, voice=voice, output_format=PCM16)
    clock = FirstAudioClock(voice)
    for chunk in stub.Synthesize(request, timeout=60):
        clock.observe(chunk)
    return clock.result()


def run(address: str, text: str, rounds: int, warmup: int, fresh_channel: bool) -> dict[str, Samples]:
    samples = {PLAIN: Samples(), CONVERTED: Samples()}
    shared = grpc.insecure_channel(address)
    grpc.channel_ready_future(shared).result(timeout=30)

    def request(voice: str) -> tuple[float, float]:
        if not fresh_channel:
            return one_request(tts_gateway_pb2_grpc.TtsGatewayServiceStub(shared), voice, text)
        with grpc.insecure_channel(address) as channel:  # connection set-up counts: an outside client pays it
            return one_request(tts_gateway_pb2_grpc.TtsGatewayServiceStub(channel), voice, text)

    for _ in range(warmup):
        request(PLAIN)
        request(CONVERTED)
    for r in range(rounds):
        for voice in (PLAIN, CONVERTED) if r % 2 == 0 else (CONVERTED, PLAIN):
            client, server = request(voice)
            samples[voice].client.append(client)
            samples[voice].server.append(server)
    shared.close()
    return samples


def report(samples: dict[str, Samples], text: str, fresh_channel: bool) -> None:
    load = os.getloadavg()
    print(f"text ({len(text)} chars): {text!r}")
    print(
        f"c=1, {len(samples[PLAIN].client)} requests per voice, interleaved; "
        f"{'a new channel' if fresh_channel else 'one connected channel, a new call'} per request; "
        f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} cores"
    )
    print(f"{'voice':<15} {'clock':<7} {'p50':>7} {'p90':>7} {'p99':>7} {'max':>7}")
    for voice in (PLAIN, CONVERTED):
        for clock in ("client", "server"):
            values = getattr(samples[voice], clock)
            print(
                f"{voice:<15} {clock:<7} {percentile(values, 50):7.3f} {percentile(values, 90):7.3f} "
                f"{percentile(values, 99):7.3f} {max(values):7.3f}"
            )
    for clock in ("client", "server"):
        plain, conv = getattr(samples[PLAIN], clock), getattr(samples[CONVERTED], clock)
        p50 = percentile(conv, 50) / percentile(plain, 50)
        p99 = percentile(conv, 99) / percentile(plain, 99)
        verdict = "ok" if max(p50, p99) < GOAL else f"over {GOAL}"
        print(f"{CONVERTED} / {PLAIN} ({clock} clock): p50 {p50:.3f}  p99 {p99:.3f}  (goal < {GOAL}: {verdict})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gateway", help="address of a running gateway (default: start Triton, conversion, gateway)")
    parser.add_argument("--rounds", type=int, default=120, help="requests per voice (default 120)")
    parser.add_argument("--warmup", type=int, default=3, help="uncounted requests per voice first (default 3)")
    parser.add_argument("--text", default=TEXT, help="text to speak (default: 100 characters, two sentences)")
    parser.add_argument("--fresh-channel", action="store_true", help="open a new channel (connection) per request")
    parser.add_argument("--rvc-flag", action="append", default=[], help="extra conversion-service flag (repeatable)")
    parser.add_argument("--gateway-flag", action="append", default=[], help="extra gateway flag (repeatable)")
    args = parser.parse_args()
    if args.gateway:
        samples = run(args.gateway, args.text, args.rounds, args.warmup, args.fresh_channel)
        report(samples, args.text, args.fresh_channel)
        return

    from tests.fixtures.gateway import start_gateway
    from tests.fixtures.rvc_service import start_rvc_service
    from tests.fixtures.triton_server import start_triton

    signal.signal(signal.SIGTERM, signal.default_int_handler)  # unwind, so the stack started here stops
    log_dir = Path(tempfile.mkdtemp(prefix="converted-ttfa-"))
    with start_triton(log_dir / "triton.log") as triton:
        rvc = start_rvc_service(*args.rvc_flag, log_dir=log_dir)
        gateway = start_gateway(triton.grpc_url, rvc.address, *args.gateway_flag, log_dir=log_dir)
        try:
            print(f"stack up (logs in {log_dir})")
            samples = run(gateway.address, args.text, args.rounds, args.warmup, args.fresh_channel)
        finally:
            gateway.stop()
            rvc.stop()
    report(samples, args.text, args.fresh_channel)


if __name__ == "__main__":
    main()
