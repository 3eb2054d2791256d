"""Saved voices for a fleet: how fast a voice saved through one replica is usable on another, and what the
PostgreSQL store costs a saved voice's time to first audio next to the directory store.

    .venv/bin/python -P -m benchmarks.saved_voices_bench [--voices 100] [--requests 15]

Starts a real PostgreSQL server (tests.fixtures.postgres), Triton with the tiny Spark-TTS checkpoint, two gateways on
one database (A, B) and one on a saved-voices directory (D). Then:

* propagation: CreateVoice on A; from the moment it returns, GetVoice on B in a tight loop until it answers; p50/p99
  over `--voices` voices (each is deleted afterwards, and the delete's propagation is timed the same way);
* TTFA: one voice with the same reference saved on B (database) and on D (directory); after one warm-up request
  each (the reference is then cached, resampled, in both), `--requests` Synthesize calls alternate between them;
  time to the first audio chunk (the call is cancelled there), p50 each and their ratio (goal <= 1.05).

Prints a summary and one JSON line.
"""

from __future__ import annotations

import argparse
import io
import json
import signal
import sys
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np
import soundfile as sf

from benchmarks.listener import percentile
from tests.fixtures.postgres import PostgresServer
from tests.fixtures.spark import SPARK_MODELS, SPARK_PARAMS, make_tiny_checkpoint, start_spark_gateway
from tests.fixtures.triton_server import free_ports, start_triton
from tests.spark.helpers import RATE, speech_like
from voice.v1 import audio_pb2, tts_gateway_pb2, tts_gateway_pb2_grpc

Stub = tts_gateway_pb2_grpc.TtsGatewayServiceStub
TRANSCRIPT = "This is how I sound when I read aloud."
TEXT = "Hello from a saved voice."


def reference(seed: int) -> audio_pb2.AudioInput:
    buffer = io.BytesIO()
    sf.write(buffer, speech_like(2.0, seed=seed), RATE, format="WAV", subtype="PCM_16")
    return audio_pb2.AudioInput(
        audio=buffer.getvalue(), format=audio_pb2.AudioFormat(encoding=audio_pb2.AUDIO_ENCODING_WAV)
    )


def create(stub: Stub, name: str, seed: int) -> None:
    request = tts_gateway_pb2.CreateVoiceRequest(name=name, base_voice="spark", reference_text=TRANSCRIPT)
    request.reference_audio.CopyFrom(reference(seed))
    stub.CreateVoice(request, timeout=120)


def known(stub: Stub, name: str) -> bool:
    try:
        stub.GetVoice(tts_gateway_pb2.GetVoiceRequest(name=name), timeout=10)
    except grpc.RpcError as exc:
        if exc.code() == grpc.StatusCode.NOT_FOUND:
            return False
        raise
    return True


def wait_for(predicate: object, limit_s: float = 10.0) -> float:
    start = time.perf_counter()
    while not predicate():  # type: ignore[operator]
        if time.perf_counter() - start > limit_s:
            raise TimeoutError(f"not within {limit_s} s")
    return time.perf_counter() - start


def ttfa(stub: Stub, voice: str, seed: int) -> float:
    request = tts_gateway_pb2.SynthesizeRequest(
        text=TEXT, voice=voice, seed=seed, output_format=audio_pb2.AudioFormat(encoding=audio_pb2.AUDIO_ENCODING_PCM16)
    )
    start = time.perf_counter()
    call = stub.Synthesize(request, timeout=300)
    for chunk in call:
        if chunk.audio:
            first = time.perf_counter() - start
            call.cancel()  # the rest of the stream does not change the figure; the gateway cancels Triton's part
            return first
    raise RuntimeError("the stream ended without audio")


