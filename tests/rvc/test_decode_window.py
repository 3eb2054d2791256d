"""The decoder runs only on the frames a caller keeps (DecodeWindow): the margin must cover the published decoders'
receptive fields, and the windowed output must equal the same samples of a full decode."""

from __future__ import annotations

import pytest
import torch

from services.rvc_service.engines.synthesizer import DECODER_MARGIN, DecodeWindow, SynthConfig, Synthesizer
from tests.rvc.factories import UPSAMPLE, random_synthesizer


def published_config(sr: int) -> list[object]:
    """The WebUI's v2 configs (real channel counts); only the upsampling differs per rate."""
    ups, kernels = UPSAMPLE[sr]
    return [1025, 32, 192, 192, 768, 2, 6, 3, 0, "1", [3, 7, 11], [[1, 3, 5]] * 3, ups, 512, kernels, 109, 256, sr]


def _reach(out_a: torch.Tensor, out_b: torch.Tensor, at_frame: int, hop: int) -> tuple[float, float]:
    """How many frames before and after `at_frame` the two outputs differ."""
    changed = torch.nonzero((out_a - out_b).abs()[0, 0] > 1e-7)[:, 0]
    return at_frame - changed.min().item() / hop, (changed.max().item() + 1) / hop - at_frame - 1


@pytest.mark.parametrize("sr", sorted(UPSAMPLE))
def test_published_decoders_reach_less_than_the_margin(sr: int) -> None:
    torch.manual_seed(0)
    net = Synthesizer(SynthConfig.from_list(published_config(sr)), 768, True).eval()
    frames, at = 6 * DECODER_MARGIN, 3 * DECODER_MARGIN
    hop = net.hop
    z = torch.randn(1, 192, frames)
    har = 0.1 * torch.randn(1, 1, frames * hop)
    g = torch.randn(1, 256, 1)
    with torch.inference_mode():
        base = net.dec(z, har, g)
        z2 = z.clone()
        z2[:, :, at] += 1.0
        har2 = har.clone()
        har2[:, :, at * hop : (at + 1) * hop] += 1.0
        for changed in (net.dec(z2, har, g), net.dec(z, har2, g)):
            before, after = _reach(base, changed, at, hop)
            assert 0 < before < DECODER_MARGIN and 0 < after < DECODER_MARGIN, (before, after)


@pytest.mark.parametrize(("version", "use_f0", "sr"), [("v2", True, 40000), ("v1", False, 32000), ("v2", True, 48000)])
def test_windowed_synthesis_equals_the_full_decode(version: str, use_f0: bool, sr: int) -> None:
    net = random_synthesizer(version, use_f0, sr, seed=3)
    frames = 120
    gen = torch.Generator().manual_seed(5)
    phone = torch.randn(1, frames, 256 if version == "v1" else 768, generator=gen)
    f0 = torch.linspace(100, 300, frames)[None]
    pitch = torch.clamp((f0 / 4).round().long(), 1, 255)
    args = (phone, torch.tensor([frames]), pitch, f0, torch.tensor([1]))
    full = net.infer(*args, generator=torch.Generator().manual_seed(9))
    hop = net.hop
    for start, length in [(0, 30), (45, 50), (100, 20), (5, 115)]:
        part = net.infer(*args, generator=torch.Generator().manual_seed(9), window=DecodeWindow(start, length))
        assert part.shape[-1] == length * hop
        expected = full[:, :, start * hop : (start + length) * hop]
        assert torch.allclose(part, expected, atol=2e-6), (start, length, (part - expected).abs().max())
