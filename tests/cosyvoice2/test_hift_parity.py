"""Parity of voice_triton.cosyvoice2.hift with upstream CosyVoice's HiFT, as bundled by cosyvoice2-eu 0.2.8 (test-only,
see tests/cosyvoice2/reference.py). Same state dict loaded strictly into both, same mel, same seed -> same source and
audio, for a whole decode and for a streaming chunk carrying the previous chunk's source."""

from __future__ import annotations

import pytest
import torch

from tests.cosyvoice2.reference import reference_hift
from voice_triton.cosyvoice2.hift import ConvRNNF0Predictor, HiFTGenerator, hift_state_dict

SAMPLES_PER_FRAME = 480  # 24 kHz audio, 50 Hz mel frames: 8 * 5 * 3 upsampling, ISTFT hop 4

# Published rates, kernels and dilations (so 480 samples per frame hold), narrow channels: 32 -> 16 -> 8 -> 4.
TINY = {"in_channels": 80, "base_channels": 32, "nb_harmonics": 8, "sampling_rate": 24000}
PUBLISHED = {
    "in_channels": 80,
    "base_channels": 512,
    "nb_harmonics": 8,
    "sampling_rate": 24000,
    "nsf_alpha": 0.1,
    "nsf_sigma": 0.003,
    "nsf_voiced_threshold": 10,
    "upsample_rates": [8, 5, 3],
    "upsample_kernel_sizes": [16, 11, 7],
    "istft_params": {"n_fft": 16, "hop_len": 4},
    "resblock_kernel_sizes": [3, 7, 11],
    "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5], [1, 3, 5]],
    "source_resblock_kernel_sizes": [7, 7, 11],
    "source_resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5], [1, 3, 5]],
    "lrelu_slope": 0.1,
    "audio_limit": 0.99,
}


def _ours(cfg: dict) -> HiFTGenerator:
    full = {**PUBLISHED, **cfg}
    with torch.random.fork_rng(devices=[]):  # the initial weights (which the test weights perturb) independent of order
        torch.manual_seed(0)
        f0_predictor = ConvRNNF0Predictor(1, full["in_channels"], full["base_channels"])
        return HiFTGenerator(**full, f0_predictor=f0_predictor).eval()


def _reference(cfg: dict) -> torch.nn.Module:
    """Upstream's HiFTGenerator for the same config; skips the test when the reference is not installed."""
    upstream = reference_hift()
    full = {**PUBLISHED, **cfg}
    f0_predictor = upstream.ConvRNNF0Predictor(1, full["in_channels"], full["base_channels"])
    return upstream.HiFTGenerator(**full, f0_predictor=f0_predictor).eval()


