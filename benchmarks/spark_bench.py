#!/usr/bin/env python3
"""Spark-TTS through the gateway vs a direct Triton stream, on CPU with the tiny random checkpoint.

Starts Triton with spark_tts (and its spark_audio_tokenizer and spark_vocoder) on a freshly written tiny checkpoint
(voice_triton.tiny.spark) and a gateway with the voice "spark", then measures:

1. the first request with a reference clip Triton has not seen (its reference-token cache misses, so the
   spark_audio_tokenizer runs), once per path;
2. --requests pairs of sequential requests, one direct (ModelStreamInfer to spark_tts) and one through the gateway
   (Synthesize, zero-shot, PCM16), taking turns which goes first so background load hits both alike. Same text, seed
   and reference on both paths, so both do the same model work (the audio lengths are printed to show it); the
   reference is cached by then, so every one of these hits. Reported: time to first audio (TTFA) min/p50/p90/p99,
   the gateway/direct ratio of the p50s and p90s (and of the minimums, the runs least slowed by other work on a
   shared machine), the per-pair TTFA difference, total stream time and per-stream RTF;
3. per-stream RTF and TTFA p50/p90 through the gateway at each --concurrency level (closed loop, --requests streams
   per level split over the clients; level 1 is the sequential gateway run of 2, not run again).

TTFA is client-side: from sending the request to the first response with audio (direct) or the first AudioChunk with
nonempty audio (gateway); the gateway's own figure (SynthesisSummary.time_to_first_audio) is shown beside it. RTF is
total stream time / seconds of audio. The gateway runs with real-time admission off (--admission-target-load=0): at
concurrency 4, or with other work on a 2-core machine, the tiny model falls behind real time, and the benchmark wants
the concurrency it asks for, not refusals. The conversion-service address it is given is an unused port: the voice
"spark" has no conversion, so no conversion service is started.

The checkpoint has random weights, so these figures measure serving overhead (gateway vs direct), not Spark-TTS
quality or speed. The last line printed is one JSON object with every figure. A concurrency level that cannot finish
(say, tritonserver crashed) is recorded with its error, the figures so far are still printed, and the exit status is 1.

Run: .venv/bin/python benchmarks/spark_bench.py [--requests 20] [--concurrency 1,2,4]
     (about 1.5 min on an idle 2-core machine; several times that while other work shares the cores)
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from benchmarks.gateway_bench import bounded_retry, chunk_seconds, retry_delay
from benchmarks.listener import percentile
from services.common.audio import decode_audio, float_to_pcm16, wav_header
from tests.fixtures.spark import SPARK_MODELS, SPARK_PARAMS, make_tiny_checkpoint, start_spark_gateway
from tests.fixtures.triton_server import TritonServer, free_ports, start_triton
from tests.prometheus import metric, scrape
from tests.spark.helpers import RATE, SparkStream, spark_inputs, speech_like
from voice.v1 import audio_pb2, tts_gateway_pb2, tts_gateway_pb2_grpc

# One sentence under the gateway's first-piece length (60 characters), so the gateway sends Triton the same single
# piece the direct path does.
TEXT = "The morning train leaves the station at nine."
REFERENCE_TEXT = "A short reference clip."
REFERENCE_SECONDS = 3.0
# With the tiny checkpoint of seed 0 and this text and reference, seed 12 gives a piece of about 2 s in two chunks:
# short enough for the run to fit in a few minutes, long enough that first audio comes before the end.
DEFAULT_SEED = 12
WARMUPS = 2
STREAM_TIMEOUT_S = 180.0
NOTE = (
    "tiny random Spark-TTS checkpoint on CPU: these figures measure serving overhead (gateway vs direct), "
    "not Spark-TTS quality or speed"
)


@dataclass
class StreamSample:
    """One stream as the client saw it; times in seconds from sending the request."""

    ttfa_s: float
    total_s: float
    audio_s: float
    summary_ttfa_s: float | None = None  # the gateway's own figure, from the final chunk's summary
    refusals: int = 0  # RESOURCE_EXHAUSTED answers before this stream was admitted

    @property
    def rtf(self) -> float:
        return self.total_s / self.audio_s if self.audio_s > 0 else math.nan


# ---- the reference clip -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reference:
    """One clip as the gateway receives it (PCM16 WAV) and as the gateway hands it to Triton (float32 samples)."""

    wav: bytes
    samples: np.ndarray


def make_reference(nudge_at: int | None = None) -> Reference:
    """The benchmark's reference clip; `nudge_at` moves one sample by one PCM16 step.

    A nudged clip hashes differently, so Triton's reference cache misses, but it gives the plain clip's tokens (checked
    for these two positions against spark_audio_tokenizer), so the work that follows is the same."""
    pcm = np.frombuffer(float_to_pcm16(speech_like(REFERENCE_SECONDS, seed=1)), dtype="<i2").copy()
    if nudge_at is not None:
        pcm[nudge_at] += 1 if pcm[nudge_at] < 32767 else -1
    data = pcm.tobytes()
    wav = wav_header(RATE, len(data)) + data
    # Decoded the way the gateway decodes it, so the direct path sends Triton the very same samples.
    samples, rate = decode_audio(wav, audio_pb2.AUDIO_ENCODING_WAV, 0)
    assert rate == RATE
    return Reference(wav, samples)


# ---- one stream per path ----------------------------------------------------------------------------------------


def direct_stream(stream: SparkStream, reference: Reference, seed: int) -> StreamSample:
    """One decoupled request on an open ModelStreamInfer stream to spark_tts."""
    inputs = spark_inputs(TEXT, reference=reference.samples, reference_text=REFERENCE_TEXT, seed=seed)
    started = time.perf_counter()
    stream.send(inputs)
    first = None
    samples = 0
    while True:
        audio, final, error = stream.next(STREAM_TIMEOUT_S)
        if error:
            raise RuntimeError(f"direct spark_tts stream failed: {error}")
        if audio is not None:
            first = first if first is not None else time.perf_counter() - started
            samples += audio.size
        if final:
            break
    total = time.perf_counter() - started
    if first is None:
        raise RuntimeError("direct spark_tts stream ended without audio")
    return StreamSample(first, total, samples / RATE)


def synthesize_request(reference: Reference, seed: int) -> tts_gateway_pb2.SynthesizeRequest:
    return tts_gateway_pb2.SynthesizeRequest(
        text=TEXT,
        voice="spark",
        zero_shot=tts_gateway_pb2.ZeroShot(
            reference_audio=audio_pb2.AudioInput(
                audio=reference.wav, format=audio_pb2.AudioFormat(encoding=audio_pb2.AUDIO_ENCODING_WAV)
            ),
            reference_text=REFERENCE_TEXT,
        ),
        output_format=audio_pb2.AudioFormat(encoding=audio_pb2.AUDIO_ENCODING_PCM16),
        seed=seed,
    )


def gateway_stream(
    stub: tts_gateway_pb2_grpc.TtsGatewayServiceStub, request: tts_gateway_pb2.SynthesizeRequest
) -> StreamSample:
    """One Synthesize call, retried after a refusal as gateway_bench.py does; times are those of the admitted call."""
    refusals = 0
    while True:
        started = time.perf_counter()
        first = None
        audio_s = 0.0
        summary_ttfa = None
        try:
            for chunk in stub.Synthesize(request, timeout=STREAM_TIMEOUT_S):
                if chunk.audio:
                    first = first if first is not None else time.perf_counter() - started
                    audio_s += chunk_seconds(chunk)
                if chunk.is_final and chunk.HasField("summary"):
                    summary_ttfa = chunk.summary.time_to_first_audio.ToNanoseconds() / 1e9
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.RESOURCE_EXHAUSTED or first is not None:
                raise
            refusals += 1
            time.sleep(bounded_retry(retry_delay(exc)))
            continue
        total = time.perf_counter() - started
        if first is None:
            raise RuntimeError("gateway stream ended without audio")
        return StreamSample(first, total, audio_s, summary_ttfa, refusals)


def wait_for_voice(stub: tts_gateway_pb2_grpc.TtsGatewayServiceStub, name: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        voice = stub.GetVoice(tts_gateway_pb2.GetVoiceRequest(name=name), timeout=10).voice
        if voice.available:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"voice {name!r} still unavailable after {timeout_s:.0f} s: {voice.unavailable_reason}")
        time.sleep(0.25)


# ---- the reference cache, as Triton counts it -----------------------------------------------------------------


def cache_counts(triton: TritonServer) -> tuple[float, float]:
    """(hits, misses) of spark_tts's reference-token cache so far."""
    text = scrape(triton.metrics_url)
    return (
        metric(text, "spark_reference_tokens_total", result="hit"),
        metric(text, "spark_reference_tokens_total", result="miss"),
    )


