"""What tracing costs a request: time to first audio and total time of Synthesize, tracing off versus on.

    .venv/bin/python -P -m tests.tracing.measure_overhead [--runs 10] [--voice joe-world-high]

Starts two stacks (Triton, conversion service, gateway on free loopback ports): one with no OTEL_* variables, one
with every part exporting to an OTLP/HTTP collector in this process (the SDK's default batch delay, every request
sampled). After warm-up calls, calls alternate between the two (one at a time); the medians and on/off ratios are
printed, and the in-process cost of one span with tracing off and on.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import grpc

from services.common import tracing
from tests.fixtures.gateway import start_gateway
from tests.fixtures.rvc_service import start_rvc_service
from tests.fixtures.triton_server import start_triton
from tests.tracing.collector import OtlpCollector
from voice.v1 import audio_pb2, tts_gateway_pb2, tts_gateway_pb2_grpc

TEXT = (
    "The weather was calm when we left the harbour. By noon the wind had picked up considerably. "
    "We reached the island just before the storm."
)


def one_call(address: str, voice: str) -> tuple[float, float]:
    """(time to first audio, total) of one Synthesize, in seconds, as the client sees them."""
    with grpc.insecure_channel(address) as channel:
        stub = tts_gateway_pb2_grpc.TtsGatewayServiceStub(channel)
        request = tts_gateway_pb2.SynthesizeRequest(
            text=TEXT, voice=voice, output_format=audio_pb2.AudioFormat(encoding=audio_pb2.AUDIO_ENCODING_PCM16)
        )
        started = time.perf_counter()
        first: float | None = None
        for chunk in stub.Synthesize(request, timeout=120):
            if first is None and chunk.audio:
                first = time.perf_counter() - started
        total = time.perf_counter() - started
    return first if first is not None else total, total


@contextlib.contextmanager
def stack(env: dict[str, str], logs: Path) -> Iterator[str]:
    """A whole stack started with exactly `env`; yields the gateway's address."""
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        with start_triton(
            logs / f"triton-{time.monotonic_ns()}.log", models=["piper_tts", "piper_tts_whole"]
        ) as triton:
            rvc = start_rvc_service(log_dir=logs)
            gateway = start_gateway(triton.grpc_url, rvc.address, log_dir=logs)
            os.environ.clear()
            os.environ.update(saved)
            try:
                yield gateway.address
            finally:
                gateway.stop()
                rvc.stop()
    finally:
        os.environ.clear()
        os.environ.update(saved)


def span_cost_us(count: int = 1000) -> tuple[float, float]:
    """Microseconds one `tracing.span()` with four attributes costs in this process: off, then on (OTLP/HTTP). The
    count stays below the batch processor's queue (2048), as a request's twenty-odd spans do."""

    def run() -> float:
        started = time.perf_counter()
        for index in range(count):
            with tracing.span("sentence", {"tts.sentence.index": index, "tts.sentence.chars": 40, "a": "b", "c": 1}):
                pass
        return (time.perf_counter() - started) / count * 1e6

    off = run()
    tracing.configure_tracing("overhead-probe")
    try:
        on = run()
    finally:
        asyncio.run(tracing.shutdown_tracing())
    return off, on


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--voice", default="joe-world-high")
    args = parser.parse_args()
    logs = Path(tempfile.mkdtemp(prefix="trace-overhead-"))
    base = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    collector = OtlpCollector()
    collector.start()
    on_env = base | {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": collector.http_traces_url,
    }
    results: dict[str, list[tuple[float, float]]] = {"off": [], "on": []}
    try:
        with stack(base, logs) as off_address, stack(on_env, logs) as on_address:
            addresses = {"off": off_address, "on": on_address}
            for _ in range(3):
                for mode in ("off", "on"):
                    one_call(addresses[mode], args.voice)
            # Alternate, so load from anything else on the machine falls on both modes alike.
            for run in range(args.runs):
                for mode in ("off", "on") if run % 2 == 0 else ("on", "off"):
                    results[mode].append(one_call(addresses[mode], args.voice))
        request_spans = len(collector.spans())
        with _environment(on_env):
            off_us, on_us = span_cost_us()
    finally:
        collector.stop()
    calls = args.runs + 3
    print(
        f"voice {args.voice}, {args.runs} calls per mode (alternating) after 3 warm-up calls each; "
        f"{request_spans / calls:.1f} spans per traced call"
    )
    for label, index in (("time to first audio", 0), ("total", 1)):
        off = [r[index] for r in results["off"]]
        on = [r[index] for r in results["on"]]
        print(
            f"{label:20s} off median {statistics.median(off) * 1000:7.1f} ms  on median "
            f"{statistics.median(on) * 1000:7.1f} ms  ratio {statistics.median(on) / statistics.median(off):.3f}  "
            f"(min off {min(off) * 1000:.1f}, on {min(on) * 1000:.1f})"
        )
    print(f"one span in-process: off {off_us:.2f} us, on {on_us:.2f} us")


@contextlib.contextmanager
def _environment(env: dict[str, str]) -> Iterator[None]:
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


if __name__ == "__main__":
    main()
