#!/usr/bin/env python3
"""Start the Triton Inference Server bundled in the nvidia-pytriton wheel with this project's model repository.

Run it as a script with the Triton environment's interpreter (it is not a package: `triton` would clash with OpenAI's
triton on GPU hosts):

    .venv-triton/bin/python triton/launch.py [--grpc-port 8001] [--instance-count 2] ...

It finds the tritonserver binary of the interpreter running it, installs the python-backend stub built for that
interpreter's Python version, sets PATH and LD_LIBRARY_PATH so the stub runs this environment's python with its own
libpython, starts the server, waits until it is ready (then prints the addresses), forwards SIGTERM/SIGINT and exits
with the server's exit code. Every flag has an environment-variable equivalent (shown in --help).

No debris: the server runs in its own session with a parent-death signal (if the launcher dies, the server gets
SIGTERM); when the server exits for any reason, including kill -9, whatever is left of its process group (the
python-backend stubs) is killed and the shared-memory regions it created are removed. Each launch gives the python
backend a region prefix naming the launcher (pid and start time), so a later launch recognises regions and stubs whose
launcher is gone and removes them before it starts.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from types import FrameType

HERE = Path(__file__).resolve().parent
DEFAULT_REPOSITORY = HERE / "model_repo"
# Spark-TTS's models (spark_tts, audio_tokenizer, vocoder): served only when a checkpoint directory is given.
SPARK_REPOSITORY = HERE / "spark_repo"
# Orpheus TTS (orpheus_tts): served only when a checkpoint directory is given.
ORPHEUS_REPOSITORY = HERE / "orpheus_repo"
SHM_DIR = Path("/dev/shm")
# Starts with the python backend's default prefix, so the usual `rm /dev/shm/triton_python_backend_shm_region_*`
# still matches; "launch<pid namespace>-<pid>-<start time>_" names the launcher that owns the region. The namespace
# matters where /dev/shm is shared between containers (--ipc=host): a pid of another namespace is not ours to judge.
SHM_PREFIX_BASE = "triton_python_backend_shm_region_launch"
_OWNED_REGION = re.compile(re.escape(SHM_PREFIX_BASE) + r"(\d+)-(\d+)-(\d+)_")
STUB_NAME = "triton_python_backend_stub"
PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36


def _env(name: str, default: str | None) -> str | None:
    return os.environ.get(name, default)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Start the Triton server bundled in nvidia-pytriton with the TTS model repository.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--model-repository",
        default=_env("TRITON_MODEL_REPOSITORY", str(DEFAULT_REPOSITORY)),
        help="model repository folder [env TRITON_MODEL_REPOSITORY]",
    )
    parser.add_argument(
        "--address",
        default=_env("TRITON_ADDRESS", "0.0.0.0"),
        help="address the HTTP, gRPC and metrics endpoints bind to [env TRITON_ADDRESS]",
    )
    parser.add_argument(
        "--http-port", type=int, default=int(_env("TRITON_HTTP_PORT", "8000")), help="HTTP port [env TRITON_HTTP_PORT]"
    )
    parser.add_argument(
        "--grpc-port", type=int, default=int(_env("TRITON_GRPC_PORT", "8001")), help="gRPC port [env TRITON_GRPC_PORT]"
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=int(_env("TRITON_METRICS_PORT", "8002")),
        help="Prometheus metrics port [env TRITON_METRICS_PORT]",
    )
    count = _env("TRITON_INSTANCE_COUNT", None)
    parser.add_argument(
        "--instance-count",
        type=int,
        default=int(count) if count else None,
        help="override instance_group count of every model (each instance is one stub process); "
        "default: what each config.pbtxt says [env TRITON_INSTANCE_COUNT]",
    )
    parser.add_argument(
        "--spark-checkpoint",
        default=_env("TRITON_SPARK_CHECKPOINT", ""),
        help="a Spark-TTS-0.5B checkpoint directory (published layout; triton/spark_tiny_checkpoint.py writes a tiny "
        "one): also serve spark_tts, audio_tokenizer and vocoder from it [env TRITON_SPARK_CHECKPOINT]",
    )
    parser.add_argument(
        "--spark-param",
        action="append",
        default=[p for p in _env("TRITON_SPARK_PARAMS", "").split(",") if p],
        metavar="KEY=VALUE",
        help="override a parameter of spark_tts's config (repeatable), e.g. max_new_tokens=600 or "
        "audio_chunk_duration=0.5 [env TRITON_SPARK_PARAMS, comma-separated]",
    )
    parser.add_argument(
        "--orpheus-checkpoint",
        default=_env("TRITON_ORPHEUS_CHECKPOINT", ""),
        help="an Orpheus checkpoint directory (published layout; SNAC 24 kHz in its snac/ unless --orpheus-param "
        "snac_dir=DIR; triton/orpheus_tiny_checkpoint.py writes a tiny one): also serve orpheus_tts from it "
        "[env TRITON_ORPHEUS_CHECKPOINT]",
    )
    parser.add_argument(
        "--orpheus-param",
        action="append",
        default=[p for p in _env("TRITON_ORPHEUS_PARAMS", "").split(",") if p],
        metavar="KEY=VALUE",
        help="override a parameter of orpheus_tts's config (repeatable), e.g. max_new_tokens=600 "
        "[env TRITON_ORPHEUS_PARAMS, comma-separated]",
    )
    parser.add_argument(
        "--models",
        default=_env("TRITON_MODELS", ""),
        help="comma-separated models to load (explicit model control); empty loads all [env TRITON_MODELS]",
    )
    parser.add_argument(
        "--log-verbose",
        type=int,
        default=int(_env("TRITON_LOG_VERBOSE", "0")),
        help="tritonserver --log-verbose level [env TRITON_LOG_VERBOSE]",
    )
    parser.add_argument(
        "--trace-url",
        default=_env("TRITON_TRACE_URL", ""),
        help="OTLP/HTTP URL Triton exports its OpenTelemetry spans to, when OTEL_TRACES_EXPORTER includes otlp; "
        "default: the OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT when the protocol is http/protobuf, otherwise port 4318 "
        "of the OTLP endpoint's host (Triton exports over HTTP only) [env TRITON_TRACE_URL]",
    )
    parser.add_argument(
        "--ready-timeout",
        type=float,
        default=float(_env("TRITON_READY_TIMEOUT", "180")),
        help="seconds to wait for readiness before giving up [env TRITON_READY_TIMEOUT]",
    )
    parser.add_argument(
        "--stop-grace",
        type=float,
        default=float(_env("TRITON_STOP_GRACE", "20")),
        help="seconds the server may drain after SIGTERM/SIGINT before it and its stubs are killed; keep it below "
        "the stop timeout of whatever runs the launcher [env TRITON_STOP_GRACE]",
    )
    parser.add_argument(
        "server_args",
        nargs=argparse.REMAINDER,
        help="extra tritonserver arguments after `--`, passed unchanged",
    )
    args = parser.parse_args(argv)
    if args.server_args and args.server_args[0] == "--":
        args.server_args = args.server_args[1:]
    return args


OTLP_HTTP_DEFAULT = "http://localhost:4318/v1/traces"


def _otlp_http_url(env: dict[str, str] | os._Environ[str], override: str) -> str:
    """Where Triton sends spans: it has only an OTLP/HTTP exporter, so a gRPC endpoint maps to the collector's HTTP
    port (4318) on the same host."""
    if override:
        return override
    protocol = env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "grpc"
    traces_endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "")
    endpoint = env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "")
    if protocol == "http/protobuf":
        if traces_endpoint:
            return traces_endpoint
        if endpoint:
            return endpoint.rstrip("/") + "/v1/traces"
        return OTLP_HTTP_DEFAULT
    base = traces_endpoint or endpoint
    if not base:
        return OTLP_HTTP_DEFAULT
    parsed = urllib.parse.urlsplit(base if "://" in base else f"http://{base}")
    return f"{parsed.scheme}://{parsed.hostname}:4318/v1/traces"


def trace_arguments(env: dict[str, str] | os._Environ[str], url_override: str = "") -> list[str]:
    """tritonserver flags for OpenTelemetry tracing from the standard OTEL_* variables; none while tracing is off.

    Spans of a request join the caller's trace through the W3C traceparent the gateway sends on each stream."""
    exporters = {name.strip().lower() for name in env.get("OTEL_TRACES_EXPORTER", "").split(",")}
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true" or "otlp" not in exporters:
        return []
    # Triton samples every Nth request rather than by ratio: a ratio sampler argument becomes N = 1 / ratio.
    rate = 1
    try:
        ratio = float(env.get("OTEL_TRACES_SAMPLER_ARG", "1"))
    except ValueError:
        ratio = 1.0
    if 0 < ratio < 1:
        rate = max(1, round(1 / ratio))
    service = env.get("OTEL_SERVICE_NAME") or "triton"
    flags = [
        "--trace-config=mode=opentelemetry",
        "--trace-config=level=TIMESTAMPS",
        f"--trace-config=rate={rate}",
        "--trace-config=count=-1",
        f"--trace-config=opentelemetry,url={_otlp_http_url(env, url_override)}",
        f"--trace-config=opentelemetry,resource=service.name={service}",
    ]
    for item in env.get("OTEL_RESOURCE_ATTRIBUTES", "").split(","):
        key, _, value = item.partition("=")
        if key.strip() and value.strip() and key.strip() != "service.name":
            flags.append(f"--trace-config=opentelemetry,resource={key.strip()}={value.strip()}")
    for variable, setting in (
        ("OTEL_BSP_SCHEDULE_DELAY", "bsp_schedule_delay"),
        ("OTEL_BSP_MAX_QUEUE_SIZE", "bsp_max_queue_size"),
        ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "bsp_max_export_batch_size"),
    ):
        if env.get(variable, "").strip().isdigit():
            flags.append(f"--trace-config=opentelemetry,{setting}={env[variable].strip()}")
    return flags


