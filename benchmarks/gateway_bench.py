#!/usr/bin/env python3
"""TTS gateway benchmark: starts Triton, the conversion service and the gateway on free ports, then prints

1. time to first audio (p50/p99) through the gateway vs a direct Triton stream, at concurrency 1, 4 and 16, and
   the gateway's overhead ratio;
2. for a five-sentence paragraph with conversion on: streaming pipeline vs sequential (whole TTS clip, then the whole
   clip through ConvertClip) time-to-first-audio ratio;
3. aggregate real-time factor at concurrency 8 (wall time / seconds of audio produced), without and with conversion.

Run: .venv/bin/python benchmarks/gateway_bench.py   (about 2-4 minutes on 2 cores)
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.tts_gateway.triton_client import TritonTts, TtsInputs, build_request
from tests.fixtures.gateway import start_gateway
from tests.fixtures.rvc_service import start_rvc_service
from tests.fixtures.triton_server import start_triton
from voice.v1 import (
    audio_pb2,
    tts_gateway_pb2,
    tts_gateway_pb2_grpc,
    voice_conversion_pb2,
    voice_conversion_pb2_grpc,
)

SHORT = "Hello, this is a quick latency test. It has a second sentence too."
PARAGRAPH = (
    "The first sentence is here. Then a second one follows it. A third keeps things going. "
    "The fourth is nearly the last. And this is the final sentence of the paragraph."
)
PCM16 = audio_pb2.AudioFormat(encoding=audio_pb2.AUDIO_ENCODING_PCM16)


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.array(values), q))


async def gateway_ttfa(stub: tts_gateway_pb2_grpc.TtsGatewayServiceStub, text: str, voice: str) -> tuple[float, float]:
    """(client-observed time to first audio chunk, seconds of audio)."""
    started = time.perf_counter()
    first = None
    audio_s = 0.0
    async for chunk in stub.Synthesize(tts_gateway_pb2.SynthesizeRequest(text=text, voice=voice, output_format=PCM16)):
        if first is None and chunk.audio:
            first = time.perf_counter() - started
        if chunk.is_final:
            audio_s = chunk.summary.audio_duration.ToNanoseconds() / 1e9
    assert first is not None
    return first, audio_s


async def triton_ttfa(triton: TritonTts, text: str, index: int) -> tuple[float, float]:
    """A direct decoupled Triton stream for the whole text (the model splits sentences itself)."""
    model = await triton.model_info("piper_tts")
    session = triton.open(model, f"bench-{index}")
    started = time.perf_counter()
    first = None
    samples = 0
    async for audio in session.synthesize(text, TtsInputs()):
        if first is None:
            first = time.perf_counter() - started
        samples += audio.size
    await session.close()
    assert first is not None
    return first, samples / model.sample_rate_hz


async def run_concurrent(fn: Callable[[int], Awaitable[tuple[float, float]]], concurrency: int, rounds: int):
    results: list[tuple[float, float]] = []

    async def worker(w: int) -> None:
        for r in range(rounds):
            results.append(await fn(w * rounds + r))

    started = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    return results, time.perf_counter() - started


async def sequential_ttfa(triton: TritonTts, rvc_address: str, text: str) -> float:
    """Whole clip from the non-decoupled model, then the whole clip through ConvertClip: first audio = the end."""
    model = await triton.model_info("piper_tts_whole")
    started = time.perf_counter()
    response = await triton.stub.ModelInfer(build_request(model, text, TtsInputs(), "bench-seq", final_flag=False))
    wav = np.frombuffer(response.raw_output_contents[0], dtype="<f4")
    async with grpc.aio.insecure_channel(rvc_address) as channel:
        stub = voice_conversion_pb2_grpc.VoiceConversionServiceStub(channel)
        await stub.ConvertClip(
            voice_conversion_pb2.ConvertClipRequest(
                settings={"model": "world-default", "pitch_shift_semitones": 4.0, "formant_shift_semitones": 1.5},
                audio=audio_pb2.AudioInput(
                    audio=wav.tobytes(),
                    format=audio_pb2.AudioFormat(
                        encoding=audio_pb2.AUDIO_ENCODING_FLOAT32, sample_rate_hz=model.sample_rate_hz
                    ),
                ),
                output_format=audio_pb2.AudioFormat(encoding=audio_pb2.AUDIO_ENCODING_FLOAT32),
            )
        )
    return time.perf_counter() - started


async def bench(gateway_address: str, triton_url: str, rvc_address: str, rounds_scale: int) -> None:
    triton = TritonTts(triton_url)
    async with grpc.aio.insecure_channel(gateway_address) as channel:
        stub = tts_gateway_pb2_grpc.TtsGatewayServiceStub(channel)
        await gateway_ttfa(stub, SHORT, "joe")  # warm-up both paths
        await gateway_ttfa(stub, SHORT, "joe-world-high")
        await triton_ttfa(triton, SHORT, 0)

        print("\n1) time to first audio, gateway (voice joe, PCM16) vs direct Triton stream (piper_tts)")
        print(
            f"{'conc':>4} {'n':>3} {'gw p50':>8} {'gw p99':>8} {'triton p50':>10} {'triton p99':>10} {'p50 ratio':>9}"
        )
        for concurrency, rounds in ((1, 8), (4, 4), (16, 2)):
            rounds = max(1, rounds * rounds_scale)
            gw, _ = await run_concurrent(lambda i: gateway_ttfa(stub, SHORT, "joe"), concurrency, rounds)
            direct, _ = await run_concurrent(lambda i: triton_ttfa(triton, SHORT, i), concurrency, rounds)
            g = [t for t, _ in gw]
            d = [t for t, _ in direct]
            print(
                f"{concurrency:>4} {len(g):>3} {pct(g, 50):8.3f} {pct(g, 99):8.3f} {pct(d, 50):10.3f} "
                f"{pct(d, 99):10.3f} {pct(g, 50) / pct(d, 50):9.2f}"
            )

        print("\n2) five-sentence paragraph with conversion (world, +4 st): streaming vs sequential first audio")
        streaming = [(await gateway_ttfa(stub, PARAGRAPH, "joe-world-high"))[0] for _ in range(3)]
        sequential = [await sequential_ttfa(triton, rvc_address, PARAGRAPH) for _ in range(3)]
        s50, q50 = pct(streaming, 50), pct(sequential, 50)
        print(f"streaming p50 {s50:.3f} s   sequential p50 {q50:.3f} s   ratio streaming/sequential {s50 / q50:.2f}")

        print("\n3) aggregate real-time factor at concurrency 8 (three-sentence paragraph)")
        for voice in ("joe", "joe-world-high"):
            results, wall = await run_concurrent(lambda i, v=voice: gateway_ttfa(stub, PARAGRAPH, v), 8, 1)
            audio = sum(a for _, a in results)
            print(f"{voice:>15}: {audio:.1f} s audio in {wall:.2f} s wall -> aggregate RTF {wall / audio:.3f}")
    await triton.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds-scale", type=int, default=1, help="multiply the number of requests per level")
    args = parser.parse_args()
    log_dir = Path(tempfile.mkdtemp(prefix="gateway-bench-"))
    started = time.perf_counter()
    with start_triton(log_dir / "triton.log") as triton:
        rvc = start_rvc_service(log_dir=log_dir)
        gateway = start_gateway(triton.grpc_url, rvc.address, "--max-concurrent-streams=64", log_dir=log_dir)
        try:
            print(f"stack up in {time.perf_counter() - started:.1f} s (logs in {log_dir})")
            asyncio.run(bench(gateway.address, triton.grpc_url, rvc.address, args.rounds_scale))
        finally:
            gateway.stop()
            rvc.stop()
    print(f"\ntotal {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
