"""The repository's code is reached through installed distributions, never through the repository root on sys.path.

The root holds a folder named triton/ (the model repository); with the root on sys.path it imports as a namespace
package and torch takes it for the OpenAI Triton compiler. These tests check that nothing puts it there.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_repository_root_is_not_importable_in_the_test_process() -> None:
    assert str(REPO_ROOT) not in sys.path
    assert importlib.util.find_spec("triton") is None, "the repository's triton/ folder is visible as a package"


@pytest.mark.parametrize(
    ("distribution", "package", "home"),
    [
        ("voice-serving", "services", REPO_ROOT / "services"),  # editable: the checkout's own files
        ("voice-serving-tests", "tests", REPO_ROOT / "tests"),
        ("voice-serving-benchmarks", "benchmarks", REPO_ROOT / "benchmarks"),
        ("voice-proto", "voice", None),  # built: generated files live only in site-packages
    ],
)
def test_packages_come_from_installed_distributions(distribution: str, package: str, home: Path | None) -> None:
    importlib.metadata.distribution(distribution)  # raises when not installed
    spec = importlib.util.find_spec(package)
    assert spec is not None and spec.origin is not None
    origin = Path(spec.origin).resolve()
    if home is None:
        site_packages = Path(sysconfig.get_paths()["purelib"]).resolve()
        assert site_packages in origin.parents, f"{package} is imported from {origin}, not the installed wheel"
    else:
        assert origin.parent == home, f"{package} resolves to {origin}, expected the editable install of {home}"


def test_services_are_editable_installs_of_this_checkout() -> None:
    direct_url = json.loads(importlib.metadata.distribution("voice-serving").read_text("direct_url.json") or "{}")
    assert direct_url.get("dir_info", {}).get("editable") is True
    assert Path(direct_url["url"].removeprefix("file://")).resolve() == REPO_ROOT


def test_service_entry_points_start_outside_the_repository(tmp_path: Path) -> None:
    """The console scripts the images use resolve from any working directory, and the RVC service's torch imports
    cleanly (it would not with the repository's triton/ folder on the path)."""
    bin_dir = Path(sys.executable).parent
    for script in ("voice-tts-gateway", "voice-rvc-service"):
        done = subprocess.run([bin_dir / script, "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert "usage" in done.stdout.lower()
    probe = "import torch._dynamo, importlib.util; assert importlib.util.find_spec('triton') is None"
    done = subprocess.run([sys.executable, "-P", "-c", probe], cwd=REPO_ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_no_code_edits_sys_path() -> None:
    offenders = [
        str(path.relative_to(REPO_ROOT))
        for folder in ("services", "clients", "tests", "benchmarks", "deploy", "triton", "proto")
        for path in (REPO_ROOT / folder).rglob("*.py")
        if "node_modules" not in path.parts
        and "build" not in path.parts
        and path != Path(__file__).resolve()
        and ("sys.path.insert" in path.read_text() or "sys.path.append" in path.read_text())
    ]
    assert not offenders, f"these files edit sys.path instead of importing installed packages: {offenders}"
