"""Parity with an independent implementation: infer-rvc-python's copy of the RVC WebUI network and RMVPE classes
(installed for tests only, `pip install --no-deps -r requirements-parity.txt`). Same checkpoint, same inputs, same
seeded noise -> same audio."""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types

import numpy as np
import pytest
import torch
from factories import random_synthesizer, tiny_config, webui_state_dict

from services.rvc_service.engines.rmvpe import Rmvpe
from services.rvc_service.engines.synthesizer import build_synthesizer


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
