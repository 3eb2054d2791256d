"""What tracing costs a request: time to first audio and total time of Synthesize, tracing off versus on.

    .venv/bin/python -P -m tests.tracing.measure_overhead [--runs 10] [--voice joe-world-high]

Starts the stack twice (Triton, conversion service, gateway on free loopback ports): once with no OTEL_* variables,
once with every part exporting to an OTLP/HTTP collector in this process (the SDK's default batch delay, every
request sampled). Each stack gets warm-up calls, then `--runs` sequential calls; the
medians and the on/off ratios are printed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import grpc

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


def measure(env: dict[str, str], runs: int, voice: str, logs: Path) -> tuple[list[float], list[float]]:
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        with start_triton(logs / f"triton-{time.monotonic_ns()}.log", models=["piper_tts"]) as triton:
            rvc = start_rvc_service(log_dir=logs)
            gateway = start_gateway(triton.grpc_url, rvc.address, log_dir=logs)
            try:
                for _ in range(3):
                    one_call(gateway.address, voice)
                results = [one_call(gateway.address, voice) for _ in range(runs)]
            finally:
                gateway.stop()
                rvc.stop()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return [r[0] for r in results], [r[1] for r in results]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--voice", default="joe-world-high")
    args = parser.parse_args()
    logs = Path(tempfile.mkdtemp(prefix="trace-overhead-"))
    base = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    collector = OtlpCollector()
    collector.start()
    try:
        off = measure(base, args.runs, args.voice, logs)
        on_env = base | {
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": collector.http_traces_url,
        }
        on = measure(on_env, args.runs, args.voice, logs)
    finally:
        collector.stop()
    spans = len(collector.spans())
    print(f"voice {args.voice}, {args.runs} calls per mode after 3 warm-up calls; {spans} spans received while on")
    for label, index in (("time to first audio", 0), ("total", 1)):
        off_median, on_median = statistics.median(off[index]), statistics.median(on[index])
        print(
            f"{label:20s} off median {off_median * 1000:7.1f} ms  on median {on_median * 1000:7.1f} ms  "
            f"ratio {on_median / off_median:.3f}  (off min {min(off[index]) * 1000:.1f}, on min "
            f"{min(on[index]) * 1000:.1f})"
        )


if __name__ == "__main__":
    main()
