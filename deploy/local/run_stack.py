"""`make run`: the whole stack on loopback with the embedded default models, stopped cleanly by Ctrl-C.

Starts Triton (the server bundled in the nvidia-pytriton wheel, with the Piper model), the voice-conversion service
(with the built-in world voices) and the gateway, each as its own process, waits for each to be ready, prints the
addresses and a ready-to-paste client command, and on SIGINT/SIGTERM stops them in reverse order.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEV_PYTHON = REPO / ".venv" / "bin" / "python"
TRITON_PYTHON = REPO / ".venv-triton" / "bin" / "python"


@dataclass
class Child:
    name: str
    process: subprocess.Popen[str]
    info: dict[str, object] = field(default_factory=dict)


def wait_http_ok(url: str, child: subprocess.Popen[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child.poll() is not None:
            raise RuntimeError(f"exited with code {child.returncode} before becoming ready")
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"not ready after {timeout:.0f} s ({url})")


def read_ready_line(child: subprocess.Popen[str], timeout: float) -> dict[str, object]:
    """Services print one JSON line when serving; everything else they log goes to stderr."""
    assert child.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = child.stdout.readline()
        if not line:
            raise RuntimeError(f"exited with code {child.wait()} before becoming ready")
        try:
            return dict(json.loads(line))
        except json.JSONDecodeError:
            continue
    raise RuntimeError(f"not ready after {timeout:.0f} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1", help="address every service listens on")
    parser.add_argument("--gateway-port", type=int, default=50051)
    parser.add_argument("--gateway-metrics-port", type=int, default=9101)
    parser.add_argument("--rvc-port", type=int, default=50052)
    parser.add_argument("--rvc-metrics-port", type=int, default=9102)
    parser.add_argument("--triton-http-port", type=int, default=8000)
    parser.add_argument("--triton-grpc-port", type=int, default=8001)
    parser.add_argument("--triton-metrics-port", type=int, default=8002)
    parser.add_argument("--log-dir", type=Path, default=REPO / "run" / "logs", help="each service's stderr goes here")
    args = parser.parse_args()
    args.log_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    children: list[Child] = []

    def spawn(name: str, argv: list[str]) -> subprocess.Popen[str]:
        log_file = (args.log_dir / f"{name}.log").open("w")
        process = subprocess.Popen(
            argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=log_file, text=True, start_new_session=True
        )
        children.append(Child(name, process))
        return process

    def stop_all() -> None:
        for child in reversed(children):
            if child.process.poll() is None:
                child.process.send_signal(signal.SIGTERM)
        for child in reversed(children):
            try:
                child.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                child.process.kill()
            print(f"  stopped {child.name} (exit {child.process.returncode})", flush=True)

    # Ctrl-C and SIGTERM both stop the stack. SIGINT is set explicitly: a shell starting us in the background
    # leaves it ignored, and Python would inherit that.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    lines: list[str] = []
    try:
        if (REPO / "triton" / "launch.py").exists():
            print("starting Triton (piper_tts on CPU) ...", flush=True)
            triton = spawn(
                "triton",
                [str(TRITON_PYTHON), "triton/launch.py", "--address", args.host,
                 "--http-port", str(args.triton_http_port), "--grpc-port", str(args.triton_grpc_port),
                 "--metrics-port", str(args.triton_metrics_port)],
            )  # fmt: skip
            wait_http_ok(f"http://{args.host}:{args.triton_http_port}/v2/health/ready", triton, timeout=180)
            triton_http = f"{args.host}:{args.triton_http_port}"
            lines.append(f"Triton        gRPC {args.host}:{args.triton_grpc_port}  HTTP {triton_http}"
                         f"  metrics http://{args.host}:{args.triton_metrics_port}/metrics")  # fmt: skip
        if (REPO / "services" / "rvc_service" / "__main__.py").exists():
            print("starting voice-conversion service ...", flush=True)
            rvc = spawn(
                "rvc_service",
                [str(DEV_PYTHON), "-m", "services.rvc_service", "--host", args.host, "--port", str(args.rvc_port),
                 "--metrics-port", str(args.rvc_metrics_port)],
            )  # fmt: skip
            read_ready_line(rvc, timeout=180)
            lines.append(
                f"RVC service   gRPC {args.host}:{args.rvc_port}  metrics http://{args.host}:{args.rvc_metrics_port}/metrics"
            )
        if (REPO / "services" / "tts_gateway" / "__main__.py").exists():
            print("starting gateway ...", flush=True)
            gateway = spawn(
                "gateway",
                [str(DEV_PYTHON), "-m", "services.tts_gateway", "--host", args.host, "--port", str(args.gateway_port),
                 "--metrics-port", str(args.gateway_metrics_port),
                 "--triton-url", f"{args.host}:{args.triton_grpc_port}", "--rvc-url", f"{args.host}:{args.rvc_port}"],
            )  # fmt: skip
            read_ready_line(gateway, timeout=120)
            lines.append(
                f"Gateway       gRPC {args.host}:{args.gateway_port}  metrics http://{args.host}:{args.gateway_metrics_port}/metrics"
            )
    except (RuntimeError, KeyboardInterrupt) as exc:
        failed = children[-1].name if children else "stack"
        print(f"{failed} failed to start: {exc}; see {args.log_dir}/{failed}.log", file=sys.stderr)
        stop_all()
        return 1

    print("\nStack is up (Ctrl-C stops everything):")
    for line in lines:
        print("  " + line)
    print(f"  logs in {args.log_dir}")
    if (REPO / "clients" / "python" / "__main__.py").exists():
        print("\nTry:")
        print(f'  .venv/bin/python -m clients.python --target {args.host}:{args.gateway_port} say '
              '"Hello from the speech stack. This is the second sentence." --voice joe -o hello.wav')  # fmt: skip
    print(f"  .venv/bin/grpcurl -plaintext {args.host}:{args.gateway_port} list   # reflection is on\n", flush=True)
    try:
        while all(child.process.poll() is None for child in children):
            time.sleep(0.5)
        dead = next(child for child in children if child.process.poll() is not None)
        print(f"{dead.name} exited with code {dead.process.returncode}; stopping the stack", file=sys.stderr)
        stop_all()
        return 1
    except KeyboardInterrupt:
        print("\nstopping ...", flush=True)
        stop_all()
        return 0


if __name__ == "__main__":
    sys.exit(main())