def pytriton_root() -> Path:
    # find_spec, not import: importing pytriton pulls in its whole client stack just to learn a path.
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        sys.exit(f"nvidia-pytriton is not installed for {sys.executable}: run `make .venv-triton/.installed`")
    return Path(next(iter(spec.submodule_search_locations)))


def prepare_stub(server_dir: Path) -> None:
    """Install the python-backend stub matching this interpreter (the wheel ships one per Python version)."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    source = server_dir / "python_backend_stubs" / version / "triton_python_backend_stub"
    target = server_dir / "backends" / "python" / "triton_python_backend_stub"
    if not source.is_file():
        sys.exit(f"no python backend stub for Python {version} in {source.parent.parent}")
    if target.is_file() and target.stat().st_size == source.stat().st_size:
        return
    # Copy then rename, so two launchers starting at once never see a half-written stub.
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".stub-")
    os.close(fd)
    shutil.copy2(source, tmp)
    os.chmod(tmp, 0o755)
    os.replace(tmp, target)


def server_env(root: Path) -> dict[str, str]:
    env = dict(os.environ)
    # The stub runs `python3` from PATH: this environment's bin must come first so the models see its packages.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    # The interpreter's own libpython first; otherwise the stub may pick a system libpython of the same soname.
    libdirs = [sysconfig.get_config_var("LIBDIR") or "", str(root.parent / "nvidia_pytriton.libs")]
    if env.get("LD_LIBRARY_PATH"):
        libdirs.append(env["LD_LIBRARY_PATH"])
    env["LD_LIBRARY_PATH"] = os.pathsep.join(d for d in libdirs if d)
    return env


def set_parameter(config_text: str, key: str, value: str) -> str:
    """A config.pbtxt with string parameter `key` set to `value` (added when the config does not declare it)."""
    literal = json.dumps(value)  # a pbtxt string literal is a JSON string for paths and numbers
    pattern = rf'(key:\s*"{re.escape(key)}",\s*value:\s*\{{\s*string_value:\s*)"[^"]*"'
    if re.search(pattern, config_text):
        return re.sub(pattern, lambda m: m.group(1) + literal, config_text)
    return config_text + f'parameters {{ key: "{key}", value: {{ string_value: {literal} }} }}\n'


def staged_repository(
    repository: Path,
    instance_count: int | None = None,
    spark_checkpoint: Path | None = None,
    spark_params: dict[str, str] | None = None,
    orpheus_checkpoint: Path | None = None,
    orpheus_params: dict[str, str] | None = None,
) -> Path:
    """Copy the repository with every instance_group count rewritten (Triton has no flag for it) and, given a Spark
    checkpoint, the Spark-TTS models added with their checkpoint_dir parameter pointing at it (and spark_tts's
    parameters overridden by `spark_params`); the same for an Orpheus checkpoint and orpheus_tts."""
    staged = Path(tempfile.mkdtemp(prefix="triton-repo-"))
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(repository, staged, dirs_exist_ok=True, ignore=ignore)
    if spark_checkpoint is not None:
        shutil.copytree(SPARK_REPOSITORY, staged, dirs_exist_ok=True, ignore=ignore)
        for name in ("spark_tts", "audio_tokenizer", "vocoder"):
            config = staged / name / "config.pbtxt"
            text = set_parameter(config.read_text(encoding="utf-8"), "checkpoint_dir", str(spark_checkpoint))
            if name == "spark_tts":
                for key, value in (spark_params or {}).items():
                    text = set_parameter(text, key, value)
            config.write_text(text, encoding="utf-8")
    if orpheus_checkpoint is not None:
        shutil.copytree(ORPHEUS_REPOSITORY, staged, dirs_exist_ok=True, ignore=ignore)
        config = staged / "orpheus_tts" / "config.pbtxt"
        text = set_parameter(config.read_text(encoding="utf-8"), "checkpoint_dir", str(orpheus_checkpoint))
        for key, value in (orpheus_params or {}).items():
            text = set_parameter(text, key, value)
        config.write_text(text, encoding="utf-8")
    if instance_count is not None:
        for config in staged.glob("*/config.pbtxt"):
            text = config.read_text(encoding="utf-8")

            def rewrite(block: re.Match[str]) -> str:
                return re.sub(r"count\s*:\s*\d+", f"count: {instance_count}", block.group(0))

            config.write_text(re.sub(r"instance_group\s*\[.*?\]", rewrite, text, flags=re.S), encoding="utf-8")
    return staged


def process_start_time(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot (field 22 of /proc/PID/stat); None if there is no such process.
    With the pid it identifies a process for good: a reused pid has another start time."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses: count fields after its closing parenthesis.
    return int(stat[stat.rindex(")") + 2 :].split()[19])


def pid_namespace() -> int:
    """Inode of this process's pid namespace (0 if unknown): pids are only comparable within one namespace."""
    try:
        return int(re.sub(r"\D", "", os.readlink("/proc/self/ns/pid")) or 0)
    except OSError:
        return 0


