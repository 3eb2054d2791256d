"""Uploaded audio (cloning references, clips to convert) -> `AudioInput`, with the edge's length limit.

WAV travels as it is (the services decode it); anything else libsndfile reads (FLAC, Ogg Vorbis/Opus, MP3, AIFF...)
is decoded here to lossless FLOAT32 mono, so the services never see a container they lack.
"""

from __future__ import annotations

import io

import numpy as np
import soundfile as sf

from services.http_edge.errors import EdgeError, invalid
from voice.v1 import audio_pb2


def audio_input(data: bytes, field: str, max_seconds: float) -> audio_pb2.AudioInput:
    """Blocking (decodes); run it in a thread. Raises EdgeError 400 for unreadable, empty or too long audio."""
    if not data:
        raise invalid(f"{field}: the uploaded file is empty", field)
    try:
        info = sf.info(io.BytesIO(data))
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as error:
        reason = getattr(error, "error_string", "") or str(error)
        raise invalid(
            f"{field}: not an audio file the edge can read (WAV, FLAC, Ogg, MP3...): {reason.rstrip('.')}", field
        ) from error
    if info.frames <= 0 or info.samplerate <= 0:
        raise invalid(f"{field}: the file holds no audio samples", field)
    seconds = info.frames / info.samplerate
    if seconds > max_seconds:
        raise EdgeError(
            400, f"{field}: {seconds:.1f} s of audio is over this edge's limit of {max_seconds:g} s", "out_of_range"
        )
    if data[:4] == b"RIFF" and data[8:12] == b"WAVE" and info.subtype == "PCM_16":
        return audio_pb2.AudioInput(audio=data, format=audio_pb2.AudioFormat(encoding=audio_pb2.AUDIO_ENCODING_WAV))
    try:
        samples, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, ValueError) as error:
        raise invalid(f"{field}: the audio could not be decoded: {error}", field) from error
    mono = samples.mean(axis=1).astype("<f4")
    return audio_pb2.AudioInput(
        audio=np.ascontiguousarray(mono).tobytes(),
        format=audio_pb2.AudioFormat(encoding=audio_pb2.AUDIO_ENCODING_FLOAT32, sample_rate_hz=int(rate), channels=1),
    )
