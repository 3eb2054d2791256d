"""The whole RVC pipeline on tiny random-weight checkpoints in the WebUI format."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from services.rvc_service.engines import (
    ContentEncoder,
    ConversionParams,
    InvalidParameters,
    MethodUnavailable,
    ModelLoadError,
    RvcModel,
    VoiceModel,
)
from services.rvc_service.engines.rvc import PipelineConfig
from tests.rvc.factories import harmonic_tone, write_checkpoint, write_index


@pytest.mark.parametrize(
    ("version", "use_f0", "encoder", "sr", "new_naming"),
    [
        ("v2", True, "hf", 40000, False),
        ("v1", True, "fairseq", 48000, False),
        ("v2", False, "fairseq", 32000, True),
        ("v1", False, "hf", 40000, False),
        ("v2", True, "fairseq", 48000, True),
        ("v1", True, "hf", 32000, False),
    ],
)
def test_whole_pipeline(
    tmp_path: Path, version: str, use_f0: bool, encoder: str, sr: int, new_naming: bool, request
) -> None:
    enc: ContentEncoder = request.getfixturevalue(f"{encoder}_encoder")
    ckpt = write_checkpoint(tmp_path / "voice.pth", version, use_f0, sr, new_naming=new_naming)
    model = RvcModel.load(ckpt, "cpu", content_encoder=enc, f0_estimator=request.getfixturevalue("f0_estimator"))
    assert isinstance(model, VoiceModel)
    assert (model.version, model.uses_f0, model.sample_rate, model.speaker_count) == (version, use_f0, sr, 2)
    assert model.memory_bytes > 0
    x = harmonic_tone(180.0, sr=22050, seconds=1.3)
    y, rate = model.convert(x, 22050, ConversionParams(f0_method="pm", speaker_id=1), seed=0)
    assert rate == sr and y.dtype == np.float32
    assert len(y) == round(1.3 * sr)
    assert np.isfinite(y).all() and 1e-4 < np.abs(y).max() <= 1.0
    y2, rate2 = model.convert(x, 22050, ConversionParams(f0_method="pm", speaker_id=1), out_sr=24000, seed=0)
    assert rate2 == 24000 and len(y2) == round(1.3 * 24000)


@pytest.fixture(scope="module")
def alto(model_dir: Path, hf_encoder: ContentEncoder, f0_estimator) -> RvcModel:
    return RvcModel.load(
        model_dir / "alto.pth",
        content_encoder=hf_encoder,
        f0_estimator=f0_estimator,
        index_path=model_dir / "added_IVF17_Flat_nprobe_1_alto_v2.index",
    )


def test_seed_makes_output_reproducible_and_settings_matter(alto: RvcModel) -> None:
    x = harmonic_tone(200.0, seconds=1.0)
    p = ConversionParams(f0_method="dio")
    a, _ = alto.convert(x, 16000, p, seed=3)
    b, _ = alto.convert(x, 16000, p, seed=3)
    np.testing.assert_array_equal(a, b)
    shifted, _ = alto.convert(x, 16000, ConversionParams(f0_method="dio", pitch_shift_semitones=7), seed=3)
    no_index, _ = alto.convert(x, 16000, ConversionParams(f0_method="dio", index_rate=0.0), seed=3)
    spk, _ = alto.convert(x, 16000, ConversionParams(f0_method="dio", speaker_id=1), seed=3)
    for other in (shifted, no_index, spk):
        assert np.abs(other - a).max() > 1e-3


def test_index_changes_features(alto: RvcModel) -> None:
    x = harmonic_tone(200.0, seconds=0.5)
    f_blend, f_orig = alto.features(x, 1.0)
    f_none, _ = alto.features(x, 0.0)
    assert f_blend.shape == f_orig.shape and f_blend.shape[2] == 768
    assert (f_none - f_orig).abs().max() == 0
    assert (f_blend - f_orig).abs().max() > 0.1


def test_long_input_is_split_and_keeps_length(model_dir: Path, hf_encoder: ContentEncoder, f0_estimator) -> None:
    cfg = PipelineConfig(x_pad=0.2, x_query=0.3, x_center=1.0, x_max=1.5)
    m = RvcModel.load(model_dir / "alto.pth", content_encoder=hf_encoder, f0_estimator=f0_estimator, pipeline=cfg)
    x = harmonic_tone(200.0, seconds=3.2)
    y, sr = m.convert(x, 16000, ConversionParams(f0_method="pm"), seed=0)
    assert len(y) == round(3.2 * sr) and np.isfinite(y).all()


def test_convert_block_returns_exactly_the_block(alto: RvcModel) -> None:
    x = harmonic_tone(200.0, seconds=1.0)
    ctx = 8000
    out = alto.convert_block(x, 16000, ConversionParams(f0_method="pm"), context=ctx, seed=0)
    assert len(out) == round((len(x) - ctx) * alto.sample_rate / 16000)
    assert np.isfinite(out).all() and np.abs(out).max() > 1e-4
    out48 = alto.convert_block(x, 16000, ConversionParams(f0_method="pm"), context=ctx, out_sr=48000, seed=0)
    assert len(out48) == 24000


def test_rejections(alto: RvcModel, tmp_path: Path, hf_encoder: ContentEncoder) -> None:
    x = harmonic_tone(seconds=0.3)
    with pytest.raises(InvalidParameters) as err:
        alto.convert(x, 16000, ConversionParams(speaker_id=2))
    assert err.value.violations[0][0] == "speaker_id"
    with pytest.raises(InvalidParameters) as formant:
        alto.convert(x, 16000, ConversionParams(formant_shift_semitones=2.0))
    assert formant.value.violations[0][0] == "formant_shift_semitones"
    with pytest.raises(MethodUnavailable):
        alto.convert(x, 16000, ConversionParams(f0_method="rmvpe"))
    (tmp_path / "junk.pth").write_bytes(b"\x00garbage")
    with pytest.raises(ModelLoadError):
        RvcModel.load(tmp_path / "junk.pth", content_encoder=hf_encoder)
    v2 = write_checkpoint(tmp_path / "a.pth", "v2")
    v1_index = write_index(tmp_path / "a.index", 256)
    with pytest.raises(ModelLoadError):  # a v1 (256-dim) index beside a v2 model
        RvcModel.load(v2, content_encoder=hf_encoder, index_path=v1_index)


def test_silence_and_tiny_inputs(alto: RvcModel) -> None:
    y, sr = alto.convert(np.zeros(100, np.float32), 16000, ConversionParams(f0_method="pm"))
    assert len(y) == round(100 * sr / 16000) and not np.abs(y).any()
    y, _ = alto.convert(np.zeros(16000, np.float32), 16000, ConversionParams(f0_method="harvest"), seed=0)
    assert np.isfinite(y).all()