def shm_prefix(pid: int | None = None) -> str:
    """The python-backend region prefix of the launcher ``pid`` (default: this process)."""
    pid = os.getpid() if pid is None else pid
    return f"{SHM_PREFIX_BASE}{pid_namespace()}-{pid}-{process_start_time(pid)}_"


def _owner_alive(name: str) -> bool:
    """Whether the launcher named in a region name (or stub argument) may still run: True for names not ours and for
    launchers of another pid namespace; False only for a launcher of ours that is gone."""
    match = _OWNED_REGION.match(name)
    if match is None or int(match.group(1)) != pid_namespace():
        return True
    return process_start_time(int(match.group(2))) == int(match.group(3))


def _stub_processes() -> dict[int, str]:
    """pid -> region name of every python-backend stub visible to us (the stub's second argument is its region)."""
    stubs: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if len(argv) > 2 and argv[0].endswith(STUB_NAME.encode()):
            stubs[int(entry.name)] = argv[2].decode(errors="replace")
    return stubs


def remove_stale(shm_dir: Path = SHM_DIR) -> tuple[list[str], list[int]]:
    """Remove regions and kill stubs left by launchers that are gone (killed outright, or their server hung).
    Only names with our launcher prefix are touched, so other Triton servers on the host keep theirs."""
    killed = []
    for pid, region in _stub_processes().items():
        if not _owner_alive(region):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
    removed = []
    with contextlib.suppress(OSError):
        for path in shm_dir.iterdir():
            if path.name.startswith(SHM_PREFIX_BASE) and not _owner_alive(path.name):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                    removed.append(path.name)
    return removed, killed


