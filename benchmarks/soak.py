#!/usr/bin/env python3
"""Soak: N closed-loop clients for M minutes against a stack of its own, with a mix of voices (`make soak`).

Starts Triton, the conversion service and the gateway on free loopback ports (the gateway with its default flags plus
any --gateway-flag), then runs --clients clients for --minutes. Client i's k-th stream uses voice
(i + k) mod len(--voices), so every voice runs all the time, and one of four texts of two to four sentences. A
refused request (RESOURCE_EXHAUSTED before any audio) is counted and retried after its RetryInfo delay bounded to
[0.05, 2] s; clients finish their stream in flight when the time is up (or when a stack process dies). Every
admitted stream goes through the player model of benchmarks/listener.py.

Printed: per voice, admitted and refused streams, status codes, time to first audio and per-stream RTF p50/p99,
underruns and worst stall; and the resident memory (VmRSS, plus RssAnon, the private heap part) of every process of
the stack: gateway, conversion service, the Triton launcher, tritonserver and each triton_python_backend_stub (found
through /proc as descendants of the launcher), at the start, every --sample-seconds and at the end.

Exit status: 0 when every admitted stream ended OK and no process's RSS grew by more than --rss-growth-limit between
the end of the warm-up (--warmup-seconds) and the end; 1 on a failed admitted stream (any code other than OK; refusals
are fine); 2 on RSS growth over the bound or a stack process that died; 3 when both happened.

Run: .venv/bin/python benchmarks/soak.py [--clients 16] [--minutes 5] [--voices joe,joe-whole,joe-world-high]
         [--rss-growth-limit 0.25]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from benchmarks.gateway_bench import Attempt, bounded_retry, csv_list, listen
from benchmarks.listener import describe, percentile, summarize
from tests.fixtures.gateway import start_gateway
from tests.fixtures.rvc_service import start_rvc_service
from tests.fixtures.triton_server import start_triton
from voice.v1 import tts_gateway_pb2_grpc

DEFAULT_VOICES = ("joe", "joe-whole", "joe-world-high")
# Several sentences each, so streamed voices send several chunks and a slow stream can underrun; sentence lengths
# vary from a few words to a long one, so the models see many input shapes (a cache keyed by shape shows up as
# growth that a single repeated text would hide).
TEXTS = (
    "Welcome back to the evening news. Heavy rain is expected across the north tonight. "
    "Drivers should allow extra time for the morning commute.",
    "Yes. The meeting moved to Thursday afternoon, right after lunch, in the large room on the third floor "
    "next to the library, because the usual room is being painted this week. Bring the budget.",
    "Thank you for calling. Your order has shipped and should arrive within three to five business days. "
    "If anything is missing, reply to the confirmation email and we will sort it out.",
    "Turn left at the second light. Keep going for about two miles until you pass the old mill, then take the "
    "narrow road that climbs the hill behind the church and park by the gate. Walk the rest.",
)


# ---- processes and their memory, from /proc --------------------------------------------------------------------


def _status_kb(pid: int) -> dict[str, int]:
    """VmRSS and RssAnon (kB) from /proc/<pid>/status; empty when the process is gone."""
    values: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "RssAnon"):
                    values[key] = int(rest.split()[0])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return {}
    return values


def _parent_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            stat = fh.read()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) may hold spaces and parentheses; the fields after its last ')' are fixed.
    return int(stat.rsplit(")", 1)[1].split()[1])


def descendants(root: int) -> list[int]:
    """Every live process below `root`, parents before children."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            parent = _parent_of(int(entry))
            if parent is not None:
                children.setdefault(parent, []).append(int(entry))
    found: list[int] = []
    queue = sorted(children.get(root, []))
    while queue:
        pid = queue.pop(0)
        found.append(pid)
        queue.extend(sorted(children.get(pid, [])))
    return found


def _cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return [part.decode(errors="replace") for part in fh.read().split(b"\0") if part]
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return []


