"""AudioChunk assembly for an output stream, shared by the gateway and the voice-conversion service.

What the contract promises about a stream's chunks lives here once: sequence numbers count from 0, `offset` is the
audio before the chunk and `duration` the samples in it (both from sample counts, so they add up exactly),
`segment_text` rides on the first chunk of each segment only, and the final chunk carries the summary.
"""

from __future__ import annotations

from typing import cast

from services.common.durations import duration_from_seconds
from voice.v1 import audio_pb2


class ChunkSequencer:
    """Numbers the chunks of one output stream and places them in time. The caller encodes the audio and says
    how many samples the bytes hold (an encoder may hold samples back for a later chunk)."""

    def __init__(self, request_id: str, encoding: int, sample_rate_hz: int) -> None:
        self.request_id = request_id
        self.sample_rate_hz = sample_rate_hz
        self.format = audio_pb2.AudioFormat(
            encoding=cast(audio_pb2.AudioEncoding, encoding), sample_rate_hz=sample_rate_hz, channels=1
        )
        self.next_sequence = 0
        self.samples_sent = 0
        self._segment_with_text = -1  # the last segment whose text went out

    @property
    def seconds_sent(self) -> float:
        return self.samples_sent / self.sample_rate_hz

    def chunk(
        self,
        audio: bytes,
        samples: int,
        *,
        segment_index: int,
        segment_text: str = "",
        is_final: bool = False,
    ) -> audio_pb2.AudioChunk:
        """The next chunk: `audio` encodes `samples` samples of segment `segment_index`."""
        chunk = audio_pb2.AudioChunk(
            request_id=self.request_id,
            sequence_number=self.next_sequence,
            audio=audio,
            format=self.format,
            offset=duration_from_seconds(self.samples_sent / self.sample_rate_hz),
            duration=duration_from_seconds(samples / self.sample_rate_hz),
            segment_index=segment_index,
            is_final=is_final,
        )
        # A chunk without samples (Opus holding a frame back, a trailer) does not open its segment for the client.
        if segment_text and samples and segment_index != self._segment_with_text:
            chunk.segment_text = segment_text
            self._segment_with_text = segment_index
        self.next_sequence += 1
        self.samples_sent += samples
        return chunk


def synthesis_summary(
    *,
    audio_seconds: float,
    total_seconds: float,
    first_audio_seconds: float,
    segment_count: int,
    processed_text: str = "",
    tts_seconds: float | None = None,
    conversion_seconds: float | None = None,
) -> audio_pb2.SynthesisSummary:
    """The final chunk's totals; a stage the stream did not run (`None`) is left unset."""
    summary = audio_pb2.SynthesisSummary(
        processed_text=processed_text,
        segment_count=segment_count,
        audio_duration=duration_from_seconds(audio_seconds),
        time_to_first_audio=duration_from_seconds(first_audio_seconds),
        total_time=duration_from_seconds(total_seconds),
        real_time_factor=total_seconds / audio_seconds if audio_seconds > 0 else 0.0,
    )
    if tts_seconds is not None:
        summary.tts_time.CopyFrom(duration_from_seconds(tts_seconds))
    if conversion_seconds is not None:
        summary.conversion_time.CopyFrom(duration_from_seconds(conversion_seconds))
    return summary