def remove_regions(prefix: str, shm_dir: Path = SHM_DIR) -> list[str]:
    removed = []
    with contextlib.suppress(OSError):
        for path in shm_dir.glob(f"{prefix}*"):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed.append(path.name)
    return removed


def kill_group(pgid: int) -> None:
    """SIGKILL every process left in the server's group (stubs that outlived it) and wait until they are gone."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        _reap_orphans()
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return
        time.sleep(0.05)


def _reap_orphans() -> None:
    # As a child subreaper the launcher inherits the server's orphans; collect their exit so no zombie stays.
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass


def _libc_prctl() -> Callable[..., int] | None:
    try:
        return ctypes.CDLL("libc.so.6", use_errno=True).prctl
    except OSError:
        return None


def _become_subreaper() -> None:
    prctl = _libc_prctl()
    if prctl is not None:
        prctl(PR_SET_CHILD_SUBREAPER, 1)  # the server's orphaned stubs become our children, not init's


def die_with_parent(signum: int = signal.SIGTERM) -> Callable[[], None]:
    """A preexec_fn: the child gets ``signum`` when the launcher dies. Everything is resolved before the fork, so the
    child only makes system calls between fork and exec."""
    prctl = _libc_prctl()
    parent = os.getpid()

    def preexec() -> None:
        if prctl is not None:
            prctl(PR_SET_PDEATHSIG, signum)
        if os.getppid() != parent:  # the launcher died before prctl took effect
            os.kill(os.getpid(), signum)

    return preexec


def wait_ready(proc: subprocess.Popen[bytes], url: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return True
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.2)
    return False


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    repository = Path(args.model_repository).resolve()
    if not repository.is_dir():
        sys.exit(f"model repository {repository} does not exist")
    root = pytriton_root()
    server_dir = root / "tritonserver"
    binary = server_dir / "bin" / "tritonserver"
    if not binary.is_file():
        sys.exit(f"tritonserver binary missing at {binary}")
    prepare_stub(server_dir)

    staged: Path | None = None
    spark = Path(args.spark_checkpoint).resolve() if args.spark_checkpoint else None
    if spark is not None and not (spark / "config.yaml").is_file():
        sys.exit(f"--spark-checkpoint {spark} is not a Spark-TTS checkpoint directory (no config.yaml)")
    if args.instance_count is not None and args.instance_count < 1:
        sys.exit("--instance-count must be at least 1")
    spark_params = dict(item.split("=", 1) for item in args.spark_param if "=" in item)
    if len(spark_params) != len(args.spark_param):
        sys.exit("--spark-param takes KEY=VALUE")
    orpheus = Path(args.orpheus_checkpoint).resolve() if args.orpheus_checkpoint else None
    if orpheus is not None and not (orpheus / "config.json").is_file():
        sys.exit(f"--orpheus-checkpoint {orpheus} is not an Orpheus checkpoint directory (no config.json)")
    orpheus_params = dict(item.split("=", 1) for item in args.orpheus_param if "=" in item)
    if len(orpheus_params) != len(args.orpheus_param):
        sys.exit("--orpheus-param takes KEY=VALUE")
    if args.instance_count is not None or spark is not None or orpheus is not None:
        staged = staged_repository(repository, args.instance_count, spark, spark_params, orpheus, orpheus_params)
        repository = staged

    prefix = shm_prefix()
    command = [
        str(binary),
        f"--model-repository={repository}",
        f"--backend-directory={server_dir / 'backends'}",
        f"--http-address={args.address}",
        f"--http-port={args.http_port}",
        f"--grpc-address={args.address}",
        f"--grpc-port={args.grpc_port}",
        f"--metrics-address={args.address}",
        f"--metrics-port={args.metrics_port}",
        "--allow-gpu-metrics=false",  # no DCGM on CPU hosts; GPU hosts use the NGC image instead
        f"--log-verbose={args.log_verbose}",
        "--exit-on-error=true",
        f"--backend-config=python,shm-region-prefix-name={prefix}",
    ]
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    if models:
        command.append("--model-control-mode=explicit")
        command.extend(f"--load-model={m}" for m in models)
    command.extend(trace_arguments(os.environ, args.trace_url))
    command.extend(args.server_args)

    removed, killed = remove_stale()
    if removed or killed:
        print(
            f"removed {len(removed)} shared-memory region(s) and killed {len(killed)} stub process(es) "
            "left by launchers that are gone",
            file=sys.stderr,
            flush=True,
        )
    _become_subreaper()
    # Own session: a terminal's Ctrl-C reaches the launcher only (it forwards once), and the server's group holds
    # exactly the server and its stubs, so it can be killed as one.
    # The server's own bin folder as working directory: the Python stubs put it on sys.path, and a caller's folder
    # (the repository root holds this triton/ folder) would shadow packages such as the OpenAI Triton compiler.
    proc = subprocess.Popen(
        command, env=server_env(root), cwd=binary.parent, preexec_fn=die_with_parent(), start_new_session=True
    )
    stop_deadline: list[float] = []

    def forward(signum: int, _frame: FrameType | None) -> None:
        if proc.poll() is None:
            proc.send_signal(signum)
            if not stop_deadline:
                stop_deadline.append(time.monotonic() + args.stop_grace)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)

    host = "127.0.0.1" if args.address in ("0.0.0.0", "") else args.address
    timed_out = False
    try:
        if wait_ready(proc, f"http://{host}:{args.http_port}/v2/health/ready", args.ready_timeout):
            print(
                f"triton ready: grpc={host}:{args.grpc_port} http=http://{host}:{args.http_port} "
                f"metrics=http://{host}:{args.metrics_port}/metrics repository={args.model_repository}",
                flush=True,
            )
        elif proc.poll() is None:
            print(f"triton not ready after {args.ready_timeout:.0f}s; stopping it", file=sys.stderr, flush=True)
            timed_out = True
            forward(signal.SIGTERM, None)
        code = wait_server(proc, stop_deadline, args.stop_grace)
    finally:
        if proc.poll() is None:  # an exception on our side: do not leave the server behind
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        kill_group(proc.pid)
        removed = remove_regions(prefix)
        if removed:
            print(f"removed {len(removed)} shared-memory region(s) the server left", file=sys.stderr, flush=True)
        if staged is not None:
            shutil.rmtree(staged, ignore_errors=True)
    if timed_out:
        return 1
    # A signal-terminated server reports -N; shells expect 128+N.
    return 128 - code if code < 0 else code


def wait_server(proc: subprocess.Popen[bytes], stop_deadline: list[float], grace: float) -> int:
    """Wait for the server to exit; once a stop was asked for, kill its group if it drains longer than allowed."""
    while True:
        try:
            return proc.wait(timeout=0.5)
        except subprocess.TimeoutExpired:
            if stop_deadline and time.monotonic() > stop_deadline[0]:
                print(f"triton still running {grace:.0f}s after the stop signal; killing it", file=sys.stderr)
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                stop_deadline.clear()


if __name__ == "__main__":
    sys.exit(main())
