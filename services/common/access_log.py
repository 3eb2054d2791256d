"""Access logging that stays readable at production rates.

Health checks, status polls and reflection are probes: kubelets, meshes and every gateway replica send them every few
seconds (170k lines a day per gateway replica when each was logged at INFO), so they are logged at DEBUG only.
Other RPCs that end with an error are logged one by one at INFO, except refusals under load (RESOURCE_EXHAUSTED):
past capacity they arrive by the hundred per second, and a line each would cost the CPU the refusal was meant to
save, so they are counted and written as one line per `shed_interval_s` per method. Successful RPCs are, by default,
counted and written as one summary line per interval (count, errors and latency per method); `--access-log all`
logs each of them, refusals included, instead.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc

log = logging.getLogger("services.access")

ACCESS_LOG_MODES = ("summary", "all", "errors")
PROBE_SERVICES = frozenset(
    {"grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"}
)
PROBE_METHODS = frozenset({"GetStatus"})
SHED_CODES = frozenset({grpc.StatusCode.RESOURCE_EXHAUSTED})


def is_probe(service: str, method: str) -> bool:
    return service in PROBE_SERVICES or method in PROBE_METHODS


@dataclass
class _MethodTally:
    calls: int = 0
    errors: int = 0
    total_ms: float = 0.0
    max_ms: float = 0.0
    codes: dict[str, int] = field(default_factory=dict)


class AccessLog:
    """Decides, per finished RPC, whether it gets its own line, goes into the periodic summary, or only to DEBUG."""

    def __init__(
        self,
        mode: str = "summary",
        interval_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        *,
        shed_interval_s: float = 10.0,
    ) -> None:
        if mode not in ACCESS_LOG_MODES:
            raise ValueError(f"access log mode must be one of {', '.join(ACCESS_LOG_MODES)}, not {mode!r}")
        self.mode = mode
        self.interval_s = interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._tallies: dict[str, _MethodTally] = {}
        self._window_start = clock()
        self.shed_interval_s = shed_interval_s
        self._shed: dict[str, int] = {}
        self._shed_window_start = clock()

    def record(self, service: str, method: str, code: grpc.StatusCode, elapsed_s: float) -> None:
        fields = {
            "grpc_method": f"{service}/{method}",
            "grpc_code": code.name,
            "duration_ms": round(elapsed_s * 1e3, 1),
        }
        if is_probe(service, method):
            log.debug("rpc finished", extra=fields)
            return
        if code in SHED_CODES and self.mode != "all":
            self._count_refusal(f"{service}/{method}")
        elif code is not grpc.StatusCode.OK or self.mode == "all":
            log.info("rpc finished", extra=fields)
        if self.mode == "summary":
            self._tally(f"{service}/{method}", code, elapsed_s * 1e3)
            self.flush_if_due()

    def _count_refusal(self, name: str) -> None:
        with self._lock:
            self._shed[name] = self._shed.get(name, 0) + 1
            due = self._clock() - self._shed_window_start >= self.shed_interval_s
        if due:
            self.flush_refusals()

    def flush_refusals(self) -> None:
        """Write the refusals counted since the last refusal line (nothing when there were none)."""
        with self._lock:
            shed, self._shed = self._shed, {}
            window_s, self._shed_window_start = self._clock() - self._shed_window_start, self._clock()
        if shed:
            log.info(
                "refused under load: %d calls in %.0f s",
                sum(shed.values()),
                window_s,
                extra={"grpc_code": "RESOURCE_EXHAUSTED", "refusals": dict(sorted(shed.items()))},
            )

    def _tally(self, name: str, code: grpc.StatusCode, elapsed_ms: float) -> None:
        with self._lock:
            tally = self._tallies.setdefault(name, _MethodTally())
            tally.calls += 1
            tally.errors += code is not grpc.StatusCode.OK
            tally.total_ms += elapsed_ms
            tally.max_ms = max(tally.max_ms, elapsed_ms)
            tally.codes[code.name] = tally.codes.get(code.name, 0) + 1

    def flush_if_due(self) -> None:
        if self._clock() - self._window_start >= self.interval_s:
            self.flush()

    def flush(self) -> None:
        """Write one summary line for the RPCs since the last one (nothing when there were none)."""
        with self._lock:
            tallies, self._tallies = self._tallies, {}
            window_s, self._window_start = self._clock() - self._window_start, self._clock()
        if not tallies:
            return
        methods = {
            name: {
                "calls": t.calls,
                "errors": t.errors,
                "mean_ms": round(t.total_ms / t.calls, 1),
                "max_ms": round(t.max_ms, 1),
                "codes": t.codes,
            }
            for name, t in sorted(tallies.items())
        }
        calls = sum(t.calls for t in tallies.values())
        log.info("rpc summary: %d calls in %.0f s", calls, window_s, extra={"rpc_summary": methods})