def cache_delta(before: tuple[float, float], after: tuple[float, float]) -> dict[str, int]:
    return {"hits": round(after[0] - before[0]), "misses": round(after[1] - before[1])}


# ---- figures ----------------------------------------------------------------------------------------------------


def finite(value: float | None) -> float | None:
    """JSON has no NaN: an undefined figure is null."""
    return None if value is None or not math.isfinite(value) else round(value, 6)


def spread(values: Sequence[float], quantiles: Sequence[int] = (50, 90, 99)) -> dict[str, float | None]:
    return {f"p{q}": finite(percentile(values, q)) for q in quantiles}


def spread_with_min(values: Sequence[float]) -> dict[str, float | None]:
    """Percentiles plus the minimum: on a shared machine the fastest run is the one least slowed by other work."""
    return {"min": finite(min(values, default=math.nan)), **spread(values)}


def path_figures(samples: Sequence[StreamSample]) -> dict[str, Any]:
    figures: dict[str, Any] = {
        "n": len(samples),
        "ttfa_s": spread_with_min([s.ttfa_s for s in samples]),
        "total_s": spread_with_min([s.total_s for s in samples]),
        "rtf": spread_with_min([s.rtf for s in samples]),
        "audio_s": finite(percentile([s.audio_s for s in samples], 50)),
    }
    summaries = [s.summary_ttfa_s for s in samples if s.summary_ttfa_s is not None]
    if summaries:  # gateway streams only
        figures["summary_ttfa_s"] = spread_with_min(summaries)
    if any(s.refusals for s in samples):
        figures["refusals"] = sum(s.refusals for s in samples)
    return figures


