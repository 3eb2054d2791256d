"""Orpheus token ids -> SNAC codes -> streamed audio, without Triton.

Expected values are written out by hand from the published formula (canopyai/Orpheus-TTS decoder.py: a token
`<custom_token_N>` is id 128256 + N; code = N - 10 - (position mod 7) * 4096; frame [f0..f6] -> codebooks [f0],
[f1, f4], [f2, f3, f5, f6]), not computed with the module's own functions. The seams are checked against one SNAC
decode of the whole code sequence (random weights, fixed seed).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from tests.orpheus.codec import orpheus_codec as oc
from tests.orpheus.codec import orpheus_tiny_checkpoint

# snac 1.2.1 defines its activation with torch.jit.script, which torch 2.13 marks deprecated.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")

# SNAC 24 kHz as published (hubertsiuzdak/snac_24khz config.json, kept in the tiny-checkpoint tool), and the same with
# narrow layers for speed: the rates, strides and codebooks, hence the samples per frame, are the published ones.
SNAC_24KHZ: dict[str, Any] = orpheus_tiny_checkpoint.SNAC_24KHZ
SNAC_NARROW = {**SNAC_24KHZ, **orpheus_tiny_checkpoint.SNAC_NARROW}


def snac_model(config: dict[str, Any], *, noise: bool = True) -> Any:
    from snac import SNAC
    from snac.layers import NoiseBlock

    torch.manual_seed(0)
    model = SNAC(**config).eval()
    if not noise:
        # The noise blocks draw fresh noise on every call, so no two decodes agree; off for the seam comparison.
        for module in model.modules():
            if isinstance(module, NoiseBlock):
                module.forward = lambda x: x  # type: ignore[method-assign]
    return model


def test_token_ids_map_to_codes_by_the_published_formula() -> None:
    # <custom_token_10> is code 0 at position 0; each position has its own 4096-token block.
    assert oc.code_for(128266, 0) == 0
    assert oc.code_for(128266 + 4095, 0) == 4095
    assert oc.code_for(128266 + 4096 + 17, 1) == 17
    assert oc.code_for(128266 + 6 * 4096 + 4095, 6) == 4095
    assert oc.code_for(128266 + 3 * 4096 + 99, 10) == 99  # position 10 is position 3 of the second frame
    # Not audio at this position: a text token, structure tokens, the next position's block, past the last block.
    for token, position in [(500, 0), (128258, 0), (128265, 0), (128266 + 4096, 0), (128266 + 7 * 4096, 6)]:
        assert oc.code_for(token, position) is None
    assert oc.code_for(128266 + 5, 1) is None  # valid at position 0, not at 1
    assert (oc.FIRST_AUDIO_TOKEN, oc.LAST_AUDIO_TOKEN) == (128266, 128266 + 28671)
    speech = (oc.START_OF_SPEECH, oc.END_OF_SPEECH, oc.START_OF_HUMAN, oc.END_OF_HUMAN)
    assert speech == (128257, 128258, 128259, 128260)
    assert (oc.START_OF_AI, oc.END_OF_AI, oc.END_OF_TEXT) == (128261, 128262, 128009)


def test_prompt_layout() -> None:
    # engine_class._format_prompt: [128259] + tokenizer("tara: text") (with BOS) + [128009, 128260, 128261, 128257]
    assert oc.prompt_ids([128000, 5, 6]) == [128259, 128000, 5, 6, 128009, 128260, 128261, 128257]


def test_frames_spread_over_the_three_codebooks() -> None:
    assert oc.split_frames([10, 11, 12, 13, 14, 15, 16]) == ([10], [11, 14], [12, 13, 15, 16])
    two = oc.split_frames([0, 1, 2, 3, 4, 5, 6, 70, 71, 72, 73, 74, 75, 76])
    assert two == ([0, 70], [1, 4, 71, 74], [2, 3, 5, 6, 72, 73, 75, 76])
    with pytest.raises(ValueError, match="whole number"):
        oc.split_frames([1, 2, 3])


def frame_marker_decode(codebooks: tuple[list[int], list[int], list[int]]) -> np.ndarray:
    """A fake codec: 2048 samples per frame, each equal to the frame's coarse code, so a block names its frame."""
    coarse, middle, fine = codebooks
    assert len(middle) == 2 * len(coarse) and len(fine) == 4 * len(coarse)
    return np.repeat(np.asarray(coarse, dtype=np.float32), 2048)


def frame_tokens(first_codes: list[int]) -> list[int]:
    """Tokens of frames whose position-0 code is the given value and whose other codes are 1..6."""
    tokens = []
    for code in first_codes:
        tokens += [128266 + code] + [128266 + p * 4096 + p for p in range(1, 7)]
    return tokens


