"""Spark-TTS voices through the real gateway, real Triton (tiny checkpoint) and the real conversion service.

Gateway output is compared with a direct Triton stream of the same request (an independent client of the model),
and the reference cache with Triton's own inference counter for spark_audio_tokenizer.
"""

from __future__ import annotations

import io
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
import soundfile as sf

from tests.fixtures.gateway import GatewayProcess
from tests.fixtures.triton_server import TritonServer
from tests.prometheus import metric, scrape
from tests.spark.helpers import RATE, SparkStream, spark_inputs, speech_like
from tests.waiting import wait_until
from voice.v1 import audio_pb2, tts_gateway_pb2, tts_gateway_pb2_grpc

pytestmark = pytest.mark.timeout(600)
PCM16 = audio_pb2.AUDIO_ENCODING_PCM16
CHINESE = "今天天气很好。我们去公园散步吧！你觉得怎么样？"


@pytest.fixture
def stub(spark_gateway: GatewayProcess) -> Iterator[tts_gateway_pb2_grpc.TtsGatewayServiceStub]:
    with grpc.insecure_channel(spark_gateway.address) as channel:
        yield tts_gateway_pb2_grpc.TtsGatewayServiceStub(channel)


def wav_input(samples: np.ndarray, rate: int = RATE) -> audio_pb2.AudioInput:
    buffer = io.BytesIO()
    sf.write(buffer, samples, rate, format="WAV", subtype="PCM_16")
    return audio_pb2.AudioInput(
        audio=buffer.getvalue(), format=audio_pb2.AudioFormat(encoding=audio_pb2.AUDIO_ENCODING_WAV)
    )


def synthesize(stub: tts_gateway_pb2_grpc.TtsGatewayServiceStub, **fields: object) -> list[audio_pb2.AudioChunk]:
    fields.setdefault("output_format", audio_pb2.AudioFormat(encoding=PCM16))
    fields.setdefault("voice", "spark")
    return list(stub.Synthesize(tts_gateway_pb2.SynthesizeRequest(**fields), timeout=300))


def pcm(chunks: list[audio_pb2.AudioChunk]) -> np.ndarray:
    return np.frombuffer(b"".join(c.audio for c in chunks), dtype="<i2")


def test_spark_voice_is_listed_with_its_modes(stub: tts_gateway_pb2_grpc.TtsGatewayServiceStub) -> None:
    voices = {v.name: v for v in stub.ListVoices(tts_gateway_pb2.ListVoicesRequest()).voices}
    spark = voices["spark"]
    assert spark.native_sample_rate_hz == 16000 and spark.streaming and spark.available
    assert set(spark.supported_modes) == {
        tts_gateway_pb2.SYNTHESIS_MODE_ZERO_SHOT,
        tts_gateway_pb2.SYNTHESIS_MODE_CROSS_LINGUAL,
        tts_gateway_pb2.SYNTHESIS_MODE_VOICE_DESIGN,
    }


def test_zero_shot_through_the_gateway_equals_a_direct_triton_stream(
    stub: tts_gateway_pb2_grpc.TtsGatewayServiceStub, spark_triton: TritonServer
) -> None:
    reference = speech_like(2.5, f0=130.0, seed=31)
    chunks = synthesize(
        stub,
        text="Hello from the gateway.",
        zero_shot=tts_gateway_pb2.ZeroShot(reference_audio=wav_input(reference), reference_text="some words"),
        seed=77,
    )
    assert all(c.format.sample_rate_hz == RATE for c in chunks)
    gateway_audio = pcm(chunks)
    # The same request straight to Triton, with the reference as the gateway decodes it (16-bit WAV, 16 kHz).
    decoded = np.frombuffer(wav_input(reference).audio[44:], dtype="<i2").astype(np.float32) / 32768.0
    direct = SparkStream(spark_triton.grpc_url)
    try:
        result = direct.run(
            spark_inputs("Hello from the gateway.", reference=decoded, reference_text="some words", seed=77)
        )
    finally:
        direct.close()
    assert not result.error
    expected = np.clip(np.round(result.audio * 32767.0), -32768, 32767)
    assert gateway_audio.size == expected.size > 0
    assert np.abs(gateway_audio.astype(np.int32) - expected.astype(np.int32)).max() <= 1


