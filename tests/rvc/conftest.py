"""Shared tiny model files for the RVC engine tests (built once per session, in the real on-disk formats)."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

import services.rvc_service.engines  # noqa: F401  (import workaround runs before transformers)

warnings.filterwarnings("ignore", message="pkg_resources is deprecated")


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.rvc.factories import write_checkpoint, write_fairseq_hubert, write_hf_hubert, write_index

    d = tmp_path_factory.mktemp("rvc_models")
    write_hf_hubert(d / "hubert")
    write_fairseq_hubert(d / "hubert_base.pt")
    write_checkpoint(d / "alto.pth", "v2", True, 40000)
    write_index(d / "added_IVF17_Flat_nprobe_1_alto_v2.index", 768)
    write_checkpoint(d / "tenor.pth", "v1", True, 48000, seed=1)
    write_index(d / "tenor.index", 256, seed=1)
    return d


@pytest.fixture(scope="session")
def hf_encoder(model_dir: Path):
    from services.rvc_service.engines import ContentEncoder

    return ContentEncoder.load(model_dir / "hubert")


@pytest.fixture(scope="session")
def fairseq_encoder(model_dir: Path):
    from services.rvc_service.engines import ContentEncoder

    return ContentEncoder.load(model_dir / "hubert_base.pt")


@pytest.fixture(scope="session")
def f0_estimator():
    from services.rvc_service.engines import F0Estimator

    return F0Estimator("cpu")
