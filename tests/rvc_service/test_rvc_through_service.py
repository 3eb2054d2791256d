"""The RVC engine through the running service, on tiny random-weight models written in the real formats by the
engine tests' factories (WebUI .pth checkpoint, Hugging Face HuBERT directory, faiss index)."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import soundfile as sf
from google.rpc import error_details_pb2

from services.common import audio as A
from services.common.errors import status_details
from tests.fixtures.rvc_service import RvcServiceProcess, start_rvc_service
from voice.v1 import audio_pb2, conversion_pb2, voice_conversion_pb2, voice_conversion_pb2_grpc

factories = pytest.importorskip("tests.rvc.factories")

pytestmark = [pytest.mark.timeout(180), pytest.mark.slow]


@pytest.fixture(scope="module")
def rvc_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("rvc_service_models")
    factories.write_hf_hubert(d / "hubert")
    factories.write_checkpoint(d / "alto.pth", "v2", True, 40000)
    factories.write_index(d / "alto.index", 768)
    return d


@pytest.fixture(scope="module")
def service(rvc_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RvcServiceProcess]:
    proc = start_rvc_service("--models-dir", str(rvc_models), log_dir=tmp_path_factory.mktemp("rvc_logs"))
    yield proc
    proc.stop()


@pytest.fixture
async def stub(service: RvcServiceProcess) -> AsyncIterator[voice_conversion_pb2_grpc.VoiceConversionServiceStub]:
    async with grpc.aio.insecure_channel(service.address) as channel:
        yield voice_conversion_pb2_grpc.VoiceConversionServiceStub(channel)


def voice(seconds: float, rate: int = 16000) -> np.ndarray:
    return factories.harmonic_tone(180.0, rate, seconds).astype(np.float32)


async def test_rvc_model_lifecycle_and_conversion(stub) -> None:
    listed = {m.name: m for m in (await stub.ListModels(voice_conversion_pb2.ListModelsRequest())).models}
    alto = listed["alto"]
    assert alto.engine == voice_conversion_pb2.CONVERSION_ENGINE_RVC and alto.has_index
    assert alto.size_bytes > 0

    loaded = await stub.LoadModel(voice_conversion_pb2.LoadModelRequest(name="alto"))
    assert loaded.model.loaded and loaded.model.version == "v2" and loaded.model.sample_rate_hz == 40000
    assert loaded.model.memory_bytes > 0 and loaded.model.speaker_count == 2

    status = await stub.GetStatus(voice_conversion_pb2.VoiceConversionServiceGetStatusRequest())
    assert "alto" in {m.name for m in status.loaded_models}

    # Streaming through RVC: model-native rate output, duration kept.
    x = voice(1.6)
    pcm = A.float_to_pcm16(x)
    config = voice_conversion_pb2.ConvertConfig(
        settings=conversion_pb2.ConversionSettings(
            model="alto", f0_method=conversion_pb2.F0_METHOD_PM, pitch_shift_semitones=2.0, speaker_id=1
        ),
        input_format=audio_pb2.AudioFormat(encoding=A.PCM16, sample_rate_hz=16000),
        output_format=audio_pb2.AudioFormat(encoding=A.FLOAT32),
    )

    async def messages():
        yield voice_conversion_pb2.ConvertRequest(config=config)
        for i in range(0, len(pcm), 6400):
            yield voice_conversion_pb2.ConvertRequest(audio=pcm[i : i + 6400])

    chunks = [c async for c in stub.Convert(messages())]
    assert chunks[-1].is_final and chunks[0].format.sample_rate_hz == 40000
    y = np.frombuffer(b"".join(c.audio for c in chunks), dtype="<f4")
    assert abs(y.size / 40000 - 1.6) <= 0.5
    assert np.all(np.isfinite(y)) and np.abs(y).max() > 0

    # Whole clip to WAV at a requested rate.
    reply = await stub.ConvertClip(
        voice_conversion_pb2.ConvertClipRequest(
            settings=conversion_pb2.ConversionSettings(model="alto", f0_method=conversion_pb2.F0_METHOD_DIO),
            audio=audio_pb2.AudioInput(audio=pcm, format=audio_pb2.AudioFormat(encoding=A.PCM16, sample_rate_hz=16000)),
            output_format=audio_pb2.AudioFormat(encoding=A.WAV, sample_rate_hz=24000),
        )
    )
    decoded, rate = sf.read(io.BytesIO(reply.audio), dtype="float32")
    assert rate == 24000 and decoded.size / rate == pytest.approx(1.6, abs=0.05)

    # speaker_id beyond this model's 2 speakers names the real range.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.ConvertClip(
            voice_conversion_pb2.ConvertClipRequest(
                settings=conversion_pb2.ConversionSettings(model="alto", speaker_id=5),
                audio=audio_pb2.AudioInput(
                    audio=pcm, format=audio_pb2.AudioFormat(encoding=A.PCM16, sample_rate_hz=16000)
                ),
                output_format=audio_pb2.AudioFormat(encoding=A.WAV),
            )
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    bad = next(d for d in status_details(err.value) if isinstance(d, error_details_pb2.BadRequest))
    assert {v.field: v.description for v in bad.field_violations}["settings.speaker_id"].startswith(
        "must be between 0 and 1"
    )

    unloaded = await stub.UnloadModel(voice_conversion_pb2.UnloadModelRequest(name="alto"))
    assert unloaded.was_loaded
    again = await stub.UnloadModel(voice_conversion_pb2.UnloadModelRequest(name="alto"))
    assert not again.was_loaded