def test_chinese_text_streams_sentence_by_sentence(
    stub: tts_gateway_pb2_grpc.TtsGatewayServiceStub, spark_triton: TritonServer
) -> None:
    reference = wav_input(speech_like(3.0, seed=32))
    before = metric(scrape(spark_triton.metrics_url), "nv_inference_request_success", model="spark_audio_tokenizer")
    chunks = synthesize(
        stub, text=CHINESE, zero_shot=tts_gateway_pb2.ZeroShot(reference_audio=reference, reference_text="参考"), seed=5
    )
    summary = chunks[-1].summary
    assert summary.segment_count == 3
    assert [c.segment_text for c in chunks if c.segment_text] == [
        "今天天气很好。",
        "我们去公园散步吧！",
        "你觉得怎么样？",
    ]
    assert summary.processed_text == CHINESE
    # Three sentences, one reference: Triton's audio tokenizer ran once for the whole stream.
    after = metric(scrape(spark_triton.metrics_url), "nv_inference_request_success", model="spark_audio_tokenizer")
    assert after - before == 1
    synthesize(
        stub, text="再来一次。", zero_shot=tts_gateway_pb2.ZeroShot(reference_audio=reference, reference_text="参考")
    )
    assert (
        metric(scrape(spark_triton.metrics_url), "nv_inference_request_success", model="spark_audio_tokenizer") == after
    )


def test_streaming_input_splits_chinese_deltas(stub: tts_gateway_pb2_grpc.TtsGatewayServiceStub) -> None:
    config = tts_gateway_pb2.StreamingSynthesizeConfig(
        voice="spark",
        voice_design=tts_gateway_pb2.VoiceDesign(gender=tts_gateway_pb2.VOICE_GENDER_FEMALE),
        output_format=audio_pb2.AudioFormat(encoding=PCM16),
        seed=9,
    )
    deltas = ["今天天", "气很好。我们去", "公园散步吧！你觉得", "怎么样？"]
    messages = [tts_gateway_pb2.StreamingSynthesizeRequest(config=config)]
    messages += [tts_gateway_pb2.StreamingSynthesizeRequest(text=d) for d in deltas]
    chunks = list(stub.StreamingSynthesize(iter(messages), timeout=300))
    assert chunks[-1].summary.segment_count == 3
    assert pcm(chunks).size > 0


@pytest.mark.parametrize("encoding", ["ogg_opus", "pcm16_24k", "float32_44k"])
def test_reference_formats_are_resampled_to_16k(
    stub: tts_gateway_pb2_grpc.TtsGatewayServiceStub, encoding: str
) -> None:
    import av  # PyAV writes the Ogg-Opus reference as a client would

    if encoding == "ogg_opus":
        samples = speech_like(2.0, rate=48000, seed=33)
        buffer = io.BytesIO()
        with av.open(buffer, "w", format="ogg") as container:
            out = container.add_stream("libopus", rate=48000)
            out.layout = "mono"
            frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="flt", layout="mono")
            frame.sample_rate = 48000
            for packet in out.encode(frame):
                container.mux(packet)
            for packet in out.encode(None):
                container.mux(packet)
        fmt = audio_pb2.AudioFormat(encoding=audio_pb2.AUDIO_ENCODING_OGG_OPUS)
        audio = buffer.getvalue()
    elif encoding == "pcm16_24k":
        samples = speech_like(2.0, rate=24000, seed=34)
        fmt = audio_pb2.AudioFormat(encoding=PCM16, sample_rate_hz=24000)
        audio = (samples * 32767).astype("<i2").tobytes()
    else:
        samples = speech_like(2.0, rate=44100, seed=35)
        fmt = audio_pb2.AudioFormat(encoding=audio_pb2.AUDIO_ENCODING_FLOAT32, sample_rate_hz=44100)
        audio = samples.astype("<f4").tobytes()
    chunks = synthesize(
        stub,
        text="Format check.",
        cross_lingual=tts_gateway_pb2.CrossLingual(reference_audio=audio_pb2.AudioInput(audio=audio, format=fmt)),
        seed=3,
    )
    assert pcm(chunks).size > 0 and chunks[-1].is_final


def test_voice_design_and_seed(stub: tts_gateway_pb2_grpc.TtsGatewayServiceStub) -> None:
    design = tts_gateway_pb2.VoiceDesign(
        gender=tts_gateway_pb2.VOICE_GENDER_MALE,
        pitch=tts_gateway_pb2.VOICE_LEVEL_LOW,
        speed=tts_gateway_pb2.VOICE_LEVEL_HIGH,
    )
    first = pcm(synthesize(stub, text="A designed voice.", voice_design=design, seed=41))
    again = pcm(synthesize(stub, text="A designed voice.", voice_design=design, seed=41))
    other = pcm(synthesize(stub, text="A designed voice.", voice_design=design, seed=42))
    assert first.size > 0 and np.array_equal(first, again)
    assert first.size != other.size or not np.array_equal(first, other)


def test_conversion_applies_after_cloning(stub: tts_gateway_pb2_grpc.TtsGatewayServiceStub) -> None:
    voices = {v.name: v for v in stub.ListVoices(tts_gateway_pb2.ListVoicesRequest()).voices}
    assert voices["spark-world"].default_conversion.model == "world-default"
    chunks = synthesize(
        stub,
        voice="spark-world",
        text="Converted clone.",
        cross_lingual=tts_gateway_pb2.CrossLingual(reference_audio=wav_input(speech_like(2.0, seed=36))),
        seed=4,
    )
    summary = chunks[-1].summary
    assert summary.conversion_time.ToNanoseconds() > 0
    assert summary.audio_duration.ToNanoseconds() > 0


