"""CosyVoice2 flow encoder: `UpsampleConformerEncoder` of the published `cosyvoice2.yaml` (`flow.encoder`).

Structure (parameter names as in the published `flow.pt`, prefix `encoder.`):
`embed.out.{0,1}` (linear input layer: Linear + LayerNorm, then ESPnet relative positional scaling),
`pre_lookahead_layer.conv{1,2}` (3 tokens of right context), `encoders.N` (conformer layers with relative-position
self attention `self_attn.{linear_q,linear_k,linear_v,linear_out,linear_pos,pos_bias_u,pos_bias_v}` and a swish feed
forward `feed_forward.{w_1,w_2}`, pre-norms `norm_mha`/`norm_ff`), `up_layer.conv` (2x nearest upsampling + causal
conv), `up_embed.out.{0,1}`, `up_encoders.N` (4 more layers at the mel frame rate), `after_norm`.
The published configuration has no macaron feed forward and no convolution module; only that variant is built.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def chunk_mask(size: int, chunk_size: int, device: torch.device) -> torch.Tensor:
    """(size, size) bool mask: frame i sees every frame up to the end of its own chunk (static-chunk streaming)."""
    pos = torch.arange(size, device=device)
    ends = (torch.div(pos, chunk_size, rounding_mode="trunc") + 1) * chunk_size
    return pos.unsqueeze(0) < ends.unsqueeze(1)


def rel_position_table(size: int, d_model: int, device: torch.device) -> torch.Tensor:
    """ESPnet relative sinusoidal table for relative positions size-1 .. -(size-1): (1, 2*size-1, d_model).

    Computed for the needed length only; the products position*frequency are the same float32 values as in a
    precomputed 5000-position table, so the result does not depend on it.
    """
    pos = torch.arange(size - 1, -size, -1, dtype=torch.float32, device=device).unsqueeze(1)
    div = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32, device=device) * -(math.log(10000.0) / d_model))
    table = torch.zeros(2 * size - 1, d_model, device=device)
    table[:, 0::2] = torch.sin(pos * div)
    table[:, 1::2] = torch.cos(pos * div)
    return table.unsqueeze(0)


class LinearEmbed(nn.Module):
    """`input_layer: linear` with `rel_pos_espnet`: Linear + LayerNorm (+ dropout), scaled by sqrt(d_model)."""

    def __init__(self, input_size: int, output_size: int, dropout_rate: float) -> None:
        super().__init__()
        self.out = nn.Sequential(
            nn.Linear(input_size, output_size), nn.LayerNorm(output_size, eps=1e-5), nn.Dropout(dropout_rate)
        )
        self.xscale = math.sqrt(output_size)
        self.output_size = output_size

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns the scaled features and the relative position table for their length."""
        x = self.out(x) * self.xscale
        return x, rel_position_table(x.size(1), self.output_size, x.device).to(x.dtype)


