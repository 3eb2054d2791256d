"""CosyVoice2 flow decoder: `CausalConditionalCFM` with a `CausalConditionalDecoder` estimator (`flow.decoder`).

The estimator is Matcha-TTS's 1-D U-Net made causal. Parameter names as in the published `flow.pt` (prefix
`decoder.estimator.`): `time_mlp.linear_{1,2}`; `down_blocks.N.{0,1.M,2}`, `mid_blocks.N.{0,1.M}`,
`up_blocks.N.{0,1.M,2}` where `.0` is a causal resnet block (`block1.block.0` conv, `block1.block.2` LayerNorm,
`block2...`, `mlp.1`, `res_conv`), `.1.M` a transformer block (`norm1`, `attn1.to_{q,k,v}`, `attn1.to_out.0`,
`norm3`, `ff.net.0.proj`, `ff.net.2`) and `.2` the down/upsampling conv; `final_block.block.{0,2}`, `final_proj`.
The CFM solves the flow ODE with Euler steps on a cosine time schedule and classifier-free guidance, starting from a
fixed noise buffer (`rand_noise`, seed 0) so that chunks of a stream and a whole decode start from the same noise.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from voice_triton.cosyvoice2.flow_encoder import chunk_mask

#: Length of the fixed noise buffer in mel frames (300 s at 50 Hz), as published.
NOISE_FRAMES = 50 * 300


class CausalConv1d(nn.Conv1d):
    """Conv1d padded on the left only, so no output frame sees the future."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int) -> None:
        super().__init__(in_channels, out_channels, kernel_size)
        self.causal_padding = kernel_size - 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, (self.causal_padding, 0)))


class _ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over channels of a (B, C, T) tensor; parameter-free slots keep the published Sequential indices."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.transpose(1, 2)).transpose(1, 2)


class CausalBlock1D(nn.Module):
    """Causal conv (k=3) -> LayerNorm over channels -> Mish, masked in and out."""

    def __init__(self, dim: int, dim_out: int) -> None:
        super().__init__()
        # Indices 0 and 2 carry parameters in the published layout (1 and 3 were transposes).
        self.block = nn.Sequential(
            CausalConv1d(dim, dim_out, 3), nn.Identity(), _ChannelLayerNorm(dim_out), nn.Identity(), nn.Mish()
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.block(x * mask) * mask


class CausalResnetBlock1D(nn.Module):
    """Two causal blocks with the time embedding added between them, plus a 1x1 residual conv."""

    def __init__(self, dim: int, dim_out: int, time_emb_dim: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Mish(), nn.Linear(time_emb_dim, dim_out))
        self.block1 = CausalBlock1D(dim, dim_out)
        self.block2 = CausalBlock1D(dim_out, dim_out)
        self.res_conv = nn.Conv1d(dim, dim_out, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, time_emb: torch.Tensor) -> torch.Tensor:
        h = self.block1(x, mask) + self.mlp(time_emb).unsqueeze(-1)
        return self.block2(h, mask) + self.res_conv(x * mask)


class SelfAttention(nn.Module):
    """diffusers-style attention (`to_q/to_k/to_v` without bias, `to_out.0`), additive float mask."""

    def __init__(self, dim: int, heads: int, dim_head: int, dropout: float) -> None:
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_k = nn.Linear(dim, inner, bias=False)
        self.to_v = nn.Linear(dim, inner, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(inner, dim), nn.Dropout(dropout)])

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """x (B, T, dim); bias (B, T, T) added to the scores of every head."""
        b, t, _ = x.shape

        def heads(y: torch.Tensor) -> torch.Tensor:
            return y.view(b, t, self.heads, -1).transpose(1, 2)

        out = F.scaled_dot_product_attention(
            heads(self.to_q(x)), heads(self.to_k(x)), heads(self.to_v(x)), attn_mask=bias.unsqueeze(1)
        )
        return self.to_out[1](self.to_out[0](out.transpose(1, 2).reshape(b, t, -1)))


class GeluProj(nn.Module):
    """Linear then exact GELU (`ff.net.0.proj`)."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.proj(x))


class GeluFeedForward(nn.Module):
    """`ff.net.{0.proj,2}`: Linear -> GELU -> dropout -> Linear, 4x wide."""

    def __init__(self, dim: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(GeluProj(dim, dim * 4), nn.Dropout(dropout), nn.Linear(dim * 4, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class TransformerBlock(nn.Module):
    """Pre-norm self attention + GELU feed forward (Matcha's BasicTransformerBlock with `act_fn: gelu`)."""

    def __init__(self, dim: int, num_heads: int, head_dim: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = SelfAttention(dim, num_heads, head_dim, dropout)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = GeluFeedForward(dim, dropout)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        x = x + self.attn1(self.norm1(x), bias)
        return x + self.ff(self.norm3(x))


class TimestepEmbedding(nn.Module):
    """Sinusoidal embedding of t (scale 1000) -> Linear -> SiLU -> Linear."""

    def __init__(self, in_channels: int, time_embed_dim: int) -> None:
        super().__init__()
        if in_channels % 2:
            raise ValueError("the time embedding needs an even width")
        self.in_channels = in_channels
        self.linear_1 = nn.Linear(in_channels, time_embed_dim)
        self.linear_2 = nn.Linear(time_embed_dim, time_embed_dim)

    def sinusoid(self, t: torch.Tensor) -> torch.Tensor:
        half = self.in_channels // 2
        freqs = torch.exp(torch.arange(half, device=t.device).float() * -(math.log(10000) / (half - 1)))
        arg = 1000 * t.unsqueeze(1) * freqs.unsqueeze(0)
        return torch.cat((arg.sin(), arg.cos()), dim=-1).to(t.dtype)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(self.sinusoid(t))))