def propagation(a: Stub, b: Stub, count: int) -> dict[str, float]:
    created, deleted = [], []
    for i in range(count):
        name = f"bench-{i}"
        create(a, name, i)
        created.append(wait_for(lambda name=name: known(b, name)))
    for i in range(count):
        name = f"bench-{i}"
        a.DeleteVoice(tts_gateway_pb2.DeleteVoiceRequest(name=name), timeout=30)
        deleted.append(wait_for(lambda name=name: not known(b, name)))
    return {
        "create_p50_ms": round(1000 * percentile(created, 50), 2),
        "create_p99_ms": round(1000 * percentile(created, 99), 2),
        "create_max_ms": round(1000 * max(created), 2),
        "delete_p50_ms": round(1000 * percentile(deleted, 50), 2),
        "delete_p99_ms": round(1000 * percentile(deleted, 99), 2),
    }


def ttfa_ratio(database: Stub, directory: Stub, requests: int) -> dict[str, float]:
    for stub in (database, directory):
        create(stub, "ttfa-voice", 1234)
        ttfa(stub, "ttfa-voice", 1)  # warm-up: the reference is cached (resampled) from here on
    times: dict[str, list[float]] = {"database": [], "directory": []}
    for i in range(requests):
        order = [("database", database), ("directory", directory)]
        for kind, stub in order if i % 2 == 0 else order[::-1]:
            times[kind].append(ttfa(stub, "ttfa-voice", 7))
    db, local = float(np.median(times["database"])), float(np.median(times["directory"]))
    return {
        "database_p50_ms": round(1000 * db, 2),
        "directory_p50_ms": round(1000 * local, 2),
        "database_p90_ms": round(1000 * percentile(times["database"], 90), 2),
        "directory_p90_ms": round(1000 * percentile(times["directory"], 90), 2),
        "ratio_p50": round(db / local, 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--voices", type=int, default=100, help="voices whose propagation is timed")
    parser.add_argument("--requests", type=int, default=15, help="Synthesize calls per store for TTFA")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    work = Path(tempfile.mkdtemp(prefix="saved-voices-bench-"))
    database = PostgresServer.start_new()
    started = []
    try:
        url = database.create_database("bench")
        checkpoint = make_tiny_checkpoint(work / "Spark-TTS-tiny")
        with start_triton(
            work / "triton.log", models=SPARK_MODELS, checkpoints={"spark": checkpoint}, params=SPARK_PARAMS
        ) as triton:
            unused_rvc = f"127.0.0.1:{free_ports(1)[0]}"  # "spark" needs no conversion
            flags = ["--admission-target-load=0", "--max-saved-voices=1000"]
            for name, store in (("a", f"--saved-voices-database={url}"), ("b", f"--saved-voices-database={url}")):
                (work / name).mkdir()
                started.append(start_spark_gateway(triton, unused_rvc, work / name, *flags, store))
            (work / "d").mkdir()
            started.append(
                start_spark_gateway(triton, unused_rvc, work / "d", *flags, f"--saved-voices-dir={work / 'd' / 's'}")
            )
            channels = [grpc.insecure_channel(g.address) for g in started]
            a, b, d = (Stub(c) for c in channels)
            figures = {"propagation": propagation(a, b, args.voices), "ttfa": ttfa_ratio(b, d, args.requests)}
    finally:
        for gateway in started:
            gateway.stop()
        database.destroy()
    p, t = figures["propagation"], figures["ttfa"]
    print(
        f"propagation over {args.voices} voices (CreateVoice on A returned -> GetVoice on B finds it): "
        f"p50 {p['create_p50_ms']} ms, p99 {p['create_p99_ms']} ms, max {p['create_max_ms']} ms; "
        f"delete p50 {p['delete_p50_ms']} ms, p99 {p['delete_p99_ms']} ms"
    )
    print(
        f"TTFA of a cached saved voice over {args.requests} requests each: database {t['database_p50_ms']} ms, "
        f"directory {t['directory_p50_ms']} ms (p50), ratio {t['ratio_p50']}"
    )
    print(json.dumps(figures, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
