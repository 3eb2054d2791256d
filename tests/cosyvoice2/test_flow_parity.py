"""Parity of our CosyVoice2 flow (voice_triton.cosyvoice2.flow) with the upstream CosyVoice/Matcha code bundled in
cosyvoice2-eu 0.2.8 (test-only, `pip install --no-deps -r requirements-parity.txt`, imported through
tests/cosyvoice2/reference.py). A tiny configuration of the published architecture is built in both, one state dict
is loaded into both strictly, and the same inputs must give the same mels."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from tests.cosyvoice2.reference import reference_flow
from voice_triton.cosyvoice2.flow import (
    _PUBLISHED_ENCODER_CHOICES,
    PUBLISHED_FLOW,
    CausalMaskedDiffWithXvec,
    build_flow,
)
from voice_triton.cosyvoice2.flow_decoder import CausalConditionalDecoder

TOL = 1e-4

# Published architecture, tiny widths. The upstream encoder hard-codes 512 channels in its lookahead and upsampling
# layers, so the encoder keeps 512 and shrinks heads, feed forward and depth instead.
TINY: dict[str, Any] = {
    **PUBLISHED_FLOW,
    "encoder": {**PUBLISHED_FLOW["encoder"], "attention_heads": 2, "linear_units": 64, "num_blocks": 1},
    "decoder": {
        **PUBLISHED_FLOW["decoder"],
        "estimator": {
            **PUBLISHED_FLOW["decoder"]["estimator"],
            "channels": [64],
            "attention_head_dim": 16,
            "n_blocks": 1,
            "num_mid_blocks": 1,
            "num_heads": 2,
        },
    },
}


def _reference_estimator(cfg: dict[str, Any]) -> torch.nn.Module:
    return reference_flow().CausalConditionalDecoder(**cfg)


def _reference_flow(cfg: dict[str, Any]) -> torch.nn.Module:
    ref = reference_flow()
    from omegaconf import DictConfig

    enc_cfg = {**cfg["encoder"], **_PUBLISHED_ENCODER_CHOICES}
    encoder = ref.UpsampleConformerEncoder(**enc_cfg)
    dec = cfg["decoder"]
    cfm_params = DictConfig({**dec["cfm_params"], "solver": "euler", "training_cfg_rate": 0.2, "reg_loss_type": "l1"})
    decoder = ref.CausalConditionalCFM(
        in_channels=dec["in_channels"],
        cfm_params=cfm_params,
        n_spks=dec["n_spks"],
        spk_emb_dim=dec["spk_emb_dim"],
        estimator=_reference_estimator(dec["estimator"]),
    )
    top = {k: v for k, v in cfg.items() if k not in ("encoder", "decoder")}
    flow = ref.CausalMaskedDiffWithXvec(
        **top, output_type="mel", input_frame_rate=25, only_mask_loss=True, encoder=encoder, decoder=decoder
    )
    return flow.eval()


def _perturbed(state: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """Every float parameter moved off its initial value (LayerNorm gains, attention position biases included)."""
    gen = torch.Generator().manual_seed(seed)
    return {k: v + 0.05 * torch.randn(v.shape, generator=gen) if v.is_floating_point() else v for k, v in state.items()}


def _load_both(ours: torch.nn.Module, ref: torch.nn.Module, seed: int = 3) -> None:
    ref_state = ref.state_dict()
    assert sorted(ours.state_dict()) == sorted(ref_state)
    for key, value in ours.state_dict().items():
        assert value.shape == ref_state[key].shape, key
    state = _perturbed(ref_state, seed)
    ref.load_state_dict(state, strict=True)
    ours.load_state_dict(state, strict=True)


@pytest.fixture(scope="module")
def flows() -> tuple[CausalMaskedDiffWithXvec, torch.nn.Module]:
    torch.manual_seed(0)  # the random initial weights (then perturbed) do not depend on test order
    ref = _reference_flow(TINY)
    ours = build_flow(TINY).eval()
    _load_both(ours, ref)
    return ours, ref


def _inputs(n_prompt: int, n_tokens: int, seed: int = 11) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {
        "token": torch.randint(0, 6561, (1, n_tokens), generator=gen),
        "prompt_token": torch.randint(0, 6561, (1, n_prompt), generator=gen),
        "prompt_feat": torch.randn(1, 2 * n_prompt, 80, generator=gen),
        "embedding": torch.randn(1, 192, generator=gen),
    }


def _ref_inference(ref: torch.nn.Module, x: dict[str, torch.Tensor], streaming: bool, finalize: bool) -> torch.Tensor:
    mel, _ = ref.inference(
        token=x["token"],
        token_len=torch.tensor([x["token"].size(1)]),
        prompt_token=x["prompt_token"],
        prompt_token_len=torch.tensor([x["prompt_token"].size(1)]),
        prompt_feat=x["prompt_feat"],
        prompt_feat_len=torch.tensor([x["prompt_feat"].size(1)]),
        embedding=x["embedding"],
        streaming=streaming,
        finalize=finalize,
    )
    return mel


def test_noise_buffer_matches_reference(flows: tuple[CausalMaskedDiffWithXvec, torch.nn.Module]) -> None:
    ours, ref = flows
    assert torch.equal(ours.decoder.rand_noise, ref.decoder.rand_noise)


@pytest.mark.parametrize(
    ("n_prompt", "n_tokens", "streaming", "finalize"),
    [(6, 9, False, True), (10, 32, True, True), (10, 32, True, False), (0, 12, False, False)],
)
def test_flow_matches_reference(
    flows: tuple[CausalMaskedDiffWithXvec, torch.nn.Module],
    n_prompt: int,
    n_tokens: int,
    streaming: bool,
    finalize: bool,
) -> None:
    ours, ref = flows
    x = _inputs(n_prompt, n_tokens)
    expected = _ref_inference(ref, x, streaming, finalize)
    got = ours.inference(**x, n_timesteps=10, finalize=finalize, streaming=streaming)
    new_tokens = n_tokens if finalize else n_tokens - 3
    assert got.shape == expected.shape == (1, 80, 2 * new_tokens)
    diff = (got - expected).abs().max().item()
    print(f"flow prompt={n_prompt} tokens={n_tokens} streaming={streaming} finalize={finalize} max|diff|={diff:.3g}")
    assert diff < TOL


@pytest.mark.parametrize("channels", [[64], [32, 48]])
@pytest.mark.parametrize("streaming", [False, True])
def test_estimator_matches_reference(channels: list[int], streaming: bool) -> None:
    """The estimator alone, also with a two-level U-Net (strided down/transposed up convs)."""
    cfg = {**TINY["decoder"]["estimator"], "channels": channels, "static_chunk_size": 8}
    ref = _reference_estimator(cfg).eval()
    ours = CausalConditionalDecoder(**cfg).eval()
    _load_both(ours, ref, seed=5)
    gen = torch.Generator().manual_seed(2)
    frames = 20
    x, mu, cond = (torch.randn(2, 80, frames, generator=gen) for _ in range(3))
    mask = torch.ones(2, 1, frames)
    mask[1, :, 15:] = 0  # a padded second sequence
    t = torch.rand(2, generator=gen)
    spks = torch.randn(2, 80, generator=gen)
    with torch.inference_mode():
        expected = ref(x, mask, mu, t, spks, cond, streaming=streaming)
        got = ours(x, mask, mu, t, spks, cond, streaming=streaming)
    diff = (got - expected).abs().max().item()
    print(f"estimator channels={channels} streaming={streaming} max|diff|={diff:.3g}")
    assert diff < TOL


def test_deterministic_shapes_and_noise_override() -> None:
    """Ours alone (no reference needed): same inputs -> same mels; 2 frames per new token; noise override works."""
    torch.manual_seed(0)
    ours = build_flow(TINY).eval()
    x = _inputs(4, 7, seed=1)
    first = ours.inference(**x)
    assert torch.equal(first, ours.inference(**x))
    assert first.shape == (1, 80, 14)
    assert ours.inference(**x, finalize=False).shape == (1, 80, 8)  # the last 3 tokens are lookahead only
    other = ours.inference(**x, noise=torch.randn(1, 80, 2 * (4 + 7), generator=torch.Generator().manual_seed(9)))
    assert other.shape == first.shape
    assert not torch.allclose(other, first)


def test_build_flow_refuses_other_architectures() -> None:
    with pytest.raises(ValueError, match="use_cnn_module"):
        build_flow({**TINY, "encoder": {**TINY["encoder"], "use_cnn_module": True}})
    with pytest.raises(ValueError, match="euler"):
        build_flow({**TINY, "decoder": {**TINY["decoder"], "cfm_params": {"solver": "midpoint"}}})


def test_streaming_masks_take_effect(flows: tuple[CausalMaskedDiffWithXvec, torch.nn.Module]) -> None:
    """Past one encoder chunk (25 tokens) streaming attention differs from full attention: the parity cases above
    exercise the chunk masks, not a no-op."""
    ours, _ = flows
    x = _inputs(10, 32)
    assert not torch.allclose(ours.inference(**x, streaming=True), ours.inference(**x, streaming=False))


def test_published_architecture_matches_reference() -> None:
    """The published configuration gives the reference's parameter names and shapes (those of the published flow.pt,
    which upstream loads strictly), and the state dict round-trips strictly."""
    ours = build_flow()
    ref = _reference_flow(PUBLISHED_FLOW)
    ref_shapes = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    del ref
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == ref_shapes
    assert ref_shapes["input_embedding.weight"] == (6561, 512)
    assert ref_shapes["decoder.estimator.time_mlp.linear_1.weight"] == (1024, 320)
    print(f"published flow: {len(ref_shapes)} tensors, {sum(p.numel() for p in ours.parameters())} parameters")
