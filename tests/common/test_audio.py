"""Tests for services.common.audio against the real codecs (libsndfile, libopus via PyAV, soxr)."""

from __future__ import annotations

import io
import struct
import wave

import av
import numpy as np
import pytest
import soundfile as sf

from services.common import audio as A
from tests.signals import dominant_frequency

ALL_ENCODINGS = [A.PCM16, A.FLOAT32, A.WAV, A.OGG_OPUS]
# Opus only encodes at Opus rates; the others also get an odd native rate (Piper models run at 22050).
ROUND_TRIP_CASES = [(enc, rate) for enc in (A.PCM16, A.FLOAT32, A.WAV) for rate in (8000, 16000, 22050, 24000, 48000)]
ROUND_TRIP_CASES += [(A.OGG_OPUS, rate) for rate in A.OPUS_RATES]


def tone(rate: int, seconds: float = 1.0, freq: float = 440.0, amp: float = 0.5) -> np.ndarray:
    t = np.arange(round(rate * seconds)) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def encode_in_chunks(encoding: int, rate: int, x: np.ndarray, sizes: list[int]) -> list[bytes]:
    """Encode ``x`` in chunks cycling through ``sizes``; returns every output including finish()."""
    enc = A.make_encoder(encoding, rate)
    outs: list[bytes] = []
    pos, i = 0, 0
    while pos < len(x):
        n = sizes[i % len(sizes)]
        outs.append(enc.encode(x[pos : pos + n]))
        pos += n
        i += 1
    outs.append(enc.finish())
    return outs


def decode_with_pyav(data: bytes) -> tuple[np.ndarray, int]:
    """Independent decoder (FFmpeg) for checking Ogg-Opus output; FFmpeg's Opus decoder always runs at 48 kHz."""
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        frames = [f.to_ndarray().reshape(-1) for f in container.decode(stream)]
        return np.concatenate(frames).astype(np.float32), stream.codec_context.sample_rate


def opus_bytes_from_soundfile(x: np.ndarray, rate: int) -> bytes:
    """Ogg-Opus written by libsndfile, i.e. not by the module under test."""
    buf = io.BytesIO()
    sf.write(buf, x, rate, format="OGG", subtype="OPUS")
    return buf.getvalue()


def wav_bytes(x: np.ndarray, rate: int, subtype: str = "PCM_16", fmt: str = "WAV") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, x, rate, format=fmt, subtype=subtype)
    return buf.getvalue()


# --------------------------------------------------------------------------------------------------------------------
# Encode / decode round trips
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("encoding", "rate"), ROUND_TRIP_CASES)
def test_round_trip_one_shot(encoding: int, rate: int) -> None:
    x = tone(rate, 0.75)
    enc = A.make_encoder(encoding, rate)
    assert enc.encoding == encoding
    assert enc.sample_rate_hz == rate
    data = enc.encode(x) + enc.finish()
    assert enc.samples_encoded == len(x)

    y, out_rate = A.decode_audio(data, encoding, rate)
    assert out_rate == rate
    assert y.dtype == np.float32 and y.ndim == 1
    tolerance = round(0.03 * rate) if encoding == A.OGG_OPUS else 0
    assert abs(len(y) - len(x)) <= tolerance
    assert dominant_frequency(y, out_rate) == pytest.approx(440.0, rel=0.01)
    # Level survives too (Opus is lossy, so only roughly).
    assert A.rms(y) == pytest.approx(A.rms(x), rel=0.1 if encoding == A.OGG_OPUS else 1e-3)


@pytest.mark.parametrize("encoding", [A.PCM16, A.FLOAT32])
def test_raw_round_trip_is_sample_accurate(encoding: int) -> None:
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, 5000).astype(np.float32)
    enc = A.make_encoder(encoding, 16000)
    y, _ = A.decode_audio(enc.encode(x) + enc.finish(), encoding, 16000)
    atol = 1e-4 if encoding == A.PCM16 else 0.0
    np.testing.assert_allclose(y, x, atol=atol)


