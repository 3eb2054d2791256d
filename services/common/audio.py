"""Audio helpers shared by the TTS gateway and the voice-conversion service.

Inside the services audio is always a 1-D float32 numpy array, mono, in [-1, 1]. This module converts between that
and the wire encodings of ``voice.v1.AudioEncoding`` (decoding whole inputs, encoding output streams chunk by chunk),
and resamples. It has no gRPC dependency: errors are ``ValueError`` subclasses that callers map to INVALID_ARGUMENT.

Streaming WAV note: the header that ``make_encoder(WAV, ...)`` emits has RIFF and data sizes of 0xFFFFFFFF. libsndfile
(soundfile), FFmpeg/PyAV and Python's ``wave`` module all read the concatenated stream to its end, but ``wave`` then
reports ``getnframes() == 2147483647`` (0xFFFFFFFF // 2), so clients must not trust the frame count; they should
read until EOF, or run ``finalize_wav_header`` on the complete bytes before saving a file.
"""

from __future__ import annotations

import io
import struct
from fractions import Fraction
from typing import Any, ClassVar

import av
import numpy as np
import soundfile as sf
import soxr
from numpy.typing import NDArray

from services.common import g711
from voice.v1 import audio_pb2

PCM16 = audio_pb2.AUDIO_ENCODING_PCM16
WAV = audio_pb2.AUDIO_ENCODING_WAV
OGG_OPUS = audio_pb2.AUDIO_ENCODING_OGG_OPUS
FLOAT32 = audio_pb2.AUDIO_ENCODING_FLOAT32
MULAW = audio_pb2.AUDIO_ENCODING_MULAW
ALAW = audio_pb2.AUDIO_ENCODING_ALAW
UNSPECIFIED = audio_pb2.AUDIO_ENCODING_UNSPECIFIED
# G.711 (MULAW, ALAW): the telephone rate, what output at "native" rate (0) becomes.
TELEPHONE_RATE_HZ = 8000

# Rates libopus can encode at; the Ogg-Opus output contract allows only these.
OPUS_RATES: tuple[int, ...] = (8000, 12000, 16000, 24000, 48000)
# Explicit output rates allowed on requests (0 means "native" and is handled separately).
MIN_OUTPUT_RATE_HZ = 8000
MAX_OUTPUT_RATE_HZ = 48000
# Accepted rates for raw (headerless) input; a value outside is almost always a client bug (e.g. 16 for 16000).
MIN_INPUT_RATE_HZ = 8000
MAX_INPUT_RATE_HZ = 192000

_ENCODING_NAMES: dict[int, str] = {
    PCM16: "PCM16",
    WAV: "WAV",
    OGG_OPUS: "OGG_OPUS",
    FLOAT32: "FLOAT32",
    MULAW: "MULAW",
    ALAW: "ALAW",
}
_ENCODING_LIST = "PCM16, WAV, OGG_OPUS, FLOAT32, MULAW, ALAW"
# Headerless encodings: bytes per sample.
_RAW_WIDTHS: dict[int, int] = {PCM16: 2, FLOAT32: 4, MULAW: 1, ALAW: 1}
# libsndfile major formats that are RIFF/WAVE files (WAVEX = WAVE_FORMAT_EXTENSIBLE, RF64 = >4 GiB variant).
_WAV_FORMATS = frozenset({"WAV", "WAVEX", "RF64"})
# Default Opus bitrates per rate: transparent enough for speech without wasting bandwidth.
_OPUS_BITRATES: dict[int, int] = {8000: 16000, 12000: 24000, 16000: 32000, 24000: 48000, 48000: 64000}
_WAV_HEADER_SIZE = 44
_UNKNOWN_SIZE = 0xFFFFFFFF


class AudioDecodeError(ValueError):
    """Input audio could not be decoded; the message says what to fix (maps to INVALID_ARGUMENT)."""


class UnsupportedFormat(ValueError):
    """An output encoding / sample rate combination that cannot be produced."""


def encoding_name(encoding: int) -> str:
    """Short name of an AudioEncoding value ("PCM16", "UNSPECIFIED", ...), or "encoding <n>" for unknown values."""
    if encoding == UNSPECIFIED:
        return "UNSPECIFIED"
    return _ENCODING_NAMES.get(encoding, f"encoding {encoding}")


