"""Orpheus audio tokens to SNAC codes to audio, streamed; needs no Triton (numpy, and torch only to decode).

Orpheus (canopyai/Orpheus-TTS) is a Llama-3 LM whose extra vocabulary holds `<custom_token_N>` at id 128256 + N.
Speech is a run of those tokens in frames of 7; the code at position p (p counted over valid audio tokens only) is

    code = token_id - 128256 - 10 - (p mod 7) * 4096          (must lie in 0..4095)

and each frame spreads over SNAC 24 kHz's three codebooks (12, 23 and 47 Hz: 1 + 2 + 4 codes) in the published
order: codebook 0 gets [f0], codebook 1 [f1, f4], codebook 2 [f2, f3, f5, f6]. One frame is 2048 samples at 24 kHz
(hop 512 x the coarsest stride 4).

`StreamingDecoder` takes generated token ids one at a time. A token that is not a valid audio code for the current
position (a text token, a code out of range, a code that belongs to another position of the frame) is skipped and
counted, and the position does not advance, so one stray token cannot shift every later frame. The published
decoder differs in two details on purpose: it skips code 0 (`if token > 0`), which is a valid SNAC code, and it
accepts a wrong-position token into the buffer and then drops every window that holds it (four frames of silence).

Streaming schedule: frame j goes out once frames j+1 and j+2 exist (two frames of look-ahead), rendered from a
window of one frame of left context, the frame and its look-ahead, and cut to its own 2048 samples. From the fourth
frame on this is the published window exactly (4 frames / 28 tokens, `audio_hat[:, :, 2048:4096]`); the published
decoder never plays frame 0 and the last two frames, which this one does: frame 0 from a 3-frame window after the
third frame (first audio after 21 tokens), and the tail on `flush()`. The stream is therefore exactly
frames x 2048 samples, and every response holds whole frames.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

CUSTOM_TOKEN_BASE = 128256  # <custom_token_0> in Orpheus' Llama-3 vocabulary
AUDIO_TOKEN_OFFSET = 10  # audio codes start at <custom_token_10>; 0..9 are structure tokens
CODEBOOK_SIZE = 4096
TOKENS_PER_FRAME = 7
SAMPLE_RATE = 24000
SAMPLES_PER_FRAME = 2048  # SNAC 24 kHz: hop 512 x vq stride 4 of codebook 0
REAL_TIME_TOKENS_PER_S = TOKENS_PER_FRAME * SAMPLE_RATE / SAMPLES_PER_FRAME  # 82.03 tokens/s: real time

# Prompt and structure tokens (custom tokens 0..9 and Llama-3's <|eot_id|>).
START_OF_TEXT = 128000  # <|begin_of_text|>
END_OF_TEXT = 128009  # <|eot_id|>
START_OF_SPEECH = CUSTOM_TOKEN_BASE + 1
END_OF_SPEECH = CUSTOM_TOKEN_BASE + 2
START_OF_HUMAN = CUSTOM_TOKEN_BASE + 3
END_OF_HUMAN = CUSTOM_TOKEN_BASE + 4
START_OF_AI = CUSTOM_TOKEN_BASE + 5
END_OF_AI = CUSTOM_TOKEN_BASE + 6
FIRST_AUDIO_TOKEN = CUSTOM_TOKEN_BASE + AUDIO_TOKEN_OFFSET
LAST_AUDIO_TOKEN = FIRST_AUDIO_TOKEN + TOKENS_PER_FRAME * CODEBOOK_SIZE - 1


def prompt_ids(text_ids: Sequence[int]) -> list[int]:
    """The published prompt around the tokenized "{voice}: {text}" (engine_class._format_prompt): start of human,
    the text, end of text, end of human, start of AI, start of speech. `text_ids` includes the tokenizer's BOS."""
    return [START_OF_HUMAN, *text_ids, END_OF_TEXT, END_OF_HUMAN, START_OF_AI, START_OF_SPEECH]


