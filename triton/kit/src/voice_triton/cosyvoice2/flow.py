"""CosyVoice2 flow model: speech tokens -> 80-bin mel frames (the published `flow.pt`, `CausalMaskedDiffWithXvec`).

Top-level parameter names: `input_embedding` (6561 speech tokens -> 512), `spk_embed_affine_layer` (192-dim CAM++
x-vector -> 80), `encoder.*` (see flow_encoder), `encoder_proj` (512 -> 80), `decoder.estimator.*` (see flow_decoder).
Each token gives `token_mel_ratio` (2) mel frames: tokens are 25 Hz, mels 50 Hz (24 kHz, hop 480).
`build_flow` takes the `flow` section of the published `cosyvoice2.yaml` as plain dicts, so a published `flow.pt`
loads with `load_state_dict(..., strict=True)`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from voice_triton.cosyvoice2.flow_decoder import CausalConditionalCFM, CausalConditionalDecoder
from voice_triton.cosyvoice2.flow_encoder import UpsampleConformerEncoder


class CausalMaskedDiffWithXvec(nn.Module):
    """Token embedding -> upsampling conformer encoder -> projection -> conditional flow matching decoder."""

    def __init__(
        self,
        encoder: UpsampleConformerEncoder,
        decoder: CausalConditionalCFM,
        input_size: int = 512,
        output_size: int = 80,
        spk_embed_dim: int = 192,
        vocab_size: int = 6561,
        token_mel_ratio: int = 2,
        pre_lookahead_len: int = 3,
    ) -> None:
        super().__init__()
        self.output_size = output_size
        self.vocab_size = vocab_size
        self.token_mel_ratio = token_mel_ratio
        self.pre_lookahead_len = pre_lookahead_len
        self.input_embedding = nn.Embedding(vocab_size, input_size)
        self.spk_embed_affine_layer = nn.Linear(spk_embed_dim, output_size)
        self.encoder = encoder
        self.encoder_proj = nn.Linear(encoder.output_size(), output_size)
        self.decoder = decoder

    @torch.inference_mode()
    def inference(
        self,
        token: torch.Tensor,
        prompt_token: torch.Tensor,
        prompt_feat: torch.Tensor,
        embedding: torch.Tensor,
        n_timesteps: int = 10,
        finalize: bool = True,
        streaming: bool = False,
        noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Mel frames for `token` in the voice of the prompt.

        token (1, N) and prompt_token (1, P) speech token ids; prompt_feat (1, 2P, 80) the prompt's mel frames;
        embedding (1, 192) the speaker x-vector. Returns (1, 80, 2N) when `finalize`; otherwise the last
        `pre_lookahead_len` tokens only serve as lookahead context and (1, 80, 2(N - pre_lookahead_len)) come back.
        `streaming` limits attention to the trained static chunks (as the published streaming path does).
        `noise` (1, 80, frames) overrides the fixed noise buffer.
        """
        if token.size(0) != 1:
            raise ValueError("flow inference takes one sequence at a time")
        spks = self.spk_embed_affine_layer(F.normalize(embedding, dim=1))
        ids = torch.cat([prompt_token, token], dim=1).clamp(min=0).long()
        xs = self.input_embedding(ids)
        if finalize:
            h = self.encoder(xs, streaming=streaming)
        else:
            # An unfinished stream: the newest tokens are only lookahead; they are decoded with the next chunk.
            h = self.encoder(xs[:, : -self.pre_lookahead_len], xs[:, -self.pre_lookahead_len :], streaming=streaming)
        prompt_frames = prompt_feat.size(1)
        mu = self.encoder_proj(h).transpose(1, 2)
        cond = torch.zeros_like(mu)
        cond[:, :, :prompt_frames] = prompt_feat.transpose(1, 2).to(mu.dtype)  # the prompt's mels anchor the voice
        mask = torch.ones(1, 1, mu.size(2), dtype=mu.dtype, device=mu.device)
        mel = self.decoder(mu, mask, n_timesteps, spks, cond, streaming=streaming, noise=noise)
        return mel[:, :, prompt_frames:]


#: The `flow` section of the published cosyvoice2.yaml (FunAudioLLM/CosyVoice2-0.5B), as constructor arguments.
PUBLISHED_FLOW: dict[str, Any] = {
    "input_size": 512,
    "output_size": 80,
    "spk_embed_dim": 192,
    "vocab_size": 6561,
    "token_mel_ratio": 2,
    "pre_lookahead_len": 3,
    "encoder": {
        "input_size": 512,
        "output_size": 512,
        "attention_heads": 8,
        "linear_units": 2048,
        "num_blocks": 6,
        "dropout_rate": 0.1,
        "positional_dropout_rate": 0.1,
        "attention_dropout_rate": 0.1,
        "static_chunk_size": 25,
    },
    "decoder": {
        "in_channels": 240,
        "n_spks": 1,
        "spk_emb_dim": 80,
        "cfm_params": {"sigma_min": 1e-06, "t_scheduler": "cosine", "inference_cfg_rate": 0.7},
        "estimator": {
            "in_channels": 320,
            "out_channels": 80,
            "channels": [256],
            "dropout": 0.0,
            "attention_head_dim": 64,
            "n_blocks": 4,
            "num_mid_blocks": 12,
            "num_heads": 8,
            "act_fn": "gelu",
            "static_chunk_size": 50,
            "num_decoding_left_chunks": -1,
        },
    },
}

# Keys of the published yaml that describe training or fixed choices; accepted and ignored.
_IGNORED_FLOW = {"output_type", "input_frame_rate", "only_mask_loss", "encoder_conf", "decoder_conf", "mel_feat_conf"}
# Encoder options whose other values would select architectures we do not build.
_PUBLISHED_ENCODER_CHOICES: dict[str, Any] = {
    "normalize_before": True,
    "input_layer": "linear",
    "pos_enc_layer_type": "rel_pos_espnet",
    "selfattention_layer_type": "rel_selfattn",
    "use_cnn_module": False,
    "macaron_style": False,
}
_IGNORED_CFM = {"solver", "training_cfg_rate", "reg_loss_type"}


def build_flow(config: Mapping[str, Any] = PUBLISHED_FLOW) -> CausalMaskedDiffWithXvec:
    """Build the flow model from the yaml's `flow` arguments (encoder/decoder/estimator as nested dicts).

    Only the published architecture is implemented; options that would select another one are refused.
    """
    cfg = {k: v for k, v in config.items() if k not in _IGNORED_FLOW}
    enc_cfg = dict(cfg.pop("encoder"))
    for key, value in _PUBLISHED_ENCODER_CHOICES.items():
        got = enc_cfg.pop(key, value)
        if got != value:
            raise ValueError(f"flow encoder {key}={got!r} is not the published architecture (only {value!r} is built)")
    dec_cfg = dict(cfg.pop("decoder"))
    cfm_params = {k: v for k, v in dict(dec_cfg.pop("cfm_params", {})).items() if k not in _IGNORED_CFM}
    if dict(config["decoder"].get("cfm_params", {})).get("solver", "euler") != "euler":
        raise ValueError("only the euler solver is implemented")
    estimator = CausalConditionalDecoder(**dict(dec_cfg.pop("estimator")))
    encoder = UpsampleConformerEncoder(pre_lookahead_len=cfg.get("pre_lookahead_len", 3), **enc_cfg)
    decoder = CausalConditionalCFM(estimator=estimator, n_feats=cfg.get("output_size", 80), **dec_cfg, **cfm_params)
    return CausalMaskedDiffWithXvec(encoder=encoder, decoder=decoder, **cfg)
