"""One private stack for the fault tests: Triton (piper_tts only, fixed ports), the conversion service and a gateway,
all real processes that these tests kill, stop and restart. The session fixtures are never touched."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import pytest

from tests.faults.processes import GATEWAY_FLAGS, VOICES_TOML, FaultStack, RestartableTriton
from tests.fixtures.gateway import start_gateway
from tests.fixtures.rvc_service import start_rvc_service
from tests.fixtures.service_process import ServiceProcess


@pytest.fixture(scope="package")
def fault_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultStack]:
    log_dir = tmp_path_factory.mktemp("faults")
    voices = log_dir / "voices.toml"
    voices.write_text(VOICES_TOML)
    triton = RestartableTriton(log_dir)
    rvc: ServiceProcess | None = None
    gateway: ServiceProcess | None = None
    try:
        triton.start()
        rvc = start_rvc_service(log_dir=log_dir)
        gateway = start_gateway(triton.grpc_url, rvc.address, f"--voices={voices}", *GATEWAY_FLAGS, log_dir=log_dir)
        yield FaultStack(triton, rvc, gateway, voices, log_dir)
    finally:
        for process in (gateway, rvc):
            if process is not None:
                if process.running:
                    os.kill(process.process.pid, signal.SIGCONT)  # a failed test may have left it stopped
                process.stop(signal.SIGKILL)
        triton.stop()


@pytest.fixture(scope="package")
def figures() -> Iterator[dict[str, float]]:
    """Measured numbers, printed once at the end (run with -s, or read them in the report's captured output)."""
    found: dict[str, float] = {}
    yield found
    if found:
        print("\nfault-test figures:")
        for name, value in found.items():
            print(f"  {name}: {value:.3f}")