@pytest.mark.parametrize("encoding", ALL_ENCODINGS)
def test_chunked_encoding_matches_one_shot(encoding: int) -> None:
    rate = 16000
    x = tone(rate, 1.3)
    one_shot = A.make_encoder(encoding, rate)
    one_shot_bytes = one_shot.encode(x) + one_shot.finish()
    # Odd sizes, including empty and single-sample chunks, so boundaries never line up with Opus frames.
    outs = encode_in_chunks(encoding, rate, x, [1, 37, 0, 160, 333, 7])
    chunked = b"".join(outs)

    y1, _ = A.decode_audio(one_shot_bytes, encoding, rate)
    y2, _ = A.decode_audio(chunked, encoding, rate)
    assert len(y2) == len(y1) == len(x)
    if encoding == A.OGG_OPUS:
        assert dominant_frequency(y2, rate) == pytest.approx(440.0, rel=0.01)
    else:
        # Stateless encodings must be byte-identical however the input is split.
        assert chunked == one_shot_bytes


def test_float32_output_is_little_endian_and_clipped() -> None:
    enc = A.make_encoder(A.FLOAT32, 16000)
    data = enc.encode(np.array([0.25, 2.0, -3.0], dtype=np.float64))
    assert struct.unpack("<3f", data) == (0.25, 1.0, -1.0)


# --------------------------------------------------------------------------------------------------------------------
# WAV streaming
# --------------------------------------------------------------------------------------------------------------------


def test_wav_stream_header_once_and_readable() -> None:
    rate = 24000
    x = tone(rate, 0.5)
    outs = encode_in_chunks(A.WAV, rate, x, [480])
    data = b"".join(outs)

    assert outs[0][:4] == b"RIFF" and outs[0][8:16] == b"WAVEfmt "
    assert all(not o.startswith(b"RIFF") for o in outs[1:])
    assert data.count(b"RIFF") == 1 and data.count(b"WAVE") == 1
    assert len(data) == 44 + 2 * len(x)
    riff_size, data_size = struct.unpack_from("<I", data, 4)[0], struct.unpack_from("<I", data, 40)[0]
    assert riff_size == data_size == 0xFFFFFFFF
    assert data[36:40] == b"data"

    # libsndfile clamps the unknown size to the bytes present.
    info = sf.info(io.BytesIO(data))
    assert (info.samplerate, info.channels, info.frames, info.subtype) == (rate, 1, len(x), "PCM_16")
    y, _ = sf.read(io.BytesIO(data), dtype="float32")
    np.testing.assert_allclose(y, x, atol=1e-4)

    # Python's wave accepts it but believes the size field: nframes is 0xFFFFFFFF // 2; reading to EOF works.
    with wave.open(io.BytesIO(data)) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (rate, 1, 2)
        assert w.getnframes() == 0xFFFFFFFF // 2
        frames = w.readframes(w.getnframes())
    assert len(frames) == 2 * len(x)
    np.testing.assert_allclose(np.frombuffer(frames, "<i2") / 32768.0, x, atol=1e-4)

    # FFmpeg too.
    y_av, rate_av = decode_with_pyav(data)
    assert rate_av == rate and len(y_av) == len(x)


def test_finalize_wav_header_gives_true_sizes() -> None:
    rate = 16000
    x = tone(rate, 0.3)
    data = A.finalize_wav_header(b"".join(encode_in_chunks(A.WAV, rate, x, [1000])))
    assert struct.unpack_from("<I", data, 4)[0] == len(data) - 8
    assert struct.unpack_from("<I", data, 40)[0] == 2 * len(x)
    with wave.open(io.BytesIO(data)) as w:
        assert w.getnframes() == len(x)
    assert sf.info(io.BytesIO(data)).frames == len(x)


def test_finalize_wav_header_finds_data_after_extra_chunks() -> None:
    # libsndfile writes files with extra chunks before data for some subtypes; the walker must skip them.
    x = tone(8000, 0.1)
    original = wav_bytes(x, 8000, subtype="FLOAT")
    data_pos = original.index(b"data")
    broken = bytearray(original)
    struct.pack_into("<I", broken, 4, 0xFFFFFFFF)
    struct.pack_into("<I", broken, data_pos + 4, 0xFFFFFFFF)
    assert A.finalize_wav_header(bytes(broken)) == original