class RelPositionAttention(nn.Module):
    """Multi-head self attention with Transformer-XL relative positions (`rel_selfattn`)."""

    def __init__(self, n_head: int, n_feat: int, dropout_rate: float, key_bias: bool = True) -> None:
        super().__init__()
        if n_feat % n_head:
            raise ValueError(f"attention size {n_feat} is not divisible by {n_head} heads")
        self.h = n_head
        self.d_k = n_feat // n_head
        self.linear_q = nn.Linear(n_feat, n_feat)
        self.linear_k = nn.Linear(n_feat, n_feat, bias=key_bias)
        self.linear_v = nn.Linear(n_feat, n_feat)
        self.linear_out = nn.Linear(n_feat, n_feat)
        self.linear_pos = nn.Linear(n_feat, n_feat, bias=False)
        self.pos_bias_u = nn.Parameter(torch.empty(n_head, self.d_k))
        self.pos_bias_v = nn.Parameter(torch.empty(n_head, self.d_k))
        nn.init.xavier_uniform_(self.pos_bias_u)
        nn.init.xavier_uniform_(self.pos_bias_v)
        self.dropout = nn.Dropout(dropout_rate)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.size(0), -1, self.h, self.d_k)  # (B, T, H, d_k)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, pos_emb: torch.Tensor) -> torch.Tensor:
        """x (B, T, D); mask bool (B, 1 or T, T); pos_emb (1, 2T-1, D)."""
        q = self._heads(self.linear_q(x))
        k = self._heads(self.linear_k(x)).transpose(1, 2)
        v = self._heads(self.linear_v(x)).transpose(1, 2)
        p = self._heads(self.linear_pos(pos_emb)).transpose(1, 2)  # (1, H, 2T-1, d_k)
        content = torch.matmul((q + self.pos_bias_u).transpose(1, 2), k.transpose(-2, -1))  # (B, H, T, T)
        position = torch.matmul((q + self.pos_bias_v).transpose(1, 2), p.transpose(-2, -1))  # (B, H, T, 2T-1)
        # Column c of the table is relative position (T-1-c); query i, key j need i-j, i.e. c = T-1-i+j.
        t = x.size(1)
        idx = (t - 1) - torch.arange(t, device=x.device).unsqueeze(1) + torch.arange(t, device=x.device).unsqueeze(0)
        position = torch.gather(position, 3, idx.expand(position.size(0), position.size(1), t, t))
        scores = (content + position) / math.sqrt(self.d_k)
        blocked = ~mask.unsqueeze(1)  # (B, 1, 1 or T, T)
        attn = torch.softmax(scores.masked_fill(blocked, -float("inf")), dim=-1).masked_fill(blocked, 0.0)
        out = torch.matmul(self.dropout(attn), v).transpose(1, 2).reshape(x.size(0), t, self.h * self.d_k)
        return self.linear_out(out)


class FeedForward(nn.Module):
    """Position-wise feed forward with swish (the encoder's default `activation_type`)."""

    def __init__(self, idim: int, hidden_units: int, dropout_rate: float) -> None:
        super().__init__()
        self.w_1 = nn.Linear(idim, hidden_units)
        self.dropout = nn.Dropout(dropout_rate)
        self.w_2 = nn.Linear(hidden_units, idim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_2(self.dropout(F.silu(self.w_1(x))))


class ConformerLayer(nn.Module):
    """Pre-norm conformer layer without macaron feed forward and convolution module (the published variant)."""

    def __init__(self, size: int, heads: int, linear_units: int, dropout_rate: float, attention_dropout: float) -> None:
        super().__init__()
        self.self_attn = RelPositionAttention(heads, size, attention_dropout)
        self.feed_forward = FeedForward(size, linear_units, dropout_rate)
        self.norm_ff = nn.LayerNorm(size, eps=1e-12)
        self.norm_mha = nn.LayerNorm(size, eps=1e-12)
        self.dropout = nn.Dropout(dropout_rate)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, pos_emb: torch.Tensor) -> torch.Tensor:
        x = x + self.dropout(self.self_attn(self.norm_mha(x), mask, pos_emb))
        return x + self.dropout(self.feed_forward(self.norm_ff(x)))


class PreLookaheadLayer(nn.Module):
    """Gives each token `pre_lookahead_len` tokens of right context (conv1), then a causal conv2, residual."""

    def __init__(self, channels: int, pre_lookahead_len: int = 3) -> None:
        super().__init__()
        self.pre_lookahead_len = pre_lookahead_len
        self.conv1 = nn.Conv1d(channels, channels, kernel_size=pre_lookahead_len + 1)
        self.conv2 = nn.Conv1d(channels, channels, kernel_size=3)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, T, C). `context` (B, L, C): the next tokens of a stream, seen instead of zero padding."""
        h = x.transpose(1, 2)
        if context is not None and context.size(1) > 0:
            if context.size(1) != self.pre_lookahead_len:
                raise ValueError(f"lookahead context must be {self.pre_lookahead_len} tokens, got {context.size(1)}")
            h = torch.cat([h, context.transpose(1, 2)], dim=2)
        else:
            h = F.pad(h, (0, self.pre_lookahead_len))
        h = F.leaky_relu(self.conv1(h))
        h = self.conv2(F.pad(h, (self.conv2.kernel_size[0] - 1, 0)))  # causal: left padding only
        return h.transpose(1, 2) + x


class UpsampleLayer(nn.Module):
    """Nearest-neighbour upsampling by `stride`, then a causal conv (kernel 2*stride+1, left padding)."""

    def __init__(self, channels: int, out_channels: int, stride: int = 2) -> None:
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv1d(channels, out_channels, stride * 2 + 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, C, T) -> (B, C_out, T*stride)."""
        x = torch.repeat_interleave(x, self.stride, dim=2)
        return self.conv(F.pad(x, (self.stride * 2, 0)))


