"""Tiny random-weight checkpoints in each backend's published layout, for tests and smoke runs.

Each writer is a module run as `python -m voice_triton.tiny.<backend> OUT [--seed N]` with the Triton environment's
interpreter; `writer_cli` gives them one command line.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any


def writer_cli(
    title: str,
    description: str,
    make: Callable[..., Path],
    argv: list[str] | None = None,
    flags: dict[str, str] | None = None,
) -> int:
    """Parse OUT, --seed and the writer's own boolean `flags` (flag -> help), call make(out, seed, **flags), and
    say where the checkpoint went and its size."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("out", type=Path, help="directory to write (created; existing files are overwritten)")
    parser.add_argument("--seed", type=int, default=0, help="torch seed for the random weights")
    for flag, text in (flags or {}).items():
        parser.add_argument(flag, action="store_true", help=text)
    args = vars(parser.parse_args(argv))
    out, seed = args.pop("out"), args.pop("seed")
    options: dict[str, Any] = args
    path = make(out, seed, **options)
    size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    print(f"tiny {title} checkpoint written to {path} ({size / 1e6:.1f} MB)")
    return 0


def byte_level_bpe(corpus: list[str], vocab_size: int) -> Any:
    """A byte-level BPE `tokenizers.Tokenizer` trained on `corpus` (the shape of the Qwen2 and Llama-3 tokenizers,
    small)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=alphabet, show_progress=False)
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    return tokenizer
