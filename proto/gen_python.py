"""Generate Python stubs (messages, .pyi and gRPC) for proto/voice/v1 into an output directory.

Run by `make` during set-up; the output (gen/python by default) is never committed. tests/common/test_contract.py
regenerates into a temporary directory and fails when the checked-out stubs are stale.
"""

from __future__ import annotations

import argparse
import sys
from importlib import resources
from pathlib import Path

from grpc_tools import protoc

PROTO_ROOT = Path(__file__).resolve().parent
DEFAULT_OUT = PROTO_ROOT.parent / "gen" / "python"


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
    # Packages so that `import voice.v1.audio_pb2` works from a plain sys.path entry.
    for pkg in (out_dir / "voice", out_dir / "voice" / "v1"):
        (pkg / "__init__.py").touch()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory (default: gen/python)")
    generate(parser.parse_args(argv).out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