# --------------------------------------------------------------------------------------------------------------------
# Small utilities
# --------------------------------------------------------------------------------------------------------------------


def rms(x: NDArray[np.floating[Any]]) -> float:
    """Root-mean-square level of ``x`` (0.0 for empty input)."""
    if x.size == 0:
        return 0.0
    xd = np.asarray(x, dtype=np.float64)
    return float(np.sqrt(np.mean(xd * xd)))


def float_to_pcm16(x: NDArray[np.floating[Any]]) -> bytes:
    """Float samples in [-1, 1] to 16-bit little-endian PCM; values outside the range are clipped."""
    x = np.asarray(x, dtype=np.float32).reshape(-1)
    # x32767 (not 32768) so +1.0 maps to 32767 without wrapping; round rather than truncate to avoid a DC bias.
    pcm: NDArray[np.int16] = np.rint(np.clip(x, -1.0, 1.0) * 32767.0).astype("<i2")
    return pcm.tobytes()


def pcm16_to_float(b: bytes) -> NDArray[np.float32]:
    """16-bit little-endian PCM to float32 in [-1, 1) (same scaling as libsndfile: divide by 32768)."""
    if len(b) % 2:
        raise AudioDecodeError(f"PCM16 audio must have an even number of bytes, got {len(b)}")
    return np.frombuffer(b, dtype="<i2").astype(np.float32) / np.float32(32768.0)


def _as_mono_float32(samples: NDArray[np.floating[Any]]) -> NDArray[np.float32]:
    """Coerce encoder input to a contiguous 1-D float32 array; (n, 1) is accepted, real multi-channel is not."""
    a = np.asarray(samples)
    if a.ndim == 2 and 1 in a.shape:
        a = a.reshape(-1)
    if a.ndim != 1:
        raise ValueError(f"encoder input must be mono (1-D), got shape {a.shape}")
    return np.ascontiguousarray(a, dtype=np.float32)


# --------------------------------------------------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------------------------------------------------


def _check_length(n_frames: int, rate: int, max_seconds: float | None) -> None:
    if max_seconds is not None and n_frames / rate > max_seconds:
        raise AudioDecodeError(f"audio is {n_frames / rate:.1f} s, longer than the {max_seconds:g} s limit")


def _finish(audio: NDArray[np.float32], rate: int) -> tuple[NDArray[np.float32], int]:
    """(frames, channels) float -> mono float32 in [-1, 1]."""
    if audio.shape[0] == 0:
        raise AudioDecodeError("audio contains no samples")
    mono = audio.mean(axis=1) if audio.shape[1] > 1 else audio[:, 0]
    # Float WAV / FLOAT32 input may exceed full scale; the services assume [-1, 1].
    return np.ascontiguousarray(np.clip(mono, -1.0, 1.0), dtype=np.float32), rate


def _decode_raw(data: bytes, encoding: int, sample_rate_hz: int, channels: int) -> NDArray[np.float32]:
    name = encoding_name(encoding)
    if sample_rate_hz <= 0:
        raise AudioDecodeError(f"sample_rate_hz is required for raw {name} audio (e.g. 16000)")
    if not MIN_INPUT_RATE_HZ <= sample_rate_hz <= MAX_INPUT_RATE_HZ:
        raise AudioDecodeError(
            f"sample_rate_hz {sample_rate_hz} is out of range for raw {name} audio; "
            f"use {MIN_INPUT_RATE_HZ}..{MAX_INPUT_RATE_HZ}"
        )
    width = _RAW_WIDTHS[encoding]
    frame_bytes = width * channels
    if len(data) % frame_bytes:
        if channels == 1:
            what = "an even number of bytes" if width == 2 else "a multiple of 4 bytes"
        else:
            what = f"a multiple of {frame_bytes} bytes ({width}-byte samples x {channels} channels)"
        raise AudioDecodeError(f"{name} audio must have {what}, got {len(data)}")
    if encoding == PCM16:
        flat = pcm16_to_float(data)
    elif encoding == MULAW:
        flat = g711.decode_ulaw(data)
    elif encoding == ALAW:
        flat = g711.decode_alaw(data)
    else:
        flat = np.frombuffer(data, dtype="<f4").astype(np.float32)
        if not np.all(np.isfinite(flat)):
            raise AudioDecodeError("FLOAT32 audio contains NaN or infinite samples")
    return flat.reshape(-1, channels)


