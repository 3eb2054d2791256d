"""Suite-wide fixtures. Service fixtures live in tests/fixtures/ as plugins so every test package can use them."""

from __future__ import annotations

from pathlib import Path

from services.common.ready import free_loopback_ports

REPO_ROOT = Path(__file__).resolve().parent.parent

pytest_plugins = [
    "tests.fixtures.triton_server",
    "tests.fixtures.rvc_service",
    "tests.fixtures.gateway",
    "tests.fixtures.spark",
    "tests.fixtures.orpheus",
    "tests.fixtures.cosyvoice2",
    "tests.fixtures.http_edge",
]


def free_port() -> int:
    """A TCP port that was free a moment ago on loopback (for processes that cannot report the port they bound)."""
    (port,) = free_loopback_ports(1)
    return port
