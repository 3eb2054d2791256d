#!/usr/bin/env python3
"""Baseline for the gateway: direct tritonclient gRPC streams against the decoupled TTS model.

For each concurrency level N, N workers each run their share of --requests decoupled requests back to back (closed
loop, one gRPC stream per worker). Reported per level: time to first response (p50/p99), per-stream real-time factor
(wall time of the stream / seconds of audio it produced, p50/p99), and the aggregate RTF (level wall time / all audio).

    .venv/bin/python benchmarks/triton_stream_bench.py                 # starts its own server on free ports
    .venv/bin/python benchmarks/triton_stream_bench.py --url 127.0.0.1:8001
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient

from services.common.ready import free_loopback_ports

REPO_ROOT = Path(__file__).resolve().parents[1]
TEXT = (
    "Thanks for calling, this is the automated assistant. "
    "Your order shipped this morning and should arrive on Thursday before noon. "
    "Is there anything else I can help you with today?"
)


@dataclass
class Sample:
    ttfr_s: float
    total_s: float
    audio_s: float
    pieces: int


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def one_stream(client: grpcclient.InferenceServerClient, events: queue.Queue, model: str, rate: int) -> Sample:
    text = grpcclient.InferInput("target_text", [1, 1], "BYTES")
    text.set_data_from_numpy(np.array([[TEXT]], dtype=object))
    start = time.monotonic()
    client.async_stream_infer(model, [text], enable_empty_final_response=True)
    first = None
    samples = 0
    pieces = 0
    while True:
        at, result, error = events.get(timeout=120)
        if error is not None:
            raise RuntimeError(f"stream failed: {error}")
        waveform = result.as_numpy("waveform")
        if waveform is not None:
            first = first if first is not None else at - start
            samples += waveform.size
            pieces += 1
        if result.get_response().parameters["triton_final_response"].bool_param:
            break
    if first is None:
        raise RuntimeError("stream ended without audio")
    return Sample(ttfr_s=first, total_s=time.monotonic() - start, audio_s=samples / rate, pieces=pieces)


def run_level(url: str, model: str, rate: int, concurrency: int, requests: int) -> tuple[list[Sample], float]:
    per_worker = [requests // concurrency + (1 if i < requests % concurrency else 0) for i in range(concurrency)]
    samples: list[Sample] = []
    failures: list[BaseException] = []
    lock = threading.Lock()
    barrier = threading.Barrier(concurrency)

    def worker(count: int) -> None:
        events: queue.Queue = queue.Queue()
        client = grpcclient.InferenceServerClient(url)
        try:
            client.start_stream(callback=lambda result, error: events.put((time.monotonic(), result, error)))
            barrier.wait()  # all streams open before the clock matters
            for _ in range(count):
                sample = one_stream(client, events, model, rate)
                with lock:
                    samples.append(sample)
        except BaseException as exc:  # reported after the level; one failure must not hang the barrier
            barrier.abort()
            failures.append(exc)
        finally:
            client.stop_stream()
            client.close()

    threads = [threading.Thread(target=worker, args=(n,)) for n in per_worker if n > 0]
    start = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.monotonic() - start
    if failures:
        raise RuntimeError(f"{len(failures)} worker(s) failed: {failures[0]!r}")
    return samples, wall


@contextmanager
def own_server(instance_count: int | None) -> Iterator[str]:
    http, grpc, metrics = free_loopback_ports(3)
    command = [
        str(REPO_ROOT / ".venv-triton" / "bin" / "python"),
        str(REPO_ROOT / "triton" / "launch.py"),
        "--address=127.0.0.1",
        f"--http-port={http}",
        f"--grpc-port={grpc}",
        f"--metrics-port={metrics}",
        "--models=piper_tts",
    ]
    if instance_count:
        command.append(f"--instance-count={instance_count}")
    log = open(os.environ.get("BENCH_TRITON_LOG", "/tmp/triton_stream_bench.log"), "w")  # noqa: SIM115
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, text=True, start_new_session=True)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("triton ready"):
                break
        else:
            raise RuntimeError(f"server exited with {proc.wait()} before ready; see {log.name}")
        yield f"127.0.0.1:{grpc}"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="gRPC address of a running server; default: start one on free ports")
    parser.add_argument("--model", default="piper_tts")
    parser.add_argument("--concurrency", default="1,4,8", help="comma-separated levels")
    parser.add_argument("--requests", type=int, default=16, help="requests per level (split over the workers)")
    parser.add_argument("--instance-count", type=int, help="when starting a server: model instances")
    parser.add_argument("--json", action="store_true", help="also print the raw results as JSON")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",") if c]

    with own_server(args.instance_count) if args.url is None else _given(args.url) as url:
        client = grpcclient.InferenceServerClient(url)
        params = client.get_model_config(args.model, as_json=True)["config"]["parameters"]
        rate = int(params["sample_rate_hz"]["string_value"])
        client.close()
        run_level(url, args.model, rate, 1, 1)  # warm-up: first-inference costs out of the figures
        print(f"model={args.model} rate={rate} Hz text={len(TEXT)} chars", end=" ")
        print(f"requests/level={args.requests} cores={os.cpu_count()}")
        header = ("streams", "ttfr p50", "ttfr p99", "rtf p50", "rtf p99", "agg rtf", "audio/s")
        print(" ".join(f"{h:>9}" for h in header))
        results = {}
        for level in levels:
            samples, wall = run_level(url, args.model, rate, level, args.requests)
            ttfr = [s.ttfr_s for s in samples]
            rtf = [s.total_s / s.audio_s for s in samples]
            audio = sum(s.audio_s for s in samples)
            results[level] = {"wall_s": wall, "samples": [asdict(s) for s in samples]}
            print(
                f"{level:>9} {percentile(ttfr, 50):>8.3f}s {percentile(ttfr, 99):>8.3f}s "
                f"{statistics.median(rtf):>9.3f} {percentile(rtf, 99):>9.3f} {wall / audio:>9.3f} {audio / wall:>9.2f}"
            )
        if args.json:
            print(json.dumps(results, indent=1))
    return 0


@contextmanager
def _given(url: str) -> Iterator[str]:
    yield url


if __name__ == "__main__":
    sys.exit(main())