@pytest.mark.parametrize(
    ("fields", "code", "words"),
    [
        ({}, grpc.StatusCode.FAILED_PRECONDITION, "does not support mode preset_speaker"),
        ({"voice_design": tts_gateway_pb2.VoiceDesign()}, grpc.StatusCode.INVALID_ARGUMENT, "voice_design.gender"),
        (
            {"zero_shot": tts_gateway_pb2.ZeroShot(reference_text="words")},
            grpc.StatusCode.INVALID_ARGUMENT,
            "reference_audio",
        ),
        (
            {"cross_lingual": tts_gateway_pb2.CrossLingual(reference_audio=wav_input(np.zeros(3 * RATE, np.float32)))},
            grpc.StatusCode.INVALID_ARGUMENT,
            "silent",
        ),
        (
            {"cross_lingual": tts_gateway_pb2.CrossLingual(reference_audio=wav_input(speech_like(0.5)))},
            grpc.StatusCode.INVALID_ARGUMENT,
            "reference audio must be",
        ),
    ],
)
def test_bad_spark_requests(
    stub: tts_gateway_pb2_grpc.TtsGatewayServiceStub, fields: dict, code: grpc.StatusCode, words: str
) -> None:
    with pytest.raises(grpc.RpcError) as error:
        synthesize(stub, text="Some text.", **fields)
    assert error.value.code() == code
    assert words in error.value.details()


def test_cancel_after_the_first_chunk_stops_the_model(
    stub: tts_gateway_pb2_grpc.TtsGatewayServiceStub, spark_triton: TritonServer
) -> None:
    design = tts_gateway_pb2.VoiceDesign(gender=tts_gateway_pb2.VOICE_GENDER_FEMALE)
    # A seed whose first sentence is long enough for several model chunks (the random model's lengths vary).
    seed = next(
        s
        for s in range(30, 80)
        if len(synthesize(stub, text="A long piece of speech.", voice_design=design, seed=s)) > 4
    )
    before = metric(scrape(spark_triton.metrics_url), "spark_requests_cancelled_total")
    call = stub.Synthesize(
        tts_gateway_pb2.SynthesizeRequest(
            text="A long piece of speech.",
            voice="spark",
            voice_design=design,
            seed=seed,
            output_format=audio_pb2.AudioFormat(encoding=PCM16),
        )
    )
    next(call)
    call.cancel()
    wait_until(
        lambda: metric(scrape(spark_triton.metrics_url), "spark_requests_cancelled_total") > before,
        within=30,
        interval=0.2,
        what="Triton's spark_tts to see the cancellation",
    )


def test_python_client_designs_saves_and_reuses_voices(spark_gateway: GatewayProcess) -> None:
    from voice_client import SynthesisOptions, TtsClient

    with TtsClient(spark_gateway.address) as tts:
        designed = SynthesisOptions(voice="spark", encoding="pcm16", gender="male", pitch="high", seed=8)
        first = b"".join(c.audio for c in tts.synthesize_with("Client side.", designed))
        again = b"".join(c.audio for c in tts.synthesize_with("Client side.", designed))
        assert first and first == again
        voice = tts.create_voice("client-saved", "spark", wav_input(speech_like(2.0, seed=37)), "some words")
        try:
            assert voice.saved.base_voice == "spark"
            assert tts.get_voice("client-saved").saved.reference_text == "some words"
            saved = SynthesisOptions(voice="client-saved", encoding="pcm16", seed=8)
            assert b"".join(c.audio for c in tts.synthesize_with("Saved.", saved))
        finally:
            assert tts.delete_voice("client-saved").name == "client-saved"
        with pytest.raises(grpc.RpcError) as error:
            tts.get_voice("client-saved")
        assert error.value.code() == grpc.StatusCode.NOT_FOUND


def test_a_pace_the_model_cannot_change_is_refused_and_normal_pace_is_served(
    stub: tts_gateway_pb2_grpc.TtsGatewayServiceStub,
) -> None:
    design = tts_gateway_pb2.VoiceDesign(gender=tts_gateway_pb2.VOICE_GENDER_FEMALE)
    with pytest.raises(grpc.RpcError) as refused:
        synthesize(stub, text="Faster, please.", voice_design=design, speaking_rate=2.0, seed=5)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "cannot change its speaking rate" in refused.value.details() and "spark" in refused.value.details()
    for rate in (0.0, 1.0):  # not set, and OpenAI's default speed: both the voice's own pace
        chunks = synthesize(stub, text="Normal pace.", voice_design=design, speaking_rate=rate, seed=5)
        assert pcm(chunks).size > 0 and chunks[-1].is_final
