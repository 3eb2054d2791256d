"""`make run`: the whole stack on loopback with the embedded default models, supervised, stopped cleanly by Ctrl-C.

Starts Triton (the server bundled in the nvidia-pytriton wheel, with the Piper model), the voice-conversion service
(with the built-in world voices), the gateway and the HTTP edge, each as its own process, waits for each to be ready,
prints the addresses and a ready-to-paste client command, then supervises them: a service that exits unexpectedly is
restarted on the same ports with exponential backoff (each restart logged on stderr with its exit code and counted)
while the others keep serving. SIGINT/SIGTERM stop them all in reverse order.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from services.common import ready
from voice_triton import catalog, registry

REPO = Path(__file__).resolve().parents[2]
DEV_PYTHON = REPO / ".venv" / "bin" / "python"
TRITON_PYTHON = REPO / ".venv-triton" / "bin" / "python"
SHIPPED_VOICES = REPO / "services" / "tts_gateway" / "voices.toml"
# Where `voice-models pull` puts checkpoints; the launcher serves every backend whose folder is there.
MODELS_DIR = REPO / "models"
BACKOFF_MIN_S = 0.5
BACKOFF_MAX_S = 10.0
# A child that stayed up this long before exiting is restarted after the shortest delay again.
STABLE_AFTER_S = 30.0
STOP_TIMEOUT_S = 30.0
PR_SET_PDEATHSIG = 1


def die_with_parent() -> Callable[[], None] | None:
    """A preexec_fn giving the child SIGTERM when run_stack dies, so a killed run_stack leaves no service behind.
    prctl is resolved before the fork: between fork and exec the child makes only system calls (run_stack has
    reader threads, and a fork of a threaded process must not take locks)."""
    try:
        prctl = ctypes.CDLL("libc.so.6", use_errno=True).prctl
    except OSError:
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # run_stack died before prctl took effect
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec


def parse_ready_line(line: str) -> dict[str, Any] | None:
    """Services print their JSON ready line (services.common.ready); the Triton launcher prints `triton ready: ...`."""
    if line.startswith("triton ready"):
        return {"line": line.strip()}
    return ready.parse_ready_line(line)


@dataclass
class Service:
    """One supervised child. ``argv`` is called at every start, so a restart uses the ports known by then."""

    name: str
    argv: Callable[[], list[str]]
    ready_timeout: float
    log_path: Path
    process: subprocess.Popen[str] | None = None
    ready: threading.Event = field(default_factory=threading.Event)
    info: dict[str, Any] = field(default_factory=dict)
    started_at: float = 0.0
    starts: int = 0
    restarts: int = 0
    backoff: float = BACKOFF_MIN_S
    restart_at: float | None = None  # set while waiting out the backoff after an exit
    ready_deadline: float | None = None  # set while a restarted child has not reported ready yet


class Supervisor:
    """Starts services in order, restarts the ones that exit, stops all in reverse order."""

    def __init__(
        self,
        *,
        cwd: Path = REPO,
        env: dict[str, str] | None = None,
        max_restarts: int | None = None,
        backoff_min: float = BACKOFF_MIN_S,
        backoff_max: float = BACKOFF_MAX_S,
        stable_after: float = STABLE_AFTER_S,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.cwd = cwd
        self.env = env if env is not None else {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.max_restarts = max_restarts
        self.backoff_min = backoff_min
        self.backoff_max = backoff_max
        self.stable_after = stable_after
        self.log = log or (lambda message: print(message, file=sys.stderr, flush=True))
        self.services: list[Service] = []
        self.stopping = threading.Event()

    def spawn(self, service: Service) -> None:
        service.ready = threading.Event()
        service.starts += 1
        with service.log_path.open("w" if service.starts == 1 else "a") as log_file:
            if service.starts > 1:
                log_file.write(f"\n--- run_stack: start #{service.starts} (restart #{service.restarts}) ---\n")
                log_file.flush()
            # Own session: a terminal's Ctrl-C reaches run_stack only, which stops the services in order.
            process = subprocess.Popen(
                service.argv(), cwd=self.cwd, env=self.env, stdout=subprocess.PIPE, stderr=log_file, text=True,
                start_new_session=True, preexec_fn=die_with_parent(),
            )  # fmt: skip
        service.process, service.started_at = process, time.monotonic()
        assert process.stdout is not None
        threading.Thread(target=self._read_stdout, args=(service, process.stdout), daemon=True).start()

    @staticmethod
    def _read_stdout(service: Service, stream: IO[str]) -> None:
        """Find the ready line, then keep draining stdout so the child never blocks on a full pipe."""
        event = service.ready
        for line in iter(stream.readline, ""):
            if not event.is_set() and (info := parse_ready_line(line)) is not None:
                service.info.update(info)
                event.set()

    def start(self, service: Service) -> None:
        """First start, in order: wait until ready; raise RuntimeError if it exits or times out first."""
        self.services.append(service)
        service.backoff = self.backoff_min
        self.spawn(service)
        assert service.process is not None
        deadline = time.monotonic() + service.ready_timeout
        while not service.ready.wait(0.2):
            if self.stopping.is_set():
                raise RuntimeError("interrupted")
            if service.process.poll() is not None:
                raise RuntimeError(f"exited with code {service.process.returncode} before becoming ready")
            if time.monotonic() > deadline:
                raise RuntimeError(f"not ready after {service.ready_timeout:.0f} s")

    def step(self) -> bool:
        """One supervision pass. Returns False when a service exhausted its restarts (the stack should stop)."""
        now = time.monotonic()
        for service in self.services:
            process = service.process
            if process is not None and process.poll() is not None:
                if not self._schedule_restart(service, process.returncode, now):
                    return False
            elif process is None and service.restart_at is not None and now >= service.restart_at:
                service.restart_at = None
                self.spawn(service)
                service.ready_deadline = time.monotonic() + service.ready_timeout
            elif service.ready_deadline is not None:
                if service.ready.is_set():
                    service.ready_deadline = None
                    self.log(
                        f"{service.name} is back after restart #{service.restarts} "
                        f"({now - service.started_at:.1f} s to ready)"
                    )
                elif now > service.ready_deadline and process is not None:
                    self.log(f"{service.name} not ready {service.ready_timeout:.0f} s after restart; killing it")
                    service.ready_deadline = None
                    _kill_session(process)
        return True

    def _schedule_restart(self, service: Service, code: int, now: float) -> bool:
        uptime = now - service.started_at
        service.process, service.ready_deadline = None, None
        what = _describe_exit(code)
        if self.max_restarts is not None and service.restarts >= self.max_restarts:
            self.log(
                f"{service.name} {what} after {uptime:.1f} s; giving up after {service.restarts} restart(s) "
                f"(--max-restarts {self.max_restarts})"
            )
            return False
        if uptime >= self.stable_after:
            service.backoff = self.backoff_min
        delay = service.backoff
        service.backoff = min(service.backoff * 2, self.backoff_max)
        service.restarts += 1
        service.restart_at = now + delay
        self.log(f"{service.name} {what} after {uptime:.1f} s; restart #{service.restarts} in {delay:.1f} s")
        return True

    def run(self, poll_interval: float = 0.2) -> int:
        """Supervise until a stop is requested (0) or a service runs out of restarts (1); then stop all."""
        while not self.stopping.wait(poll_interval):
            if not self.step():
                self.stop_all()
                return 1
        print("\nstopping ...", flush=True)
        self.stop_all()
        return 0

    def stop_all(self) -> None:
        """SIGTERM every running service, last started first, then wait for each (SIGKILL after a timeout)."""
        for service in reversed(self.services):
            if service.process is not None and service.process.poll() is None:
                service.process.send_signal(signal.SIGTERM)
        for service in reversed(self.services):
            process = service.process
            if process is None:
                print(f"  {service.name} was not running (waiting to restart)", flush=True)
                continue
            try:
                process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                _kill_session(process)
                process.wait()
            print(f"  stopped {service.name} (exit {process.returncode})", flush=True)


def _kill_session(process: subprocess.Popen[str]) -> None:
    # Each child leads its own session and group; the group may hold processes the child started.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


def _describe_exit(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"exited unexpectedly with code {code} ({signal.Signals(-code).name})"
    return f"exited unexpectedly with code {code}"


def chosen_checkpoints(args: argparse.Namespace) -> tuple[dict[str, Path], dict[str, dict[str, str]]]:
    """Backend -> checkpoint directory from --checkpoint, --tiny and their old spellings (tiny ones written on first
    use), and the entry-model parameters the tiny checkpoints want."""
    checkpoints: dict[str, Path] = {}
    for item in args.checkpoint:
        name, sep, directory = item.partition("=")
        if not sep or not directory:
            raise ValueError(f"--checkpoint takes BACKEND=DIR, got {item!r}")
        checkpoints[registry.get(name.strip()).name] = Path(directory).expanduser().resolve()
    tiny = list(args.tiny)
    for backend in registry.BACKENDS:
        if backend.embedded:
            continue
        if getattr(args, f"{backend.name}_checkpoint") is not None:
            checkpoints[backend.name] = getattr(args, f"{backend.name}_checkpoint").resolve()
        if getattr(args, f"{backend.name}_tiny"):
            tiny.append(backend.name)
    params: dict[str, dict[str, str]] = {}
    for name in dict.fromkeys(tiny):
        backend = registry.get(name)
        if name in checkpoints:
            continue
        out = REPO / "run" / f"{name}-tiny"
        if backend.missing(out):
            print(f"writing the tiny {backend.title} checkpoint to {out} ...", flush=True)
            out.parent.mkdir(parents=True, exist_ok=True)
            subprocess.run([str(TRITON_PYTHON), "-m", backend.tiny_writer, str(out)], cwd=out.parent, check=True)
        checkpoints[name] = out
        params[backend.entry_model] = dict(backend.tiny_params)
    return checkpoints, params


def served_backends(ready_line: str) -> list[str]:
    """The backends the launcher's ready line reports (`... backends=piper,spark`)."""
    for field_ in ready_line.split():
        if field_.startswith("backends="):
            return [name for name in field_.removeprefix("backends=").split(",") if name]
    return []


