"""voice_client.wav: a streamed WAV (header sizes 'unknown', as the services send it) saved through libsndfile with
the true sizes, whatever pieces the stream arrives in; anything but the contract's 16-bit PCM WAV is refused."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tests.clients.audio_checks import read_finalized_wav
from tests.clients.fake_gateway import wav_stream_header
from voice_client.wav import WavFileWriter, WavStreamError, parse_wav_header


def pcm(frames: int, channels: int = 1, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(-32768, 32767, size=(frames, channels), dtype=np.int16)


@pytest.mark.parametrize("piece", [1, 3, 44, 45, 1000, 10**6])
def test_any_split_gives_the_same_complete_file(tmp_path: Path, piece: int) -> None:
    samples = pcm(4001)
    stream = wav_stream_header(22050) + samples.tobytes()
    out = tmp_path / "out.wav"
    with WavFileWriter(out) as writer:
        for start in range(0, len(stream), piece):
            writer.write(stream[start : start + piece])
    decoded, rate = read_finalized_wav(out.read_bytes())  # RIFF and data sizes are the true ones
    assert rate == 22050 and len(decoded) == 4001
    assert np.array_equal(sf.read(str(out), dtype="int16")[0], samples[:, 0])


def test_extra_chunks_before_data_and_stereo(tmp_path: Path) -> None:
    samples = pcm(100, channels=2)
    fmt = struct.pack("<HHIIHH", 1, 2, 8000, 8000 * 4, 4, 16)
    header = b"RIFF\xff\xff\xff\xffWAVE" + b"fmt " + struct.pack("<I", 16) + fmt
    header += b"LIST" + struct.pack("<I", 5) + b"INFOx\x00"  # odd size: padded to a word
    header += b"data\xff\xff\xff\xff"
    out = tmp_path / "stereo.wav"
    with WavFileWriter(out) as writer:
        writer.write(header + samples.tobytes())
    data, rate = sf.read(str(out), dtype="int16")
    assert rate == 8000 and np.array_equal(data, samples)


def test_incomplete_header_waits_for_more() -> None:
    header = wav_stream_header(16000)
    assert parse_wav_header(header[:43]) is None
    assert parse_wav_header(header) == (1, 16000, 44)


@pytest.mark.parametrize(
    ("stream", "message"),
    [
        (b"OggS" + bytes(60), "not a RIFF/WAVE stream"),
        (wav_stream_header(16000)[:34] + struct.pack("<H", 24) + wav_stream_header(16000)[36:], "24 bits"),
        (b"RIFF\xff\xff\xff\xffWAVEdata\xff\xff\xff\xff", "no fmt chunk"),
    ],
)
def test_other_streams_are_refused(tmp_path: Path, stream: bytes, message: str) -> None:
    writer = WavFileWriter(tmp_path / "x.wav")
    with pytest.raises(WavStreamError, match=message):
        writer.write(stream)


def test_a_stream_cut_short_is_an_error(tmp_path: Path) -> None:
    writer = WavFileWriter(tmp_path / "short.wav")
    writer.write(wav_stream_header(16000)[:20])
    with pytest.raises(WavStreamError, match="before its WAV header"):
        writer.close()
    writer = WavFileWriter(tmp_path / "odd.wav")
    writer.write(wav_stream_header(16000) + b"\x01\x02\x03")
    with pytest.raises(WavStreamError, match="inside a sample frame"):
        writer.close()