def _decode_container(data: bytes, encoding: int, max_seconds: float | None) -> tuple[NDArray[np.float32], int]:
    """WAV and Ogg-Opus via libsndfile (its Ogg-Opus reader applies pre-skip and end trimming, and decodes at the
    rate stored in the Opus header, so no extra resampling is needed)."""
    name = encoding_name(encoding)
    try:
        with sf.SoundFile(io.BytesIO(data)) as f:
            if encoding == WAV and f.format not in _WAV_FORMATS:
                raise AudioDecodeError(f"audio is {f.format}, not WAV; set format.encoding to match the data")
            if encoding == OGG_OPUS and (f.format != "OGG" or f.subtype != "OPUS"):
                raise AudioDecodeError(
                    f"audio is {f.format}/{f.subtype}, not Ogg-Opus; set format.encoding to match the data"
                )
            # Check the declared length before decoding so an over-long upload costs nothing. Streaming WAVs with
            # 0xFFFFFFFF sizes report the real length here because libsndfile clamps to the file size.
            if f.frames > 0:
                _check_length(f.frames, f.samplerate, max_seconds)
            audio: NDArray[np.float32] = f.read(dtype="float32", always_2d=True)
            rate = int(f.samplerate)
    except AudioDecodeError:
        raise
    except (sf.SoundFileError, RuntimeError) as e:
        # soundfile's text names the BytesIO object ("Error opening <_io.BytesIO object at 0x...>"); keep its reason.
        reason = getattr(e, "error_string", "") or str(e).split(": ")[-1]
        raise AudioDecodeError(f"could not decode {name}: {reason.strip() or 'unreadable data'}") from e
    return audio, rate


def decode_audio(
    data: bytes,
    encoding: int,
    sample_rate_hz: int,
    channels: int = 1,
    *,
    max_seconds: float | None = None,
) -> tuple[NDArray[np.float32], int]:
    """Decode a whole input clip to (mono float32 in [-1, 1], sample rate).

    ``sample_rate_hz`` and ``channels`` describe raw PCM16 / FLOAT32 / MULAW / ALAW input (channels interleaved, 0
    means 1); WAV and Ogg-Opus carry their own and ignore them. Multi-channel audio is down-mixed by averaging. Raises
    ``AudioDecodeError`` for empty, malformed or over-long (``max_seconds``) input.
    """
    if channels == 0:
        channels = 1
    if channels < 0:
        raise AudioDecodeError(f"channels must be 0 or more, got {channels}")
    if not data:
        raise AudioDecodeError("audio is empty")
    if encoding in _RAW_WIDTHS:
        frames = _decode_raw(data, encoding, sample_rate_hz, channels)
        rate = sample_rate_hz
    elif encoding in (WAV, OGG_OPUS):
        frames, rate = _decode_container(data, encoding, max_seconds)
    elif encoding == UNSPECIFIED:
        raise AudioDecodeError(f"format.encoding is required: one of {_ENCODING_LIST}")
    else:
        raise AudioDecodeError(f"unknown audio encoding {encoding}; use one of {_ENCODING_LIST}")
    _check_length(frames.shape[0], rate, max_seconds)
    return _finish(frames, rate)


# --------------------------------------------------------------------------------------------------------------------
# Resampling
# --------------------------------------------------------------------------------------------------------------------


def resample(audio: NDArray[np.floating[Any]], from_hz: int, to_hz: int) -> NDArray[np.float32]:
    """One-shot resample of mono float audio with soxr (HQ); returns the input (as float32) when rates are equal."""
    audio = np.ascontiguousarray(audio, dtype=np.float32)
    if from_hz == to_hz or audio.size == 0:
        return audio
    return np.asarray(soxr.resample(audio, from_hz, to_hz, quality="HQ"), dtype=np.float32)


