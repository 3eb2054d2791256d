"""Make the PyPI torchaudio wheel importable beside a CPU-only torch.

torchaudio's wheels on PyPI are CUDA builds whose compiled extension needs libc10_cuda; next to the CPU build of torch
that these machines install, `import torchaudio` fails. torchaudio treats its extension as optional when the library
file is absent (pure-Python mode: resampling, mel spectrograms, everything torchcrepe and torchfcpe use). So on a
torch without CUDA this moves the extension libraries aside. On a CUDA torch it does nothing.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path


def main() -> int:
    spec = importlib.util.find_spec("torchaudio")
    if spec is None or spec.origin is None:
        return 0
    import torch

    if torch.version.cuda is not None:
        return 0
    lib_dir = Path(spec.origin).parent / "lib"
    for lib in lib_dir.glob("*.so"):
        lib.rename(lib.with_suffix(".so.cuda-only"))
        print(f"torchaudio: set aside CUDA-only extension {lib.name} (CPU torch)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
