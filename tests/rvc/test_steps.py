"""Single pipeline steps: index retrieval blend, unvoiced protection, loudness-envelope mix, quiet-point splitting."""

from __future__ import annotations

import numpy as np
import torch

from services.rvc_service.engines import RetrievalIndex
from services.rvc_service.engines.rvc import PipelineConfig, mix_rms, protect_features, split_points
from tests.rvc.factories import write_index


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(x.astype(np.float64) ** 2)))


def test_index_blend_rate_0_and_1(tmp_path) -> None:
    rng = np.random.default_rng(1)
    stored = rng.standard_normal((200, 16)).astype(np.float32)
    idx = RetrievalIndex.load(write_index(tmp_path / "added_IVF3_Flat_nprobe_1_x_v2.index", 16, vectors=stored))
    np.testing.assert_allclose(idx.vectors, stored)  # reconstructed into memory at load
    q = rng.standard_normal((5, 16)).astype(np.float32)
    np.testing.assert_array_equal(idx.blend(q, 0.0), q)

    # Expected: inverse-square-distance weights over the 8 nearest neighbours (exhaustive search as reference).
    d2 = ((q[:, None, :] - stored[None]) ** 2).sum(-1)
    nn = np.argsort(d2, axis=1)[:, :8]
    expected = np.empty_like(q)
    for i in range(len(q)):
        found, _ = idx.index.search(q[i : i + 1], 8)  # IVF nprobe=1 may miss some true neighbours; use its own hits
        ids = idx.index.search(q[i : i + 1], 8)[1][0]
        w = 1.0 / np.square(found[0])
        expected[i] = (w[:, None] * stored[ids]).sum(0) / w.sum()
    np.testing.assert_allclose(idx.blend(q, 1.0), expected, rtol=1e-4, atol=1e-5)
    # And a query equal to a stored vector retrieves (almost exactly) that vector.
    np.testing.assert_allclose(idx.retrieve(stored[:3]), stored[:3], atol=1e-4)
    half = idx.blend(q, 0.5)
    np.testing.assert_allclose(half, 0.5 * q + 0.5 * idx.retrieve(q), rtol=1e-5, atol=1e-6)
    assert nn.shape == (5, 8)


def test_protect_keeps_original_on_unvoiced_frames() -> None:
    feats0 = torch.zeros(1, 4, 3)
    feats = torch.ones(1, 4, 3)
    pitchf = torch.tensor([[0.0, 220.0, 0.0, 110.0]])
    out = protect_features(feats, feats0, pitchf, protect=0.2)
    np.testing.assert_allclose(out[0, :, 0].numpy(), [0.2, 1.0, 0.2, 1.0], rtol=1e-6)
    assert torch.equal(protect_features(feats, feats0, pitchf, protect=0.5), feats)  # 0.5 = off


def test_rms_mix_rate_1_keeps_output_and_0_imposes_input_envelope() -> None:
    sr = 16000
    t = np.arange(4 * sr) / sr
    src = (np.sin(2 * np.pi * 200 * t) * np.where(t < 2, 0.05, 0.5)).astype(np.float32)  # quiet then loud
    out = (0.3 * np.sin(2 * np.pi * 300 * t)).astype(np.float32)  # flat envelope
    np.testing.assert_array_equal(mix_rms(src, sr, out.copy(), sr, 1.0), out)
    mixed = mix_rms(src, sr, out.copy(), sr, 0.0)
    quiet, loud = mixed[int(0.5 * sr) : int(1.2 * sr)], mixed[int(2.8 * sr) : int(3.5 * sr)]
    assert abs(_rms(quiet) - 0.05 / np.sqrt(2)) < 0.01
    assert abs(_rms(loud) - 0.5 / np.sqrt(2)) < 0.05
    partly = mix_rms(src, sr, out.copy(), sr, 0.5)
    assert _rms(mixed[:sr]) < _rms(partly[:sr]) < _rms(out[:sr])


def test_long_input_splits_at_quiet_points() -> None:
    sr = 16000
    cfg = PipelineConfig(x_pad=0.1, x_query=0.5, x_center=2.0, x_max=2.5)
    rng = np.random.default_rng(0)
    x = rng.standard_normal(7 * sr).astype(np.float32) * 0.3
    for quiet_at in (2.3, 4.1):
        x[int(quiet_at * sr) : int(quiet_at * sr) + 400] = 0
    cuts = split_points(x, cfg)
    assert len(cuts) == 3
    assert abs(cuts[0] / sr - 2.3) < 0.03 and abs(cuts[1] / sr - 4.1) < 0.03
    assert split_points(x[: 2 * sr], cfg) == []