class UpsampleConformerEncoder(nn.Module):
    """Token-rate conformer, 2x upsampling to the mel rate (50 Hz), mel-rate conformer.

    Defaults are the published `flow.encoder` configuration except the widths, which the caller passes.
    `static_chunk_size` (tokens) bounds attention to chunks when `streaming` is set; the upsampled half uses
    `static_chunk_size * stride` frames, as CosyVoice2 was trained.
    """

    def __init__(
        self,
        input_size: int = 512,
        output_size: int = 512,
        attention_heads: int = 8,
        linear_units: int = 2048,
        num_blocks: int = 6,
        dropout_rate: float = 0.1,
        positional_dropout_rate: float = 0.1,
        attention_dropout_rate: float = 0.1,
        static_chunk_size: int = 25,
        pre_lookahead_len: int = 3,
        num_up_blocks: int = 4,
        upsample_stride: int = 2,
    ) -> None:
        super().__init__()
        del positional_dropout_rate  # accepted for config compatibility; dropout is inactive at inference
        self._output_size = output_size
        self.static_chunk_size = static_chunk_size

        def layers(n: int) -> nn.ModuleList:
            return nn.ModuleList(
                ConformerLayer(output_size, attention_heads, linear_units, dropout_rate, attention_dropout_rate)
                for _ in range(n)
            )

        self.embed = LinearEmbed(input_size, output_size, dropout_rate)
        self.pre_lookahead_layer = PreLookaheadLayer(output_size, pre_lookahead_len)
        self.encoders = layers(num_blocks)
        self.up_layer = UpsampleLayer(output_size, output_size, upsample_stride)
        # The upstream code builds up_embed with `input_size` inputs although it receives encoder outputs; the
        # published sizes are equal, and keeping input_size keeps the parameter shapes of flow.pt.
        self.up_embed = LinearEmbed(input_size, output_size, dropout_rate)
        self.up_encoders = layers(num_up_blocks)
        self.after_norm = nn.LayerNorm(output_size, eps=1e-5)

    def output_size(self) -> int:
        return self._output_size

    def _mask(self, size: int, chunk: int, device: torch.device) -> torch.Tensor:
        if chunk > 0:
            return chunk_mask(size, chunk, device).unsqueeze(0)  # (1, T, T)
        return torch.ones(1, 1, size, dtype=torch.bool, device=device)

    def forward(self, xs: torch.Tensor, context: torch.Tensor | None = None, streaming: bool = False) -> torch.Tensor:
        """xs (1, T, input_size) embedded tokens -> (1, T*stride, output_size).

        `context` (1, L, input_size): embedded lookahead tokens of an unfinished stream (not encoded themselves).
        Batches of one sequence only: no padding mask is needed, as in the published inference path.
        """
        xs, pos_emb = self.embed(xs)
        if context is not None and context.size(1) > 0:
            context = self.embed(context)[0]  # same projection; their positions never enter attention
        mask = self._mask(xs.size(1), self.static_chunk_size if streaming else 0, xs.device)
        xs = self.pre_lookahead_layer(xs, context)
        for layer in self.encoders:
            xs = layer(xs, mask, pos_emb)

        xs = self.up_layer(xs.transpose(1, 2)).transpose(1, 2)
        xs, pos_emb = self.up_embed(xs)
        chunk = self.static_chunk_size * self.up_layer.stride if streaming else 0
        mask = self._mask(xs.size(1), chunk, xs.device)
        for layer in self.up_encoders:
            xs = layer(xs, mask, pos_emb)
        return self.after_norm(xs)