def process_label(pid: int) -> str:
    """A readable name: the stub's model instance (e.g. `stub piper_tts_0_0`), else the program name."""
    argv = _cmdline(pid)
    if not argv:
        return f"pid {pid}"
    program = Path(argv[0]).name
    if program == "triton_python_backend_stub":
        # argv: stub model.py shm-region shm-size shm-growth parent-pid python-lib ipc-socket instance-name ...
        model_dir = Path(argv[1]).parent.parent.name if len(argv) > 1 else "?"
        instance = next((a for a in argv[2:] if a.startswith(model_dir + "_")), model_dir)
        return f"stub {instance}"
    if program.startswith("python"):
        script = next((a for a in argv[1:] if a.endswith(".py")), "")
        return f"triton launcher ({Path(script).name})" if script else program
    return program


@dataclass
class Tracked:
    label: str
    pid: int


@dataclass
class Sample:
    at_s: float  # seconds since the soak started
    kb: dict[int, dict[str, int]]  # pid -> {"VmRSS": .., "RssAnon": ..}


@dataclass
class MemoryLog:
    """The stack's processes (found again at every sample: a restarted stub shows up as a new row)."""

    fixed: list[Tracked]
    triton_launcher: int
    processes: dict[int, str] = field(default_factory=dict)
    samples: list[Sample] = field(default_factory=list)

    def sample(self, at_s: float) -> Sample:
        tracked = [*self.fixed, Tracked("triton launcher", self.triton_launcher)]
        tracked += [Tracked(process_label(pid), pid) for pid in descendants(self.triton_launcher)]
        kb: dict[int, dict[str, int]] = {}
        for item in tracked:
            values = _status_kb(item.pid)
            if values:
                self.processes.setdefault(item.pid, item.label)
                kb[item.pid] = values
        taken = Sample(at_s, kb)
        self.samples.append(taken)
        return taken

    def line(self, sample: Sample) -> str:
        parts = [f"{self.processes[pid]} {v.get('VmRSS', 0) / 1024:.0f}" for pid, v in sample.kb.items()]
        return f"t={sample.at_s:5.0f}s RSS MB: " + ", ".join(parts)


def memory_table(log: MemoryLog, baseline: Sample) -> tuple[str, list[tuple[str, float]]]:
    """RSS (MB) of every process at every sample, growth from `baseline` to the last sample, and the growths."""
    samples = log.samples
    head = f"{'process':<28} {'pid':>7} " + " ".join(f"{f't={s.at_s:.0f}':>7}" for s in samples)
    head += f" {'growth':>8} {'anon@base':>9} {'anon@end':>8}"
    rows = [head]
    growths: list[tuple[str, float]] = []
    stub_total = [0.0] * len(samples)
    for pid, label in log.processes.items():
        cells = []
        for i, s in enumerate(samples):
            rss = s.kb.get(pid, {}).get("VmRSS")
            cells.append(f"{rss / 1024:7.0f}" if rss is not None else f"{'-':>7}")
            if rss is not None and label.startswith("stub "):
                stub_total[i] += rss / 1024
        base = baseline.kb.get(pid, {})
        end = samples[-1].kb.get(pid, {})
        if base.get("VmRSS") and end.get("VmRSS"):
            growth = end["VmRSS"] / base["VmRSS"] - 1
            growths.append((label, growth))
            growth_text = f"{growth * 100:+7.1f}%"
        else:
            growth_text = f"{'gone' if not end else 'new':>8}"
        anon = f"{base.get('RssAnon', 0) / 1024:9.0f} {end.get('RssAnon', 0) / 1024:8.0f}"
        rows.append(f"{label:<28} {pid:>7} " + " ".join(cells) + f" {growth_text} {anon}")
    if any(stub_total):
        base_index = samples.index(baseline)
        total_growth = stub_total[-1] / stub_total[base_index] - 1 if stub_total[base_index] else 0.0
        rows.append(
            f"{'all python stubs':<28} {'':>7} "
            + " ".join(f"{v:7.0f}" for v in stub_total)
            + f" {total_growth * 100:+7.1f}%"
        )
    return "\n".join(rows), growths


# ---- the load --------------------------------------------------------------------------------------------------


@dataclass
class Run:
    """Shared state of the load: when it ends (earlier when a stack process dies) and what happened."""

    end: float
    attempts: list[Attempt] = field(default_factory=list)
    died: dict[str, float] = field(default_factory=dict)  # process -> seconds into the soak


# After a failed stream, wait a little: a dead upstream would otherwise turn each client into a busy loop.
FAILED_PAUSE_S = 0.2


