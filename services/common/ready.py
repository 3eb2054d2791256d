"""How a launcher learns that a service is serving, and on which ports: the service prints one JSON line to stdout
(``announce``); launchers (run_stack, the test fixtures, benchmarks) read it with ``parse``. Both ends live here so
the format has one home. Also the loopback port picker those launchers share."""

from __future__ import annotations

import contextlib
import json
import socket
from typing import Any


def ready_line(service: str, port: int, metrics_port: int | None, **extra: object) -> str:
    """The line a service prints once it serves: its name, the ports it bound (0 resolved; `metrics_port` None, printed
    as null, when the exporter is off), and any extra facts."""
    return json.dumps({"service": service, "port": port, "metrics_port": metrics_port, **extra})


def parse_ready_line(line: str | bytes) -> dict[str, Any] | None:
    """The fields of a ready line, or None for any other output (log lines, partial writes)."""
    with contextlib.suppress(ValueError):
        data = json.loads(line)
        if isinstance(data, dict) and "port" in data:
            return data
    return None


def free_loopback_ports(count: int) -> list[int]:
    """Distinct loopback TCP ports that were free a moment ago, for processes that cannot report the port they bound
    (all held open together so none repeats). Prefer port 0 plus the ready line wherever the process supports it."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) for _ in range(count)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in socks]
