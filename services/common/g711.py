"""G.711 companding (ITU-T G.711): mu-law and A-law, one byte per sample, as telephone lines carry audio.

Bit-exact with the reference routines every telephony stack copies (Sun Microsystems' public-domain g711.c, which
Python's old ``audioop`` module also used): 16-bit linear PCM in, one code byte out, and back. Vectorised with numpy.

Notes on the two laws:
* mu-law keeps 14 bits of magnitude (largest decoded value 32124); it has two codes for zero (0xFF is +0 and 0x7F is
  -0), so encoding a decoded 0x7F gives 0xFF: every other code round-trips.
* A-law keeps 13 bits (largest decoded value 32256) and has no code for zero (the smallest levels are +-8); every
  code round-trips. Its even bits are inverted on the line (the 0x55 mask).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

_SEG_UEND = np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF], dtype=np.int32)
_SEG_AEND = np.array([0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF], dtype=np.int32)
_BIAS = 0x84
_CLIP = 8159


def _int32(pcm: NDArray[np.integer[Any]]) -> NDArray[np.int32]:
    return np.asarray(pcm).reshape(-1).astype(np.int32)


def linear_to_ulaw(pcm: NDArray[np.integer[Any]]) -> NDArray[np.uint8]:
    """16-bit linear samples to mu-law code bytes."""
    x = _int32(pcm) >> 2  # 14-bit
    mask = np.where(x < 0, 0x7F, 0xFF)
    x = np.minimum(np.abs(x), _CLIP) + (_BIAS >> 2)
    seg = np.searchsorted(_SEG_UEND, x, side="left").astype(np.int32)
    code = (seg << 4) | ((x >> (np.minimum(seg, 7) + 1)) & 0x0F)
    code = np.where(seg >= 8, 0x7F, code)
    out: NDArray[np.uint8] = (code ^ mask).astype(np.uint8)
    return out


def ulaw_to_linear(codes: NDArray[np.integer[Any]]) -> NDArray[np.int16]:
    """mu-law code bytes to 16-bit linear samples."""
    u = ~_int32(codes) & 0xFF
    t = (((u & 0x0F) << 3) + _BIAS) << ((u & 0x70) >> 4)
    out: NDArray[np.int16] = np.where(u & 0x80, _BIAS - t, t - _BIAS).astype(np.int16)
    return out


def linear_to_alaw(pcm: NDArray[np.integer[Any]]) -> NDArray[np.uint8]:
    """16-bit linear samples to A-law code bytes."""
    x = _int32(pcm) >> 3  # 13-bit
    mask = np.where(x >= 0, 0xD5, 0x55)
    x = np.where(x >= 0, x, -x - 1)
    seg = np.searchsorted(_SEG_AEND, x, side="left").astype(np.int32)
    shift = np.where(seg < 2, 1, np.minimum(seg, 7))
    code = (seg << 4) | ((x >> shift) & 0x0F)
    code = np.where(seg >= 8, 0x7F, code)
    out: NDArray[np.uint8] = (code ^ mask).astype(np.uint8)
    return out


def alaw_to_linear(codes: NDArray[np.integer[Any]]) -> NDArray[np.int16]:
    """A-law code bytes to 16-bit linear samples."""
    a = _int32(codes) ^ 0x55
    seg = (a & 0x70) >> 4
    t = (a & 0x0F) << 4
    t = np.where(seg == 0, t + 8, (t + 0x108) << np.maximum(seg - 1, 0))
    out: NDArray[np.int16] = np.where(a & 0x80, t, -t).astype(np.int16)
    return out


def _to_int16(x: NDArray[np.floating[Any]]) -> NDArray[np.int16]:
    clipped = np.clip(np.asarray(x, dtype=np.float32).reshape(-1), -1.0, 1.0)
    out: NDArray[np.int16] = np.rint(clipped * 32767.0).astype(np.int16)
    return out


def encode_ulaw(x: NDArray[np.floating[Any]]) -> bytes:
    """Float samples in [-1, 1] (clipped) to mu-law bytes."""
    return linear_to_ulaw(_to_int16(x)).tobytes()


def decode_ulaw(data: bytes) -> NDArray[np.float32]:
    """mu-law bytes to float32 samples in [-1, 1) (16-bit scale, as PCM16 input: divided by 32768)."""
    return ulaw_to_linear(np.frombuffer(data, dtype=np.uint8)).astype(np.float32) / np.float32(32768.0)


def encode_alaw(x: NDArray[np.floating[Any]]) -> bytes:
    """Float samples in [-1, 1] (clipped) to A-law bytes."""
    return linear_to_alaw(_to_int16(x)).tobytes()


def decode_alaw(data: bytes) -> NDArray[np.float32]:
    """A-law bytes to float32 samples in [-1, 1)."""
    return alaw_to_linear(np.frombuffer(data, dtype=np.uint8)).astype(np.float32) / np.float32(32768.0)