@pytest.mark.parametrize("frames", [1, 2, 3, 4, 9])
def test_streaming_schedule_exact_lengths_and_order(frames: int) -> None:
    decoder = oc.StreamingDecoder(frame_marker_decode)
    emitted: list[tuple[int, np.ndarray]] = []
    for count, token in enumerate(frame_tokens([100 + f for f in range(frames)]), start=1):
        block = decoder.push(token)
        if block is not None:
            emitted.append((count, block))
    # Frame j goes out when frame j+2 is complete: after tokens 21, 28, 35, ... one frame of 2048 samples each.
    assert [count for count, _ in emitted] == [21 + 7 * j for j in range(max(0, frames - 2))]
    assert all(block.size == 2048 for _, block in emitted)
    tail = decoder.flush()
    assert tail.size == min(frames, 2) * 2048
    audio = np.concatenate([block for _, block in emitted] + [tail])
    assert np.array_equal(audio, np.repeat(np.arange(100, 100 + frames, dtype=np.float32), 2048))
    assert decoder.flush().size == 0 and decoder.invalid_tokens == 0


def test_invalid_tokens_are_skipped_and_counted() -> None:
    clean = frame_tokens([7, 8, 9, 10])
    noisy = list(clean)
    # A text token, end of speech, a wrong-position code (valid at position 3) and past the last audio token, spread
    # over the sequence; the position does not advance on them, so the frames come out as if they were not there.
    for index, token in [(0, 500), (3, 128266 + 3 * 4096), (9, 128258), (20, 128266 + 7 * 4096), (25, 1)]:
        noisy.insert(index, token)
    outputs = []
    for tokens in (clean, noisy):
        decoder = oc.StreamingDecoder(frame_marker_decode)
        blocks = [b for b in (decoder.push(t) for t in tokens) if b is not None]
        outputs.append((np.concatenate([*blocks, decoder.flush()]), decoder.invalid_tokens))
    assert np.array_equal(outputs[0][0], outputs[1][0])
    assert (outputs[0][1], outputs[1][1]) == (0, 5)


def test_a_partial_last_frame_is_dropped() -> None:
    decoder = oc.StreamingDecoder(frame_marker_decode)
    for token in frame_tokens([1, 2])[:-3]:
        assert decoder.push(token) is None
    assert decoder.flush().size == 2048  # the whole first frame; the four codes of the second are not a frame


def test_published_snac_config_gives_2048_samples_per_frame() -> None:
    model = snac_model(SNAC_24KHZ)
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(19.8e6, rel=0.01)  # the published 19.8 M
    decode = oc.snac_decode(model)
    rng = np.random.default_rng(0)
    for frames in (1, 2):
        audio = decode(oc.split_frames(rng.integers(0, 4096, 7 * frames).tolist()))
        assert audio.shape == (frames * 2048,) and audio.dtype == np.float32 and np.isfinite(audio).all()


def stream(decode: oc.Decode, codes: list[int], context_frames: int) -> tuple[np.ndarray, list[int]]:
    decoder = oc.StreamingDecoder(decode, context_frames=context_frames)
    blocks = [b for b in (decoder.push(oc.token_for(c, p)) for p, c in enumerate(codes)) if b is not None]
    blocks.append(decoder.flush())
    return np.concatenate(blocks), list(np.cumsum([b.size for b in blocks])[:-1])


def test_streamed_audio_matches_one_whole_decode() -> None:
    """Measured (narrow widths, 8 random frames): the published window (1 frame of left context) is off the whole
    decode by 0.85% RMS of the signal (frames 2..6; the left edge of the decoder's receptive field is wider than 2048
    samples); with 2 frames of left context the window covers it and the error is float rounding (0.01%)."""
    decode = oc.snac_decode(snac_model(SNAC_NARROW, noise=False))
    codes = np.random.default_rng(1).integers(0, 4096, 8 * 7).tolist()
    whole = decode(oc.split_frames(codes))
    assert whole.size == 8 * 2048
    rms = float(np.sqrt(np.mean(whole**2)))
    largest_step = float(np.abs(np.diff(whole)).max())
    errors = {}
    for context in (1, 2):
        audio, seams = stream(decode, codes, context)
        assert audio.size == whole.size and seams == [2048 * j for j in range(1, 7)]
        errors[context] = float(np.sqrt(np.mean((audio - whole) ** 2))) / rms
        # No click: the step across every seam is no larger than the largest step inside the whole decode.
        steps = np.abs(audio[np.array(seams)] - audio[np.array(seams) - 1])
        assert steps.max() <= 1.05 * largest_step
    assert errors[2] < 1e-3
    assert errors[1] < 0.03 and errors[1] > errors[2]