class StreamResampler:
    """Chunked resampling with filter state kept across chunks, so there are no seams at chunk boundaries.

    ``process`` returns what is ready (soxr holds back its filter delay); ``flush`` returns the tail. The total output
    length matches one-shot ``resample`` to within a couple of samples.
    """

    def __init__(self, from_hz: int, to_hz: int) -> None:
        if from_hz <= 0 or to_hz <= 0:
            raise ValueError(f"sample rates must be positive, got {from_hz} -> {to_hz}")
        self.from_hz = from_hz
        self.to_hz = to_hz
        self._stream = None if from_hz == to_hz else soxr.ResampleStream(from_hz, to_hz, 1, dtype="float32")
        self._flushed = False

    def process(self, chunk: NDArray[np.floating[Any]]) -> NDArray[np.float32]:
        if self._flushed:
            raise RuntimeError("StreamResampler.process() called after flush()")
        mono = _as_mono_float32(chunk)
        if self._stream is None:
            return mono
        out: NDArray[np.float32] = self._stream.resample_chunk(mono, last=False)  # float32: the stream's dtype
        return out

    def flush(self) -> NDArray[np.float32]:
        if self._flushed:
            return np.zeros(0, dtype=np.float32)
        self._flushed = True
        if self._stream is None:
            return np.zeros(0, dtype=np.float32)
        tail: NDArray[np.float32] = self._stream.resample_chunk(np.zeros(0, dtype=np.float32), last=True)
        return tail


# --------------------------------------------------------------------------------------------------------------------
# Output format validation
# --------------------------------------------------------------------------------------------------------------------


def validate_output_format(
    encoding: int, sample_rate_hz: int, *, field: str = "output_format"
) -> list[tuple[str, str]]:
    """Field violations (``(field path, message)``) for a requested output format; empty when it is acceptable.

    ``sample_rate_hz`` 0 means the producer's native rate and is always accepted (see ``resolve_output_rate``).
    """
    violations: list[tuple[str, str]] = []
    if encoding == UNSPECIFIED:
        violations.append((f"{field}.encoding", f"is required: one of {_ENCODING_LIST}"))
    elif encoding not in _ENCODING_NAMES:
        violations.append((f"{field}.encoding", f"unknown value {encoding}; use one of {_ENCODING_LIST}"))
    if sample_rate_hz == 0:
        return violations
    rate_field = f"{field}.sample_rate_hz"
    if encoding == OGG_OPUS:
        if sample_rate_hz not in OPUS_RATES:
            violations.append((rate_field, f"must be 0 (native) or an Opus rate {_opus_rates_text()} for OGG_OPUS"))
    elif not MIN_OUTPUT_RATE_HZ <= sample_rate_hz <= MAX_OUTPUT_RATE_HZ:
        violations.append(
            (rate_field, f"must be 0 (native) or {MIN_OUTPUT_RATE_HZ}..{MAX_OUTPUT_RATE_HZ}, got {sample_rate_hz}")
        )
    return violations


def resolve_output_rate(encoding: int, requested_hz: int, native_hz: int) -> int:
    """The rate to encode at: the requested one, or for 0 the native rate; Ogg-Opus rounds a native rate that Opus
    cannot encode (e.g. Piper's 22050) up to the next Opus rate, capped at 48000; MULAW and ALAW at 0 are 8000 Hz
    (the telephone rate)."""
    if requested_hz:
        return requested_hz
    if encoding in (MULAW, ALAW):
        return TELEPHONE_RATE_HZ
    if encoding == OGG_OPUS and native_hz not in OPUS_RATES:
        return next((r for r in OPUS_RATES if r >= native_hz), OPUS_RATES[-1])
    return native_hz


def _opus_rates_text() -> str:
    return "(" + ", ".join(str(r) for r in OPUS_RATES) + ")"


# --------------------------------------------------------------------------------------------------------------------
# Streaming encoders
# --------------------------------------------------------------------------------------------------------------------


