#!/usr/bin/env python3
"""Start Triton with this project's model repository: Piper, plus every backend whose checkpoint is present.

Run it as a script with the Triton environment's interpreter (it is not a package: `triton` would clash with OpenAI's
triton on GPU hosts):

    .venv-triton/bin/python triton/launch.py [--checkpoint spark=DIR] [--models-dir models] [--grpc-port 8001] ...

Which backends exist, which models each has and what a checkpoint of it must hold come from the backend registry
(`voice_triton.registry`). The launcher picks the backends to serve (Piper always; another when `--checkpoint
BACKEND=DIR` names its checkpoint or `--models-dir` holds it under its registered folder name), reports by name each
one it cannot serve and what is missing, stages the chosen models into a temporary repository with their configs
changed through Triton's config protobuf (checkpoint_dir, `--param MODEL:KEY=VALUE`, `--instance-count`), and starts
the server in explicit model-control mode. A backend whose weights then fail to load is unloaded whole and reported;
the others serve. Once the server is ready it prints `triton ready: ... backends=...`, forwards SIGTERM/SIGINT and
exits with the server's exit code. Every flag has an environment-variable equivalent (shown in --help).

The server is the one bundled in the nvidia-pytriton wheel (the stub built for this interpreter is copied into place;
PATH and LD_LIBRARY_PATH are set so the stub runs this environment's python with its own libpython), or the
installation named by `--server-root` (NVIDIA's image: /opt/tritonserver).

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
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from services.common.config import EnvArgumentParser
from voice_triton import registry
from voice_triton.model_config import apply_overrides, format_config, read_config

HERE = Path(__file__).resolve().parent
DEFAULT_REPOSITORY = HERE / "model_repo"
SHM_DIR = Path("/dev/shm")
# Starts with the python backend's default prefix, so the usual `rm /dev/shm/triton_python_backend_shm_region_*`
# still matches; "launch<pid namespace>-<pid>-<start time>_" names the launcher that owns the region. The namespace
# matters where /dev/shm is shared between containers (--ipc=host): a pid of another namespace is not ours to judge.
SHM_PREFIX_BASE = "triton_python_backend_shm_region_launch"
_OWNED_REGION = re.compile(re.escape(SHM_PREFIX_BASE) + r"(\d+)-(\d+)-(\d+)_")
STUB_NAME = "triton_python_backend_stub"
PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = EnvArgumentParser(
        description="Start Triton with the model repository: Piper plus every backend whose checkpoint is present.",
        env_prefix="TRITON",
    )
    parser.add_option("--model-repository", default=str(DEFAULT_REPOSITORY), help="model repository folder")
    parser.add_option(
        "--models-dir",
        default="",
        help="folder of checkpoints, one per backend under its registered name (" + ", ".join(
            f"{b.name}: {b.models_dir_name}" for b in registry.BACKENDS if not b.embedded
        ) + "); a backend whose folder is there is served",
    )  # fmt: skip
    parser.add_list_option(
        "--checkpoint",
        metavar="BACKEND=DIR",
        env="TRITON_CHECKPOINTS",
        help="serve BACKEND (" + ", ".join(b.name for b in registry.BACKENDS if not b.embedded) + ") from the "
        "checkpoint directory DIR (published layout; `python -m voice_triton.tiny.<backend> DIR` writes a tiny one)",
    )
    parser.add_list_option(
        "--param",
        metavar="MODEL:KEY=VALUE",
        env="TRITON_PARAMS",
        help="set a string parameter of a model's config, e.g. MODEL:max_new_tokens=600",
    )
    for backend in registry.BACKENDS:
        if backend.embedded:
            continue
        # The spellings of earlier releases, kept working: one checkpoint flag and one parameter flag per backend.
        parser.add_option(
            f"--{backend.name}-checkpoint", default="", help=f"the same as --checkpoint {backend.name}=DIR"
        )
        parser.add_list_option(
            f"--{backend.name}-param",
            metavar="KEY=VALUE",
            env=f"TRITON_{backend.name.upper()}_PARAMS",
            help=f"the same as --param {backend.entry_model}:KEY=VALUE",
        )
    parser.add_option("--address", default="0.0.0.0", help="address the HTTP, gRPC and metrics endpoints bind to")
    parser.add_option("--http-port", type=int, default=8000, help="HTTP port")
    parser.add_option("--grpc-port", type=int, default=8001, help="gRPC port")
    parser.add_option("--metrics-port", type=int, default=8002, help="Prometheus metrics port")
    parser.add_option(
        "--instance-count",
        type=int,
        default=None,
        help="override instance_group count of every model (each instance is one stub process); "
        "default: what each config.pbtxt says",
    )
    parser.add_option(
        "--models",
        default="",
        help="comma-separated models to load; empty: Piper's plus those of every backend with a checkpoint",
    )
    parser.add_option(
        "--server-root",
        default="",
        help="a Triton installation (bin/tritonserver, backends/), e.g. /opt/tritonserver in NVIDIA's image; "
        "empty: the server bundled in the nvidia-pytriton wheel",
    )
    parser.add_option("--log-verbose", type=int, default=0, help="tritonserver --log-verbose level")
    parser.add_option(
        "--trace-url",
        default="",
        help="OTLP/HTTP URL Triton exports its OpenTelemetry spans to, when OTEL_TRACES_EXPORTER includes otlp; "
        "default: the OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT when the protocol is http/protobuf, otherwise port 4318 "
        "of the OTLP endpoint's host (Triton exports over HTTP only)",
    )
    parser.add_option("--ready-timeout", type=float, default=180.0, help="seconds to wait for readiness")
    parser.add_option(
        "--stop-grace",
        type=float,
        default=20.0,
        help="seconds the server may drain after SIGTERM/SIGINT before it and its stubs are killed; keep it below "
        "the stop timeout of whatever runs the launcher",
    )
    parser.add_argument("server_args", nargs=argparse.REMAINDER, help="extra tritonserver arguments after `--`")
    args = parser.parse_args(argv)
    if args.server_args and args.server_args[0] == "--":
        args.server_args = args.server_args[1:]
    return args


class LaunchError(ValueError):
    """A flag or checkpoint the launcher cannot act on; the message says what to change."""


def _pairs(items: list[str], flag: str, form: str) -> list[tuple[str, str]]:
    pairs = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise LaunchError(f"{flag} takes {form}, got {item!r}")
        pairs.append((key.strip(), value))
    return pairs


def checkpoint_choices(args: argparse.Namespace) -> dict[str, Path]:
    """Backend name -> checkpoint directory: --checkpoint and its aliases first, then what --models-dir holds."""
    chosen: dict[str, Path] = {}
    given = _pairs(args.checkpoint, "--checkpoint", "BACKEND=DIR")
    given += [(b.name, getattr(args, f"{b.name}_checkpoint")) for b in registry.BACKENDS if not b.embedded]
    for name, directory in given:
        if not directory:
            continue
        backend = registry.get(name)  # UnknownBackend names the known ones
        if backend.embedded:
            raise LaunchError(f"backend {name} needs no checkpoint (its weights ship in a package)")
        chosen[name] = Path(directory).expanduser().resolve()
    if args.models_dir:
        root = Path(args.models_dir).expanduser().resolve()
        for backend in registry.BACKENDS:
            if not backend.embedded and backend.name not in chosen and (root / backend.models_dir_name).is_dir():
                chosen[backend.name] = root / backend.models_dir_name
    return chosen


def parameter_overrides(args: argparse.Namespace, models: set[str]) -> dict[str, dict[str, str]]:
    """Model -> {key: value} from --param MODEL:KEY=VALUE and the per-backend aliases."""
    overrides: dict[str, dict[str, str]] = {}
    for target, value in _pairs(args.param, "--param", "MODEL:KEY=VALUE"):
        model, sep, key = target.partition(":")
        if not sep or not key:
            raise LaunchError(f"--param takes MODEL:KEY=VALUE, got {target}={value}")
        if model not in models:
            raise LaunchError(f"--param {target}: no model {model!r} in the repository ({', '.join(sorted(models))})")
        overrides.setdefault(model, {})[key] = value
    for backend in registry.BACKENDS:
        if backend.embedded:
            continue
        for key, value in _pairs(getattr(args, f"{backend.name}_param"), f"--{backend.name}-param", "KEY=VALUE"):
            overrides.setdefault(backend.entry_model, {})[key] = value
    return overrides


@dataclass
class Plan:
    """What the server loads, with which configuration changes, and why the other backends are not served."""

    models: list[str]
    overrides: dict[str, dict[str, str]]
    backends: list[str]
    skipped: dict[str, str]


def plan_launch(args: argparse.Namespace, repository: Path) -> Plan:
    present = {path.parent.name for path in repository.glob("*/config.pbtxt")}
    checkpoints = checkpoint_choices(args)
    overrides = parameter_overrides(args, present)
    skipped: dict[str, str] = {}
    serving: list[registry.Backend] = []
    for backend in registry.BACKENDS:
        absent = [model for model in backend.models if model not in present]
        if absent:
            skipped[backend.name] = f"its models are not in {repository}: {', '.join(absent)}"
            continue
        if backend.embedded:
            serving.append(backend)
            continue
        checkpoint = checkpoints.get(backend.name)
        if checkpoint is None:
            skipped[backend.name] = f"no checkpoint (--checkpoint {backend.name}=DIR or --models-dir)"
            continue
        missing = backend.missing(checkpoint)
        if missing:
            skipped[backend.name] = (
                f"{checkpoint} is not a complete {backend.title} checkpoint; missing: {', '.join(missing)}"
            )
            continue
        serving.append(backend)
        for model in backend.models:
            overrides.setdefault(model, {})["checkpoint_dir"] = str(checkpoint)
    models = [model for backend in serving for model in backend.models]
    wanted = [m.strip() for m in args.models.split(",") if m.strip()]
    if wanted:
        for model in wanted:
            if model not in models:
                owner = registry.owner(model) if any(model in b.models for b in registry.BACKENDS) else None
                why = skipped.get(owner.name, "") if owner else f"it is not in {repository}"
                raise LaunchError(f"--models names {model}, which cannot be served: {why or 'unknown model'}")
        models = [model for model in models if model in wanted]
    return Plan(models, overrides, [b.name for b in serving], skipped)


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


@dataclass
class ServerInstall:
    binary: Path
    backends: Path
    # Folder of the wheel's bundled libraries (nvidia_pytriton.libs); None for an installation such as NGC's.
    bundled_libs: Path | None


def server_install(server_root: str) -> ServerInstall:
    """The tritonserver to run: an installation named by --server-root, else the one in the nvidia-pytriton wheel
    (with the python-backend stub for this interpreter copied into place)."""
    if server_root:
        root = Path(server_root)
        install = ServerInstall(root / "bin" / "tritonserver", root / "backends", None)
    else:
        # find_spec, not import: importing pytriton pulls in its whole client stack just to learn a path.
        spec = importlib.util.find_spec("pytriton")
        if spec is None or not spec.submodule_search_locations:
            sys.exit(f"nvidia-pytriton is not installed for {sys.executable}: run `make .venv-triton/.installed`")
        package = Path(next(iter(spec.submodule_search_locations)))
        server_dir = package / "tritonserver"
        install = ServerInstall(server_dir / "bin" / "tritonserver", server_dir / "backends", package.parent)
        if install.binary.is_file():
            prepare_stub(server_dir)
    if not install.binary.is_file():
        sys.exit(f"tritonserver binary missing at {install.binary}")
    return install


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


def server_env(install: ServerInstall) -> dict[str, str]:
    env = dict(os.environ)
    # The stub runs `python3` from PATH: this environment's bin must come first so the models see its packages.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    # The interpreter's own libpython first; otherwise the stub may pick a system libpython of the same soname.
    libdirs = [sysconfig.get_config_var("LIBDIR") or ""]
    if install.bundled_libs is not None:
        libdirs.append(str(install.bundled_libs / "nvidia_pytriton.libs"))
    if env.get("LD_LIBRARY_PATH"):
        libdirs.append(env["LD_LIBRARY_PATH"])
    env["LD_LIBRARY_PATH"] = os.pathsep.join(d for d in libdirs if d)
    return env


def staged_repository(
    repository: Path,
    models: list[str],
    overrides: dict[str, dict[str, str]] | None = None,
    instance_count: int | None = None,
) -> Path:
    """A temporary repository with just `models`, each config changed through Triton's config protobuf: parameters
    from `overrides` (model -> key -> value) and every instance_group count (Triton has no flag for it). Files are
    copied, not linked, so the server sees one consistent snapshot even while the source tree changes."""
    staged = Path(tempfile.mkdtemp(prefix="triton-repo-"))
    ignore = shutil.ignore_patterns("__pycache__")
    for model in models:
        shutil.copytree(repository / model, staged / model, ignore=ignore)  # symlinks followed: files copied
        config = read_config(staged / model / "config.pbtxt")
        apply_overrides(config, (overrides or {}).get(model), instance_count)
        (staged / model / "config.pbtxt").write_text(format_config(config), encoding="utf-8")
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


def model_states(http_url: str) -> dict[str, tuple[str, str]]:
    """Model name -> (state, reason) from the repository index (explicit model control)."""
    request = urllib.request.Request(f"{http_url}/v2/repository/index", data=b"{}", method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        index = json.loads(response.read())
    return {entry["name"]: (entry.get("state", ""), entry.get("reason", "")) for entry in index}


def unload(http_url: str, model: str) -> None:
    request = urllib.request.Request(f"{http_url}/v2/repository/models/{model}/unload", data=b"{}", method="POST")
    with contextlib.suppress(urllib.error.URLError, ConnectionError, TimeoutError):
        urllib.request.urlopen(request, timeout=30).close()


def _first_line(reason: str, limit: int = 300) -> str:
    """A load error's gist: loaders' messages run to pages (a traceback, every model type transformers knows)."""
    line = reason.strip().splitlines()[0] if reason.strip() else "unknown error"
    return line if len(line) <= limit else line[: limit - 3] + "..."


def settle_backends(http_url: str, plan: Plan) -> tuple[list[str], dict[str, str]]:
    """After start-up: the backends whose every model loaded, and for the others which model failed and why. A
    backend with a failed model is unloaded whole, so no half of it serves."""
    states = model_states(http_url)
    serving: list[str] = []
    failed: dict[str, str] = {}
    for name in plan.backends:
        backend = registry.get(name)
        models = [model for model in backend.models if model in plan.models]
        broken = [(model, states.get(model, ("", "not in the index"))) for model in models]
        broken = [(model, reason or state) for model, (state, reason) in broken if state != "READY"]
        if not broken:
            serving.append(name)
            continue
        failed[name] = "; ".join(f"{model}: {_first_line(reason)}" for model, reason in broken)
        for model in models:
            unload(http_url, model)
    return serving, failed


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    repository = Path(args.model_repository).resolve()
    if not repository.is_dir():
        sys.exit(f"model repository {repository} does not exist")
    if args.instance_count is not None and args.instance_count < 1:
        sys.exit("--instance-count must be at least 1")
    try:
        plan = plan_launch(args, repository)
    except (LaunchError, registry.UnknownBackend) as exc:
        sys.exit(f"launch.py: {exc}")
    for name, why in plan.skipped.items():
        print(f"backend {name}: not served: {why}", file=sys.stderr, flush=True)
    if not plan.models:
        sys.exit("launch.py: no model to serve")
    install = server_install(args.server_root)
    staged = staged_repository(repository, plan.models, plan.overrides, args.instance_count)

    prefix = shm_prefix()
    command = [
        str(install.binary),
        f"--model-repository={staged}",
        f"--backend-directory={install.backends}",
        f"--http-address={args.address}",
        f"--http-port={args.http_port}",
        f"--grpc-address={args.address}",
        f"--grpc-port={args.grpc_port}",
        f"--metrics-address={args.address}",
        f"--metrics-port={args.metrics_port}",
        f"--log-verbose={args.log_verbose}",
        # Explicit control: only the planned models load, and operators may load or unload more at run time.
        "--model-control-mode=explicit",
        *(f"--load-model={model}" for model in plan.models),
        # A backend whose weights fail to load must not take the others down: the launcher checks every model once
        # the server is up, unloads a broken backend whole and reports it. Models load before the endpoints open,
        # so readiness (not strict: a failed model stays listed as unavailable) is true only after loading.
        "--exit-on-error=false",
        "--strict-readiness=false",
        f"--backend-config=python,shm-region-prefix-name={prefix}",
    ]
    if install.bundled_libs is not None:
        command.append("--allow-gpu-metrics=false")  # no DCGM in the wheel's server; NVIDIA's image has it
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
        command,
        env=server_env(install),
        cwd=install.binary.parent,
        preexec_fn=die_with_parent(),
        start_new_session=True,
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
    http_url = f"http://{host}:{args.http_port}"
    failed_start = False
    try:
        if wait_ready(proc, f"{http_url}/v2/health/ready", args.ready_timeout):
            serving, failed = settle_backends(http_url, plan)
            for name, why in failed.items():
                print(f"backend {name}: not served: failed to load: {why}", file=sys.stderr, flush=True)
            embedded_failed = [name for name in failed if registry.get(name).embedded]
            if embedded_failed:
                print(f"the default backend {embedded_failed[0]} failed to load; stopping", file=sys.stderr)
                failed_start = True
                forward(signal.SIGTERM, None)
            else:
                print(
                    f"triton ready: grpc={host}:{args.grpc_port} http={http_url} "
                    f"metrics=http://{host}:{args.metrics_port}/metrics repository={args.model_repository} "
                    f"backends={','.join(serving)}",
                    flush=True,
                )
        elif proc.poll() is None:
            print(f"triton not ready after {args.ready_timeout:.0f}s; stopping it", file=sys.stderr, flush=True)
            failed_start = True
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
        shutil.rmtree(staged, ignore_errors=True)
    if failed_start:
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