async def soak(
    address: str, args: argparse.Namespace, memory: MemoryLog, started: float, alive: dict[str, Callable[[], bool]]
) -> Run:
    run = Run(end=started + args.minutes * 60)

    async def client(index: int) -> None:
        k = 0
        while time.perf_counter() < run.end:
            voice = args.voices[(index + k) % len(args.voices)]
            text = TEXTS[(index + k // len(args.voices)) % len(TEXTS)]
            k += 1
            while True:  # one ticket: retried while refused, as long as the soak lasts
                attempt = await listen(stub, text, voice)
                run.attempts.append(attempt)
                if not attempt.refused:
                    break
                wait = bounded_retry(attempt.retry_delay_s)
                if time.perf_counter() + wait > run.end:
                    break
                await asyncio.sleep(wait)
            if attempt.code != grpc.StatusCode.OK and not attempt.refused:
                await asyncio.sleep(FAILED_PAUSE_S)

    async def sampler() -> None:
        next_at = started + args.sample_seconds
        while next_at < run.end - 1:
            await asyncio.sleep(max(0.0, min(next_at, run.end) - time.perf_counter()))
            if time.perf_counter() >= run.end:
                return
            # /proc reads are quick, but run them off the event loop so arrival times stay honest.
            sample = await asyncio.to_thread(memory.sample, time.perf_counter() - started)
            admitted = sum(1 for a in run.attempts if not a.refused)
            print(f"{memory.line(sample)}; streams admitted so far {admitted}", flush=True)
            next_at += args.sample_seconds

    async def watchdog() -> None:
        # A dead stack process ends the soak: every later stream would only repeat the same failure.
        while time.perf_counter() < run.end:
            await asyncio.sleep(1.0)
            for name, is_alive in alive.items():
                if name not in run.died and not is_alive():
                    run.died[name] = time.perf_counter() - started
                    print(f"{name} died at t={run.died[name]:.0f}s: ending the soak", flush=True)
                    run.end = time.perf_counter()

    async with grpc.aio.insecure_channel(address) as channel:
        stub = tts_gateway_pb2_grpc.TtsGatewayServiceStub(channel)
        helpers = [asyncio.create_task(sampler()), asyncio.create_task(watchdog())]
        await asyncio.gather(*(client(i) for i in range(args.clients)))
        for helper in helpers:
            helper.cancel()
    return run


def print_streams(attempts: list[Attempt], voices: list[str], preroll_s: float) -> list[Attempt]:
    """Per-voice table; returns the admitted attempts that failed."""
    print(f"\nstreams ({describe(preroll_s)})")
    print(
        f"{'voice':>15} {'admit':>6} {'refus':>6} {'ref p99':>8} {'ttfa p50':>8} {'ttfa p99':>8} {'rtf p50':>7} "
        f"{'rtf p99':>7} {'s/und':>6} {'und':>6} {'worst':>6} {'failed':>6}"
    )
    failed: list[Attempt] = []
    for voice in voices:
        mine = [a for a in attempts if a.voice == voice]
        admitted = [a for a in mine if not a.refused]
        refusal_ms = [a.latency_s * 1000 for a in mine if a.refused]
        bad = [a for a in admitted if a.code != grpc.StatusCode.OK]
        failed += bad
        reports = [r for r in (a.report(preroll_s) for a in admitted if a.code == grpc.StatusCode.OK) if r]
        s = summarize(reports)
        print(
            f"{voice:>15} {len(admitted):>6} {len(refusal_ms):>6} {percentile(refusal_ms, 99):8.1f} "
            f"{s.ttfa_p50:8.3f} {s.ttfa_p99:8.3f} {s.rtf_p50:7.3f} {s.rtf_p99:7.3f} {s.streams_with_underrun:>6} "
            f"{s.underruns:>6} {s.worst_stall_s:6.2f} {len(bad):>6}"
        )
    codes = Counter(("refused " if a.refused else "") + a.code.name for a in attempts)
    print("status codes: " + ", ".join(f"{code} {n}" for code, n in codes.most_common()))
    for attempt in failed[:10]:
        print(f"  failed {attempt.voice}: {attempt.code.name}: {attempt.message[:160]}")
    return failed


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=16, help="concurrent closed-loop clients (default 16)")
    parser.add_argument("--minutes", type=float, default=5.0, help="how long to offer load (default 5)")
    parser.add_argument(
        "--voices", type=csv_list(str), default=list(DEFAULT_VOICES), help=f"default {','.join(DEFAULT_VOICES)}"
    )
    parser.add_argument(
        "--rss-growth-limit",
        type=float,
        default=0.25,
        help="largest allowed RSS growth of any process, end vs end of warm-up, as a fraction (default 0.25)",
    )
    parser.add_argument(
        "--warmup-seconds",
        type=float,
        default=60.0,
        help="RSS baseline is the first sample at or after this (default 60; the start sample for shorter soaks)",
    )
    parser.add_argument("--sample-seconds", type=float, default=60.0, help="RSS sampling period (default 60)")
    parser.add_argument("--preroll", type=float, default=0.1, help="player pre-roll in seconds (default 0.1)")
    parser.add_argument(
        "--gateway-flag", action="append", default=[], metavar="FLAG", help="extra gateway flag, repeatable"
    )
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = make_parser()
    args = parser.parse_args(argv)
    if args.clients < 1 or args.minutes <= 0 or args.sample_seconds <= 0 or args.rss_growth_limit <= 0:
        parser.error("--clients, --minutes, --sample-seconds and --rss-growth-limit must be positive")
    return args


def pick_baseline(samples: list[Sample], warmup_s: float) -> Sample:
    """The first sample at or after the warm-up, unless that is the last one (then the start sample)."""
    for candidate in samples[:-1]:
        if candidate.at_s >= warmup_s:
            return candidate
    return samples[0]


def main() -> int:
    args = parse_args()
    # SIGTERM unwinds like Ctrl-C, so the stack this script started is stopped rather than orphaned.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    log_dir = Path(tempfile.mkdtemp(prefix="soak-"))
    print(
        f"soak: {args.clients} clients for {args.minutes:g} min, voices {','.join(args.voices)}, "
        f"RSS growth limit {args.rss_growth_limit:.0%} after {args.warmup_seconds:g} s warm-up (logs in {log_dir})",
        flush=True,
    )
    with start_triton(log_dir / "triton.log") as triton:
        rvc = start_rvc_service(log_dir=log_dir)
        gateway = start_gateway(triton.grpc_url, rvc.address, *args.gateway_flag, log_dir=log_dir)
        memory = MemoryLog(
            [Tracked("gateway", gateway.process.pid), Tracked("rvc_service", rvc.process.pid)], triton.process.pid
        )
        alive: dict[str, Callable[[], bool]] = {
            "gateway": lambda: gateway.running,
            "rvc_service": lambda: rvc.running,
            "triton": triton.alive,
        }
        try:
            started = time.perf_counter()
            print(memory.line(memory.sample(0.0)), flush=True)
            run = asyncio.run(soak(gateway.address, args, memory, started, alive))
            final = memory.sample(time.perf_counter() - started)
            print(memory.line(final))
            dead = [name for name, is_alive in alive.items() if not is_alive()]
        finally:
            gateway.stop()
            rvc.stop()
        if "triton" in dead:
            # Its last words (a crash trace) belong in the soak's output, not only in a temporary log.
            print("triton log tail:\n" + triton.log_tail(20))

    attempts = run.attempts
    failed = print_streams(attempts, args.voices, args.preroll)
    baseline = pick_baseline(memory.samples, args.warmup_seconds)
    table, growths = memory_table(memory, baseline)
    print(f"\nresident memory, MB (growth: t={baseline.at_s:.0f}s -> t={final.at_s:.0f}s; anon = RssAnon)")
    print(table)

    status = 0
    if failed:
        print(f"FAIL: {len(failed)} admitted stream(s) did not end OK")
        status |= 1
    over = [(label, g) for label, g in growths if g > args.rss_growth_limit]
    for label, growth in over:
        print(f"FAIL: {label} RSS grew {growth:.0%}, over the {args.rss_growth_limit:.0%} limit")
    if dead:
        print(f"FAIL: died during the soak: {', '.join(dead)}")
    if over or dead:
        status |= 2
    if not any(not a.refused for a in attempts):
        print("FAIL: no stream was admitted")
        status |= 1
    print("PASS" if status == 0 else f"exit {status}")
    return status


if __name__ == "__main__":
    sys.exit(main())
