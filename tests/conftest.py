"""Suite-wide fixtures. Service fixtures live in tests/fixtures/ as plugins so every test package can use them."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent

pytest_plugins = [
    "tests.fixtures.triton_server",
    "tests.fixtures.rvc_service",
    "tests.fixtures.gateway",
    "tests.fixtures.spark",
]


def free_port() -> int:
    """A TCP port that was free a moment ago on loopback (for processes that cannot report the port they bound)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def dev_python() -> str:
    return sys.executable