def test_finalize_wav_header_rejects_non_wav() -> None:
    with pytest.raises(ValueError, match="not a RIFF/WAVE"):
        A.finalize_wav_header(b"OggS" + bytes(40))
    with pytest.raises(ValueError, match="no data chunk"):
        A.finalize_wav_header(b"RIFF" + struct.pack("<I", 4) + b"WAVE")


def test_wav_stream_without_audio_is_header_only() -> None:
    enc = A.make_encoder(A.WAV, 16000)
    assert enc.encode(np.zeros(0, dtype=np.float32)) == A.wav_header(16000)
    assert enc.finish() == b""
    enc2 = A.make_encoder(A.WAV, 16000)
    assert enc2.finish() == A.wav_header(16000)
    assert len(A.wav_header(16000)) == 44


# --------------------------------------------------------------------------------------------------------------------
# Ogg-Opus streaming
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rate", A.OPUS_RATES)
def test_opus_stream_is_incremental_and_decodes_with_ffmpeg(rate: int) -> None:
    x = tone(rate, 1.0)
    chunk = rate // 50  # 20 ms chunks, as a TTS stream would send them
    outs = encode_in_chunks(A.OGG_OPUS, rate, x, [chunk])
    assert outs[0].startswith(b"OggS") and b"OpusHead" in outs[0]
    # Really streaming: pages come out during encoding, not only at finish().
    assert sum(1 for o in outs[:-1] if o) >= len(outs) // 2
    assert len(outs[-1]) < len(b"".join(outs)) // 4

    data = b"".join(outs)
    y, dec_rate = decode_with_pyav(data)
    assert dec_rate == 48000
    assert abs(len(y) / dec_rate - len(x) / rate) <= 0.03
    # In fact exact to 1 ms: FFmpeg drops the OpusHead pre-skip (6.5 ms) and trims the padding of the last frame
    # (up to 20 ms) to the final page's granule position, so both must be written correctly.
    assert abs(len(y) - len(x) * dec_rate // rate) <= dec_rate // 1000
    assert dominant_frequency(y, dec_rate) == pytest.approx(440.0, rel=0.01)

    # And the OpusHead records the input rate, so libsndfile decodes back at `rate`.
    head = data.index(b"OpusHead")
    assert struct.unpack_from("<I", data, head + 12)[0] == rate


def test_opus_rejects_non_opus_rates() -> None:
    for rate in (22050, 44100, 32000, 0):
        with pytest.raises(A.UnsupportedFormat, match=r"8000, 12000, 16000, 24000, 48000"):
            A.make_encoder(A.OGG_OPUS, rate)


def test_make_encoder_rejects_bad_formats() -> None:
    with pytest.raises(A.UnsupportedFormat, match="cannot encode UNSPECIFIED"):
        A.make_encoder(A.UNSPECIFIED, 16000)
    with pytest.raises(A.UnsupportedFormat, match="positive"):
        A.make_encoder(A.PCM16, 0)


@pytest.mark.parametrize("encoding", ALL_ENCODINGS)
def test_encoder_lifecycle(encoding: int) -> None:
    enc = A.make_encoder(encoding, 16000)
    with pytest.raises(ValueError, match="mono"):
        enc.encode(np.zeros((100, 2), dtype=np.float32))
    enc.encode(np.zeros((160, 1), dtype=np.float32))  # a single column is fine
    enc.finish()
    with pytest.raises(RuntimeError, match="after finish"):
        enc.encode(np.zeros(10, dtype=np.float32))
    with pytest.raises(RuntimeError, match="twice"):
        enc.finish()


def test_abandoned_opus_encoder_can_be_closed() -> None:
    enc = A.make_encoder(A.OGG_OPUS, 16000)
    enc.encode(tone(16000, 0.1))
    enc.close()
    with pytest.raises(RuntimeError):
        enc.encode(tone(16000, 0.1))


# --------------------------------------------------------------------------------------------------------------------
# Output format validation
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("encoding", "rate"),
    [(A.PCM16, 0), (A.WAV, 8000), (A.FLOAT32, 48000), (A.PCM16, 22050), (A.OGG_OPUS, 0), (A.OGG_OPUS, 12000)],
)
def test_validate_output_format_accepts(encoding: int, rate: int) -> None:
    assert A.validate_output_format(encoding, rate) == []