def code_for(token_id: int, position: int) -> int | None:
    """The SNAC code of `token_id` at frame position `position` (any int; taken mod 7), or None if it is not one."""
    code = token_id - CUSTOM_TOKEN_BASE - AUDIO_TOKEN_OFFSET - (position % TOKENS_PER_FRAME) * CODEBOOK_SIZE
    return code if 0 <= code < CODEBOOK_SIZE else None


def token_for(code: int, position: int) -> int:
    """The token id that carries `code` at `position` (the inverse of `code_for`)."""
    return CUSTOM_TOKEN_BASE + AUDIO_TOKEN_OFFSET + (position % TOKENS_PER_FRAME) * CODEBOOK_SIZE + code


def split_frames(codes: Sequence[int]) -> tuple[list[int], list[int], list[int]]:
    """Whole 7-code frames to SNAC's three codebooks (1 + 2 + 4 per frame, the published order)."""
    if len(codes) % TOKENS_PER_FRAME:
        raise ValueError(f"{len(codes)} codes is not a whole number of {TOKENS_PER_FRAME}-code frames")
    coarse: list[int] = []
    middle: list[int] = []
    fine: list[int] = []
    for start in range(0, len(codes), TOKENS_PER_FRAME):
        f = codes[start : start + TOKENS_PER_FRAME]
        coarse.append(f[0])
        middle += [f[1], f[4]]
        fine += [f[2], f[3], f[5], f[6]]
    return coarse, middle, fine


Decode = Callable[[tuple[list[int], list[int], list[int]]], np.ndarray]


def snac_decode(model: Any) -> Decode:
    """A `Decode` over a loaded `snac.SNAC` model: three codebook lists in, float32 mono samples out."""
    import torch

    device = next(model.parameters()).device

    def decode(codebooks: tuple[list[int], list[int], list[int]]) -> np.ndarray:
        codes = [torch.tensor([c], dtype=torch.int64, device=device) for c in codebooks]
        with torch.inference_mode():
            audio = model.decode(codes)
        return audio.reshape(-1).float().cpu().numpy()

    return decode


@dataclass
class StreamingDecoder:
    """Token ids in, audio blocks out, on the schedule of the module docstring."""

    decode: Decode
    context_frames: int = 1  # frames decoded before the emitted one and dropped
    lookahead_frames: int = 2  # frames that must exist after the emitted one
    codes: list[int] = field(default_factory=list)  # valid codes so far
    invalid_tokens: int = 0
    emitted_frames: int = 0

    @property
    def frames(self) -> int:
        return len(self.codes) // TOKENS_PER_FRAME

    @property
    def position(self) -> int:
        """Position in the frame (0..6) the next valid token must have."""
        return len(self.codes) % TOKENS_PER_FRAME

    def push(self, token_id: int) -> np.ndarray | None:
        """Take one generated token; return the audio of a frame that became ready, else None."""
        code = code_for(token_id, self.position)
        if code is None:
            self.invalid_tokens += 1
            return None
        self.codes.append(code)
        if self.position or self.frames - self.emitted_frames <= self.lookahead_frames:
            return None
        return self._render(self.emitted_frames, self.emitted_frames + 1)

    def flush(self) -> np.ndarray:
        """The frames not yet emitted (the look-ahead), at the end of generation; a partial frame is dropped."""
        if self.emitted_frames >= self.frames:
            return np.zeros(0, dtype=np.float32)
        return self._render(self.emitted_frames, self.frames)

    def _render(self, first: int, end: int) -> np.ndarray:
        """Frames first..end-1, decoded with up to context_frames before and lookahead_frames after them."""
        start = max(0, first - self.context_frames)
        stop = min(self.frames, end + self.lookahead_frames)
        audio = self.decode(split_frames(self.codes[start * TOKENS_PER_FRAME : stop * TOKENS_PER_FRAME]))
        offset = (first - start) * SAMPLES_PER_FRAME
        block = np.asarray(audio[offset : offset + (end - first) * SAMPLES_PER_FRAME], dtype=np.float32)
        if block.size != (end - first) * SAMPLES_PER_FRAME:
            raise RuntimeError(f"the codec returned {audio.size} samples for {stop - start} frames")
        self.emitted_frames = end
        return block