class CausalConditionalDecoder(nn.Module):
    """The flow estimator: predicts the velocity from (x, mu, speaker, prompt condition) at time t.

    Input channels are x (80) + mu (80) + speaker (80) + cond (80) = `in_channels` (320 published).
    With `streaming`, attention is limited to `static_chunk_size`-frame chunks (left context unlimited).
    """

    def __init__(
        self,
        in_channels: int = 320,
        out_channels: int = 80,
        channels: tuple[int, ...] | list[int] = (256,),
        dropout: float = 0.0,
        attention_head_dim: int = 64,
        n_blocks: int = 4,
        num_mid_blocks: int = 12,
        num_heads: int = 8,
        act_fn: str = "gelu",
        static_chunk_size: int = 50,
        num_decoding_left_chunks: int = -1,
    ) -> None:
        super().__init__()
        if act_fn != "gelu":
            raise ValueError(f"only the published act_fn 'gelu' is implemented, got {act_fn!r}")
        del num_decoding_left_chunks  # upstream's chunk mask ignores it too: left context is always unlimited
        channels = tuple(channels)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.static_chunk_size = static_chunk_size
        time_dim = channels[0] * 4
        self.time_mlp = TimestepEmbedding(in_channels, time_dim)

        def transformers(dim: int) -> nn.ModuleList:
            return nn.ModuleList(TransformerBlock(dim, num_heads, attention_head_dim, dropout) for _ in range(n_blocks))

        self.down_blocks = nn.ModuleList()
        out_ch = in_channels
        for i, ch in enumerate(channels):
            in_ch, out_ch = out_ch, ch
            last = i == len(channels) - 1
            # The last level keeps its length; others halve it with a strided conv (published name `N.2.conv`).
            down: nn.Module = CausalConv1d(out_ch, out_ch, 3) if last else _Wrapped(nn.Conv1d(out_ch, out_ch, 3, 2, 1))
            self.down_blocks.append(
                nn.ModuleList([CausalResnetBlock1D(in_ch, out_ch, time_dim), transformers(out_ch), down])
            )
        self.mid_blocks = nn.ModuleList(
            nn.ModuleList([CausalResnetBlock1D(channels[-1], out_ch, time_dim), transformers(out_ch)])
            for _ in range(num_mid_blocks)
        )
        ups = (*channels[::-1], channels[0])
        self.up_blocks = nn.ModuleList()
        for i in range(len(ups) - 1):
            in_ch, out_ch = ups[i] * 2, ups[i + 1]
            last = i == len(ups) - 2
            up: nn.Module = (
                CausalConv1d(out_ch, out_ch, 3) if last else _Wrapped(nn.ConvTranspose1d(out_ch, out_ch, 4, 2, 1))
            )
            self.up_blocks.append(
                nn.ModuleList([CausalResnetBlock1D(in_ch, out_ch, time_dim), transformers(out_ch), up])
            )
        self.final_block = CausalBlock1D(ups[-1], ups[-1])
        self.final_proj = nn.Conv1d(ups[-1], out_channels, 1)

    def _bias(self, mask: torch.Tensor, streaming: bool) -> torch.Tensor:
        """(B, 1, T) float mask -> (B, T, T) additive attention bias (0 or -1e10, the published constant)."""
        t = mask.size(-1)
        allowed = mask.bool()
        if streaming:
            allowed = allowed & chunk_mask(t, self.static_chunk_size, mask.device).unsqueeze(0)
        else:
            allowed = allowed.expand(-1, t, -1)
        # A row with nothing allowed (padding) attends everywhere, as upstream; those frames are masked later.
        allowed = allowed | ~allowed.any(dim=-1, keepdim=True)
        return (1.0 - allowed.to(mask.dtype)) * -1.0e10

    def _transformers(
        self, blocks: nn.ModuleList, x: torch.Tensor, mask: torch.Tensor, streaming: bool
    ) -> torch.Tensor:
        bias = self._bias(mask, streaming).to(x.dtype)
        h = x.transpose(1, 2)
        for block in blocks:
            h = block(h, bias)
        return h.transpose(1, 2)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor,
        mu: torch.Tensor,
        t: torch.Tensor,
        spks: torch.Tensor,
        cond: torch.Tensor,
        streaming: bool = False,
    ) -> torch.Tensor:
        """x, mu, cond (B, 80, T); mask (B, 1, T); t (B,); spks (B, 80) -> velocity (B, 80, T)."""
        temb = self.time_mlp(t)
        h = torch.cat([x, mu, spks.unsqueeze(-1).expand(-1, -1, x.size(-1)), cond], dim=1)
        skips: list[torch.Tensor] = []
        masks = [mask]
        for resnet, blocks, down in self.down_blocks:
            m = masks[-1]
            h = self._transformers(blocks, resnet(h, m, temb), m, streaming)
            skips.append(h)
            h = down(h * m)
            masks.append(m[:, :, ::2])
        masks = masks[:-1]
        for resnet, blocks in self.mid_blocks:
            h = self._transformers(blocks, resnet(h, masks[-1], temb), masks[-1], streaming)
        m = mask
        for resnet, blocks, up in self.up_blocks:
            m = masks.pop()
            skip = skips.pop()
            h = torch.cat([h[:, :, : skip.size(-1)], skip], dim=1)
            h = self._transformers(blocks, resnet(h, m, temb), m, streaming)
            h = up(h * m)
        h = self.final_block(h, m)
        return self.final_proj(h * m) * mask