def ratio(a: float | None, b: float | None) -> float | None:
    return finite(a / b) if a is not None and b else None


def ms(value: float | None) -> str:
    return f"{'-':>8}" if value is None else f"{value * 1000:8.1f}"


def num(value: float | None) -> str:
    return f"{'-':>8}" if value is None else f"{value:8.3f}"


# ---- the sections -----------------------------------------------------------------------------------------------


def first_requests(
    triton: TritonServer, stream: SparkStream, stub: tts_gateway_pb2_grpc.TtsGatewayServiceStub, seed: int
) -> dict[str, Any]:
    """One request per path with a reference Triton has not seen yet (each path its own nudged clip)."""
    before = cache_counts(triton)
    direct = direct_stream(stream, make_reference(nudge_at=1000), seed)
    after_direct = cache_counts(triton)
    gateway = gateway_stream(stub, synthesize_request(make_reference(nudge_at=2000), seed))
    after_gateway = cache_counts(triton)
    return {
        "direct": {"ttfa_s": finite(direct.ttfa_s), "total_s": finite(direct.total_s), "audio_s": direct.audio_s},
        "gateway": {
            "ttfa_s": finite(gateway.ttfa_s),
            "summary_ttfa_s": finite(gateway.summary_ttfa_s),
            "total_s": finite(gateway.total_s),
            "audio_s": gateway.audio_s,
        },
        "cache": {"direct": cache_delta(before, after_direct), "gateway": cache_delta(after_direct, after_gateway)},
    }


