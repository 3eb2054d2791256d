"""Generate Python stubs (messages, .pyi and gRPC) for proto/voice/v1 into an output directory.

The `voice-proto` distribution's build (setup.py) runs this into its build tree, so the stubs ship in the wheel and
are never committed. tests/common/test_contract.py regenerates into a temporary directory and fails when the
installed stubs differ (then `make setup` reinstalls them).
"""

from __future__ import annotations

import argparse
import sys
from importlib import resources
from pathlib import Path

from grpc_tools import protoc

PROTO_ROOT = Path(__file__).resolve().parent


def proto_files() -> list[Path]:
    return sorted((PROTO_ROOT / "voice" / "v1").glob("*.proto"))


def generate(out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    well_known = resources.files("grpc_tools") / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *(str(p.relative_to(PROTO_ROOT)) for p in proto_files()),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    # Regular packages (`import voice.v1.audio_pb2`), marked as typed for type checkers (PEP 561).
    for pkg in (out_dir / "voice", out_dir / "voice" / "v1"):
        (pkg / "__init__.py").touch()
    (out_dir / "voice" / "v1" / "py.typed").touch()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    generate(parser.parse_args(argv).out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
