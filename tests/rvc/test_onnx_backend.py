"""The ONNX Runtime backend against the torch path it is exported from: same checkpoint, same inputs, same seeded
noise -> the same audio within float rounding; plus the export cache, int8 content features and cancellation."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from services.rvc_service.cancel import JobCancelled
from services.rvc_service.engines import ContentEncoder, ConversionParams, RvcModel
from services.rvc_service.engines.onnx_runtime import OnnxContentEncoder, OnnxSettings, OnnxSynthesizer
from services.rvc_service.engines.synthesizer import DecodeWindow
from tests.rvc.factories import harmonic_tone, random_synthesizer, write_checkpoint


def snr_db(reference: np.ndarray, test: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(reference**2) / max(np.sum((test - reference) ** 2), 1e-30)))


@pytest.fixture(scope="module")
def onnx_settings(tmp_path_factory: pytest.TempPathFactory) -> OnnxSettings:
    return OnnxSettings(tmp_path_factory.mktemp("onnx_cache"), threads=1)


@pytest.mark.parametrize(("version", "use_f0", "sr"), [("v2", True, 40000), ("v1", True, 48000), ("v2", False, 32000)])
def test_synthesizer_matches_torch(version: str, use_f0: bool, sr: int, onnx_settings: OnnxSettings) -> None:
    net = random_synthesizer(version, use_f0, sr, seed=4)
    runner = OnnxSynthesizer(net, onnx_settings, "test")
    # A length the export's example (40 frames) did not have: the graphs' time axes are dynamic.
    frames = 137
    gen = torch.Generator().manual_seed(2)
    phone = torch.randn(1, frames, 256 if version == "v1" else 768, generator=gen)
    f0 = torch.cat([torch.zeros(7), torch.linspace(90, 330, frames - 14), torch.zeros(7)])[None]
    pitch = torch.clamp((f0 / 4).round().long(), 1, 255)
    args = (phone, torch.tensor([frames]), pitch, f0, torch.tensor([1]))
    for window in (None, DecodeWindow(30, 60)):
        expected = net.infer(*args, generator=torch.Generator().manual_seed(8), window=window)
        got = runner.infer(*args, generator=torch.Generator().manual_seed(8), window=window)
        assert got.shape == expected.shape
        err = (got - expected).abs().max().item()
        assert err < 1e-4, err
        assert snr_db(expected.numpy(), got.numpy()) > 60


@pytest.mark.parametrize("kind", ["hf", "fairseq"])
def test_content_encoder_matches_torch(kind: str, onnx_settings: OnnxSettings, request) -> None:
    encoder: ContentEncoder = request.getfixturevalue(f"{kind}_encoder")
    onnx_encoder = OnnxContentEncoder(encoder, onnx_settings)
    # 49 and 68 frames: fairseq pads odd lengths to even inside its encoder, the exported twin does not need to.
    for seconds in (1.0, 1.37):
        audio = torch.from_numpy(harmonic_tone(150.0, seconds=seconds))[None]
        for version in ("v1", "v2"):
            expected = encoder.extract(audio, version)
            got = onnx_encoder.extract(audio, version)
            assert got.shape == expected.shape == (1, expected.shape[1], 256 if version == "v1" else 768)
            assert snr_db(expected.numpy(), got.numpy()) > 60, (seconds, version)


def test_int8_content_features_stay_close(hf_encoder: ContentEncoder, tmp_path: Path) -> None:
    fp32 = OnnxContentEncoder(hf_encoder, OnnxSettings(tmp_path, threads=1))
    int8 = OnnxContentEncoder(hf_encoder, OnnxSettings(tmp_path, threads=1, int8_content=True))
    audio = torch.from_numpy(harmonic_tone(200.0, seconds=1.0))[None]
    reference, quantized = fp32.extract(audio, "v2").numpy(), int8.extract(audio, "v2").numpy()
    assert snr_db(reference, quantized) > 20  # ~30 dB measured on HuBERT-base-sized weights (rvc_engines_bench)
    assert sorted(p.name.endswith(".int8.onnx") for p in tmp_path.glob("content-*.onnx")) == [False, True]


def test_whole_conversion_matches_torch(model_dir: Path, hf_encoder: ContentEncoder, f0_estimator, tmp_path) -> None:
    ckpt = write_checkpoint(tmp_path / "voice.pth", "v2", True, 40000, seed=6)
    settings = OnnxSettings(tmp_path / "cache", threads=1)
    kwargs = {"content_encoder": hf_encoder, "f0_estimator": f0_estimator, "index_path": None}
    torch_model = RvcModel.load(ckpt, **kwargs)
    onnx_model = RvcModel.load(ckpt, onnx=settings, **kwargs)
    assert isinstance(onnx_model.net, OnnxSynthesizer) and isinstance(onnx_model.content_encoder, OnnxContentEncoder)
    assert onnx_model.memory_bytes == torch_model.memory_bytes
    x = harmonic_tone(170.0, sr=22050, seconds=2.1)
    params = ConversionParams(f0_method="pm", pitch_shift_semitones=3)
    expected, rate = torch_model.convert(x, 22050, params, seed=3)
    got, rate2 = onnx_model.convert(x, 22050, params, seed=3)
    assert rate == rate2 == 40000 and len(got) == len(expected) == round(2.1 * 40000)
    assert snr_db(expected, got) > 50
    context = 8000
    block_expected = torch_model.convert_block(x[:16000], 22050, params, context=context, seed=1)
    block_got = onnx_model.convert_block(x[:16000], 22050, params, context=context, seed=1)
    assert len(block_got) == len(block_expected) == round((16000 - context) * 40000 / 22050)
    assert snr_db(block_expected, block_got) > 50
    # The exports are cached: a second load of the same weights writes nothing new.
    files = {p: p.stat().st_mtime_ns for p in (tmp_path / "cache").iterdir()}
    RvcModel.load(ckpt, onnx=settings, **kwargs)
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "cache").iterdir()} == files
    # Different weights get their own export.
    other = write_checkpoint(tmp_path / "other.pth", "v2", True, 40000, seed=7)
    RvcModel.load(other, onnx=settings, **kwargs)
    assert len(list((tmp_path / "cache").iterdir())) == len(files) + 2  # prior + decoder


def test_a_cancelled_run_stops_early(onnx_settings: OnnxSettings) -> None:
    net = random_synthesizer("v2", True, 48000, seed=1)
    runner = OnnxSynthesizer(net, onnx_settings, "test")
    frames = 3000  # 30 s of audio: a decoder run of a second or more even for the tiny model
    pitch, f0 = torch.full((1, frames), 40), torch.full((1, frames), 160.0)
    args = (torch.randn(1, frames, 768), torch.tensor([frames]), pitch, f0, torch.tensor([0]))
    t0 = time.perf_counter()
    runner.infer(*args)
    full = time.perf_counter() - t0
    stop = threading.Event()
    threading.Timer(0.05, stop.set).start()
    t0 = time.perf_counter()
    with pytest.raises(JobCancelled):
        runner.infer(*args, should_stop=stop.is_set)
    assert time.perf_counter() - t0 < max(0.5 * full, 0.2), full
    # The session keeps serving after a terminated run.
    assert runner.infer(*args).shape[-1] == frames * runner.hop
