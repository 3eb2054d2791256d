"""Entry point: ``voice-rvc-service`` or ``python -m services.rvc_service`` (flags also read RVC_* environment
variables; see --help)."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import logging
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from services.common.contract import RVC_METRICS_PORT, RVC_PORT, MiB
from services.common.server import (
    EnvArgumentParser,
    ServiceHost,
    add_server_arguments,
    announce_ready,
    init_service_logging,
    parse_bool,
    server_options_from_args,
)
from services.common.tracing import configure_tracing, shutdown_tracing
from services.common.version import VERSION
from services.rvc_service.capacity import CapacityEstimator, StreamQueue
from services.rvc_service.engines.onnx_runtime import OnnxSettings, default_cache_dir
from services.rvc_service.pool import WorkerPool, default_workers
from services.rvc_service.registry import ModelRegistry
from services.rvc_service.servicer import STREAM_BLOCKS, VoiceConversionServicer
from voice.v1 import voice_conversion_pb2, voice_conversion_pb2_grpc

log = logging.getLogger("services.rvc_service")

SERVICE_NAME = voice_conversion_pb2.DESCRIPTOR.services_by_name["VoiceConversionService"].full_name
DEFAULT_MODELS_DIR = Path(__file__).resolve().parent / "models"


def resolve_device(requested: str) -> str:
    """auto -> cuda (device 0) when torch sees a GPU, else cpu; cuda[:n] is checked to exist."""
    import torch

    if requested == "auto":
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    if requested == "cpu":
        return "cpu"
    if requested.startswith("cuda"):
        if not torch.cuda.is_available():
            raise SystemExit(f"--device {requested}: torch sees no CUDA device")
        index = torch.device(requested).index or 0
        if index >= torch.cuda.device_count():
            raise SystemExit(f"--device {requested}: only {torch.cuda.device_count()} CUDA device(s)")
        return f"cuda:{index}"
    raise SystemExit(f"--device must be auto, cpu or cuda[:n], got {requested!r}")


def make_parser() -> EnvArgumentParser:
    parser = EnvArgumentParser(prog="voice-rvc-service", description=__doc__, env_prefix="RVC")
    add_server_arguments(parser, port=RVC_PORT, metrics_port=RVC_METRICS_PORT)
    parser.add_option("--models-dir", type=Path, default=DEFAULT_MODELS_DIR, help="RVC checkpoints (.pth/.index)")
    parser.add_option("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_option("--workers", type=int, default=0, help="conversion workers (0: 2-4 per GPU, one per CPU core)")
    parser.add_option(
        "--threads-per-worker",
        type=int,
        default=0,
        help="CPU only: torch intra-op threads per worker (0: cores/workers)",
    )
    parser.add_option(
        "--backend",
        default="auto",
        choices=["auto", "torch", "onnx"],
        help="what runs RVC's content encoder and synthesizer: onnx (ONNX Runtime, CPU only, about 1.35x faster "
        "than torch there), torch, or auto (onnx on CPU, torch on CUDA)",
    )
    parser.add_option(
        "--precision",
        default="auto",
        choices=["auto", "fp32", "fp16"],
        help="torch backend weights: fp16 halves memory and speeds up CUDA (the WebUI's is_half); auto: fp16 on "
        "CUDA, fp32 on CPU",
    )
    parser.add_option(
        "--onnx-cache-dir",
        type=Path,
        default=default_cache_dir(),
        help="where ONNX exports of loaded models are kept between runs (keyed by the weights)",
    )
    parser.add_option(
        "--onnx-int8-content",
        type=parse_bool,
        default=False,
        help="quantize the content encoder's matrix products to int8 (pays off on CPUs with VNNI/AMX)",
    )
    parser.add_option("--queue-capacity", type=int, default=64, help="waiting jobs beyond which work is refused")
    parser.add_option("--memory-budget-mb", type=int, default=4096, help="memory for loaded RVC models (LRU beyond)")
    parser.add_option("--preload", default="", help="comma-separated model names to load at start-up")
    parser.add_option("--max-stream-seconds", type=float, default=3600.0, help="longest input one Convert call takes")
    parser.add_option(
        "--first-block-seconds",
        type=float,
        default=STREAM_BLOCKS.first_block_s,
        help="new audio in a Convert stream's first block (later blocks double up to 0.5 s): shorter sends the first "
        "converted audio sooner; 0.5 makes every block equal",
    )
    parser.add_option(
        "--target-utilization",
        type=float,
        default=0.8,
        help="admit a Convert stream only while the open streams' measured cost stays under workers x this (0: off)",
    )
    parser.add_option(
        "--stream-queue-length",
        type=int,
        default=32,
        help="Convert streams that may wait for capacity (first come first served) before one is refused",
    )
    parser.add_option(
        "--stream-max-wait",
        type=float,
        default=5.0,
        help="longest a Convert stream waits for capacity (never past its deadline), seconds",
    )
    parser.add_option(
        "--stream-cost-prior",
        type=float,
        default=0.5,
        help="worker-seconds per audio second assumed for a voice not yet measured (at least the highest measured)",
    )
    parser.add_option(
        "--debug-tracemalloc-seconds",
        type=float,
        default=0.0,
        help="debugging memory: trace Python allocations and log the top growth every this many seconds (0: off)",
    )
    return parser


def freeze_startup_objects() -> None:
    """Move everything alive after start-up (torch, transformers, scipy: millions of objects) out of the cyclic
    garbage collector's reach, then let it restart its accounting from an empty old generation.

    CPython runs a full collection only when the objects promoted since the last one exceed a quarter of the
    long-lived ones. With the start-up objects counted as long-lived, that took thousands of requests, and every
    request's cyclic garbage (a finished call's frames and whatever they hold) piled up meanwhile: RSS rose ~25 KB per
    request over 1,000 requests. Frozen, they are neither scanned nor counted, so full collections come every few
    tens of thousands of allocations and only scan what was created since, which is cheap."""
    gc.collect()
    gc.freeze()
    gc.collect()  # a full collection over the now-empty old generation resets the long-lived count


async def log_allocation_growth(interval_s: float, top: int = 12) -> None:
    """Log which source lines hold more Python memory than at the first tick (the baseline, after start-up):
    a line that keeps growing tick after tick is a leak, one that stops is a cache or pool filling up."""
    import tracemalloc

    tracemalloc.start(8)
    await asyncio.sleep(interval_s)
    baseline = tracemalloc.take_snapshot()
    while True:
        await asyncio.sleep(interval_s)
        snapshot = tracemalloc.take_snapshot()
        current, peak = tracemalloc.get_traced_memory()
        stats = snapshot.compare_to(baseline, "lineno")[:top]
        lines = [f"{s.size_diff / 1024:+.0f} KiB ({s.count_diff:+d} blocks) {s.traceback[0]}" for s in stats]
        log.info(
            "tracemalloc: traced %.1f MiB (peak %.1f); growth since baseline:\n  %s",
            current / MiB,
            peak / MiB,
            "\n  ".join(lines),
        )


@dataclass
class RvcService:
    host: ServiceHost
    pool: WorkerPool
    registry: ModelRegistry
    servicer: VoiceConversionServicer


def onnx_settings(args: argparse.Namespace, device: str, threads: int) -> OnnxSettings | None:
    """None for the torch backend; ONNX Runtime sessions get the pool's threads per worker."""
    backend = args.backend
    if backend == "auto":
        backend = "torch" if device.startswith("cuda") else "onnx"
    if backend == "torch":
        return None
    if device.startswith("cuda"):
        raise SystemExit("--backend onnx runs on the CPU (onnxruntime's CPU build); use --backend torch with CUDA")
    try:  # fail at start-up, naming the flag, rather than at the first model load
        args.onnx_cache_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=args.onnx_cache_dir):
            pass
    except OSError as exc:
        raise SystemExit(
            f"--onnx-cache-dir {args.onnx_cache_dir} is not writable ({exc.strerror}); point it at a writable "
            "directory or use --backend torch"
        ) from exc
    return OnnxSettings(args.onnx_cache_dir, threads=threads, int8_content=args.onnx_int8_content)


