"""The two upstreams the synthesis pipeline drives, as protocols: speech (Triton: triton_client.TritonTts) and voice
conversion (the conversion service: rvc_client.RvcClient). SynthesisPipeline depends on these only, so it can be
driven by in-process fakes (tests/gateway/test_pipeline_core.py) as well as by the gRPC clients.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from services.tts_gateway.domain import TtsInputs, TtsModelInfo
from voice.v1 import conversion_pb2


class TextIncrements(Protocol):
    """The text of one utterance in text-input streaming, as the client writes it (the pipeline's side)."""

    async def take(self) -> tuple[str, bool]:
        """Every delta not taken yet, joined into one increment (waits while there is none and the utterance goes
        on), and whether the utterance has ended (nothing follows; the text may then be ""). The first take returns
        pronounceable text. Take once per model request: what arrives while a request is in flight goes out joined
        in the next one."""
        ...


class SpeechSession(Protocol):
    """Speech for one request: pieces of text go in one at a time, in order; audio comes out as it is produced.
    Either `synthesize` (sentence by sentence) or `stream_utterance` (text-input streaming) is used, never both."""

    busy_s: float  # time spent waiting on the model so far

    def synthesize(
        self, text: str, inputs: TtsInputs, *, playback_ahead_s: float | None = None
    ) -> AsyncGenerator[NDArray[np.float32], None]:
        """Float audio of one piece at the model's rate, in one or more parts. `playback_ahead_s`: audio the
        listener still has buffered (a scheduling hint). The pipeline closes the generator when it stops early."""
        ...

    def stream_utterance(self, text: TextIncrements, inputs: TtsInputs) -> AsyncGenerator[NDArray[np.float32], None]:
        """Float audio of one utterance whose text arrives in increments (one model session per utterance), as the
        model produces it, possibly before the utterance's text is complete. Takes the increments from `text` one
        request at a time until it has sent the one that ends the utterance. Closed early (or cancelled), it
        abandons the model's session."""
        ...

    async def close(self) -> None:
        """Every piece is done: end the session politely."""
        ...

    def cancel(self) -> None:
        """Abort whatever is in flight (the request is gone); safe to call at any time, also after close."""
        ...


class ProbedUpstream(Protocol):
    """An upstream the gateway watches: where it is and a cheap liveness probe."""

    url: str

    async def probe(self) -> str:
        """The upstream's version when it serves now; raises ServiceError (UNAVAILABLE) otherwise."""
        ...


class TtsModelSource(Protocol):
    async def model_info(self, model: str) -> TtsModelInfo:
        """What one TTS model offers, from its config on the model server."""
        ...


class SpeechUpstream(ProbedUpstream, TtsModelSource, Protocol):
    def open(self, model: TtsModelInfo, request_id: str) -> SpeechSession: ...


class ConversionSession(Protocol):
    """Conversion for one request: float audio in (segment by segment), converted float audio out."""

    async def start(self) -> None:
        """Open the call before the first audio, so its setup overlaps speech synthesis."""
        ...

    async def send(self, audio: NDArray[np.float32]) -> None: ...

    async def flush(self) -> None:
        """A segment ended: convert what is buffered now instead of waiting for more input."""
        ...

    async def finish(self) -> None:
        """No more input."""
        ...

    async def read(self) -> NDArray[np.float32] | None:
        """The next converted audio at the output rate (possibly empty); None once the output has ended."""
        ...

    def cancel(self) -> None:
        """Abort the call; safe to call at any time, also after the output ended."""
        ...


class ConversionUpstream(ProbedUpstream, Protocol):
    def open(
        self, request_id: str, settings: conversion_pb2.ConversionSettings, input_rate: int, output_rate: int
    ) -> ConversionSession: ...
