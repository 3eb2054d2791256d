"""Inference-only RVC synthesizer (VITS-style prior encoder, coupling flow, NSF-HiFiGAN decoder).

Module and parameter names follow the RVC WebUI's SynthesizerTrnMs256NSFsid / SynthesizerTrnMs768NSFsid and their
"_nono" (no pitch) variants, so a WebUI `.pth` state dict loads after its weight-norm pairs are folded into plain
weights (`fold_weight_norm`). The posterior encoder (enc_q) is training-only and is not built.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, cast

import torch
import torch.nn.functional as F
from torch import nn

from ..cancel import ShouldStop, check_stop

LRELU_SLOPE = 0.1

# The cancel check of the infer() running on this thread: the stages below call _check_stop() between their layers,
# so a long forward pass stops within one layer of a cancel (each worker thread runs one infer at a time).
_CALL = threading.local()


def _check_stop() -> None:
    check_stop(getattr(_CALL, "should_stop", None))


@dataclass(frozen=True, slots=True)
class SynthConfig:
    """The WebUI checkpoint's positional `config` list, named."""

    spec_channels: int
    segment_size: int
    inter_channels: int
    hidden_channels: int
    filter_channels: int
    n_heads: int
    n_layers: int
    kernel_size: int
    p_dropout: float
    resblock: str
    resblock_kernel_sizes: tuple[int, ...]
    resblock_dilation_sizes: tuple[tuple[int, ...], ...]
    upsample_rates: tuple[int, ...]
    upsample_initial_channel: int
    upsample_kernel_sizes: tuple[int, ...]
    spk_embed_dim: int
    gin_channels: int
    sr: int

    @classmethod
    def from_list(cls, cfg: Sequence[Any]) -> SynthConfig:
        """`cfg` is the checkpoint's list as torch.load returns it (untyped: ints, a float, str, nested lists)."""
        if len(cfg) < 18:
            raise ValueError(f"config list has {len(cfg)} entries, expected 18")
        c = list(cfg[:18])
        sr = c[17]
        if isinstance(sr, str):  # some WebUI versions store "40k"
            sr = int(sr.lower().rstrip("k")) * 1000
        return cls(
            int(c[0]),
            int(c[1]),
            int(c[2]),
            int(c[3]),
            int(c[4]),
            int(c[5]),
            int(c[6]),
            int(c[7]),
            float(c[8]),
            str(c[9]),
            tuple(int(k) for k in c[10]),
            tuple(tuple(int(d) for d in ds) for ds in c[11]),
            tuple(int(u) for u in c[12]),
            int(c[13]),
            tuple(int(k) for k in c[14]),
            int(c[15]),
            int(c[16]),
            int(sr),
        )


# ---------------------------------------------------------------------------------------------------- prior encoder


class LayerNorm(nn.Module):
    """Channel LayerNorm over [b, c, t] with the `gamma`/`beta` parameter names of the checkpoints."""

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.channels = channels
        self.eps = eps
        self.gamma = nn.Parameter(torch.ones(channels))
        self.beta = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.layer_norm(x.transpose(1, -1), (self.channels,), self.gamma, self.beta, self.eps)
        return x.transpose(1, -1)


