"""Worker-pool scaling and real-time factor of the voice-conversion engines.

For N = 1..4 workers it runs S concurrent conversion streams (default max(4, N)) through the real pool and the
real streaming stitcher (0.5 s blocks, left context, SOLA) and reports

    X(N)       audio seconds converted per wall second
    scaling    X(N) / (N * X(1))   (1.0 = perfect linear scaling)
    RTF        worker time / audio time of one block job, averaged (below 1 is faster than real time)

Engines: "world" (built-in WORLD voice) and "rvc" (a checkpoint from --models-dir; without one, a tiny
random-weight v2 model in the real format is written to a temporary directory, so the RVC figures then measure the
pipeline, not a production-size network).

    .venv/bin/python benchmarks/rvc_pool_bench.py                      # CPU
    .venv/bin/python benchmarks/rvc_pool_bench.py --device cuda        # GPU host: one CUDA stream per worker
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

warnings.filterwarnings("ignore", message="pkg_resources is deprecated")

from services.common import audio as A  # noqa: E402  (after the warning filter)
from services.rvc_service.engines import ConversionParams, VoiceModel  # noqa: E402  (after the warning filter)
from services.rvc_service.pool import WorkerPool  # noqa: E402  (after the warning filter)
from services.rvc_service.registry import ModelRegistry  # noqa: E402  (after the warning filter)
from services.rvc_service.servicer import block_converter, engine_rates  # noqa: E402  (after the warning filter)
from services.rvc_service.streaming import ConversionStream  # noqa: E402  (after the warning filter)

CLIENT_RATE = 16000


def test_voice(seconds: float) -> np.ndarray:
    """A harmonic tone with a gliding F0, speech-like enough for F0 trackers and content encoders."""
    t = np.arange(round(seconds * CLIENT_RATE)) / CLIENT_RATE
    phase = 2 * np.pi * np.cumsum(160 + 30 * np.sin(2 * np.pi * 0.7 * t)) / CLIENT_RATE
    return (0.3 * sum(np.sin(k * phase) / k for k in range(1, 7))).astype(np.float32)


def tiny_rvc_models() -> Path:
    from tests.rvc.factories import write_checkpoint, write_hf_hubert

    d = Path(tempfile.mkdtemp(prefix="rvc-bench-"))
    write_hf_hubert(d / "hubert")
    write_checkpoint(d / "bench-tiny.pth", "v2", True, 40000)
    return d


async def run_streams(
    pool: WorkerPool, model: VoiceModel, params: ConversionParams, streams: int, audio: np.ndarray
) -> tuple[float, float, int]:
    """Convert `audio` on `streams` concurrent streams; returns (wall seconds, summed job seconds, blocks)."""
    rates = engine_rates(model)

    async def one(i: int) -> tuple[float, int]:
        stream = ConversionStream(
            pool=pool,
            convert=block_converter(model, params, rates),
            model=model.name,
            key=f"bench-{i}",
            request_id=f"bench-{i}",
            input_rate=CLIENT_RATE,
            engine=rates,
            output_encoding=A.PCM16,
            output_rate=model.sample_rate,
        )
        piece = CLIENT_RATE // 5  # 200 ms messages, as a TTS would send them
        for start in range(0, audio.size, piece):
            async for _ in stream.push(audio[start : start + piece]):
                pass
        async for _ in stream.finish():
            pass
        stream.close()
        return stream.conversion_seconds, stream.blocks

    started = time.perf_counter()
    results = await asyncio.gather(*(one(i) for i in range(streams)))
    return time.perf_counter() - started, sum(r[0] for r in results), sum(r[1] for r in results)


async def bench_engine(name: str, model: VoiceModel, params: ConversionParams, args: argparse.Namespace) -> None:
    audio = test_voice(args.seconds)
    # Warm-up (lazy imports, first-call allocations, CUDA context) outside the timings.
    warm = WorkerPool(1, 64, device=args.device)
    await run_streams(warm, model, params, 2, audio)
    warm.close()
    x1 = 0.0
    print(f"\n{name} ({model.name}, device {args.device}, {args.seconds:g} s per stream)")
    print(f"{'N':>2} {'streams':>7} {'wall s':>8} {'X(N) audio-s/s':>15} {'scaling':>8} {'job RTF':>8}")
    for n in range(1, args.max_workers + 1):
        streams = args.streams or max(4, n)
        pool = WorkerPool(n, 256, device=args.device, threads_per_worker=args.threads_per_worker or None)
        try:
            # Best of --repeat runs: the machine may be shared, and the fastest run is the least disturbed one.
            wall, job_seconds = float("inf"), 0.0
            for _ in range(args.repeat):
                w, j, _ = await run_streams(pool, model, params, streams, audio)
                if w < wall:
                    wall, job_seconds = w, j
        finally:
            pool.close()
        throughput = streams * args.seconds / wall
        if n == 1:
            x1 = throughput
        rtf = job_seconds / (streams * args.seconds)
        print(f"{n:>2} {streams:>7} {wall:>8.2f} {throughput:>15.2f} {throughput / (n * x1):>8.2f} {rtf:>8.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--engines", default="world,rvc", help="comma list of world, rvc")
    parser.add_argument("--models-dir", type=Path, default=None, help="directory with a real RVC .pth (+ hubert/)")
    parser.add_argument("--rvc-model", default="", help="checkpoint name in --models-dir (default: the first)")
    parser.add_argument("--seconds", type=float, default=4.0, help="audio per stream")
    parser.add_argument("--streams", type=int, default=0, help="concurrent streams (default max(4, N))")
    parser.add_argument("--max-workers", type=int, default=4)
    parser.add_argument(
        "--threads-per-worker", type=int, default=0, help="CPU torch threads per worker (0: the service default)"
    )
    parser.add_argument("--repeat", type=int, default=2, help="runs per N; the fastest counts")
    parser.add_argument("--f0-method", default="pm", help="F0 method for rvc (pm, dio, harvest, crepe, fcpe, rmvpe)")
    args = parser.parse_args()
    if args.device.startswith("cuda"):
        import torch

        print(f"GPU: {torch.cuda.get_device_name(torch.device(args.device).index or 0)}")
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    if "world" in engines:
        registry = ModelRegistry(args.models_dir or tempfile.mkdtemp(), args.device)
        world = registry.get("world-default")
        asyncio.run(bench_engine("world", world, ConversionParams(pitch_shift_semitones=3.0), args))
    if "rvc" in engines:
        models_dir = args.models_dir or tiny_rvc_models()
        registry = ModelRegistry(models_dir, args.device)
        names = [m.name for m in registry.list() if m.engine == "rvc"]
        if not names:
            raise SystemExit(f"no RVC checkpoint in {models_dir}")
        model = registry.get(args.rvc_model or names[0])
        label = "rvc" if args.models_dir else "rvc (tiny random-weight model)"
        asyncio.run(bench_engine(label, model, ConversionParams(f0_method=args.f0_method), args))


if __name__ == "__main__":
    main()
