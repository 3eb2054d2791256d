from __future__ import annotations

import numpy as np
import pytest

from services.rvc_service.engines import F0Estimator, MethodUnavailable, coarse_f0, shift_f0
from tests.rvc.factories import harmonic_tone


def _median_voiced(f0: np.ndarray) -> float:
    core = f0[10:-10]
    voiced = core[core > 0]
    assert len(voiced) > 0.8 * len(core), "tone should be voiced almost everywhere"
    return float(np.median(voiced))


@pytest.mark.parametrize("method", ["pm", "harvest", "dio", "crepe-tiny", "crepe", "fcpe"])
def test_recovers_tone_f0(method: str, f0_estimator: F0Estimator) -> None:
    x = harmonic_tone(220.0, seconds=0.6 if method == "crepe" else 1.0)  # full CREPE is slow on CPU
    f0 = f0_estimator.estimate(x, method)
    assert f0.shape == (len(x) // 160,)
    assert abs(_median_voiced(f0) - 220.0) / 220.0 < 0.02


def test_other_pitch_is_not_a_fluke(f0_estimator: F0Estimator) -> None:
    f0 = f0_estimator.estimate(harmonic_tone(330.0), "harvest")
    assert abs(_median_voiced(f0) - 330.0) / 330.0 < 0.02


def test_octave_shift_doubles_f0() -> None:
    f0 = np.array([0.0, 110.0, 220.0], np.float32)
    np.testing.assert_allclose(shift_f0(f0, 12), [0.0, 220.0, 440.0], rtol=1e-6)
    np.testing.assert_allclose(shift_f0(f0, -12), [0.0, 55.0, 110.0], rtol=1e-6)


def test_coarse_quantisation_bounds() -> None:
    c = coarse_f0(np.array([0.0, 50.0, 1100.0, 5000.0, 220.0]))
    assert c[0] == 1 and c[1] == 1 and c[2] == 255 and c[3] == 255
    assert 1 < c[4] < 255


def test_rmvpe_without_weights_is_unavailable(f0_estimator: F0Estimator) -> None:
    assert "rmvpe" not in f0_estimator.available
    assert f0_estimator.default_method() == "pm"
    with pytest.raises(MethodUnavailable):
        f0_estimator.estimate(harmonic_tone(), "rmvpe")


def test_rmvpe_loads_real_format_state_dict(tmp_path) -> None:
    import torch

    from services.rvc_service.engines.rmvpe import E2E

    torch.manual_seed(0)
    torch.save(E2E().state_dict(), tmp_path / "rmvpe.pt")  # rmvpe.pt is a bare state dict of E2E(4, 1, (2, 2))
    est = F0Estimator("cpu", tmp_path / "rmvpe.pt")
    assert est.default_method() == "rmvpe"
    f0 = est.estimate(harmonic_tone(seconds=0.5), "rmvpe")
    assert f0.shape == (50,) and np.isfinite(f0).all() and (f0 >= 0).all()


def test_corrupt_rmvpe_is_unavailable(tmp_path) -> None:
    (tmp_path / "rmvpe.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(MethodUnavailable):
        F0Estimator("cpu", tmp_path / "rmvpe.pt").estimate(harmonic_tone(), "rmvpe")