def test_validate_output_format_violations() -> None:
    v = A.validate_output_format(A.UNSPECIFIED, 16000)
    assert [f for f, _ in v] == ["output_format.encoding"]
    assert "required" in v[0][1]

    v = A.validate_output_format(A.PCM16, 4000)
    assert v == [("output_format.sample_rate_hz", "must be 0 (native) or 8000..48000, got 4000")]
    assert A.validate_output_format(A.WAV, 96000)[0][0] == "output_format.sample_rate_hz"
    assert A.validate_output_format(A.WAV, -1)[0][0] == "output_format.sample_rate_hz"

    v = A.validate_output_format(A.OGG_OPUS, 44100)
    assert v[0][0] == "output_format.sample_rate_hz"
    assert "8000, 12000, 16000, 24000, 48000" in v[0][1]

    v = A.validate_output_format(A.UNSPECIFIED, 5, field="config.output_format")
    assert [f for f, _ in v] == ["config.output_format.encoding", "config.output_format.sample_rate_hz"]
    assert A.validate_output_format(99, 0)[0][0] == "output_format.encoding"


def test_resolve_output_rate() -> None:
    assert A.resolve_output_rate(A.WAV, 16000, 22050) == 16000
    assert A.resolve_output_rate(A.WAV, 0, 22050) == 22050
    assert A.resolve_output_rate(A.OGG_OPUS, 0, 22050) == 24000
    assert A.resolve_output_rate(A.OGG_OPUS, 0, 16000) == 16000
    assert A.resolve_output_rate(A.OGG_OPUS, 0, 96000) == 48000


# --------------------------------------------------------------------------------------------------------------------
# Decoding inputs
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("subtype", ["PCM_U8", "PCM_16", "PCM_24", "PCM_32", "FLOAT", "DOUBLE"])
def test_decode_wav_subtypes(subtype: str) -> None:
    x = tone(22050, 0.4)
    y, rate = A.decode_audio(wav_bytes(x, 22050, subtype), A.WAV, 0)
    assert rate == 22050 and len(y) == len(x)
    atol = 1e-2 if subtype == "PCM_U8" else 1e-4
    np.testing.assert_allclose(y, x, atol=atol)


def test_decode_wavex_and_ignores_format_rate() -> None:
    x = tone(16000, 0.2)
    # sample_rate_hz and channels are ignored for containers: the header wins.
    y, rate = A.decode_audio(wav_bytes(x, 16000, fmt="WAVEX"), A.WAV, 8000, channels=2)
    assert rate == 16000 and len(y) == len(x)


def test_decode_stereo_is_down_mixed() -> None:
    left = tone(16000, 0.5)
    stereo = np.stack([left, np.zeros_like(left)], axis=1)
    expected = left / 2

    y, _ = A.decode_audio(wav_bytes(stereo, 16000), A.WAV, 0)
    np.testing.assert_allclose(y, expected, atol=1e-4)

    y, _ = A.decode_audio(A.float_to_pcm16(stereo.reshape(-1)), A.PCM16, 16000, channels=2)
    np.testing.assert_allclose(y, expected, atol=1e-4)

    y, _ = A.decode_audio(stereo.astype("<f4").tobytes(), A.FLOAT32, 16000, channels=2)
    np.testing.assert_allclose(y, expected, atol=1e-7)


def test_decode_ogg_opus_from_libsndfile_stereo() -> None:
    x = tone(24000, 0.6)
    data = opus_bytes_from_soundfile(np.stack([x, x], axis=1), 24000)
    y, rate = A.decode_audio(data, A.OGG_OPUS, 0)
    assert rate == 24000
    assert abs(len(y) - len(x)) <= 0.03 * rate
    assert dominant_frequency(y, rate) == pytest.approx(440.0, rel=0.01)


def test_decode_streaming_wav_input() -> None:
    # A client may send back what our WAV encoder produced (sizes 0xFFFFFFFF).
    x = tone(16000, 0.25)
    y, rate = A.decode_audio(b"".join(encode_in_chunks(A.WAV, 16000, x, [4000])), A.WAV, 0)
    assert rate == 16000 and len(y) == len(x)