class AudioEncoder:
    """Streaming encoder: ``encode`` each block of mono float samples, then ``finish`` once. Concatenating every
    returned ``bytes`` in order gives a complete stream in ``encoding``. Outputs may be empty."""

    encoding: ClassVar[int] = UNSPECIFIED

    def __init__(self, sample_rate_hz: int) -> None:
        if sample_rate_hz <= 0:
            raise UnsupportedFormat(f"sample_rate_hz must be positive, got {sample_rate_hz}")
        self.sample_rate_hz = sample_rate_hz
        self.samples_encoded = 0  # input samples accepted so far, for durations and offsets
        self._finished = False

    def encode(self, samples: NDArray[np.floating[Any]]) -> bytes:
        if self._finished:
            raise RuntimeError(f"{type(self).__name__}.encode() called after finish()")
        x = _as_mono_float32(samples)
        self.samples_encoded += x.size
        return self._encode(x)

    def finish(self) -> bytes:
        if self._finished:
            raise RuntimeError(f"{type(self).__name__}.finish() called twice")
        self._finished = True
        return self._finish()

    def close(self) -> None:
        """Release resources of an abandoned stream (e.g. a cancelled RPC); nothing more may be encoded."""
        self._finished = True

    def _encode(self, x: NDArray[np.float32]) -> bytes:
        raise NotImplementedError

    def _finish(self) -> bytes:
        return b""


class Pcm16Encoder(AudioEncoder):
    encoding = PCM16

    def _encode(self, x: NDArray[np.float32]) -> bytes:
        return float_to_pcm16(x)


class Float32Encoder(AudioEncoder):
    encoding = FLOAT32

    def _encode(self, x: NDArray[np.float32]) -> bytes:
        # Clip so the lossless hop still honours the [-1, 1] contract of the proto.
        return np.clip(x, -1.0, 1.0).astype("<f4").tobytes()


class MulawEncoder(AudioEncoder):
    """G.711 mu-law, one byte per sample, no header."""

    encoding = MULAW

    def _encode(self, x: NDArray[np.float32]) -> bytes:
        return g711.encode_ulaw(x)


class AlawEncoder(AudioEncoder):
    """G.711 A-law, one byte per sample, no header."""

    encoding = ALAW

    def _encode(self, x: NDArray[np.float32]) -> bytes:
        return g711.encode_alaw(x)


def wav_header(sample_rate_hz: int, data_bytes: int = _UNKNOWN_SIZE) -> bytes:
    """44-byte RIFF/WAVE header for 16-bit mono PCM. The default sizes (0xFFFFFFFF) mean "unknown, read to EOF"."""
    riff_size = _UNKNOWN_SIZE if data_bytes == _UNKNOWN_SIZE else 36 + data_bytes
    return struct.pack(
        "<4sI4s4sIHHIIHH4sI",
        b"RIFF",
        riff_size,
        b"WAVE",
        b"fmt ",
        16,  # fmt chunk size
        1,  # WAVE_FORMAT_PCM
        1,  # channels
        sample_rate_hz,
        sample_rate_hz * 2,  # byte rate
        2,  # block align
        16,  # bits per sample
        b"data",
        data_bytes,
    )


class WavEncoder(AudioEncoder):
    encoding = WAV

    def __init__(self, sample_rate_hz: int) -> None:
        super().__init__(sample_rate_hz)
        self._header_sent = False

    def _take_header(self) -> bytes:
        if self._header_sent:
            return b""
        self._header_sent = True
        return wav_header(self.sample_rate_hz)

    def _encode(self, x: NDArray[np.float32]) -> bytes:
        return self._take_header() + float_to_pcm16(x)

    def _finish(self) -> bytes:
        return self._take_header()  # a stream with no audio is still a valid (empty) WAV