def build_service(args: argparse.Namespace) -> RvcService:
    """Everything but start(): registry, pool, servicer, host (the pool is closed by the host's stop hook)."""
    device = resolve_device(args.device)
    workers = args.workers or default_workers(device)
    if args.queue_capacity < 1:
        raise SystemExit("--queue-capacity must be at least 1")
    if args.target_utilization < 0:
        raise SystemExit("--target-utilization must be >= 0 (0 turns admission control off)")
    if args.stream_cost_prior <= 0:
        raise SystemExit("--stream-cost-prior must be positive")
    pool = WorkerPool(
        workers,
        args.queue_capacity,
        device=device,
        threads_per_worker=args.threads_per_worker or None,
    )
    onnx = onnx_settings(args, device, pool.threads_per_worker)
    half = args.precision == "fp16" or (args.precision == "auto" and device.startswith("cuda"))
    if half and onnx is not None:
        raise SystemExit("--precision fp16 needs the torch backend (--backend torch); ONNX Runtime here runs fp32")
    registry = ModelRegistry(args.models_dir, device, args.memory_budget_mb << 20, onnx=onnx, half=half)
    for name in filter(None, (n.strip() for n in args.preload.split(","))):
        log.info("preloading %s", name)
        registry.load(name)  # a bad name fails start-up loudly rather than the first request
    capacity = CapacityEstimator(workers, args.target_utilization, prior_cost=args.stream_cost_prior)
    queue = StreamQueue(capacity, max_length=args.stream_queue_length, max_wait_s=args.stream_max_wait)
    servicer = VoiceConversionServicer(
        registry,
        pool,
        device=device,
        version=VERSION,
        max_stream_seconds=args.max_stream_seconds,
        capacity=capacity,
        queue=queue,
        stream_blocks=dataclasses.replace(STREAM_BLOCKS, first_block_s=args.first_block_seconds).validate(),
    )
    host = ServiceHost("rvc_service", server_options_from_args(args))
    host.add_service(
        SERVICE_NAME,
        lambda server: voice_conversion_pb2_grpc.add_VoiceConversionServiceServicer_to_server(servicer, server),
    )
    host.on_stop(lambda: pool.aclose(join_timeout=10))
    return RvcService(host, pool, registry, servicer)


async def main(argv: list[str]) -> None:
    args = make_parser().parse_args(argv)
    init_service_logging("rvc_service", server_options_from_args(args))
    configure_tracing("rvc_service")  # before the host starts: its server adds the tracing interceptor when on
    service = build_service(args)
    service.host.on_stop(shutdown_tracing)
    await service.host.start()
    freeze_startup_objects()
    tracer = None
    if args.debug_tracemalloc_seconds > 0:
        tracer = asyncio.get_running_loop().create_task(log_allocation_growth(args.debug_tracemalloc_seconds))
    stats = service.pool.stats()
    announce_ready(service.host, device=service.pool.device, workers=stats.workers)
    await service.host.run_until_signal()
    if tracer is not None:
        tracer.cancel()


def run() -> None:
    """The `voice-rvc-service` console script."""
    asyncio.run(main(sys.argv[1:]))


if __name__ == "__main__":
    run()
