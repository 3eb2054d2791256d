"""Output formats: which the gateway encodes itself, and which the edge encodes from the gateway's PCM with PyAV.

The gateway speaks PCM16, WAV and Ogg-Opus. MP3, AAC (ADTS) and FLAC come from PyAV's bundled FFmpeg encoders
(libmp3lame, the native aac encoder, flac): the edge asks the gateway for PCM16 and feeds each chunk to a streaming
encoder whose output is drained after every chunk, so the body still streams. This is format work only; the audio
itself is the gateway's.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import av
import numpy as np

from services.common.audio import ByteSink
from voice.v1 import audio_pb2


@dataclass(frozen=True)
class OutputFormat:
    name: str
    content_type: str
    gateway_encoding: audio_pb2.AudioEncoding
    container: str | None = None  # PyAV muxer when the edge encodes; None when the gateway's bytes go out as they are
    codec: str | None = None


FORMATS: dict[str, OutputFormat] = {
    "pcm": OutputFormat("pcm", "audio/pcm", audio_pb2.AUDIO_ENCODING_PCM16),
    "wav": OutputFormat("wav", "audio/wav", audio_pb2.AUDIO_ENCODING_WAV),
    "opus": OutputFormat("opus", "audio/ogg", audio_pb2.AUDIO_ENCODING_OGG_OPUS),
    "mp3": OutputFormat("mp3", "audio/mpeg", audio_pb2.AUDIO_ENCODING_PCM16, "mp3", "libmp3lame"),
    "aac": OutputFormat("aac", "audio/aac", audio_pb2.AUDIO_ENCODING_PCM16, "adts", "aac"),
    "flac": OutputFormat("flac", "audio/flac", audio_pb2.AUDIO_ENCODING_PCM16, "flac", "flac"),
}


def supported_formats() -> str:
    return ", ".join(FORMATS)


class StreamEncoder:
    """Mono PCM16 in, encoded container bytes out, chunk by chunk. Not thread-safe; one per response."""

    def __init__(self, fmt: OutputFormat, sample_rate: int) -> None:
        assert fmt.container and fmt.codec
        self._sink = ByteSink()
        self._container: Any = av.open(self._sink, mode="w", format=fmt.container)
        self._stream: Any = self._container.add_stream(fmt.codec, rate=sample_rate, layout="mono")
        self._rate = sample_rate
        self._pts = 0
        self._leftover = b""

    def encode(self, pcm16: bytes) -> bytes:
        data = self._leftover + pcm16
        usable = len(data) - len(data) % 2  # a chunk may end inside a sample
        self._leftover = data[usable:]
        if usable:
            samples = np.frombuffer(data[:usable], dtype="<i2").reshape(1, -1)
            frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
            frame.sample_rate = self._rate
            frame.pts = self._pts
            self._pts += samples.shape[1]
            for packet in self._stream.encode(frame):
                self._container.mux(packet)
        return self._sink.drain()

    def finish(self) -> bytes:
        for packet in self._stream.encode(None):
            self._container.mux(packet)
        self._container.close()
        return self._sink.drain()

    def close(self) -> None:
        """Release the encoder without flushing (the response was abandoned)."""
        with contextlib.suppress(Exception):  # a half-written container can complain; nothing is sent any more
            self._container.close()