def finalize_wav_header(data: bytes) -> bytes:
    """Patch the RIFF and data chunk sizes of a complete (streamed) WAV so that every reader sees the true length.

    Works on any RIFF/WAVE whose last chunk is ``data`` (as the streaming encoder produces)."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise ValueError("not a RIFF/WAVE file")
    pos = 12
    while pos + 8 <= len(data):
        chunk_id = data[pos : pos + 4]
        if chunk_id == b"data":
            data_size = len(data) - (pos + 8)
            out = bytearray(data)
            struct.pack_into("<I", out, 4, len(data) - 8)
            struct.pack_into("<I", out, pos + 4, data_size)
            return bytes(out)
        (size,) = struct.unpack_from("<I", data, pos + 4)
        pos += 8 + size + (size & 1)  # chunks are word-aligned
    raise ValueError("WAV has no data chunk")


class ByteSink(io.RawIOBase):
    """Write-only, non-seekable file object that collects what FFmpeg writes until drained (streamed muxing)."""

    def __init__(self) -> None:
        super().__init__()
        self._buf = bytearray()

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False  # so FFmpeg writes a streamable file and never seeks back to patch a header

    def write(self, b: Any) -> int:
        view = memoryview(b)
        self._buf += view
        return view.nbytes

    def drain(self) -> bytes:
        out = bytes(self._buf)
        self._buf.clear()
        return out


class OggOpusEncoder(AudioEncoder):
    """Opus (libopus via PyAV) in Ogg, streamed page by page.

    FFmpeg's Ogg muxer normally holds packets for up to 1 s per page; ``page_duration`` of 20 ms makes it emit a
    page per Opus frame, and because the sink is not seekable FFmpeg flushes each page to it right away. The
    encoder sets pre-skip in OpusHead and the final granule position from the real sample count, so decoders
    (libsndfile, FFmpeg) return exactly the samples that were encoded.
    """

    encoding = OGG_OPUS

    def __init__(self, sample_rate_hz: int, *, bitrate: int | None = None) -> None:
        if sample_rate_hz not in OPUS_RATES:
            raise UnsupportedFormat(
                f"OGG_OPUS output supports sample rates {_opus_rates_text()} Hz, got {sample_rate_hz}"
            )
        super().__init__(sample_rate_hz)
        self._sink = ByteSink()
        self._container = av.open(
            self._sink, mode="w", format="ogg", options={"page_duration": "20000", "flush_packets": "1"}
        )
        self._stream = self._container.add_stream("libopus", rate=sample_rate_hz, layout="mono")
        self._stream.codec_context.format = "flt"  # encode our float samples without an s16 round trip
        self._stream.codec_context.bit_rate = bitrate or _OPUS_BITRATES[sample_rate_hz]
        self._time_base = Fraction(1, sample_rate_hz)
        self._pts = 0
        # Write OpusHead/OpusTags now so the first output already starts the stream.
        self._container.start_encoding()

    def _encode(self, x: NDArray[np.float32]) -> bytes:
        if x.size:
            frame = av.AudioFrame.from_ndarray(x.reshape(1, -1), format="flt", layout="mono")
            frame.sample_rate = self.sample_rate_hz
            frame.time_base = self._time_base
            frame.pts = self._pts
            self._pts += x.size
            # PyAV re-frames arbitrary block sizes into libopus frames (20 ms) internally.
            for packet in self._stream.encode(frame):
                self._container.mux(packet)
        return self._sink.drain()

    def _finish(self) -> bytes:
        for packet in self._stream.encode(None):  # flush the re-framer and libopus look-ahead
            self._container.mux(packet)
        self._container.close()  # writes the last page (EOS flag)
        return self._sink.drain()

    def close(self) -> None:
        if not self._finished:
            self._container.close()
            self._sink.drain()
        super().close()


def make_encoder(encoding: int, sample_rate_hz: int, *, opus_bitrate: int | None = None) -> AudioEncoder:
    """A fresh streaming encoder for ``encoding`` at ``sample_rate_hz`` (an already resolved, non-zero rate).

    Raises ``UnsupportedFormat`` for unknown encodings, non-positive rates and non-Opus rates with OGG_OPUS."""
    if encoding == PCM16:
        return Pcm16Encoder(sample_rate_hz)
    if encoding == FLOAT32:
        return Float32Encoder(sample_rate_hz)
    if encoding == WAV:
        return WavEncoder(sample_rate_hz)
    if encoding == OGG_OPUS:
        return OggOpusEncoder(sample_rate_hz, bitrate=opus_bitrate)
    if encoding == MULAW:
        return MulawEncoder(sample_rate_hz)
    if encoding == ALAW:
        return AlawEncoder(sample_rate_hz)
    raise UnsupportedFormat(f"cannot encode {encoding_name(encoding)}; use one of {_ENCODING_LIST}")