def sequential_pairs(
    triton: TritonServer,
    stream: SparkStream,
    stub: tts_gateway_pb2_grpc.TtsGatewayServiceStub,
    reference: Reference,
    seed: int,
    pairs: int,
) -> tuple[list[StreamSample], list[StreamSample], dict[str, int]]:
    request = synthesize_request(reference, seed)
    direct: list[StreamSample] = []
    gateway: list[StreamSample] = []
    before = cache_counts(triton)
    for index in range(pairs):
        # Taking turns which path goes first keeps a slow patch of background load from landing on one path only.
        if index % 2 == 0:
            direct.append(direct_stream(stream, reference, seed))
            gateway.append(gateway_stream(stub, request))
        else:
            gateway.append(gateway_stream(stub, request))
            direct.append(direct_stream(stream, reference, seed))
    return direct, gateway, cache_delta(before, cache_counts(triton))


class LevelFailed(RuntimeError):
    """A concurrency level could not finish its streams."""


def describe_error(error: BaseException) -> str:
    """One line: a gRPC status as CODE: details, anything else as its repr."""
    if isinstance(error, grpc.RpcError) and hasattr(error, "code"):
        return f"{error.code().name}: {error.details()}"
    return repr(error)


def triton_crashed(triton: TritonServer) -> bool:
    """tritonserver prints "Signal (11) received." (or another signal) to its log when it crashes."""
    try:
        return "Signal (" in triton.log_path.read_text(errors="replace")
    except OSError:
        return False