def test_decode_float32_clips_to_full_scale() -> None:
    y, _ = A.decode_audio(np.array([0.5, 1.5, -2.0], dtype="<f4").tobytes(), A.FLOAT32, 16000)
    np.testing.assert_array_equal(y, np.array([0.5, 1.0, -1.0], dtype=np.float32))


def test_decode_within_max_seconds() -> None:
    x = tone(16000, 1.0)
    y, _ = A.decode_audio(A.float_to_pcm16(x), A.PCM16, 16000, max_seconds=1.0)
    assert len(y) == 16000


def _flac_bytes() -> bytes:
    buf = io.BytesIO()
    sf.write(buf, tone(16000, 0.1), 16000, format="FLAC")
    return buf.getvalue()


def _vorbis_bytes() -> bytes:
    buf = io.BytesIO()
    sf.write(buf, tone(16000, 0.3), 16000, format="OGG", subtype="VORBIS")
    return buf.getvalue()


@pytest.mark.parametrize(
    ("data", "encoding", "rate", "channels", "message"),
    [
        (b"", A.PCM16, 16000, 1, "audio is empty"),
        (b"\x00" * 101, A.PCM16, 16000, 1, "PCM16 audio must have an even number of bytes, got 101"),
        (b"\x00" * 6, A.PCM16, 16000, 2, "PCM16 audio must have a multiple of 4 bytes"),
        (b"\x00" * 10, A.FLOAT32, 16000, 1, "FLOAT32 audio must have a multiple of 4 bytes, got 10"),
        (b"\x00" * 100, A.PCM16, 0, 1, "sample_rate_hz is required for raw PCM16"),
        (b"\x00" * 100, A.FLOAT32, 0, 1, "sample_rate_hz is required for raw FLOAT32"),
        (b"\x00" * 100, A.PCM16, 16, 1, "sample_rate_hz 16 is out of range"),
        (np.array([0.0, np.nan], "<f4").tobytes(), A.FLOAT32, 16000, 1, "NaN or infinite"),
        (b"\x00" * 100, A.PCM16, 16000, -1, "channels must be 0 or more"),
        (b"\x00" * 100, A.UNSPECIFIED, 16000, 1, "format.encoding is required"),
        (b"\x00" * 100, 7, 16000, 1, "unknown audio encoding 7"),
        (b"RIFF\x10\x00\x00\x00WAVEjunkjunk", A.WAV, 0, 1, "could not decode WAV: "),
        (b"not audio at all" * 10, A.OGG_OPUS, 0, 1, "could not decode OGG_OPUS: "),
        (A.wav_header(16000), A.WAV, 0, 1, "audio contains no samples"),
    ],
)
def test_decode_errors(data: bytes, encoding: int, rate: int, channels: int, message: str) -> None:
    with pytest.raises(A.AudioDecodeError) as excinfo:
        A.decode_audio(data, encoding, rate, channels)
    assert message in str(excinfo.value)
    assert isinstance(excinfo.value, ValueError)  # callers map ValueError to INVALID_ARGUMENT


def test_decode_rejects_mislabelled_containers() -> None:
    with pytest.raises(A.AudioDecodeError, match="audio is FLAC, not WAV"):
        A.decode_audio(_flac_bytes(), A.WAV, 0)
    with pytest.raises(A.AudioDecodeError, match="audio is OGG/VORBIS, not Ogg-Opus"):
        A.decode_audio(_vorbis_bytes(), A.OGG_OPUS, 0)
    with pytest.raises(A.AudioDecodeError, match="audio is WAV/PCM_16, not Ogg-Opus"):
        A.decode_audio(wav_bytes(tone(16000, 0.1), 16000), A.OGG_OPUS, 0)


@pytest.mark.parametrize("encoding", ALL_ENCODINGS)
def test_decode_rejects_too_long(encoding: int) -> None:
    enc = A.make_encoder(encoding, 16000)
    data = enc.encode(tone(16000, 2.0)) + enc.finish()
    with pytest.raises(A.AudioDecodeError, match=r"audio is 2\.0 s, longer than the 1\.5 s limit"):
        A.decode_audio(data, encoding, 16000, max_seconds=1.5)


