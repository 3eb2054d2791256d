"""Memory soak of the voice-conversion service: N sequential Convert streams against the real service process.

Each request streams 2-3 s of speech-like audio (a gliding harmonic voice with syllable-rate loudness and breath
noise, different every request) at 22050 Hz (Piper's rate) in 0.25 s pieces to `world-default` with pitch shift 4
and formant shift 1.5 (the `joe-world-high` voice), and reads the converted stream to its end. Every --every
requests it prints the service's resident memory (VmRSS from /proc/<pid>/status), its thread count and the mean
request time, so a leak (steady growth) and a plateau (growth that stops) tell themselves apart.

    .venv/bin/python benchmarks/rvc_soak.py --requests 1000
    .venv/bin/python benchmarks/rvc_soak.py --requests 1000 --env MALLOC_ARENA_MAX=2

Exit status 1 when the RSS grew more than --max-growth-mb between the first sample after warm-up and the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import numpy as np

from services.common import audio as A
from tests.fixtures.rvc_service import start_rvc_service
from voice.v1 import audio_pb2, conversion_pb2, voice_conversion_pb2, voice_conversion_pb2_grpc

RATE = 22050
SETTINGS = conversion_pb2.ConversionSettings(
    model="world-default", pitch_shift_semitones=4.0, formant_shift_semitones=1.5
)


def speech_like(rng: np.random.Generator, seconds: float) -> np.ndarray:
    t = np.arange(round(seconds * RATE)) / RATE
    base = rng.uniform(95, 180)
    f0 = base * (1 + 0.15 * np.sin(2 * np.pi * rng.uniform(0.5, 1.5) * t + rng.uniform(0, 6)))
    phase = 2 * np.pi * np.cumsum(f0) / RATE
    syllables = np.clip(np.sin(2 * np.pi * rng.uniform(3, 5) * t + rng.uniform(0, 6)) + 0.3, 0, 1)
    voice = sum((0.6 / k) * np.sin(k * phase) for k in range(1, 30))
    x = voice * syllables + 0.01 * rng.standard_normal(t.size)
    return (0.4 * x / np.abs(x).max()).astype(np.float32)


def status_value(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


async def one_request(stub: voice_conversion_pb2_grpc.VoiceConversionServiceStub, audio: np.ndarray) -> float:
    pcm = A.float_to_pcm16(audio)
    step = 2 * round(0.25 * RATE)

    async def messages() -> AsyncIterator[voice_conversion_pb2.ConvertRequest]:
        yield voice_conversion_pb2.ConvertRequest(
            config=voice_conversion_pb2.ConvertConfig(
                settings=SETTINGS,
                input_format=audio_pb2.AudioFormat(encoding=A.PCM16, sample_rate_hz=RATE),
                output_format=audio_pb2.AudioFormat(encoding=A.PCM16, sample_rate_hz=RATE),
            )
        )
        for i in range(0, len(pcm), step):
            yield voice_conversion_pb2.ConvertRequest(audio=pcm[i : i + step])

    started = time.perf_counter()
    last = None
    async for chunk in stub.Convert(messages()):
        last = chunk
    if last is None or not last.is_final:
        raise RuntimeError("stream ended without its final chunk")
    return time.perf_counter() - started


async def soak(
    address: str, pid: int, requests: int, every: int, seed: int, seconds: tuple[float, float]
) -> list[tuple[int, int, int, float]]:
    rng = np.random.default_rng(seed)
    rows: list[tuple[int, int, int, float]] = []
    times: list[float] = []
    print(f"{'requests':>8} {'RSS MB':>8} {'delta MB':>9} {'threads':>7} {'mean s/request':>15}", flush=True)

    def sample(done: int) -> None:
        rss = status_value(pid, "VmRSS") // 1024
        threads = status_value(pid, "Threads")
        mean = float(np.mean(times)) if times else 0.0
        delta = rss - rows[0][1] if rows else 0
        rows.append((done, rss, threads, mean))
        print(f"{done:>8} {rss:>8} {delta:>+9} {threads:>7} {mean:>15.3f}", flush=True)
        times.clear()

    async with grpc.aio.insecure_channel(address) as channel:
        stub = voice_conversion_pb2_grpc.VoiceConversionServiceStub(channel)
        await stub.ListModels(voice_conversion_pb2.ListModelsRequest(), wait_for_ready=True)
        sample(0)
        for i in range(1, requests + 1):
            times.append(await one_request(stub, speech_like(rng, rng.uniform(*seconds))))
            if i % every == 0 or i == requests:
                sample(i)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--every", type=int, default=100, help="sample the RSS every this many requests")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--audio-seconds", type=float, nargs=2, default=(2.0, 3.0), metavar=("MIN", "MAX"), help="length per request"
    )
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for the service process (repeatable)")
    parser.add_argument("--service-arg", action="append", default=[], help="extra flag for the service (repeatable)")
    parser.add_argument(
        "--max-growth-mb", type=float, default=30.0, help="fail when RSS grows more than this after warm-up"
    )
    args = parser.parse_args()

    saved = dict(os.environ)
    for item in args.env:
        name, _, value = item.partition("=")
        os.environ[name] = value  # the service inherits the environment (RVC_* variables are dropped by the fixture)
    try:
        service = start_rvc_service(*args.service_arg, log_dir=Path(tempfile.mkdtemp(prefix="rvc-soak-")))
    finally:
        os.environ.clear()
        os.environ.update(saved)
    try:
        print(f"service pid {service.process.pid}, env {args.env or '-'}, flags {args.service_arg or '-'}")
        print(f"service log {service.log_path}")
        rows = asyncio.run(
            soak(service.address, service.process.pid, args.requests, args.every, args.seed, args.audio_seconds)
        )
    finally:
        service.stop()
    warm = rows[1] if len(rows) > 2 else rows[0]  # the first batch loads libraries, JITs FFT plans, fills pools
    growth = rows[-1][1] - warm[1]
    half = rows[len(rows) // 2]
    print(
        f"RSS: start {rows[0][1]} MB, after {warm[0]} requests {warm[1]} MB, after {half[0]} {half[1]} MB, "
        f"end {rows[-1][1]} MB; growth after warm-up {growth:+d} MB "
        f"(first half {half[1] - warm[1]:+d}, second half {rows[-1][1] - half[1]:+d})"
    )
    if growth > args.max_growth_mb:
        print(f"FAIL: RSS grew {growth} MB after warm-up (bound {args.max_growth_mb:g} MB)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