class _Wrapped(nn.Module):
    """Holds a conv as `.conv`, the published name of Matcha's Downsample1D / Upsample1D convs."""

    def __init__(self, conv: nn.Module) -> None:
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class CausalConditionalCFM(nn.Module):
    """Conditional flow matching decoder: Euler ODE solve of `estimator` with cosine t-schedule and CFG.

    `rand_noise` is a fixed (1, 80, 15000) buffer drawn from a generator seeded with 0 (upstream seeds the global
    generator with 0 and draws the same tensor); it is not part of the checkpoint. Every call starts from its
    first frames, so a decode is deterministic and a streamed chunk reuses the noise of the same frames.
    """

    rand_noise: torch.Tensor

    def __init__(
        self,
        in_channels: int = 240,
        n_spks: int = 1,
        spk_emb_dim: int = 80,
        sigma_min: float = 1e-6,
        t_scheduler: str = "cosine",
        inference_cfg_rate: float = 0.7,
        estimator: CausalConditionalDecoder | None = None,
        n_feats: int = 80,
    ) -> None:
        super().__init__()
        del in_channels, n_spks  # published config keys; the estimator defines the real widths
        if t_scheduler not in ("cosine", "linear"):
            raise ValueError(f"unknown t_scheduler {t_scheduler!r}")
        self.n_feats = n_feats
        self.spk_emb_dim = spk_emb_dim
        self.sigma_min = sigma_min
        self.t_scheduler = t_scheduler
        self.inference_cfg_rate = inference_cfg_rate
        self.estimator = estimator if estimator is not None else CausalConditionalDecoder()
        noise = torch.randn(1, n_feats, NOISE_FRAMES, generator=torch.Generator().manual_seed(0))
        self.register_buffer("rand_noise", noise, persistent=False)

    def t_span(self, n_timesteps: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        span = torch.linspace(0, 1, n_timesteps + 1, device=device, dtype=dtype)
        if self.t_scheduler == "cosine":
            span = 1 - torch.cos(span * 0.5 * torch.pi)  # smaller steps near the noise end
        return span

    @torch.inference_mode()
    def forward(
        self,
        mu: torch.Tensor,
        mask: torch.Tensor,
        n_timesteps: int,
        spks: torch.Tensor,
        cond: torch.Tensor,
        temperature: float = 1.0,
        streaming: bool = False,
        noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """mu, cond (1, 80, T); mask (1, 1, T); spks (1, 80) -> mel (1, 80, T) in float32.

        `noise` (1, 80, T) replaces the fixed buffer's first T frames when given.
        """
        frames = mu.size(2)
        if noise is None:
            if frames > self.rand_noise.size(2):
                raise ValueError(f"{frames} mel frames exceed the {self.rand_noise.size(2)}-frame noise buffer")
            noise = self.rand_noise[:, :, :frames]
        x = noise.to(device=mu.device, dtype=mu.dtype) * temperature
        span = self.t_span(n_timesteps, mu.device, mu.dtype)
        # Conditional and unconditional (zeroed mu/spks/cond) passes run as one batch of two.
        mask_in = torch.cat([mask, mask], dim=0)
        mu_in = torch.cat([mu, torch.zeros_like(mu)], dim=0)
        spks_in = torch.cat([spks, torch.zeros_like(spks)], dim=0)
        cond_in = torch.cat([cond, torch.zeros_like(cond)], dim=0)
        t, dt = span[0], span[1] - span[0]
        for step in range(1, len(span)):
            v = self.estimator(
                torch.cat([x, x], dim=0), mask_in, mu_in, t.expand(2), spks_in, cond_in, streaming=streaming
            )
            v_cond, v_uncond = v.chunk(2, dim=0)
            x = x + dt * ((1.0 + self.inference_cfg_rate) * v_cond - self.inference_cfg_rate * v_uncond)
            t = t + dt  # accumulated, as upstream, rather than read from the span
            if step < len(span) - 1:
                dt = span[step + 1] - t
        return x.float()