def describe_backends(names: list[str]) -> str:
    """`piper (piper_tts), spark (spark_tts)`: each served backend with the model the gateway calls."""
    return ", ".join(f"{name} ({registry.get(name).entry_model})" for name in names) or "none reported"


def write_voices(backends: list[str], path: Path) -> Path:
    """The shipped voices, plus those of every served backend's registry entry (the shipped file when none adds
    any)."""
    extra = registry.voices_toml(registry.get(name) for name in backends)
    if not extra:
        return SHIPPED_VOICES
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(SHIPPED_VOICES.read_text(encoding="utf-8") + extra, encoding="utf-8")
    return path


def rvc_models_flags(models_dir: Path) -> list[str]:
    """The conversion service's --models-dir: the RVC folder `voice-models` fills, when there is one (otherwise the
    service's own default)."""
    rvc = catalog.rvc_directory(models_dir)
    return ["--models-dir", str(rvc)] if rvc.is_dir() else []


def incomplete_models(models_dir: Path) -> list[str]:
    """One line per catalog model found half there (a download cut short, a file removed): the launcher skips such a
    backend, and this says how to complete it."""
    return [
        f"  {found.entry.name} in {found.directory} is incomplete (missing {', '.join(found.missing)}): "
        f"`voice-models pull {found.entry.name}` completes it"
        for found in catalog.incomplete(models_dir)
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1", help="address every service listens on")
    parser.add_argument("--gateway-port", type=int, default=50051, help="0 picks a free port (kept across restarts)")
    parser.add_argument("--gateway-metrics-port", type=int, default=9101)
    parser.add_argument("--rvc-port", type=int, default=50052, help="0 picks a free port (kept across restarts)")
    parser.add_argument("--rvc-metrics-port", type=int, default=9102)
    parser.add_argument("--edge-port", type=int, default=8080, help="HTTP edge (web page, OpenAI-compatible API)")
    parser.add_argument("--edge-metrics-port", type=int, default=9103)
    parser.add_argument("--triton-http-port", type=int, default=8000)
    parser.add_argument("--triton-grpc-port", type=int, default=8001)
    parser.add_argument("--triton-metrics-port", type=int, default=8002)
    parser.add_argument("--log-dir", type=Path, default=REPO / "run" / "logs", help="each service's stderr goes here")
    parser.add_argument(
        "--max-restarts",
        type=int,
        default=None,
        help="restarts allowed per service before run_stack stops everything and exits 1; unset: unlimited, "
        "0: stop the stack when any service exits",
    )
    checkpoint_backends = [backend.name for backend in registry.BACKENDS if not backend.embedded]
    parser.add_argument(
        "--checkpoint",
        action="append",
        default=[],
        metavar="BACKEND=DIR",
        help=f"also serve BACKEND ({', '.join(checkpoint_backends)}) from a checkpoint directory in its published "
        "layout, with the voices its registry entry provides (repeatable)",
    )
    parser.add_argument(
        "--tiny",
        action="append",
        default=[],
        choices=checkpoint_backends,
        metavar="BACKEND",
        help="serve BACKEND from a tiny random-weight checkpoint (written to run/<backend>-tiny on first use): a "
        "smoke run of its path, not speech (repeatable)",
    )
    parser.add_argument(
        "--models-dir",
        type=Path,
        default=MODELS_DIR,
        help="checkpoints fetched by `voice-models pull`; every backend whose folder is there is served, and its rvc/ "
        "folder (RVC base assets and voices) is the conversion service's --models-dir",
    )
    for name in checkpoint_backends:
        # The spellings of earlier releases, kept working.
        parser.add_argument(f"--{name}-checkpoint", type=Path, default=None, help=f"= --checkpoint {name}=DIR")
        parser.add_argument(f"--{name}-tiny", action="store_true", help=f"= --tiny {name}")
    parser.add_argument(
        "--saved-voices-dir", type=Path, default=REPO / "run" / "saved_voices", help="where CreateVoice keeps voices"
    )
    args = parser.parse_args(argv)
    try:
        checkpoints, params = chosen_checkpoints(args)
    except ValueError as exc:
        parser.error(str(exc))
    if min(args.triton_http_port, args.triton_grpc_port, args.triton_metrics_port) <= 0:
        parser.error("the Triton ports must be given explicitly (the launcher cannot report a port it did not choose)")
    if args.max_restarts is not None and args.max_restarts < 0:
        parser.error("--max-restarts must be 0 or more")
    args.log_dir.mkdir(parents=True, exist_ok=True)
    supervisor = Supervisor(max_restarts=args.max_restarts)
    ports = {
        "rvc": args.rvc_port,
        "rvc_metrics": args.rvc_metrics_port,
        "gateway": args.gateway_port,
        "gateway_metrics": args.gateway_metrics_port,
        "edge": args.edge_port,
        "edge_metrics": args.edge_metrics_port,
    }

    def remember_ports(service: Service, key: str) -> None:
        # A port chosen with 0 is pinned after the first start, so restarts and the gateway's upstream URL agree.
        ports[key], ports[f"{key}_metrics"] = int(service.info["port"]), int(service.info["metrics_port"])

    # Ctrl-C and SIGTERM both stop the stack. SIGINT is set explicitly: a shell starting us in the background
    # leaves it ignored, and Python would inherit that.
    signal.signal(signal.SIGINT, lambda *_: supervisor.stopping.set())
    signal.signal(signal.SIGTERM, lambda *_: supervisor.stopping.set())
    lines: list[str] = []
    try:
        launch_flags = [f"--models-dir={args.models_dir}"]
        launch_flags += [f"--checkpoint={name}={path}" for name, path in checkpoints.items()]
        launch_flags += [f"--param={model}:{key}={value}" for model, values in params.items()
                         for key, value in values.items()]  # fmt: skip
        incomplete = incomplete_models(args.models_dir)
        if incomplete:
            print(f"models found incomplete in {args.models_dir}:", *incomplete, sep="\n", flush=True)
        print("starting Triton (Piper, plus every backend with a checkpoint, on CPU) ...", flush=True)
        triton = Service(
            "triton",
            lambda: [str(TRITON_PYTHON), "triton/launch.py", "--address", args.host,
                     "--http-port", str(args.triton_http_port), "--grpc-port", str(args.triton_grpc_port),
                     "--metrics-port", str(args.triton_metrics_port), *launch_flags],
            ready_timeout=180, log_path=args.log_dir / "triton.log",
        )  # fmt: skip
        supervisor.start(triton)
        served = served_backends(triton.info.get("line", ""))
        voices_file = write_voices(served, args.log_dir.parent / "voices-with-checkpoints.toml")
        triton_http = f"{args.host}:{args.triton_http_port}"
        lines.append(f"Triton        gRPC {args.host}:{args.triton_grpc_port}  HTTP {triton_http}"
                     f"  metrics http://{args.host}:{args.triton_metrics_port}/metrics"
                     f"  backends {describe_backends(served)}")  # fmt: skip
        added = [voice.name for name in served for voice in registry.get(name).gateway_voices()]
        if added:
            lines.append(f"Voices added  {', '.join(added)} (from the served backends' checkpoints)")
        print("starting voice-conversion service ...", flush=True)
        rvc = Service(
            "rvc_service",
            lambda: [str(DEV_PYTHON), "-P", "-m", "services.rvc_service", "--host", args.host,
                     "--port", str(ports["rvc"]), "--metrics-port", str(ports["rvc_metrics"]),
                     *rvc_models_flags(args.models_dir)],
            ready_timeout=180, log_path=args.log_dir / "rvc_service.log",
        )  # fmt: skip
        supervisor.start(rvc)
        remember_ports(rvc, "rvc")
        rvc_models = rvc_models_flags(args.models_dir)[1:]
        lines.append(
            f"RVC service   gRPC {args.host}:{ports['rvc']}  metrics http://{args.host}:{ports['rvc_metrics']}/metrics"
            + (f"  models {rvc_models[0]}" if rvc_models else "")
        )
        print("starting gateway ...", flush=True)
        gateway = Service(
            "gateway",
            lambda: [str(DEV_PYTHON), "-P", "-m", "services.tts_gateway", "--host", args.host,
                     "--port", str(ports["gateway"]), "--metrics-port", str(ports["gateway_metrics"]),
                     "--triton-url", f"{args.host}:{args.triton_grpc_port}",
                     "--rvc-url", f"{args.host}:{ports['rvc']}", "--voices", str(voices_file),
                     "--saved-voices-dir", str(args.saved_voices_dir)],
            ready_timeout=120, log_path=args.log_dir / "gateway.log",
        )  # fmt: skip
        supervisor.start(gateway)
        remember_ports(gateway, "gateway")
        lines.append(
            f"Gateway       gRPC {args.host}:{ports['gateway']}  metrics http://{args.host}:{ports['gateway_metrics']}/metrics"
        )
        print("starting HTTP edge ...", flush=True)
        edge = Service(
            "http_edge",
            lambda: [str(DEV_PYTHON), "-P", "-m", "services.http_edge", "--host", args.host,
                     "--port", str(ports["edge"]), "--metrics-port", str(ports["edge_metrics"]),
                     "--gateway-url", f"{args.host}:{ports['gateway']}", "--rvc-url", f"{args.host}:{ports['rvc']}"],
            ready_timeout=60, log_path=args.log_dir / "http_edge.log",
        )  # fmt: skip
        supervisor.start(edge)
        remember_ports(edge, "edge")
        lines.append(
            f"HTTP edge     http://{args.host}:{ports['edge']}/  metrics http://{args.host}:{ports['edge_metrics']}/metrics"
        )
    except RuntimeError as exc:
        failed = supervisor.services[-1].name if supervisor.services else "stack"
        print(f"{failed} failed to start: {exc}; see {args.log_dir}/{failed}.log", file=sys.stderr, flush=True)
        supervisor.stop_all()
        return 1

    print("\nStack is up (Ctrl-C stops everything; a service that exits is restarted):")
    for line in lines:
        print("  " + line)
    if incomplete:
        print(f"  incomplete in {args.models_dir}:", *incomplete, sep="\n  ")
    print(f"  logs in {args.log_dir}")
    print("\nTry:")
    print(f'  .venv/bin/voice-cli --target {args.host}:{ports["gateway"]} say '
          '"Hello from the speech stack. This is the second sentence." --voice joe -o hello.wav')  # fmt: skip
    print(f"  open http://{args.host}:{ports['edge']}/ in a browser (the web page), or the OpenAI-style API:")
    print(f"  curl -o hello.mp3 http://{args.host}:{ports['edge']}/v1/audio/speech -H 'Content-Type: application/json' "
          '-d \'{"model": "tts-1", "voice": "joe", "input": "Hello from the edge."}\'')  # fmt: skip
    print(f"  .venv/bin/grpcurl -plaintext {args.host}:{ports['gateway']} list   # reflection is on\n", flush=True)
    return supervisor.run()


if __name__ == "__main__":
    sys.exit(main())
