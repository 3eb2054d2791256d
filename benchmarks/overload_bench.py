"""Overload without collapse (issue 27): goodput, fairness and listener quality from 8 to 64 clients.

Starts its own stack (Triton with Piper, the conversion service, the gateway), then per level (8, 16, 32, 64 closed-loop
clients by default) and per retry variant runs the clients for ``--seconds``: half of them on voice ``joe``, half on
``joe-world-high`` (a converted voice), each asking for the same five-sentence paragraph again and again. A refused
client waits and tries again:

* ``hint``: the RetryInfo delay the gateway sent, with jitter (uniform in [delay, 2 x delay]);
* ``fixed``: 0.5 s whatever the server said (clients that ignore RetryInfo).

The clients run in a separate process (``--worker``), so the CPU they use is measured apart from the services' (the
sum of utime+stime in /proc/<pid>/stat over each service's process tree). Printed per level and variant:

* admitted streams per minute per voice (admitted inside the level's window), refusals (and per second);
* admission wait p50/p99 (request start to the response headers, which the gateway sends once the stream was admitted
  and planned) and TTFA p50/p99 (request start to first audio, so the wait is included);
* per-stream RTF p50/p99 (admission to last audio / audio duration: how fast an admitted stream is produced);
* streams that stutter for a player with ``--preroll`` (default 100 ms) pre-roll, and the worst gap;
* goodput: seconds of audio that arrived during the level per second;
* CPU seconds of the services and of the clients, service CPU per admitted audio second, gateway CPU per refusal (an
  upper bound: all the gateway's CPU over the refusals).

Streams still running when a level's time is up are finished (not cancelled) and count for the listener figures; only
audio that arrived inside the level's window counts for goodput.

Usage::

    .venv/bin/python -P -m benchmarks.overload_bench --seconds 20
    .venv/bin/python -P -m benchmarks.overload_bench --levels 8,32 --variants hint --seconds 20 \
        --gateway-flag=--admission-queue-length=0     # the old behaviour: refuse what does not fit
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import resource
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

VOICES = ("joe", "joe-world-high")
PARAGRAPH = (
    "The morning train left the station a few minutes late. "
    "Passengers settled into their seats with coffee and newspapers. "
    "Outside, the fields were still covered in a thin layer of frost. "
    "A conductor walked slowly down the aisle, checking every ticket. "
    "By the time the sun was fully up, the city was already in sight."
)
FIXED_RETRY_S = 0.5
CLIENT_DEADLINE_S = 60.0


# ---- the client side (runs in the --worker process) ----------------------------------------------------------------


@dataclass
class Stream:
    voice: str
    started: float
    headers_s: float | None = None
    code: str = "OK"
    arrivals: list[tuple[float, float]] = field(default_factory=list)  # (arrival time, audio seconds)
    retry_delay_s: float | None = None


async def _attempt(stub: Any, voice: str) -> Stream:
    import grpc
    from google.rpc import error_details_pb2

    from services.common.durations import seconds_from_duration
    from services.common.errors import status_details
    from voice.v1 import audio_pb2, tts_gateway_pb2

    request = tts_gateway_pb2.SynthesizeRequest(
        text=PARAGRAPH, voice=voice, output_format=audio_pb2.AudioFormat(encoding=audio_pb2.AUDIO_ENCODING_PCM16)
    )
    stream = Stream(voice, time.perf_counter())
    call = stub.Synthesize(request, timeout=CLIENT_DEADLINE_S)
    try:
        await call.initial_metadata()
        stream.headers_s = time.perf_counter() - stream.started
        async for chunk in call:
            if chunk.HasField("duration"):
                seconds = seconds_from_duration(chunk.duration)
            else:
                rate = chunk.format.sample_rate_hz
                seconds = len(chunk.audio) / 2 / rate if rate > 0 else 0.0
            if seconds > 0:
                stream.arrivals.append((time.perf_counter(), seconds))
    except grpc.aio.AioRpcError as exc:
        stream.code = exc.code().name
        if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
            try:
                for detail in status_details(exc):
                    if isinstance(detail, error_details_pb2.RetryInfo):
                        stream.retry_delay_s = seconds_from_duration(detail.retry_delay)
            except ValueError:
                pass
    return stream


async def _run_clients(address: str, clients: int, seconds: float, variant: str, seed: int) -> dict[str, Any]:
    import grpc

    from voice.v1 import tts_gateway_pb2_grpc

    rng = random.Random(seed)
    streams: list[Stream] = []
    started = time.perf_counter()
    end = started + seconds
    async with grpc.aio.insecure_channel(address) as channel:
        stub = tts_gateway_pb2_grpc.TtsGatewayServiceStub(channel)

        async def client(index: int) -> None:
            voice = VOICES[index % len(VOICES)]
            await asyncio.sleep(rng.uniform(0, 0.5))  # clients do not all arrive in the same millisecond
            while time.perf_counter() < end:
                stream = await _attempt(stub, voice)
                streams.append(stream)
                if stream.code == "RESOURCE_EXHAUSTED" and not stream.arrivals:
                    if variant == "hint" and stream.retry_delay_s is not None:
                        delay = stream.retry_delay_s * (1.0 + rng.random())
                    else:
                        delay = FIXED_RETRY_S
                    await asyncio.sleep(max(0.0, min(delay, end - time.perf_counter())))
                elif stream.code != "OK":
                    await asyncio.sleep(0.1)

        await asyncio.gather(*(client(i) for i in range(clients)))
    return {"started": started, "end": end, "streams": [asdict(s) for s in streams]}


def worker_main(args: argparse.Namespace) -> None:
    result = asyncio.run(_run_clients(args.worker, args.clients, args.seconds, args.variant, args.seed))
    json.dump(result, sys.stdout)


# ---- CPU of process trees -------------------------------------------------------------------------------------------


def _stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, utime+stime seconds) of a live process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / ticks


def tree_cpu_s(root: int) -> float:
    """CPU seconds used so far by `root` and its live descendants (Triton's launcher, server and model stubs)."""
    parents: dict[int, int] = {}
    cpu: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _stat(int(entry))
            if stat is not None:
                parents[int(entry)], cpu[int(entry)] = stat
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        total += cpu.get(pid, 0.0)
        todo.extend(child for child, parent in parents.items() if parent == pid)
    return total


# ---- what the host and the gateway did during a level (sampled by the driver once a second) ------------------------


def _stat_jiffies() -> tuple[float, float]:
    """(idle, all) jiffies of all CPUs since boot."""
    fields = [float(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return fields[3] + fields[4], sum(fields)


class LevelSampler:
    """Once a second: the host's idle jiffies and the gateway's GetStatus (streams running, target load). Runs in a
    thread of the driver so neither the clients nor the services carry it."""

    def __init__(self, address: str) -> None:
        import threading

        self.address = address
        self.samples: list[tuple[float, float, float, int, float]] = []  # (time, idle, all, active, target)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> LevelSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        import grpc

        from voice.v1 import tts_gateway_pb2, tts_gateway_pb2_grpc

        with grpc.insecure_channel(self.address) as channel:
            stub = tts_gateway_pb2_grpc.TtsGatewayServiceStub(channel)
            while not self._stop.wait(1.0):
                try:
                    status = stub.GetStatus(tts_gateway_pb2.TtsGatewayServiceGetStatusRequest(), timeout=1.0)
                except grpc.RpcError:
                    continue
                idle, total = _stat_jiffies()
                self.samples.append(
                    (time.perf_counter(), idle, total, status.active_streams, status.admission.target_load)
                )

    def window(self, start: float, end: float) -> tuple[float, float, float]:
        """(idle share of the host's CPUs, mean streams running, mean target load) inside [start, end]."""
        inside = [s for s in self.samples if start <= s[0] <= end]
        if len(inside) < 2:
            return math.nan, math.nan, math.nan
        idle = (inside[-1][1] - inside[0][1]) / max(1.0, inside[-1][2] - inside[0][2])
        return idle, sum(s[3] for s in inside) / len(inside), sum(s[4] for s in inside) / len(inside)


# ---- the driver -----------------------------------------------------------------------------------------------------


def pct(values: Sequence[float], q: float) -> float:
    from benchmarks.listener import percentile

    return percentile(list(values), q)


@dataclass
class LevelRow:
    clients: int
    variant: str
    seconds: float
    admitted: dict[str, int]
    refusals: int
    failed: int
    wait_p50: float
    wait_p99: float
    ttfa_p50: float
    ttfa_p99: float
    rtf_p50: float
    rtf_p99: float
    stuttered: int
    admitted_total: int
    worst_gap: float
    goodput: float
    service_cpu: float
    gateway_cpu: float
    client_cpu: float
    host_idle: float = math.nan
    streams_mean: float = math.nan
    target_mean: float = math.nan

    def cells(self) -> list[str]:
        per_min = 60.0 / self.seconds
        admitted = "/".join(f"{self.admitted.get(v, 0) * per_min:.0f}" for v in VOICES)
        audio = self.goodput * self.seconds
        return [
            f"{self.clients:>3}",
            f"{self.variant:>5}",
            f"{admitted:>9}",
            f"{self.refusals:>5} ({self.refusals / self.seconds:4.1f}/s)",
            f"{self.wait_p50:5.2f}/{self.wait_p99:5.2f}",
            f"{self.ttfa_p50:5.2f}/{self.ttfa_p99:5.2f}",
            f"{self.rtf_p50:4.2f}/{self.rtf_p99:4.2f}",
            f"{self.stuttered:>3}/{self.admitted_total:<3}",
            f"{self.worst_gap:5.2f}",
            f"{self.goodput:5.2f}",
            f"{self.service_cpu:6.1f}",
            f"{self.client_cpu:5.1f}",
            f"{self.service_cpu / audio if audio else math.nan:5.3f}",
            f"{self.gateway_cpu / self.refusals * 1e3 if self.refusals else math.nan:6.1f}",
            f"{self.failed:>3}",
            f"{self.host_idle:5.1%}",
            f"{self.streams_mean:4.1f}",
            f"{self.target_mean:4.2f}",
        ]


HEADER = [
    "  c",
    "retry",
    "adm/min j/w",
    "refusals     ",
    "wait p50/p99",
    "ttfa p50/p99",
    "rtf p50/p99",
    "stutter",
    "worst",
    " good",
    "svc cpu",
    "cli s",
    "cpu/aud",
    "gw ms/ref",
    "err",
    " idle",
    "strm",
    "trgt",
]


def analyse(
    result: dict[str, Any], clients: int, variant: str, preroll_s: float, cpu: tuple[float, float, float]
) -> LevelRow:
    from benchmarks.listener import Arrival, play

    start, end = result["started"], result["end"]
    streams = [Stream(**{**s, "arrivals": [tuple(a) for a in s["arrivals"]]}) for s in result["streams"]]
    admitted = [s for s in streams if s.arrivals]
    refused = [s for s in streams if s.code == "RESOURCE_EXHAUSTED" and not s.arrivals]
    failed = [s for s in streams if s.code != "OK" and s.arrivals]
    reports = [play(s.started, [Arrival(at, d) for at, d in s.arrivals], preroll_s=preroll_s) for s in admitted]
    # Admissions per minute: the streams admitted inside the level's window (a stream that queued before the end
    # and got in after it belongs to the drain, not to the level).
    counted = [s for s in admitted if s.headers_s is not None and start <= s.started + s.headers_s <= end]
    goodput = sum(d for s in streams for at, d in s.arrivals if start <= at <= end) / (end - start)
    waits = [s.headers_s for s in admitted if s.headers_s is not None]
    # Production speed once admitted: admission (response headers) to last audio, per audio second. The wait is in
    # TTFA already; counted here too, it would read as "slower than real time" for a stream that never stuttered.
    rtfs = [
        (s.arrivals[-1][0] - s.started - s.headers_s) / sum(d for _, d in s.arrivals)
        for s in admitted
        if s.headers_s is not None
    ]
    return LevelRow(
        clients=clients,
        variant=variant,
        seconds=end - start,
        admitted={v: sum(1 for s in counted if s.voice == v) for v in VOICES},
        refusals=len(refused),
        failed=len(failed),
        wait_p50=pct(waits, 50),
        wait_p99=pct(waits, 99),
        ttfa_p50=pct([r.ttfa_s for r in reports], 50),
        ttfa_p99=pct([r.ttfa_s for r in reports], 99),
        rtf_p50=pct(rtfs, 50),
        rtf_p99=pct(rtfs, 99),
        stuttered=sum(1 for r in reports if r.underruns),
        admitted_total=len(reports),
        worst_gap=max((r.worst_stall_s for r in reports), default=0.0),
        goodput=goodput,
        service_cpu=cpu[0],
        gateway_cpu=cpu[1],
        client_cpu=cpu[2],
    )


def run_level(address: str, services: dict[str, int], clients: int, variant: str, args: argparse.Namespace) -> LevelRow:
    before = {name: tree_cpu_s(pid) for name, pid in services.items()}
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    command = [
        sys.executable,
        "-P",
        "-m",
        "benchmarks.overload_bench",
        f"--worker={address}",
        f"--clients={clients}",
        f"--seconds={args.seconds}",
        f"--variant={variant}",
        f"--seed={args.seed + clients}",
    ]
    with LevelSampler(address) as sampler:
        done = subprocess.run(command, check=True, capture_output=True, text=True)
    children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    after = {name: tree_cpu_s(pid) for name, pid in services.items()}
    used = {name: after[name] - before[name] for name in services}
    client_cpu = (children_after.ru_utime + children_after.ru_stime) - (
        children_before.ru_utime + children_before.ru_stime
    )
    result = json.loads(done.stdout)
    if args.raw_dir is not None:
        args.raw_dir.mkdir(parents=True, exist_ok=True)
        (args.raw_dir / f"{variant}-{clients}.json").write_text(done.stdout)
    row = analyse(result, clients, variant, args.preroll, (sum(used.values()), used["gateway"], client_cpu))
    row.host_idle, row.streams_mean, row.target_mean = sampler.window(result["started"], result["end"])
    return row


def print_table(rows: list[LevelRow]) -> None:
    widths = [max(len(h), *(len(r.cells()[i]) for r in rows)) for i, h in enumerate(HEADER)]
    print("  ".join(h.rjust(w) for h, w in zip(HEADER, widths, strict=True)))
    for row in rows:
        print("  ".join(c.rjust(w) for c, w in zip(row.cells(), widths, strict=True)))


def judge(rows: list[LevelRow]) -> None:
    for variant in sorted({r.variant for r in rows}):
        mine = {r.clients: r for r in rows if r.variant == variant}
        base = mine.get(min(mine))
        if base is None:
            continue
        for clients, row in sorted(mine.items()):
            ratio = row.goodput / base.goodput if base.goodput else math.nan
            counts = [row.admitted.get(v, 0) for v in VOICES]
            spread = (max(counts) - min(counts)) / max(1, min(counts)) if min(counts) else math.inf
            print(
                f"{variant:>5} c={clients:<3} goodput {ratio:6.1%} of c={base.clients}  "
                f"stuttered {row.stuttered}/{row.admitted_total}  "
                f"voice spread {spread:.0%} ({counts[0]} vs {counts[1]})"
            )


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--levels", default="8,16,32,64", help="client counts, comma-separated")
    parser.add_argument("--variants", default="hint,fixed", help="retry variants: hint (RetryInfo + jitter), fixed")
    parser.add_argument("--seconds", type=float, default=60.0, help="seconds per level")
    parser.add_argument("--preroll", type=float, default=0.1, help="listener pre-roll, seconds")
    parser.add_argument("--seed", type=int, default=27)
    parser.add_argument("--gateway-flag", action="append", default=[], help="extra gateway flag, repeatable")
    parser.add_argument("--rvc-flag", action="append", default=[], help="extra conversion-service flag, repeatable")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--raw-dir", type=Path, help="also write every attempt of each level here (JSON per level)")
    # worker mode (internal): run the clients of one level against --worker=ADDRESS, print JSON
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--clients", type=int, default=8, help=argparse.SUPPRESS)
    parser.add_argument("--variant", default="hint", help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = make_parser().parse_args(argv)
    if args.worker:
        worker_main(args)
        return
    from tests.fixtures.gateway import start_gateway
    from tests.fixtures.rvc_service import start_rvc_service
    from tests.fixtures.triton_server import start_triton

    signal.signal(signal.SIGTERM, signal.default_int_handler)
    levels = [int(x) for x in args.levels.split(",")]
    variants = [v.strip() for v in args.variants.split(",")]
    log_dir = Path(tempfile.mkdtemp(prefix="overload-bench-"))
    rows: list[LevelRow] = []
    with start_triton(log_dir / "triton.log") as triton:
        rvc = start_rvc_service(*args.rvc_flag, log_dir=log_dir)
        gateway = start_gateway(
            triton.grpc_url, rvc.address, "--saved-voices-dir=", *args.gateway_flag, log_dir=log_dir
        )
        services = {"triton": triton.process.pid, "rvc": rvc.process.pid, "gateway": gateway.process.pid}
        try:
            print(f"stack up (logs in {log_dir}); gateway flags: {' '.join(args.gateway_flag) or '(defaults)'}")
            print(f"{os.cpu_count()} cores; {args.seconds:g} s per level; voices {' / '.join(VOICES)}; paragraph "
                  f"of 5 sentences; player pre-roll {args.preroll * 1e3:.0f} ms")  # fmt: skip
            run_level(gateway.address, services, 2, "hint", argparse.Namespace(**{**vars(args), "seconds": 8.0}))
            for variant in variants:
                for clients in levels:
                    row = run_level(gateway.address, services, clients, variant, args)
                    rows.append(row)
                    print_table([row])
                    sys.stdout.flush()
        finally:
            gateway.stop()
            rvc.stop()
    print("\nadm/min j/w: admitted streams per minute, joe / joe-world-high; wait: request to response headers (s); "
          "ttfa includes the wait; rtf: (last audio - admission) / audio; stutter: admitted streams with an underrun / "
          "admitted; worst: longest gap (s); good: audio s per s; svc cpu: Triton+RVC+gateway CPU s; cli s: client "
          "process CPU s; cpu/aud: service CPU s per audio s; gw ms/ref: gateway CPU ms per refusal (upper bound); "
          "idle: the host's idle CPU share in the level's window; strm, trgt: streams running, admission target "
          "(means per second)")  # fmt: skip
    print_table(rows)
    judge(rows)
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=2))


if __name__ == "__main__":
    main()
