"""Parity with an independent implementation: infer-rvc-python's copy of the RVC WebUI network, RMVPE classes and
whole conversion pipeline (installed for tests only, `pip install --no-deps -r requirements-parity.txt`). Same
checkpoint, same inputs, same seeded noise -> same audio."""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types

import numpy as np
import pytest
import torch

from services.rvc_service.engines.rmvpe import Rmvpe
from services.rvc_service.engines.synthesizer import build_synthesizer
from tests.rvc.factories import random_synthesizer, tiny_config, webui_state_dict


def _reference(module: str) -> types.ModuleType:
    """Import a submodule without running the package __init__ (it pulls ffmpeg and download helpers)."""
    if "infer_rvc_python" not in sys.modules:
        spec = importlib.util.find_spec("infer_rvc_python")
        if spec is None or not spec.submodule_search_locations:
            pytest.skip("infer-rvc-python not installed (pip install --no-deps -r requirements-parity.txt)")
        pkg = types.ModuleType("infer_rvc_python")
        pkg.__path__ = list(spec.submodule_search_locations)
        sys.modules["infer_rvc_python"] = pkg
    return importlib.import_module(f"infer_rvc_python.{module}")


CASES = [("v2", True, 40000), ("v1", True, 48000), ("v2", False, 32000), ("v1", False, 40000)]