def gateway_level(
    stub: tts_gateway_pb2_grpc.TtsGatewayServiceStub,
    request: tts_gateway_pb2.SynthesizeRequest,
    clients: int,
    total: int,
) -> tuple[list[StreamSample], float]:
    """`clients` closed-loop clients share `total` streams; returns the samples and the level's wall time."""
    remaining = total
    samples: list[StreamSample] = []
    failures: list[BaseException] = []
    lock = threading.Lock()

    def client() -> None:
        nonlocal remaining
        while True:
            with lock:
                if remaining <= 0 or failures:
                    return
                remaining -= 1
            try:
                sample = gateway_stream(stub, request)
            except BaseException as exc:  # reported after the level; the other clients stop taking streams
                with lock:
                    failures.append(exc)
                return
            with lock:
                samples.append(sample)

    threads = [threading.Thread(target=client, name=f"spark-bench-client-{i}") for i in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    if failures:
        raise LevelFailed(f"{len(failures)} of {clients} client(s) failed: {describe_error(failures[0])}")
    return samples, wall


def level_figures(clients: int, samples: Sequence[StreamSample], wall_s: float | None) -> dict[str, Any]:
    audio = sum(s.audio_s for s in samples)
    return {
        "concurrency": clients,
        "n": len(samples),
        "ttfa_s": spread([s.ttfa_s for s in samples], (50, 90)),
        "rtf": spread([s.rtf for s in samples], (50, 90)),
        "summary_ttfa_s": spread([s.summary_ttfa_s for s in samples if s.summary_ttfa_s is not None], (50, 90)),
        "wall_s": finite(wall_s),
        "aggregate_rtf": ratio(wall_s, audio) if wall_s is not None else None,
        "refusals": sum(s.refusals for s in samples),
    }


# ---- printing ---------------------------------------------------------------------------------------------------


def print_first(first: dict[str, Any]) -> None:
    direct, gateway, cache = first["direct"], first["gateway"], first["cache"]
    print("\n1) first request with a reference Triton has not seen (cache miss: spark_audio_tokenizer runs)")
    print(
        f"   Triton's reference cache: direct {cache['direct']['misses']} miss(es) {cache['direct']['hits']} hit(s), "
        f"gateway {cache['gateway']['misses']} miss(es) {cache['gateway']['hits']} hit(s); audio per stream: "
        f"direct {direct['audio_s']:.2f} s, gateway {gateway['audio_s']:.2f} s"
    )
    print(
        f"   TTFA direct {ms(direct['ttfa_s']).strip()} ms, gateway {ms(gateway['ttfa_s']).strip()} ms "
        f"(summary {ms(gateway['summary_ttfa_s']).strip()} ms)",
        flush=True,
    )


def print_sequential(result: dict[str, Any]) -> None:
    direct, gateway = result["direct"], result["gateway"]
    print(
        f"\n2) sequential, {direct['n']} pairs (direct, gateway in turn), reference cached "
        f"(Triton cache during the run: {result['cache']['hits']} hits, {result['cache']['misses']} misses)"
    )
    same = "same work" if result["same_audio_length"] else "NOT the same work: check text and reference"
    print(f"   audio per stream: direct {direct['audio_s']:.2f} s, gateway {gateway['audio_s']:.2f} s ({same})")
    columns = ("min", "p50", "p90", "p99")
    print(f"   {'ms (RTF: ratio)':<22}" + "".join(f"{c:>9}" for c in columns))
    rows: list[tuple[str, dict[str, float | None]]] = [
        ("TTFA direct", direct["ttfa_s"]),
        ("TTFA gateway", gateway["ttfa_s"]),
        ("TTFA gateway (summary)", gateway.get("summary_ttfa_s", spread_with_min([]))),
        ("TTFA gateway - direct", result["paired_ttfa_difference_s"]),
        ("total direct", direct["total_s"]),
        ("total gateway", gateway["total_s"]),
    ]
    for label, figures in rows:
        print(f"   {label:<22}" + "".join(f" {ms(figures[c])}" for c in columns))
    print(f"   {'RTF direct':<22}" + "".join(f" {num(direct['rtf'][c])}" for c in columns))
    print(f"   {'RTF gateway':<22}" + "".join(f" {num(gateway['rtf'][c])}" for c in columns))
    print(
        f"   overhead ratio gateway/direct: TTFA p50 {num(result['ttfa_ratio_p50']).strip()}, "
        f"p90 {num(result['ttfa_ratio_p90']).strip()}, min {num(result['ttfa_ratio_min']).strip()}; "
        f"total p50 {num(result['total_ratio_p50']).strip()}",
        flush=True,
    )


def print_level_header() -> None:
    print("\n3) through the gateway at concurrency c (closed loop, seconds; c=1 is the sequential gateway run above)")
    header = ("c", "n", "ttfa p50", "ttfa p90", "summ p50", "rtf p50", "rtf p90", "agg rtf", "refused")
    print("   " + " ".join(f"{h:>8}" for h in header), flush=True)


def print_level(level: dict[str, Any]) -> None:
    print(
        f"   {level['concurrency']:>8} {level['n']:>8} {num(level['ttfa_s']['p50'])} {num(level['ttfa_s']['p90'])} "
        f"{num(level['summary_ttfa_s']['p50'])} {num(level['rtf']['p50'])} {num(level['rtf']['p90'])} "
        f"{num(level['aggregate_rtf'])} {level['refusals']:>8}",
        flush=True,
    )


# ---- driver -----------------------------------------------------------------------------------------------------


def bench(triton: TritonServer, gateway_address: str, args: argparse.Namespace) -> dict[str, Any]:
    reference = make_reference()
    stream = SparkStream(triton.grpc_url)
    channel = grpc.insecure_channel(gateway_address)
    try:
        stub = tts_gateway_pb2_grpc.TtsGatewayServiceStub(channel)
        wait_for_voice(stub, "spark")
        warm_started = time.perf_counter()
        for _ in range(WARMUPS):  # first inference costs (and the clip's one cache miss) out of the figures
            direct_stream(stream, reference, args.seed)
            gateway_stream(stub, synthesize_request(reference, args.seed))
        print(f"warm-up: {WARMUPS} requests per path in {time.perf_counter() - warm_started:.1f} s", flush=True)

        first = first_requests(triton, stream, stub, args.seed)
        print_first(first)

        direct, gateway, cache = sequential_pairs(triton, stream, stub, reference, args.seed, args.requests)
        direct_fig, gateway_fig = path_figures(direct), path_figures(gateway)
        sequential = {
            "direct": direct_fig,
            "gateway": gateway_fig,
            "cache": cache,
            "paired_ttfa_difference_s": spread_with_min(
                [g.ttfa_s - d.ttfa_s for d, g in zip(direct, gateway, strict=True)]
            ),
            "ttfa_ratio_p50": ratio(gateway_fig["ttfa_s"]["p50"], direct_fig["ttfa_s"]["p50"]),
            "ttfa_ratio_p90": ratio(gateway_fig["ttfa_s"]["p90"], direct_fig["ttfa_s"]["p90"]),
            "ttfa_ratio_min": ratio(gateway_fig["ttfa_s"]["min"], direct_fig["ttfa_s"]["min"]),
            "total_ratio_p50": ratio(gateway_fig["total_s"]["p50"], direct_fig["total_s"]["p50"]),
            "same_audio_length": math.isclose(direct_fig["audio_s"], gateway_fig["audio_s"], abs_tol=1e-3),
        }
        print_sequential(sequential)

        levels = []
        request = synthesize_request(reference, args.seed)
        print_level_header()
        for clients in args.concurrency:
            if clients == 1:
                level = level_figures(1, gateway, None)
            else:
                try:
                    level = level_figures(clients, *gateway_level(stub, request, clients, args.requests))
                except LevelFailed as exc:
                    # The figures so far still get printed; the run exits nonzero.
                    crashed = triton_crashed(triton)
                    levels.append({"concurrency": clients, "error": str(exc), "triton_crashed": crashed})
                    print(f"   {clients:>8} failed: {exc}", flush=True)
                    if crashed:
                        print(f"   Triton crashed (see {triton.log_path}); no further levels", flush=True)
                        break
                    continue
            levels.append(level)
            print_level(level)
        print(
            "   summ = the gateway's own time_to_first_audio; rtf = stream time / its audio; agg rtf = level wall "
            "time / all audio of the level; refused = RESOURCE_EXHAUSTED answers, retried"
        )
    finally:
        channel.close()
        stream.close()
    return {
        "benchmark": "spark_bench",
        "note": NOTE,
        "text": TEXT,
        "seed": args.seed,
        "requests": args.requests,
        "first_request": first,
        "sequential": sequential,
        "concurrency": levels,
    }


def csv_ints(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError("give comma-separated integers, e.g. 1,2,4") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError("give at least one positive level, e.g. 1,2,4")
    return values


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=20, help="requests per path, and streams per level (20)")
    parser.add_argument("--concurrency", type=csv_ints, default=[1, 2, 4], help="gateway levels (default 1,2,4)")
    parser.add_argument(
        "--seed", type=int, default=DEFAULT_SEED, help=f"sampling seed of every request ({DEFAULT_SEED})"
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: 4 requests, levels 1,2")
    parser.add_argument(
        "--gateway-flag",
        action="append",
        default=[],
        metavar="FLAG",
        help="extra gateway flag, repeatable; later ones win (e.g. --gateway-flag=--admission-target-load=0.8)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.requests, args.concurrency = 4, [1, 2]
    if args.requests < 1:
        parser.error("--requests must be at least 1")
    if args.seed < 1:
        parser.error("--seed must be positive (0 asks the gateway for a fresh random seed per request)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so the stack this script started is stopped rather than orphaned.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    work = Path(tempfile.mkdtemp(prefix="spark-bench-"))
    started = time.perf_counter()
    checkpoint = make_tiny_checkpoint(work / "Spark-TTS-tiny")
    print(f"tiny checkpoint written in {time.perf_counter() - started:.1f} s ({work})", flush=True)
    with start_triton(
        work / "triton.log", models=SPARK_MODELS, checkpoints={"spark": checkpoint}, params=SPARK_PARAMS
    ) as triton:
        # Nothing listens here: "spark" needs no conversion, so no conversion service is started.
        unused_rvc = f"127.0.0.1:{free_ports(1)[0]}"
        flags = ["--max-concurrent-streams=64", "--admission-target-load=0", "--saved-voices-dir=", *args.gateway_flag]
        gateway = start_spark_gateway(triton, unused_rvc, work, *flags)
        try:
            print(f"stack up in {time.perf_counter() - started:.1f} s; {NOTE}", flush=True)
            if args.gateway_flag:
                print(f"gateway flags: {' '.join(args.gateway_flag)}")
            figures = bench(triton, gateway.address, args)
        finally:
            gateway.stop()
    figures["total_s"] = round(time.perf_counter() - started, 1)
    print(f"\ntotal {figures['total_s']:.1f} s; {NOTE}")
    print(json.dumps(figures, separators=(",", ":")))
    return 1 if any("error" in level for level in figures["concurrency"]) else 0


if __name__ == "__main__":
    sys.exit(main())
