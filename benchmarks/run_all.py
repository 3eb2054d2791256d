"""`make bench`: run every benchmark in turn with the dev interpreter; each prints its own table of ratios.

`--quick` passes the smoke-run mode to the benchmarks that have one (gateway_bench.py's listener section otherwise
takes 15-25 minutes on 2 cores). The soak (benchmarks/soak.py, `make soak`) is not run here.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ORDER = [
    "triton_stream_bench.py",
    "rvc_engines_bench.py",
    "f0_bench.py",
    "rvc_pool_bench.py",
    "gateway_bench.py",
    "spark_bench.py",
    "text_stream_bench.py",
    "edge_latency.py",
]
HAS_QUICK = {"gateway_bench.py", "spark_bench.py", "text_stream_bench.py", "edge_latency.py"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smoke-run mode where a benchmark has one")
    args = parser.parse_args()
    failed = []
    for name in ORDER:
        script = HERE / name
        if not script.exists():
            continue
        print(f"\n=== {name} ===", flush=True)
        extra = ["--quick"] if args.quick and name in HAS_QUICK else []
        if subprocess.run([sys.executable, str(script), *extra], cwd=HERE.parent).returncode != 0:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