@pytest.mark.parametrize(("version", "use_f0", "sr"), CASES)
def test_synthesizer_matches_reference(version: str, use_f0: bool, sr: int) -> None:
    ref_models = _reference("lib.infer_pack.models")
    weights = webui_state_dict(random_synthesizer(version, use_f0, sr, seed=5).state_dict())  # fp16, weight_g/_v
    cfg = tiny_config(sr)
    dim = 256 if version == "v1" else 768
    cls_name = f"SynthesizerTrnMs{dim}NSFsid" + ("" if use_f0 else "_nono")
    kwargs = {"is_half": False} if use_f0 else {}
    ref = getattr(ref_models, cls_name)(*cfg, **kwargs)
    del ref.enc_q
    missing, unexpected = ref.load_state_dict(weights, strict=False)
    assert not unexpected and not missing
    ref.eval()
    mine = build_synthesizer(cfg, weights, version, use_f0)

    frames = 57
    gen = torch.Generator().manual_seed(11)
    phone = torch.randn(1, frames, dim, generator=gen)
    f0 = torch.cat([torch.zeros(5), torch.linspace(120, 260, frames - 10), torch.zeros(5)])[None]
    pitch = torch.from_numpy(np.clip(np.rint(f0.numpy() / 4), 1, 255).astype(np.int64))
    lengths = torch.tensor([frames])
    sid = torch.tensor([1])

    torch.manual_seed(1234)
    with torch.no_grad():
        args = (phone, lengths, pitch, f0, sid) if use_f0 else (phone, lengths, sid)
        expected = ref.infer(*args)[0]
    got = mine.infer(phone, lengths, pitch, f0, sid, generator=torch.Generator().manual_seed(1234))
    assert got.shape == expected.shape == (1, 1, frames * sr // 100)
    assert float(expected.abs().max()) > 1e-3
    np.testing.assert_allclose(got.numpy(), expected.numpy(), atol=2e-4, rtol=0)


def test_rmvpe_matches_reference(tmp_path) -> None:
    ref_rmvpe = _reference("lib.rmvpe")
    torch.manual_seed(3)
    ref_net = ref_rmvpe.E2E(4, 1, (2, 2))
    with torch.no_grad():  # non-trivial batch-norm statistics, as a trained file has
        for name, buf in ref_net.named_buffers():
            if name.endswith("running_var"):
                buf.uniform_(0.5, 2.0)
            elif name.endswith("running_mean"):
                buf.normal_(0, 0.1)
    torch.save(ref_net.state_dict(), tmp_path / "rmvpe.pt")
    mine = Rmvpe(tmp_path / "rmvpe.pt", torch.device("cpu"))
    audio = (0.3 * np.sin(2 * np.pi * 220 * np.arange(8000) / 16000)).astype(np.float32)
    mel = mine.mel(torch.from_numpy(audio)[None])
    n = mel.shape[-1]
    padded = torch.nn.functional.pad(mel, (0, 32 * ((n - 1) // 32 + 1) - n))
    with torch.no_grad():
        expected = ref_net.eval()(padded)[0, :n].numpy()
    np.testing.assert_allclose(mine.salience(audio), expected, atol=1e-5)


@pytest.mark.parametrize(
    ("rms_mix_rate", "index_rate", "backend"), [(1.0, 0.0, "torch"), (0.25, 0.6, "torch"), (0.25, 0.6, "onnx")]
)
def test_whole_pipeline_matches_reference(
    tmp_path, model_dir, fairseq_encoder, f0_estimator, rms_mix_rate: float, index_rate: float, backend: str
) -> None:
    """The reference's own pipeline (VC.pipeline: high-pass, reflect padding, pm F0 with its padding, fairseq HuBERT
    features, index blend, protection, synthesis, loudness mix, int16) against RvcModel.convert on either backend."""
    root_pipe = _reference("root_pipe")
    ref_models = _reference("lib.infer_pack.models")
    from services.rvc_service.engines import ConversionParams, RvcModel
    from tests.rvc.factories import harmonic_tone, write_checkpoint

    ckpt = write_checkpoint(tmp_path / "voice.pth", "v2", True, 40000, seed=9)
    index = model_dir / "added_IVF17_Flat_nprobe_1_alto_v2.index"
    cpt = torch.load(ckpt, weights_only=True)
    ref_net = ref_models.SynthesizerTrnMs768NSFsid(*cpt["config"], is_half=False)
    del ref_net.enc_q
    ref_net.load_state_dict(cpt["weight"], strict=False)
    ref_net.eval().float()
    config = types.SimpleNamespace(x_pad=1, x_query=6, x_center=38, x_max=41, is_half=False, device="cpu")
    vc = root_pipe.VC(40000, config)

    # A voice with unvoiced stretches (protection and the F0 padding matter), F0 moving 150 -> 230 Hz.
    rng = np.random.default_rng(4)
    tone = np.concatenate([harmonic_tone(150.0, seconds=0.8), harmonic_tone(230.0, seconds=0.9)])
    audio = np.concatenate([0.02 * rng.standard_normal(3000), tone, 0.02 * rng.standard_normal(5000)])
    audio = (0.6 * audio / np.abs(audio).max()).astype(np.float32)

    torch.manual_seed(2024)
    with torch.no_grad():
        expected = vc.pipeline(
            fairseq_encoder.model, ref_net, 1, audio.astype(np.float64), "in.wav", [0, 0, 0], 2, "pm",
            str(index) if index_rate else "", index_rate, 1, 3, 40000, 0, rms_mix_rate, "v2", 0.33,
        )  # fmt: skip
    from services.rvc_service.engines.onnx_runtime import OnnxSettings

    mine = RvcModel.load(
        ckpt,
        content_encoder=fairseq_encoder,
        f0_estimator=f0_estimator,
        index_path=index if index_rate else None,
        onnx=OnnxSettings(tmp_path / "onnx", threads=1) if backend == "onnx" else None,
    )
    params = ConversionParams(
        f0_method="pm", pitch_shift_semitones=2, index_rate=index_rate, protect=0.33, rms_mix_rate=rms_mix_rate,
        speaker_id=1, filter_radius=3,
    )  # fmt: skip
    torch.manual_seed(2024)
    got, rate = mine.convert(audio, 16000, params)
    # The reference ends at the content encoder's last whole frame (20 ms short here); ours keeps the input's length.
    assert rate == 40000 and len(got) == len(audio) * 40000 // 16000 and 0 <= len(got) - len(expected) <= 1200
    assert np.abs(expected).max() > 3000  # not silence
    got16 = got[: len(expected)] * 32768
    snr = 10 * np.log10(np.sum(expected.astype(np.float64) ** 2) / np.sum((got16 - expected) ** 2))
    # Measured: 91 dB plain (int16 rounding); 50 dB with the index blend and loudness mix (float differences in
    # faiss distances and the RMS envelope), the same on both backends.
    assert snr > 40, snr
