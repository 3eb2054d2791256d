"""Saving a streamed WAV as a complete file.

The services stream WAV as a RIFF header whose sizes say "unknown length" (they cannot know it up front) followed by
16-bit PCM samples. Here the header is read once, the samples are handed to libsndfile (soundfile) as they arrive, and
libsndfile writes the header with the true sizes when the file is closed, so every reader sees the real length.
"""

from __future__ import annotations

import struct
from pathlib import Path
from types import TracebackType
from typing import Self

import soundfile as sf

MAX_HEADER_BYTES = 64 * 1024  # a header this long without a data chunk is not a WAV stream
_PCM = 1
_EXTENSIBLE = 0xFFFE


class WavStreamError(ValueError):
    """The bytes are not the 16-bit PCM RIFF/WAVE stream the contract describes."""


def parse_wav_header(data: bytes | bytearray) -> tuple[int, int, int] | None:
    """(channels, sample rate, offset of the first sample) of a RIFF/WAVE stream of 16-bit PCM, or None while
    `data` does not yet hold the whole header. Raises WavStreamError for anything else."""
    if len(data) >= 12 and (data[:4] != b"RIFF" or data[8:12] != b"WAVE"):
        raise WavStreamError("not a RIFF/WAVE stream")
    fmt: tuple[int, int] | None = None
    pos = 12
    while pos + 8 <= len(data):
        chunk_id = bytes(data[pos : pos + 4])
        (size,) = struct.unpack_from("<I", data, pos + 4)
        if chunk_id == b"data":
            if fmt is None:
                raise WavStreamError("WAV stream has no fmt chunk before its data")
            return fmt[0], fmt[1], pos + 8
        end = pos + 8 + size
        if end > len(data):
            break  # the chunk is not complete yet
        if chunk_id == b"fmt ":
            fmt = _parse_fmt(bytes(data[pos + 8 : end]))
        pos = end + (size & 1)  # chunks are word-aligned
    if len(data) > MAX_HEADER_BYTES:
        raise WavStreamError("WAV stream has no data chunk")
    return None


def _parse_fmt(chunk: bytes) -> tuple[int, int]:
    if len(chunk) < 16:
        raise WavStreamError("WAV fmt chunk is too short")
    tag, channels, rate, _byte_rate, _block_align, bits = struct.unpack_from("<HHIIHH", chunk)
    if tag == _EXTENSIBLE and len(chunk) >= 26:
        (tag,) = struct.unpack_from("<H", chunk, 24)  # the sub-format GUID starts with the real tag
    if tag != _PCM or bits != 16 or channels < 1 or rate < 1:
        raise WavStreamError(f"unsupported WAV sample format (tag {tag}, {bits} bits, {channels} channels)")
    return channels, rate


class WavFileWriter:
    """Write a streamed WAV (bytes in any pieces) to `path` through libsndfile; `close()` completes the file."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._pending = bytearray()
        self._file: sf.SoundFile | None = None
        self._frame_bytes = 2

    def write(self, data: bytes) -> None:
        self._pending += data
        if self._file is None:
            header = parse_wav_header(self._pending)
            if header is None:
                return
            channels, rate, offset = header
            self._file = sf.SoundFile(
                str(self.path), mode="w", samplerate=rate, channels=channels, format="WAV", subtype="PCM_16"
            )
            self._frame_bytes = 2 * channels
            del self._pending[:offset]
        whole = len(self._pending) - len(self._pending) % self._frame_bytes
        if whole:
            self._file.buffer_write(bytes(self._pending[:whole]), dtype="int16")
            del self._pending[:whole]

    @property
    def frames(self) -> int:
        return self._file.frames if self._file is not None else 0

    def close(self) -> None:
        """Finish the file; raises WavStreamError when the stream ended before its header or inside a frame."""
        if self._file is None:
            raise WavStreamError("the stream ended before its WAV header was complete")
        self._file.close()
        if self._pending:
            raise WavStreamError(f"the stream ended inside a sample frame ({len(self._pending)} stray bytes)")

    def abort(self) -> None:
        if self._file is not None and not self._file.closed:
            self._file.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