def _trained_like_weights(model: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """Random weights with a realistic F0 (voiced and unvoiced frames) and non-trivial Snake alphas."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for name, value in model.state_dict().items():
        noise = torch.randn(value.shape, generator=gen)
        if name.endswith("alpha"):
            value = 0.5 + torch.rand(value.shape, generator=gen)
        elif name == "f0_predictor.classifier.bias":
            value = torch.full_like(value, 40.0)
        elif name == "f0_predictor.classifier.weight":
            value = noise * 150.0 / value.shape[1] ** 0.5
        else:
            value = value + 0.1 * noise
        state[name] = value
    return state


@pytest.fixture(scope="module")
def ours() -> HiFTGenerator:
    model = _ours(TINY)
    model.load_state_dict(_trained_like_weights(model, seed=3), strict=True)
    return model


@pytest.fixture(scope="module")
def ref(ours: HiFTGenerator) -> torch.nn.Module:
    model = _reference(TINY)
    model.load_state_dict(ours.state_dict(), strict=True)
    return model


def _mel(frames: int, batch: int = 1, seed: int = 11) -> torch.Tensor:
    return torch.randn(batch, 80, frames, generator=torch.Generator().manual_seed(seed))


def test_state_dict_keys_and_shapes_match_published_structure() -> None:
    ref, ours = _reference({}), _ours({})  # the published CosyVoice2 config: what hift.pt must load into
    ref_shapes = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    our_shapes = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert our_shapes == ref_shapes
    assert "conv_pre.parametrizations.weight.original0" in our_shapes  # torch's weight-norm parametrization
    ref.load_state_dict(ours.state_dict(), strict=True)
    ours.load_state_dict(ref.state_dict(), strict=True)


def test_legacy_weight_norm_keys_and_generator_prefix_load() -> None:
    ours = _ours(TINY)
    weights = _trained_like_weights(ours, seed=4)
    ours.load_state_dict(weights, strict=True)
    # As saved with torch.nn.utils.weight_norm (weight_g = g, weight_v = v), under upstream's `generator.` prefix.
    old_names = {"parametrizations.weight.original0": "weight_g", "parametrizations.weight.original1": "weight_v"}
    legacy = {}
    for key, value in weights.items():
        for new, old in old_names.items():
            key = key.replace(new, old)
        legacy["generator." + key] = value
    other = _ours(TINY)
    other.load_state_dict(hift_state_dict(legacy), strict=True)
    mel = _mel(6)
    torch.testing.assert_close(
        other.inference(mel, generator=torch.Generator().manual_seed(1))[0],
        ours.inference(mel, generator=torch.Generator().manual_seed(1))[0],
        atol=0,
        rtol=0,
    )


@pytest.mark.parametrize(("frames", "batch"), [(1, 1), (7, 1), (23, 2)])
def test_audio_matches_reference(ref: torch.nn.Module, ours: HiFTGenerator, frames: int, batch: int) -> None:
    mel = _mel(frames, batch)
    torch.manual_seed(1234)
    expected, expected_source = ref.inference(speech_feat=mel)
    torch.manual_seed(1234)
    got, got_source = ours.inference(mel)  # global RNG, drawn as upstream draws it
    seeded, _ = ours.inference(mel, generator=torch.Generator().manual_seed(1234))  # a private generator
    assert got.shape == expected.shape == (batch, frames * SAMPLES_PER_FRAME)
    assert got_source.shape == (batch, 1, frames * SAMPLES_PER_FRAME)
    assert float(expected.abs().max()) > 1e-2
    torch.testing.assert_close(got_source, expected_source, atol=1e-5, rtol=0)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
    torch.testing.assert_close(seeded, got, atol=0, rtol=0)


@pytest.mark.parametrize(("frames", "batch"), [(1, 1), (8, 1), (25, 2)])
def test_audio_is_480_samples_per_mel_frame(ours: HiFTGenerator, frames: int, batch: int) -> None:
    audio, source = ours.inference(_mel(frames, batch), generator=torch.Generator().manual_seed(0))
    assert ours.upsample_scale == SAMPLES_PER_FRAME
    assert audio.shape == (batch, frames * SAMPLES_PER_FRAME)
    assert source.shape == (batch, 1, frames * SAMPLES_PER_FRAME)
    assert bool(torch.isfinite(audio).all()) and float(audio.abs().max()) <= 0.99


def test_f0_has_voiced_and_unvoiced_frames(ours: HiFTGenerator) -> None:
    f0 = ours.f0_predictor(_mel(23, 2))
    voiced = f0 > 10
    assert bool(voiced.any()) and bool((~voiced).any())


def test_seed_decides_the_noise(ours: HiFTGenerator) -> None:
    mel = _mel(9)
    first = ours.inference(mel, generator=torch.Generator().manual_seed(5))[0]
    again = ours.inference(mel, generator=torch.Generator().manual_seed(5))[0]
    other = ours.inference(mel, generator=torch.Generator().manual_seed(6))[0]
    torch.testing.assert_close(first, again, atol=0, rtol=0)
    assert float((first - other).abs().max()) > 1e-4


def test_source_cache_chunk_matches_reference(ref: torch.nn.Module, ours: HiFTGenerator) -> None:
    """Upstream's streaming join: the next chunk is fed the last 8 mel frames again and the last 3840 source samples."""
    mel = _mel(30, seed=21)
    cache_frames, cache_samples = 8, 8 * SAMPLES_PER_FRAME
    first, second = mel[:, :, :14], mel[:, :, 14 - cache_frames :]

    torch.manual_seed(99)
    _, ref_source = ref.inference(speech_feat=first)
    ref_cache = ref_source[:, :, -cache_samples:]
    expected, expected_source = ref.inference(speech_feat=second, cache_source=ref_cache)

    torch.manual_seed(99)
    _, our_source = ours.inference(first)
    cache = our_source[:, :, -cache_samples:]
    got, got_source = ours.inference(second, cache_source=cache)

    assert got.shape == expected.shape == (1, second.shape[2] * SAMPLES_PER_FRAME)
    torch.testing.assert_close(got_source[:, :, :cache_samples], cache, atol=0, rtol=0)
    torch.testing.assert_close(got_source, expected_source, atol=1e-5, rtol=0)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
    # The cache is what makes the difference: the same chunk and seed without it gives other audio.
    torch.manual_seed(99)
    ours.inference(first)
    uncached, _ = ours.inference(second)
    assert float((uncached - got).abs().max()) > 1e-4


def test_cache_longer_than_chunk_is_refused(ours: HiFTGenerator) -> None:
    with pytest.raises(ValueError, match="cache_source"):
        ours.inference(_mel(2), cache_source=torch.zeros(1, 1, 3 * SAMPLES_PER_FRAME))
