"""CosyVoice2 voices through the real gateway, the real Triton server (tiny checkpoint) and the real conversion
service: text-in streaming against sentence by sentence, the listing, cloning, saved voices, conversion, errors and
cancellation.

The text-in claim is measured as a client sees it: words are sent at a paced rate and the time of the first audio
chunk is compared with the time the first sentence's last word was sent.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
import soundfile as sf

from tests.fixtures.cosyvoice2 import RATE, voiced
from tests.fixtures.gateway import GatewayProcess
from tests.fixtures.triton_server import TritonServer
from tests.prometheus import metric, scrape
from tests.waiting import wait_until
from voice.v1 import audio_pb2, tts_gateway_pb2, tts_gateway_pb2_grpc

pytestmark = pytest.mark.timeout(600)
PCM16 = audio_pb2.AUDIO_ENCODING_PCM16
# The first sentence is long enough for the first chunk (15 + 3 speech tokens need two 5-token text blocks).
FIRST = "The quick brown fox jumps over the lazy dog while the farmer watches from his old wooden porch."
SECOND = "Then it runs away."
INCREMENTAL = tts_gateway_pb2.TEXT_INPUT_MODE_INCREMENTAL
SENTENCES = tts_gateway_pb2.TEXT_INPUT_MODE_SENTENCES


@pytest.fixture
def stub(cosyvoice2_gateway: GatewayProcess) -> Iterator[tts_gateway_pb2_grpc.TtsGatewayServiceStub]:
    with grpc.insecure_channel(cosyvoice2_gateway.address) as channel:
        yield tts_gateway_pb2_grpc.TtsGatewayServiceStub(channel)


def wav_input(samples: np.ndarray, rate: int = RATE) -> audio_pb2.AudioInput:
    buffer = io.BytesIO()
    sf.write(buffer, samples, rate, format="WAV", subtype="PCM_16")
    return audio_pb2.AudioInput(
        audio=buffer.getvalue(), format=audio_pb2.AudioFormat(encoding=audio_pb2.AUDIO_ENCODING_WAV)
    )


def config(**fields: object) -> tts_gateway_pb2.StreamingSynthesizeConfig:
    fields.setdefault("voice", "cosyvoice2")
    fields.setdefault("output_format", audio_pb2.AudioFormat(encoding=PCM16))
    fields.setdefault("seed", 7)
    return tts_gateway_pb2.StreamingSynthesizeConfig(**fields)  # type: ignore[arg-type]


class PacedRun:
    """A StreamingSynthesize call fed word by word at `interval` seconds per word, with arrival times recorded."""

    def __init__(self, stub: tts_gateway_pb2_grpc.TtsGatewayServiceStub, cfg: tts_gateway_pb2.StreamingSynthesizeConfig,
                 words: list[str], interval: float) -> None:  # fmt: skip
        self.sent_at: list[float] = []
        self.started = time.perf_counter()
        self.words = words
        self.interval = interval
        self.chunks: list[tuple[float, audio_pb2.AudioChunk]] = []
        self.call = stub.StreamingSynthesize(self._messages(cfg), timeout=300)

    def _messages(
        self, cfg: tts_gateway_pb2.StreamingSynthesizeConfig
    ) -> Iterator[tts_gateway_pb2.StreamingSynthesizeRequest]:
        yield tts_gateway_pb2.StreamingSynthesizeRequest(config=cfg)
        for word in self.words:
            self.sent_at.append(time.perf_counter() - self.started)
            yield tts_gateway_pb2.StreamingSynthesizeRequest(text=word)
            time.sleep(self.interval)

    def run(self) -> PacedRun:
        for chunk in self.call:
            self.chunks.append((time.perf_counter() - self.started, chunk))
        return self

    @property
    def first_audio_at(self) -> float:
        return next(at for at, chunk in self.chunks if chunk.audio)

    @property
    def pcm(self) -> np.ndarray:
        return np.frombuffer(b"".join(c.audio for _, c in self.chunks), dtype="<i2")


def words_of(*sentences: str) -> list[str]:
    return [word + " " for sentence in sentences for word in sentence.split()]


def triton_counter(triton: TritonServer, name: str, **labels: str) -> float:
    return metric(scrape(triton.metrics_url), name, model="cosyvoice2", **labels)


def test_listing_says_which_voices_stream_text(stub: tts_gateway_pb2_grpc.TtsGatewayServiceStub) -> None:
    voices = {v.name: v for v in stub.ListVoices(tts_gateway_pb2.ListVoicesRequest()).voices}
    cosy = voices["cosyvoice2"]
    assert cosy.streams_text_input and cosy.streaming and cosy.native_sample_rate_hz == 24000
    assert set(cosy.speakers) == {"tiny_female", "tiny_male"}
    assert tts_gateway_pb2.SYNTHESIS_MODE_ZERO_SHOT in cosy.supported_modes
    assert voices["cosyvoice2-world"].streams_text_input
    assert not voices["joe"].streams_text_input


def test_text_in_streaming_speaks_before_the_first_sentence_is_written(
    stub: tts_gateway_pb2_grpc.TtsGatewayServiceStub,
    cosyvoice2_triton: TritonServer,
    cosyvoice2_gateway: GatewayProcess,
) -> None:
    words = words_of(FIRST, SECOND)
    increments = triton_counter(cosyvoice2_triton, "cosyvoice2_text_increments_total")
    gateway_increments = metric(
        scrape(cosyvoice2_gateway.metrics_url), "tts_gateway_text_increments_total", voice="cosyvoice2"
    )
    paced = PacedRun(stub, config(preset_speaker=tts_gateway_pb2.PresetSpeaker(speaker="tiny_female")), words, 0.25)
    paced.run()
    last_word_of_first = len(FIRST.split()) - 1
    assert paced.first_audio_at < paced.sent_at[last_word_of_first], (paced.first_audio_at, paced.sent_at)
    # The model got the text in several increments (one per word unless words queued up behind a busy request).
    received = triton_counter(cosyvoice2_triton, "cosyvoice2_text_increments_total") - increments
    assert 3 <= received <= len(words)
    sent = metric(scrape(cosyvoice2_gateway.metrics_url), "tts_gateway_text_increments_total", voice="cosyvoice2")
    assert sent - gateway_increments == received
    pcm = paced.pcm
    assert pcm.size > 0 and pcm.size % 960 == 0  # whole speech tokens at 24 kHz
    summary = paced.chunks[-1][1].summary
    assert summary.segment_count == 1  # one utterance: the stream's whole text
    assert summary.processed_text.split() == (FIRST + " " + SECOND).split()


def test_sentence_mode_waits_for_the_sentence_end(stub: tts_gateway_pb2_grpc.TtsGatewayServiceStub) -> None:
    words = words_of(FIRST, SECOND)
    cfg = config(preset_speaker=tts_gateway_pb2.PresetSpeaker(speaker="tiny_female"), text_input_mode=SENTENCES)
    paced = PacedRun(stub, cfg, words, 0.1).run()
    assert paced.first_audio_at > paced.sent_at[len(FIRST.split()) - 1]
    assert paced.chunks[-1][1].summary.segment_count >= 2  # sentences (the first may be cut for a quick start)


def test_incremental_mode_on_a_sentence_voice_is_refused(stub: tts_gateway_pb2_grpc.TtsGatewayServiceStub) -> None:
    messages = [tts_gateway_pb2.StreamingSynthesizeRequest(config=config(voice="joe", text_input_mode=INCREMENTAL))]
    messages.append(tts_gateway_pb2.StreamingSynthesizeRequest(text="Hello."))
    with pytest.raises(grpc.RpcError) as caught:
        list(stub.StreamingSynthesize(iter(messages), timeout=60))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "cosyvoice2" in (caught.value.details() or "")


def test_flush_ends_an_utterance_and_zero_shot_streams(stub: tts_gateway_pb2_grpc.TtsGatewayServiceStub) -> None:
    reference = wav_input(voiced(2.0, f0=150.0, seed=3))
    cfg = config(zero_shot=tts_gateway_pb2.ZeroShot(reference_audio=reference, reference_text="A reference clip."))
    messages = [tts_gateway_pb2.StreamingSynthesizeRequest(config=cfg)]
    messages += [tts_gateway_pb2.StreamingSynthesizeRequest(text=w) for w in words_of(FIRST)]
    messages.append(
        tts_gateway_pb2.StreamingSynthesizeRequest(flush=tts_gateway_pb2.StreamingSynthesizeRequest.Flush())
    )
    messages += [tts_gateway_pb2.StreamingSynthesizeRequest(text=w) for w in words_of(SECOND)]
    chunks = list(stub.StreamingSynthesize(iter(messages), timeout=300))
    assert chunks[-1].summary.segment_count == 2
    assert {c.segment_index for c in chunks if c.audio} == {0, 1}
    assert sum(len(c.audio) for c in chunks) > 0


def test_conversion_voice_streams_text_in(stub: tts_gateway_pb2_grpc.TtsGatewayServiceStub) -> None:
    cfg = config(
        voice="cosyvoice2-world",
        preset_speaker=tts_gateway_pb2.PresetSpeaker(speaker="tiny_male"),
        output_format=audio_pb2.AudioFormat(encoding=PCM16, sample_rate_hz=16000),
    )
    paced = PacedRun(stub, cfg, words_of(FIRST), 0.05).run()
    audio_s = paced.pcm.size / 16000
    assert paced.chunks[0][1].format.sample_rate_hz == 16000
    assert audio_s > 1.0  # converted speech came out at the requested rate


def test_saved_voice_on_cosyvoice2_streams_text(stub: tts_gateway_pb2_grpc.TtsGatewayServiceStub) -> None:
    reference = wav_input(voiced(2.5, f0=120.0, seed=9))
    created = stub.CreateVoice(
        tts_gateway_pb2.CreateVoiceRequest(
            name="cosy-saved", base_voice="cosyvoice2", reference_audio=reference, reference_text="Saved words."
        )
    )
    try:
        assert created.voice.streams_text_input
        paced = PacedRun(stub, config(voice="cosy-saved"), words_of(FIRST), 0.02).run()
        assert paced.pcm.size > 0
    finally:
        stub.DeleteVoice(tts_gateway_pb2.DeleteVoiceRequest(name="cosy-saved"))


def test_a_client_that_goes_away_frees_the_model_session(
    stub: tts_gateway_pb2_grpc.TtsGatewayServiceStub, cosyvoice2_triton: TritonServer
) -> None:
    """The client stops sending and cancels while no request is in flight: the gateway drops the session at once
    (session_cancel on a call of its own), not after the model's idle expiry."""
    cancelled = triton_counter(cosyvoice2_triton, "cosyvoice2_sessions_total", event="cancelled")
    hold = threading.Event()

    def messages() -> Iterator[tts_gateway_pb2.StreamingSynthesizeRequest]:
        yield tts_gateway_pb2.StreamingSynthesizeRequest(
            config=config(preset_speaker=tts_gateway_pb2.PresetSpeaker(speaker="tiny_female"))
        )
        yield tts_gateway_pb2.StreamingSynthesizeRequest(text="Hello there ")
        hold.wait(30)

    call = stub.StreamingSynthesize(messages(), timeout=60)
    wait_until(lambda: triton_counter(cosyvoice2_triton, "cosyvoice2_sessions_open") >= 1, within=30)
    time.sleep(0.5)  # the first delta's request has answered: nothing is in flight
    started = time.monotonic()
    call.cancel()
    hold.set()
    wait_until(
        lambda: triton_counter(cosyvoice2_triton, "cosyvoice2_sessions_total", event="cancelled") > cancelled,
        within=20,
        what="the session dropped",
    )
    assert time.monotonic() - started < 8.0  # before the idle expiry (8 s) could have done it
