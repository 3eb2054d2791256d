"""fp16 (the WebUI's is_half) against fp32 on the same checkpoint and seed. Meant for CUDA; torch's CPU kernels
also run fp16, so the same tolerance is checked on CPU everywhere and on CUDA where a GPU is present."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from services.rvc_service.engines import ContentEncoder, ConversionParams, F0Estimator, ModelLoadError, RvcModel
from services.rvc_service.engines.onnx_runtime import OnnxSettings
from tests.rvc.factories import harmonic_tone, write_checkpoint

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def snr_db(reference: np.ndarray, test: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(reference**2) / max(np.sum((test - reference) ** 2), 1e-30)))


@pytest.mark.parametrize("device", DEVICES)
def test_fp16_conversion_stays_close_to_fp32(device: str, model_dir: Path, tmp_path: Path) -> None:
    ckpt = write_checkpoint(tmp_path / "voice.pth", "v2", True, 40000, seed=12)
    f0 = F0Estimator(device)
    full = RvcModel.load(
        ckpt, device, content_encoder=ContentEncoder.load(model_dir / "hubert", device), f0_estimator=f0
    )
    half_encoder = ContentEncoder.load(model_dir / "hubert", device).to_half()
    half = RvcModel.load(ckpt, device, content_encoder=half_encoder, f0_estimator=f0, half=True)
    assert half.dtype == torch.float16 and half_encoder.dtype == torch.float16
    assert half.memory_bytes < 0.6 * full.memory_bytes

    audio = torch.from_numpy(harmonic_tone(180.0, seconds=1.0))[None].to(device)
    feats, feats16 = full.content_encoder.extract(audio, "v2"), half_encoder.extract(audio, "v2")
    assert feats16.dtype == torch.float16
    assert snr_db(feats.float().cpu().numpy(), feats16.float().cpu().numpy()) > 30

    x = harmonic_tone(160.0, sr=16000, seconds=1.5)
    params = ConversionParams(f0_method="pm", pitch_shift_semitones=-2)
    y32, _ = full.convert(x, 16000, params, seed=4)
    y16, _ = half.convert(x, 16000, params, seed=4)
    assert y16.dtype == np.float32 and len(y16) == len(y32)
    # Same seed, same random stream: the difference is fp16 rounding only (40 dB measured on CPU).
    assert snr_db(y32, y16) > 20
    block32 = full.convert_block(x[:12000], 16000, params, context=6400, seed=1)
    block16 = half.convert_block(x[:12000], 16000, params, context=6400, seed=1)
    assert snr_db(block32, block16) > 20


def test_fp16_is_refused_with_the_onnx_backend(model_dir: Path, hf_encoder: ContentEncoder, tmp_path: Path) -> None:
    ckpt = write_checkpoint(tmp_path / "voice.pth", "v2", True, 40000, seed=12)
    with pytest.raises(ModelLoadError, match="fp16"):
        RvcModel.load(ckpt, content_encoder=hf_encoder, half=True, onnx=OnnxSettings(tmp_path, threads=1))
