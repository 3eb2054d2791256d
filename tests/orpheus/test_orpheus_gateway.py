"""Orpheus voices through the real gateway and real Triton (tiny checkpoint).

The gateway's audio is compared with a direct Triton stream of the same request (same speaker index and seed: the
same tokens and the same samples), an independent client of the model.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import numpy as np
import pytest

from tests.fixtures.gateway import GatewayProcess
from tests.fixtures.triton_server import TritonServer
from tests.orpheus.test_orpheus_triton import FRAME, SPEAKERS, OrpheusStream, inputs
from voice.v1 import audio_pb2, tts_gateway_pb2, tts_gateway_pb2_grpc

pytestmark = pytest.mark.timeout(300)
PCM16 = audio_pb2.AUDIO_ENCODING_PCM16


@pytest.fixture
def stub(orpheus_gateway: GatewayProcess) -> Iterator[tts_gateway_pb2_grpc.TtsGatewayServiceStub]:
    with grpc.insecure_channel(orpheus_gateway.address) as channel:
        yield tts_gateway_pb2_grpc.TtsGatewayServiceStub(channel)


def synthesize(stub: tts_gateway_pb2_grpc.TtsGatewayServiceStub, **fields: object) -> np.ndarray:
    fields.setdefault("output_format", audio_pb2.AudioFormat(encoding=PCM16))
    chunks = list(stub.Synthesize(tts_gateway_pb2.SynthesizeRequest(**fields), timeout=240))
    return np.frombuffer(b"".join(c.audio for c in chunks), dtype="<i2")


def test_orpheus_voices_are_listed_with_the_rate_from_triton(stub: tts_gateway_pb2_grpc.TtsGatewayServiceStub) -> None:
    voices = {v.name: v for v in stub.ListVoices(tts_gateway_pb2.ListVoicesRequest()).voices}
    for name, default in (("orpheus", "tara"), ("orpheus-zoe", "zoe")):
        voice = voices[name]
        assert voice.native_sample_rate_hz == 24000 and voice.streaming and voice.available
        assert sorted(voice.speakers) == sorted(SPEAKERS) and voice.speakers[0] == default  # the default first
        assert list(voice.supported_modes) == [tts_gateway_pb2.SYNTHESIS_MODE_PRESET_SPEAKER]


@pytest.mark.parametrize(("voice", "speaker_id"), [("orpheus", 0), ("orpheus-zoe", 7)])
def test_gateway_audio_matches_a_direct_triton_stream(
    stub: tts_gateway_pb2_grpc.TtsGatewayServiceStub, orpheus_triton: TritonServer, voice: str, speaker_id: int
) -> None:
    text = "Hello from the gateway."
    audio = synthesize(stub, voice=voice, text=text, seed=9)
    direct = OrpheusStream(orpheus_triton.grpc_url)
    try:
        expected = direct.run(inputs(text, speaker_id=("INT32", speaker_id), seed=("UINT64", 9)))
    finally:
        direct.close()
    assert not expected.error
    # 24 kHz in and out (no resampling): whole frames, the same samples as the model made for this speaker and seed
    # (the seed also drives SNAC's noise), within PCM16 rounding.
    assert audio.size == expected.audio.size and audio.size % FRAME == 0 and audio.size > 0
    assert np.abs(audio / 32768.0 - expected.audio).max() < 2e-4