class RelativeSelfAttention(nn.Module):
    """Multi-head self-attention with shared relative-position key/value embeddings (window 10)."""

    def __init__(self, channels: int, n_heads: int, window: int = 10) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.k_channels = channels // n_heads
        self.window = window
        self.conv_q = nn.Conv1d(channels, channels, 1)
        self.conv_k = nn.Conv1d(channels, channels, 1)
        self.conv_v = nn.Conv1d(channels, channels, 1)
        self.conv_o = nn.Conv1d(channels, channels, 1)
        self.emb_rel_k = nn.Parameter(torch.zeros(1, 2 * window + 1, self.k_channels))
        self.emb_rel_v = nn.Parameter(torch.zeros(1, 2 * window + 1, self.k_channels))

    def _band_index(self, t: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        # rel[i, j] = j - i + window for |j - i| <= window: index into the 2w+1 relative embeddings.
        i = torch.arange(t, device=device)
        rel = i[None, :] - i[:, None] + self.window
        valid = (rel >= 0) & (rel <= 2 * self.window)
        return rel.clamp(0, 2 * self.window), valid

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        b, c, t = x.shape
        h, d = self.n_heads, self.k_channels
        q = self.conv_q(x).view(b, h, d, t).transpose(2, 3) / math.sqrt(d)  # [b, h, t, d]
        k = self.conv_k(x).view(b, h, d, t).transpose(2, 3)
        v = self.conv_v(x).view(b, h, d, t).transpose(2, 3)
        rel, valid = self._band_index(t, x.device)
        rel_logits = q @ self.emb_rel_k.transpose(1, 2).unsqueeze(0)  # [b, h, t, 2w+1]
        local = torch.gather(rel_logits, 3, rel.expand(b, h, t, t)) * valid
        scores = q @ k.transpose(2, 3) + local
        scores = scores.masked_fill(attn_mask == 0, -1e4)
        p = F.softmax(scores, dim=-1)
        out = p @ v
        # Relative values: for row i, sum over j in the band of p[i, j] * emb_rel_v[j - i + w].
        p_band = torch.zeros(b, h, t, 2 * self.window + 1, dtype=p.dtype, device=p.device)
        p_band.scatter_add_(3, rel.expand(b, h, t, t), p * valid)
        out = out + p_band @ self.emb_rel_v.unsqueeze(0)
        out = out.transpose(2, 3).reshape(b, c, t)
        y: torch.Tensor = self.conv_o(out)
        return y


class FFN(nn.Module):
    def __init__(self, channels: int, filter_channels: int, kernel_size: int) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.conv_1 = nn.Conv1d(channels, filter_channels, kernel_size)
        self.conv_2 = nn.Conv1d(filter_channels, channels, kernel_size)

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        k = self.kernel_size
        return x if k == 1 else F.pad(x, ((k - 1) // 2, k // 2))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv_1(self._pad(x * mask)))
        y: torch.Tensor = self.conv_2(self._pad(x * mask))
        return y * mask


class AttentionEncoder(nn.Module):
    def __init__(self, hidden: int, filter_channels: int, n_heads: int, n_layers: int, kernel_size: int) -> None:
        super().__init__()
        self.attn_layers = nn.ModuleList(RelativeSelfAttention(hidden, n_heads) for _ in range(n_layers))
        self.norm_layers_1 = nn.ModuleList(LayerNorm(hidden) for _ in range(n_layers))
        self.ffn_layers = nn.ModuleList(FFN(hidden, filter_channels, kernel_size) for _ in range(n_layers))
        self.norm_layers_2 = nn.ModuleList(LayerNorm(hidden) for _ in range(n_layers))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        attn_mask = mask.unsqueeze(2) * mask.unsqueeze(-1)
        x = x * mask
        for attn, n1, ffn, n2 in zip(
            self.attn_layers, self.norm_layers_1, self.ffn_layers, self.norm_layers_2, strict=True
        ):
            _check_stop()
            x = n1(x + attn(x, attn_mask))
            x = n2(x + ffn(x, mask))
        return x * mask


class TextEncoder(nn.Module):
    """enc_p: content features (+ coarse pitch embedding) -> prior mean and log-scale."""

    def __init__(self, in_dim: int, cfg: SynthConfig, use_f0: bool) -> None:
        super().__init__()
        self.out_channels = cfg.inter_channels
        self.hidden = cfg.hidden_channels
        self.emb_phone = nn.Linear(in_dim, cfg.hidden_channels)
        self.emb_pitch = nn.Embedding(256, cfg.hidden_channels) if use_f0 else None
        self.encoder = AttentionEncoder(
            cfg.hidden_channels, cfg.filter_channels, cfg.n_heads, cfg.n_layers, cfg.kernel_size
        )
        self.proj = nn.Conv1d(cfg.hidden_channels, cfg.inter_channels * 2, 1)

    def forward(
        self, phone: torch.Tensor, pitch: torch.Tensor | None, lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.emb_phone(phone)
        if self.emb_pitch is not None and pitch is not None:
            x = x + self.emb_pitch(pitch)
        x = F.leaky_relu(x * math.sqrt(self.hidden), LRELU_SLOPE).transpose(1, 2)
        mask = (torch.arange(x.shape[2], device=x.device)[None, :] < lengths[:, None]).unsqueeze(1).to(x.dtype)
        x = self.encoder(x * mask, mask)
        m, logs = torch.split(self.proj(x) * mask, self.out_channels, dim=1)
        return m, logs, mask


# ------------------------------------------------------------------------------------------------------------ flow


class WN(nn.Module):
    """WaveNet-style gated residual stack conditioned on the speaker embedding."""

    def __init__(self, hidden: int, kernel_size: int, dilation_rate: int, n_layers: int, gin_channels: int) -> None:
        super().__init__()
        self.hidden = hidden
        self.n_layers = n_layers
        self.cond_layer = nn.Conv1d(gin_channels, 2 * hidden * n_layers, 1) if gin_channels else None
        self.in_layers = nn.ModuleList()
        self.res_skip_layers = nn.ModuleList()
        for i in range(n_layers):
            dil = dilation_rate**i
            self.in_layers.append(
                nn.Conv1d(hidden, 2 * hidden, kernel_size, dilation=dil, padding=(kernel_size * dil - dil) // 2)
            )
            self.res_skip_layers.append(nn.Conv1d(hidden, 2 * hidden if i < n_layers - 1 else hidden, 1))

    def forward(self, x: torch.Tensor, mask: torch.Tensor, g: torch.Tensor | None) -> torch.Tensor:
        out = torch.zeros_like(x)
        gc = self.cond_layer(g) if (g is not None and self.cond_layer is not None) else None
        h = self.hidden
        for i in range(self.n_layers):
            a = self.in_layers[i](x)
            if gc is not None:
                a = a + gc[:, i * 2 * h : (i + 1) * 2 * h]
            acts = torch.tanh(a[:, :h]) * torch.sigmoid(a[:, h:])
            rs = self.res_skip_layers[i](acts)
            if i < self.n_layers - 1:
                x = (x + rs[:, :h]) * mask
                out = out + rs[:, h:]
            else:
                out = out + rs
        return out * mask


class CouplingLayer(nn.Module):
    """Mean-only affine coupling; only the reverse (sampling) direction is needed for inference."""

    def __init__(self, channels: int, hidden: int, gin_channels: int) -> None:
        super().__init__()
        self.half_channels = channels // 2  # not `half`, which would shadow nn.Module.half()
        self.pre = nn.Conv1d(self.half_channels, hidden, 1)
        self.enc = WN(hidden, 5, 1, 3, gin_channels)
        self.post = nn.Conv1d(hidden, self.half_channels, 1)

    def reverse(self, x: torch.Tensor, mask: torch.Tensor, g: torch.Tensor | None) -> torch.Tensor:
        x0, x1 = torch.split(x, [self.half_channels, self.half_channels], 1)
        m = self.post(self.enc(self.pre(x0) * mask, mask, g)) * mask
        return torch.cat([x0, (x1 - m) * mask], 1)


class Flip(nn.Module):
    """Placeholder at the odd indexes of `flow.flows` so checkpoint indexes (flows.0, flows.2, ...) line up."""


class CouplingBlock(nn.Module):
    def __init__(self, channels: int, hidden: int, gin_channels: int, n_flows: int = 4) -> None:
        super().__init__()
        self.flows = nn.ModuleList()
        for _ in range(n_flows):
            self.flows.append(CouplingLayer(channels, hidden, gin_channels))
            self.flows.append(Flip())

    def reverse(self, x: torch.Tensor, mask: torch.Tensor, g: torch.Tensor | None) -> torch.Tensor:
        for flow in reversed(self.flows):
            _check_stop()
            # flows holds CouplingLayer and Flip only (ModuleList items are typed as plain Modules)
            x = torch.flip(x, [1]) if isinstance(flow, Flip) else cast(CouplingLayer, flow).reverse(x, mask, g)
        return x


# --------------------------------------------------------------------------------------------------------- decoder


def _padding(kernel: int, dilation: int = 1) -> int:
    return (kernel * dilation - dilation) // 2


class ResBlock1(nn.Module):
    def __init__(self, ch: int, k: int, dilations: Sequence[int]) -> None:
        super().__init__()
        self.convs1 = nn.ModuleList(nn.Conv1d(ch, ch, k, 1, dilation=d, padding=_padding(k, d)) for d in dilations)
        self.convs2 = nn.ModuleList(nn.Conv1d(ch, ch, k, 1, dilation=1, padding=_padding(k)) for _ in dilations)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for c1, c2 in zip(self.convs1, self.convs2, strict=True):
            xt = c2(F.leaky_relu(c1(F.leaky_relu(x, LRELU_SLOPE)), LRELU_SLOPE))
            x = x + xt
        return x


class ResBlock2(nn.Module):
    def __init__(self, ch: int, k: int, dilations: Sequence[int]) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv1d(ch, ch, k, 1, dilation=d, padding=_padding(k, d)) for d in dilations[:2])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for c in self.convs:
            x = x + c(F.leaky_relu(x, LRELU_SLOPE))
        return x


class SineSource(nn.Module):
    """m_source: harmonic sine excitation from frame-rate F0 (the NSF source), merged by a linear layer."""

    def __init__(self, sr: int, sine_amp: float = 0.1, noise_std: float = 0.003) -> None:
        super().__init__()
        self.sr = sr
        self.sine_amp = sine_amp
        self.noise_std = noise_std
        self.l_linear = nn.Linear(1, 1)  # harmonic_num = 0 in every RVC model

    def forward(self, f0: torch.Tensor, upp: int, generator: torch.Generator | None) -> torch.Tensor:
        # f0: [b, frames] in Hz, 0 where unvoiced -> excitation [b, 1, frames * upp]
        b = f0.shape[0]
        rad = (f0.double() / self.sr) % 1.0  # phase increment per sample, per frame
        # The WebUI draws a random initial phase for overtones only (zero for the fundamental); draw it anyway so a
        # seeded generator consumes the same random stream as the reference implementation.
        torch.rand(b, 1, generator=generator, device=f0.device)
        rad_up = rad.repeat_interleave(upp, dim=1)
        # Phase as the running sum, wrapped per frame in float64 so long inputs keep full precision.
        phase = torch.cumsum(rad_up, dim=1) % 1.0
        sine = (torch.sin(phase * 2 * math.pi) * self.sine_amp).to(f0.dtype).unsqueeze(-1)
        uv = (f0 > 0).to(f0.dtype).repeat_interleave(upp, dim=1).unsqueeze(-1)
        noise_amp = uv * self.noise_std + (1 - uv) * self.sine_amp / 3
        noise = noise_amp * torch.randn(sine.shape, generator=generator, device=f0.device, dtype=sine.dtype)
        # The l_linear merge runs in the network's precision (fp16 on CUDA with --precision fp16).
        return torch.tanh(self.l_linear((sine * uv + noise).to(self.l_linear.weight.dtype))).transpose(1, 2)


class Generator(nn.Module):
    """dec: HiFi-GAN upsampler; with `use_f0` the NSF variant that adds the sine excitation at every scale."""

    def __init__(self, cfg: SynthConfig, use_f0: bool) -> None:
        super().__init__()
        self.num_kernels = len(cfg.resblock_kernel_sizes)
        self.upp = int(math.prod(cfg.upsample_rates))
        self.m_source = SineSource(cfg.sr) if use_f0 else None
        self.noise_convs = nn.ModuleList() if use_f0 else None
        uic = cfg.upsample_initial_channel
        self.conv_pre = nn.Conv1d(cfg.inter_channels, uic, 7, 1, padding=3)
        block = ResBlock1 if cfg.resblock == "1" else ResBlock2
        self.ups = nn.ModuleList()
        self.resblocks = nn.ModuleList()
        ch = uic
        for i, (u, k) in enumerate(zip(cfg.upsample_rates, cfg.upsample_kernel_sizes, strict=True)):
            ch = uic // (2 ** (i + 1))
            self.ups.append(nn.ConvTranspose1d(uic // (2**i), ch, k, u, padding=(k - u) // 2))
            if self.noise_convs is not None:
                if i + 1 < len(cfg.upsample_rates):
                    s = int(math.prod(cfg.upsample_rates[i + 1 :]))
                    self.noise_convs.append(nn.Conv1d(1, ch, kernel_size=s * 2, stride=s, padding=s // 2))
                else:
                    self.noise_convs.append(nn.Conv1d(1, ch, kernel_size=1))
            for rk, rd in zip(cfg.resblock_kernel_sizes, cfg.resblock_dilation_sizes, strict=True):
                self.resblocks.append(block(ch, rk, rd))
        self.conv_post = nn.Conv1d(ch, 1, 7, 1, padding=3, bias=False)
        self.cond = nn.Conv1d(cfg.gin_channels, uic, 1) if cfg.gin_channels else None

    def forward(self, x: torch.Tensor, har: torch.Tensor | None, g: torch.Tensor | None) -> torch.Tensor:
        """x [b, inter, frames], har (the NSF excitation from `m_source`) [b, 1, frames * upp] -> audio."""
        x = self.conv_pre(x)
        if g is not None and self.cond is not None:
            x = x + self.cond(g)
        for i, up in enumerate(self.ups):
            _check_stop()
            x = up(F.leaky_relu(x, LRELU_SLOPE))
            if har is not None and self.noise_convs is not None:
                x = x + self.noise_convs[i](har)
            xs = self.resblocks[i * self.num_kernels](x)
            for j in range(1, self.num_kernels):
                _check_stop()
                xs = xs + self.resblocks[i * self.num_kernels + j](x)
            x = xs / self.num_kernels
        # The final activation uses torch's default slope (0.01), as the original does.
        return torch.tanh(self.conv_post(F.leaky_relu(x)))


# ----------------------------------------------------------------------------------------------------- synthesizer


class Synthesizer(nn.Module):
    """SynthesizerTrnMs{256,768}NSFsid[_nono] for inference."""

    def __init__(self, cfg: SynthConfig, content_dim: int, use_f0: bool) -> None:
        super().__init__()
        self.cfg = cfg
        self.use_f0 = use_f0
        self.enc_p = TextEncoder(content_dim, cfg, use_f0)
        self.dec = Generator(cfg, use_f0)
        self.flow = CouplingBlock(cfg.inter_channels, cfg.hidden_channels, cfg.gin_channels)
        self.emb_g = nn.Embedding(cfg.spk_embed_dim, cfg.gin_channels)

    @property
    def hop(self) -> int:
        """Output samples per feature frame (sr / 100 for every RVC model)."""
        return self.dec.upp

    @property
    def memory_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.state_dict().values())

    def excitation(self, nsff0: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        assert self.dec.m_source is not None
        har: torch.Tensor = self.dec.m_source(nsff0, self.hop, generator)
        return har

    @torch.inference_mode()
    def infer(
        self,
        phone: torch.Tensor,
        lengths: torch.Tensor,
        pitch: torch.Tensor | None,
        nsff0: torch.Tensor | None,
        sid: torch.Tensor,
        *,
        generator: torch.Generator | None = None,
        noise_scale: float = 0.66666,
        window: DecodeWindow | None = None,
        should_stop: ShouldStop | None = None,
    ) -> torch.Tensor:
        """phone [b, t, dim] float, pitch [b, t] long (1..255), nsff0 [b, t] Hz, sid [b] -> audio [b, 1, t * hop],
        or only `window`'s frames of it. `should_stop` is checked between the encoder's layers, the flows and the
        decoder's residual blocks."""
        _CALL.should_stop = should_stop
        try:
            return run_synthesis(self, phone, lengths, pitch, nsff0, sid, generator, noise_scale, window)
        finally:
            _CALL.should_stop = None

    # The three stages run_synthesis drives; OnnxSynthesizer provides the same three.

    def speaker(self, sid: torch.Tensor) -> torch.Tensor:
        emb: torch.Tensor = self.emb_g(sid)
        return emb.unsqueeze(-1)

    def prior(
        self, phone: torch.Tensor, pitch: torch.Tensor | None, lengths: torch.Tensor, g: torch.Tensor, eps: torch.Tensor
    ) -> torch.Tensor:
        """Content (+ pitch) -> the flow's output z [b, inter, t]; `eps` is the scaled prior noise."""
        m, logs, mask = cast(
            tuple[torch.Tensor, torch.Tensor, torch.Tensor], self.enc_p(phone, pitch if self.use_f0 else None, lengths)
        )
        z = self.flow.reverse((m + torch.exp(logs) * eps) * mask, mask, g)
        return z * mask

    def decode(self, z: torch.Tensor, har: torch.Tensor | None, g: torch.Tensor) -> torch.Tensor:
        _check_stop()
        audio: torch.Tensor = self.dec(z, har, g)
        return audio


@dataclass(frozen=True, slots=True)
class DecodeWindow:
    """Decode only frames [start, start + frames) of the prior. The prior (global attention) still sees every frame;
    the decoder, whose receptive field is about +-11 frames for the published configs, runs on the window plus
    DECODER_MARGIN frames each side, so the result equals the full decode's same samples. Streaming uses it to skip
    the left context, whole-utterance conversion to skip the reflect padding."""

    start: int
    frames: int


DECODER_MARGIN = 16  # frames; tests check the published 32k/40k/48k decoders' receptive fields fit inside


class SynthesisStages(Protocol):
    cfg: SynthConfig
    use_f0: bool

    @property
    def hop(self) -> int: ...
    def speaker(self, sid: torch.Tensor) -> torch.Tensor: ...
    def excitation(self, nsff0: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor: ...
    def prior(
        self, phone: torch.Tensor, pitch: torch.Tensor | None, lengths: torch.Tensor, g: torch.Tensor, eps: torch.Tensor
    ) -> torch.Tensor: ...
    def decode(self, z: torch.Tensor, har: torch.Tensor | None, g: torch.Tensor) -> torch.Tensor: ...


def run_synthesis(
    net: SynthesisStages,
    phone: torch.Tensor,
    lengths: torch.Tensor,
    pitch: torch.Tensor | None,
    nsff0: torch.Tensor | None,
    sid: torch.Tensor,
    generator: torch.Generator | None,
    noise_scale: float,
    window: DecodeWindow | None,
) -> torch.Tensor:
    """Speaker embedding, noise, prior, excitation and a (windowed) decode. Random numbers are drawn for the whole
    input in the reference implementation's order (prior noise, then the source's phase and noise), so a seeded or
    globally seeded run gives the same audio whatever the window and whichever backend runs the stages."""
    b, t = phone.shape[0], phone.shape[1]
    g = net.speaker(sid)
    # Drawn in float32 whatever the precision, so fp16 consumes the same random stream as fp32.
    eps = torch.randn((b, net.cfg.inter_channels, t), generator=generator, device=phone.device).to(phone.dtype)
    har = net.excitation(nsff0, generator) if net.use_f0 and nsff0 is not None else None
    z = net.prior(phone, pitch, lengths, g, eps * noise_scale)
    if window is None:
        return net.decode(z, har, g)
    lo = max(0, window.start - DECODER_MARGIN)
    hi = min(t, window.start + window.frames + DECODER_MARGIN)
    hop = net.hop
    y = net.decode(z[:, :, lo:hi], har[:, :, lo * hop : hi * hop] if har is not None else None, g)
    return y[:, :, (window.start - lo) * hop : (window.start - lo + window.frames) * hop]


# ------------------------------------------------------------------------------------------------- weight loading


_WEIGHT_NORM_SUFFIXES = {
    ".weight_g": "g",
    ".weight_v": "v",
    ".parametrizations.weight.original0": "g",
    ".parametrizations.weight.original1": "v",
}


def fold_weight_norm(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Turn weight-norm pairs into plain weights: `x.weight_g`/`x.weight_v` (torch.nn.utils.weight_norm, what the
    WebUI saves) and `x.parametrizations.weight.original0/1` (torch's newer parametrization) both become `x.weight`."""
    out: dict[str, torch.Tensor] = {}
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        for suffix, role in _WEIGHT_NORM_SUFFIXES.items():
            if key.endswith(suffix):
                pairs.setdefault(key[: -len(suffix)], {})[role] = value
                break
        else:
            out[key] = value
    for prefix, gv in pairs.items():
        if "g" not in gv or "v" not in gv:
            raise ValueError(f"incomplete weight-norm pair for {prefix}")
        g, v = gv["g"].float(), gv["v"].float()
        dims = tuple(range(1, v.dim()))  # weight_norm(dim=0): one norm per output slice
        out[prefix + ".weight"] = v * (g / v.norm(dim=dims, keepdim=True))
    return out


def build_synthesizer(
    config: Sequence[object], weights: Mapping[str, torch.Tensor], version: str, use_f0: bool
) -> Synthesizer:
    """Build and load a synthesizer from a WebUI checkpoint's `config`, `weight`, `version` and `f0` entries."""
    state = fold_weight_norm({k: v for k, v in weights.items() if not k.startswith("enc_q.")})
    cfg_list = list(config)
    if "emb_g.weight" in state:  # the WebUI trusts the embedding table over config[-3] for the speaker count
        cfg_list[15] = int(state["emb_g.weight"].shape[0])
    cfg = SynthConfig.from_list(cfg_list)
    content_dim = 256 if version == "v1" else 768
    if "enc_p.emb_phone.weight" in state:
        content_dim = int(state["enc_p.emb_phone.weight"].shape[1])
    net = Synthesizer(cfg, content_dim, use_f0)
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    missing, unexpected = net.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"checkpoint does not match the network: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return net.eval()
