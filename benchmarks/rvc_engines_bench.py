"""Real-time factors of the voice-conversion engines and F0 methods (RTF = processing time / audio duration).

    .venv/bin/python benchmarks/rvc_engines_bench.py [--seconds 3] [--device cpu] [--methods pm,dio,...]

RVC runs a random-weight checkpoint with the real v2 40k dimensions and a random HuBERT-base-sized content encoder
(12 layers, 768 hidden), so the timing is representative of a real voice; no weights are downloaded. On CPU it
compares the torch and ONNX Runtime backends (fp32, and int8 content encoder) in one run, and prints the compute
floor: the synthesizer's FLOPs per second of audio over the GFLOPS this machine sustains in a float32 GEMM.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from services.rvc_service.engines import (
    ContentEncoder,
    ConversionParams,
    F0Estimator,
    RvcModel,
    WorldVoice,
)
from services.rvc_service.engines.onnx_runtime import OnnxSettings
from services.rvc_service.engines.synthesizer import SynthConfig, Synthesizer

# The WebUI's v2 40k configuration.
V2_40K = [1025, 32, 192, 192, 768, 2, 6, 3, 0, "1", [3, 7, 11], [[1, 3, 5]] * 3, [10, 10, 2, 2], 512, [16, 16, 4, 4],
          109, 256, 40000]  # fmt: skip


def test_signal(seconds: float, sr: int = 16000) -> np.ndarray:
    """A gliding harmonic voice-like tone with a little noise (F0 120-240 Hz)."""
    t = np.arange(int(seconds * sr)) / sr
    f0 = 120 + 60 * (1 + np.sin(2 * np.pi * 0.5 * t))
    phase = 2 * np.pi * np.cumsum(f0) / sr
    x = sum(np.sin(k * phase) / k for k in range(1, 15)) + 0.01 * np.random.default_rng(0).standard_normal(len(t))
    return (0.4 * x / np.abs(x).max()).astype(np.float32)


def timed(fn, repeats: int = 2) -> float:
    fn()  # warm-up: lazy model loads, allocator
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def gemm_gflops(threads: int) -> float:
    """What this machine sustains in a float32 matrix product on `threads` threads (the best of a few runs)."""
    torch.set_num_threads(threads)
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    return 2 * 2048**3 / timed(lambda: a @ b, repeats=5) / 1e9


def synthesizer_gflop_per_second(model: RvcModel) -> float:
    """Floating-point operations of one second of output audio through the synthesizer (counted by torch)."""
    from torch.utils.flop_counter import FlopCounterMode

    net = model.net
    frames = 100
    pitch, f0 = torch.full((1, frames), 60), torch.full((1, frames), 150.0)
    args = (torch.randn(1, frames, 768), torch.tensor([frames]), pitch, f0, torch.tensor([0]))
    with FlopCounterMode(display=False) as counter:
        net.infer(*args)
    return counter.get_total_flops() / 1e9


def build_models(tmp: Path, device: torch.device) -> RvcModel:
    from torch import nn
    from transformers import HubertConfig, HubertModel

    class HubertWithFinalProj(HubertModel):
        def __init__(self, config: HubertConfig) -> None:
            super().__init__(config)
            self.final_proj = nn.Linear(config.hidden_size, config.classifier_proj_size)

    torch.manual_seed(0)
    HubertWithFinalProj(HubertConfig(classifier_proj_size=256)).save_pretrained(str(tmp / "hubert"))
    net = Synthesizer(SynthConfig.from_list(V2_40K), 768, True)
    torch.save({"weight": net.state_dict(), "config": V2_40K, "f0": 1, "version": "v2", "sr": "40k"}, tmp / "v.pth")
    enc = ContentEncoder.load(tmp / "hubert", device)
    return RvcModel.load(tmp / "v.pth", device, content_encoder=enc, f0_estimator=F0Estimator(device))


def rvc_rtfs(model: RvcModel, x16: np.ndarray, methods: list[str], label: str) -> dict[str, float]:
    """RTF of a whole utterance per F0 method, and of one streaming step (0.5 s block after 0.5 s of context)."""
    dur = len(x16) / 16000
    out = {}
    for m in methods:
        p = ConversionParams(f0_method=m, index_rate=0.0)
        out[m] = timed(lambda p=p: model.convert(x16, 16000, p, seed=0), repeats=1) / dur
        print(f"{'rvc v2 40k ' + label + ', f0=' + m:<46} RTF {out[m]:.3f}")
    block = x16[: int(1.0 * 16000)]
    out["block"] = (
        timed(lambda: model.convert_block(block, 16000, ConversionParams(f0_method="pm"), context=8000)) / 0.5
    )
    print(f"{'rvc ' + label + ' convert_block 0.5 s + 0.5 s ctx, pm':<46} RTF {out['block']:.3f}")
    return out


def main() -> int:
    warnings.filterwarnings("ignore")
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--methods", default="pm,dio,harvest,crepe-tiny,fcpe,crepe")
    args = ap.parse_args()
    device = torch.device(args.device)
    methods = [m for m in args.methods.split(",") if m]
    x16 = test_signal(args.seconds)
    dur = args.seconds
    print(f"device={device} torch={torch.__version__} threads={torch.get_num_threads()} audio={dur:.1f}s")

    world = WorldVoice()
    rtf = timed(lambda: world.convert(x16, 16000, ConversionParams())) / dur
    print(f"{'world (Praat F0 + WORLD, 24 kHz)':<40} RTF {rtf:.3f}")

    est = F0Estimator(device)
    for m in methods:
        rtf = timed(lambda m=m: est.estimate(x16, m), repeats=1) / dur
        print(f"{'f0 ' + m:<40} RTF {rtf:.3f}")

    with tempfile.TemporaryDirectory() as d:
        model = build_models(Path(d), device)
        n_params = sum(p.numel() for p in model.net.parameters())
        print(f"rvc v2 40k synthesizer {n_params / 1e6:.1f}M params, content encoder "
              f"{model.content_encoder.num_parameters / 1e6:.1f}M params")  # fmt: skip
        rvc_methods = [m for m in methods if m in ("pm", "fcpe", "rmvpe")] or methods[:1]
        torch_rtf = rvc_rtfs(model, x16, rvc_methods, "torch")
        if device.type != "cpu":
            return 0
        gflop = synthesizer_gflop_per_second(model)
        threads = torch.get_num_threads()
        peak = gemm_gflops(threads)
        print(f"synthesizer {gflop:.1f} GFLOP per second of 40 kHz audio; fp32 GEMM here {peak:.1f} GFLOPS on "
              f"{threads} threads -> compute floor RTF {gflop / peak:.2f} for the synthesizer alone")  # fmt: skip
        for int8 in (False, True):
            settings = OnnxSettings(Path(d) / "onnx", threads=threads, int8_content=int8)
            label = "onnx" + (" int8-content" if int8 else "")
            onnx_model = RvcModel.load(
                Path(d) / "v.pth", content_encoder=model.content_encoder, f0_estimator=model.f0, onnx=settings
            )
            onnx_rtf = rvc_rtfs(onnx_model, x16, rvc_methods, label)
            y_t = model.convert(x16, 16000, ConversionParams(f0_method="pm", index_rate=0.0), seed=0)[0]
            y_o = onnx_model.convert(x16, 16000, ConversionParams(f0_method="pm", index_rate=0.0), seed=0)[0]
            snr = 10 * np.log10(np.sum(y_t**2) / max(np.sum((y_o - y_t) ** 2), 1e-30))
            speedups = ", ".join(f"{k} {torch_rtf[k] / onnx_rtf[k]:.2f}x" for k in onnx_rtf)
            print(f"{label} vs torch: speed-up {speedups}; output SNR vs torch {snr:.1f} dB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