# --------------------------------------------------------------------------------------------------------------------
# Resampling
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("src", "dst"), [(22050, 16000), (16000, 48000), (48000, 8000), (24000, 22050)])
def test_resample_one_shot(src: int, dst: int) -> None:
    x = tone(src, 1.0)
    y = A.resample(x, src, dst)
    assert y.dtype == np.float32
    assert abs(len(y) - dst) <= 1
    assert dominant_frequency(y, dst) == pytest.approx(440.0, rel=0.01)


def test_resample_identity() -> None:
    x = tone(16000, 0.1)
    np.testing.assert_array_equal(A.resample(x, 16000, 16000), x)


@pytest.mark.parametrize(("src", "dst"), [(22050, 16000), (16000, 48000), (48000, 24000)])
def test_stream_resampler_matches_one_shot(src: int, dst: int) -> None:
    x = tone(src, 1.5)
    expected = A.resample(x, src, dst)
    rs = A.StreamResampler(src, dst)
    rng = np.random.default_rng(1)
    parts: list[np.ndarray] = []
    pos = 0
    while pos < len(x):
        n = int(rng.integers(1, 900))
        parts.append(rs.process(x[pos : pos + n]))
        pos += n
    parts.append(rs.flush())
    y = np.concatenate(parts)

    assert abs(len(y) - len(expected)) <= 3
    n = min(len(y), len(expected))
    # No seams: the chunked output is the same signal as the one-shot output, sample for sample.
    np.testing.assert_allclose(y[:n], expected[:n], atol=1e-3)
    # And no clicks: away from the (abrupt) start and end of the tone, where the filter rings in one-shot mode too,
    # sample-to-sample steps never exceed what a 0.5-amplitude 440 Hz tone can do.
    edge = dst // 20
    max_step = 0.5 * 2 * np.pi * 440 / dst
    assert np.max(np.abs(np.diff(y[edge:-edge]))) <= max_step * 1.05


def test_stream_resampler_identity_and_lifecycle() -> None:
    rs = A.StreamResampler(16000, 16000)
    x = tone(16000, 0.05)
    np.testing.assert_array_equal(rs.process(x), x)
    assert rs.flush().size == 0
    with pytest.raises(RuntimeError, match="after flush"):
        rs.process(x)
    with pytest.raises(ValueError):
        A.StreamResampler(0, 16000)


# --------------------------------------------------------------------------------------------------------------------
# Utilities
# --------------------------------------------------------------------------------------------------------------------


def test_pcm16_conversions() -> None:
    b = A.float_to_pcm16(np.array([0.0, 1.0, -1.0, 2.0, -2.0, 0.5], dtype=np.float32))
    assert struct.unpack("<6h", b) == (0, 32767, -32767, 32767, -32767, 16384)
    y = A.pcm16_to_float(struct.pack("<3h", -32768, 0, 16384))
    np.testing.assert_array_equal(y, np.array([-1.0, 0.0, 0.5], dtype=np.float32))
    with pytest.raises(A.AudioDecodeError, match="even number of bytes"):
        A.pcm16_to_float(b"\x00\x01\x02")


@pytest.mark.parametrize("freq", [97.3, 440.0, 1234.5, 3999.0])
def test_dominant_frequency_is_sub_bin_accurate(freq: float) -> None:
    rate = 16000
    x = tone(rate, 0.25, freq=freq) + 0.01 * np.random.default_rng(2).standard_normal(4000).astype(np.float32)
    # 0.25 s gives 4 Hz bins; interpolation must do much better than a bin.
    assert dominant_frequency(x, rate) == pytest.approx(freq, abs=0.5)


def test_dominant_frequency_edge_cases() -> None:
    assert dominant_frequency(np.zeros(1000, dtype=np.float32), 16000) == 0.0
    assert dominant_frequency(np.full(1000, 0.3, dtype=np.float32), 16000) == 0.0  # pure DC
    with pytest.raises(ValueError):
        dominant_frequency(np.zeros(2, dtype=np.float32), 16000)


def test_rms() -> None:
    assert A.rms(tone(16000, 1.0, amp=0.5)) == pytest.approx(0.5 / np.sqrt(2), rel=1e-3)
    assert A.rms(np.zeros(0, dtype=np.float32)) == 0.0
