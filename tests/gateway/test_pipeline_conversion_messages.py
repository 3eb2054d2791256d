"""What the gateway writes on a Convert call (rvc_client.ConvertSession), against a fake call: no gRPC, no service."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from services.tts_gateway import rvc_client
from services.tts_gateway.rvc_client import FIRST_MESSAGE_SECONDS, ConvertSession
from voice.v1 import conversion_pb2, voice_conversion_pb2

pytestmark = pytest.mark.timeout(30)

RATE = 22050


class FakeCall:
    def __init__(self) -> None:
        self.written: list[voice_conversion_pb2.ConvertRequest] = []

    async def write(self, message: voice_conversion_pb2.ConvertRequest) -> None:
        self.written.append(message)


class FakeOwner:
    call_metadata: tuple[tuple[str, str], ...] = ()

    def __init__(self) -> None:
        self.call = FakeCall()
        self.stub = self

    def Convert(self, metadata: Any = None) -> FakeCall:  # the stub's method name
        return self.call


def audio_messages(call: FakeCall) -> list[np.ndarray]:
    return [np.frombuffer(m.audio, dtype="<f4") for m in call.written if m.WhichOneof("request") == "audio"]


async def test_first_audio_message_is_short_so_the_service_converts_its_first_block_early() -> None:
    owner = FakeOwner()
    session = ConvertSession(owner, "req", conversion_pb2.ConversionSettings(model="m"), RATE, RATE)  # type: ignore[arg-type]
    sentence = np.arange(round(3.5 * RATE), dtype=np.float32)  # a whole first sentence, as Triton sends it
    await session.send(sentence)
    await session.send(sentence[:1000])  # later sends are not split for latency
    assert owner.call.written[0].WhichOneof("request") == "config"
    sizes = [m.size for m in audio_messages(owner.call)]
    assert sizes == [round(FIRST_MESSAGE_SECONDS * RATE), sentence.size - round(FIRST_MESSAGE_SECONDS * RATE), 1000]
    np.testing.assert_array_equal(np.concatenate(audio_messages(owner.call)[:2]), sentence)


async def test_long_audio_still_respects_the_message_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rvc_client, "_SAMPLES_PER_MESSAGE", 10_000)
    owner = FakeOwner()
    session = ConvertSession(owner, "req", conversion_pb2.ConversionSettings(model="m"), RATE, RATE)  # type: ignore[arg-type]
    audio = np.arange(25_000, dtype=np.float32)
    await session.send(audio[:100])  # a tiny first block is one message
    await session.send(audio)
    sizes = [m.size for m in audio_messages(owner.call)]
    assert sizes == [100, 10_000, 10_000, 5_000]
