"""Test helpers around services/rvc_service/streaming.py: run a stitcher synchronously, find its block seams."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.typing import NDArray

from services.rvc_service.streaming import BlockSettings, SolaStitcher


def convert_offline(
    audio: NDArray[np.floating[Any]],
    in_rate: int,
    out_rate: int,
    convert: Callable[[NDArray[np.float32], int], NDArray[np.floating[Any]]],
    settings: BlockSettings | None = None,
    pieces: list[int] | None = None,
) -> NDArray[np.float32]:
    """Run a stitcher synchronously over ``audio`` fed in ``pieces`` (cycled sizes); ``convert(audio, context)``
    returns the output of audio[context:]."""
    stitcher = SolaStitcher(in_rate, out_rate, settings)
    sizes = pieces or [audio.size]
    out: list[NDArray[np.float32]] = []
    pos, i = 0, 0
    while pos < audio.size:
        n = sizes[i % len(sizes)]
        stitcher.feed(audio[pos : pos + n])
        pos += n
        i += 1
        while (window := stitcher.next_window()) is not None:
            out.append(stitcher.accept(window, convert(window.audio, window.context)))
    if (window := stitcher.next_window(final=True)) is not None:
        out.append(stitcher.accept(window, convert(window.audio, window.context)))
    return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)


def seam_inputs(stitcher: SolaStitcher, n_in: int) -> list[int]:
    """Input positions of the block seams of an unflushed stream of n_in samples through ``stitcher``'s settings."""
    seams, position, block = [], 0, stitcher.first_block_in
    while position + block + stitcher.lookahead_in <= n_in:
        position += block
        seams.append(position)
        block = min(stitcher.block_in, max(block + 1, round(block * stitcher.settings.block_growth)))
    return seams
