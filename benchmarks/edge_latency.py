#!/usr/bin/env python3
"""HTTP edge benchmark: what the edge adds on top of the gateway, measured in one run on one stack.

Starts Triton, the conversion service, the gateway and the HTTP edge on free loopback ports (or uses a running stack
given with --edge-url and --gateway), then, at concurrency 1 and 16, times

* edge: `POST /v1/audio/speech` (response_format pcm) read as a stream with httpx; time to first byte = request
  start to the first non-empty piece of the body;
* gRPC: `Synthesize` straight to the gateway the edge uses, same text, voice, encoding (PCM16) and sample rate (the
  rate the edge's pcm answer reports in X-Sample-Rate); time to first audio = request start to the first chunk with
  audio;

and prints p50/p99 of each with the ratio edge/gRPC, plus per-stream RTF (request start to the last audio byte,
divided by the audio's duration). Each round runs one wave of c edge requests, then one wave of c gRPC requests, so
both paths see the same machine. The gateway this script starts has real-time admission off, so all c streams run at
once on both paths; with it on (--gateway-flag=--admission-target-load=0.8, or a running stack), refusals (HTTP 429
/ RESOURCE_EXHAUSTED) are retried after their Retry-After / RetryInfo delay bounded to [0.05, 2] s and counted, and
the timed attempt is the admitted one.

Run: .venv/bin/python benchmarks/edge_latency.py            (about 3-4 minutes on 2 cores, stack start included)
     .venv/bin/python benchmarks/edge_latency.py --quick    (smoke run)
     .venv/bin/python benchmarks/edge_latency.py --edge-url http://127.0.0.1:8080 --gateway 127.0.0.1:50051
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx

from benchmarks.gateway_bench import SHORT, bounded_retry, retry_delay
from benchmarks.listener import percentile
from voice.v1 import audio_pb2, tts_gateway_pb2, tts_gateway_pb2_grpc

VOICE = "joe"
LEVELS = (1, 16)


@dataclass(frozen=True)
class Stream:
    """One admitted stream: time to first audio byte, time to its last byte, seconds of audio, refusals first."""

    first_s: float
    last_s: float
    audio_s: float
    refusals: int

    @property
    def rtf(self) -> float:
        return self.last_s / self.audio_s


def retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    try:
        return float(value) if value is not None else None
    except ValueError:  # an HTTP date: not sent by the edge; fall back to the default delay
        return None


async def edge_stream(client: httpx.AsyncClient, text: str, voice: str) -> tuple[Stream, int]:
    """One `POST /v1/audio/speech` (pcm), retried while refused; returns the stream and the rate it reported."""
    body = {"model": "tts-1", "input": text, "voice": voice, "response_format": "pcm"}
    refusals = 0
    while True:
        started = time.perf_counter()
        async with client.stream("POST", "/v1/audio/speech", json=body) as response:
            if response.status_code == 429:
                await response.aread()
                refusals += 1
                await asyncio.sleep(bounded_retry(retry_after(response)))
                continue
            if response.status_code != 200:
                detail = (await response.aread()).decode(errors="replace")
                raise RuntimeError(f"edge answered {response.status_code}: {detail}")
            rate = int(response.headers["X-Sample-Rate"])
            first = None
            size = 0
            async for piece in response.aiter_raw():
                if piece and first is None:
                    first = time.perf_counter() - started
                size += len(piece)
            last = time.perf_counter() - started
        if first is None or size == 0:
            raise RuntimeError("edge answered 200 with no audio")
        return Stream(first, last, size / 2 / rate, refusals), rate


async def grpc_stream(stub: tts_gateway_pb2_grpc.TtsGatewayServiceStub, text: str, voice: str, rate: int) -> Stream:
    """One Synthesize in PCM16 at `rate`, retried while refused (RESOURCE_EXHAUSTED before any audio)."""
    output = audio_pb2.AudioFormat(encoding=audio_pb2.AUDIO_ENCODING_PCM16, sample_rate_hz=rate)
    request = tts_gateway_pb2.SynthesizeRequest(text=text, voice=voice, output_format=output)
    refusals = 0
    while True:
        started = time.perf_counter()
        first = None
        size = 0
        try:
            async for chunk in stub.Synthesize(request):
                if chunk.audio and first is None:
                    first = time.perf_counter() - started
                size += len(chunk.audio)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and first is None:
                refusals += 1
                await asyncio.sleep(bounded_retry(retry_delay(exc)))
                continue
            raise
        last = time.perf_counter() - started
        if first is None:
            raise RuntimeError("gateway stream ended with no audio")
        return Stream(first, last, size / 2 / rate, refusals)


async def wave(make: Callable[[], Awaitable[Stream]], concurrency: int) -> list[Stream]:
    return list(await asyncio.gather(*(make() for _ in range(concurrency))))


def row(name: str, streams: list[Stream]) -> str:
    first = [s.first_s * 1000 for s in streams]
    rtf = [s.rtf for s in streams]
    refused = sum(s.refusals for s in streams)
    return (
        f"{name:<5} {len(streams):>3} {percentile(first, 50):9.1f} {percentile(first, 99):9.1f} "
        f"{percentile(rtf, 50):8.3f} {percentile(rtf, 99):8.3f} {refused:>8}"
    )


async def bench(edge_url: str, gateway_address: str, rounds: dict[int, int]) -> None:
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with (
        httpx.AsyncClient(base_url=edge_url, timeout=120, limits=limits) as client,
        grpc.aio.insecure_channel(gateway_address) as channel,
    ):
        stub = tts_gateway_pb2_grpc.TtsGatewayServiceStub(channel)
        # Warm-up (connections, model caches) and the rate the edge's pcm uses, so gRPC asks for the same.
        _, rate = await edge_stream(client, SHORT, VOICE)
        await grpc_stream(stub, SHORT, VOICE, rate)
        print(f'text: "{SHORT}" voice {VOICE}, PCM16 mono at {rate} Hz on both paths')
        header = f"{'path':<5} {'n':>3} {'p50 ms':>9} {'p99 ms':>9} {'RTF p50':>8} {'RTF p99':>8} {'refusals':>8}"
        ratios = []
        for concurrency in LEVELS:
            edge: list[Stream] = []
            direct: list[Stream] = []
            for _ in range(rounds[concurrency]):
                edge += await wave(lambda: first_of(edge_stream(client, SHORT, VOICE)), concurrency)
                direct += await wave(lambda: grpc_stream(stub, SHORT, VOICE, rate), concurrency)
            e50, e99 = percentile([s.first_s for s in edge], 50), percentile([s.first_s for s in edge], 99)
            d50, d99 = percentile([s.first_s for s in direct], 50), percentile([s.first_s for s in direct], 99)
            ratios.append((concurrency, e50 / d50, e99 / d99))
            print(f"\nconcurrency {concurrency}: time to first byte (edge) vs first audio (gRPC); per-stream RTF")
            print(header)
            print(row("edge", edge))
            print(row("gRPC", direct))
        print("\nratio edge/gRPC, time to first audio")
        print(f"{'conc':>4} {'p50':>6} {'p99':>6}")
        for concurrency, r50, r99 in ratios:
            print(f"{concurrency:>4} {r50:6.2f} {r99:6.2f}")
        print("per-stream RTF = (request start -> last audio byte) / audio duration; below 1 is faster than real time")


async def first_of(call: Awaitable[tuple[Stream, int]]) -> Stream:
    stream, _ = await call
    return stream


@contextmanager
def local_stack(log_dir: Path, gateway_flags: list[str]) -> Iterator[tuple[str, str]]:
    """Triton, conversion service, gateway and edge on free loopback ports; yields (edge URL, gateway address)."""
    # Imported here: a run against an existing stack needs none of the launch machinery.
    from tests.fixtures.gateway import start_gateway
    from tests.fixtures.http_edge import start_http_edge
    from tests.fixtures.rvc_service import start_rvc_service
    from tests.fixtures.triton_server import start_triton

    with start_triton(log_dir / "triton.log") as triton:
        rvc = start_rvc_service(log_dir=log_dir)
        # Every one of the 16 streams admitted on both paths: the comparison is of the same load, not of how often
        # real-time admission refused (gateway_bench measures that). --gateway-flag overrides.
        flags = ["--max-concurrent-streams=64", "--admission-target-load=0", *gateway_flags]
        gateway = start_gateway(triton.grpc_url, rvc.address, *flags, log_dir=log_dir)
        edge = start_http_edge(gateway.address, rvc.address, log_dir=log_dir)
        try:
            yield edge.url, gateway.address
        finally:
            edge.stop()
            gateway.stop()
            rvc.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run: fewer rounds")
    parser.add_argument("--edge-url", help="use a running edge (with --gateway: the gateway it calls)")
    parser.add_argument("--gateway", help="address of the gateway behind --edge-url")
    parser.add_argument(
        "--gateway-flag",
        action="append",
        default=[],
        help="extra flag for the gateway this script starts (repeatable), e.g. "
        "--gateway-flag=--admission-target-load=0.8",
    )
    args = parser.parse_args()
    if bool(args.edge_url) != bool(args.gateway):
        parser.error("--edge-url and --gateway go together")
    # c=1: 12 streams a path; c=16: 3 waves of 16 (48 streams) a path.
    rounds = {1: 3, 16: 1} if args.quick else {1: 12, 16: 3}
    # SIGTERM unwinds like Ctrl-C, so the stack this script started is stopped rather than orphaned.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    started = time.perf_counter()
    if args.edge_url:
        asyncio.run(bench(args.edge_url, args.gateway, rounds))
    else:
        log_dir = Path(tempfile.mkdtemp(prefix="edge-bench-"))
        with local_stack(log_dir, args.gateway_flag) as (edge_url, gateway_address):
            print(f"stack up in {time.perf_counter() - started:.1f} s (logs in {log_dir})")
            asyncio.run(bench(edge_url, gateway_address, rounds))
    print(f"\ntotal {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
