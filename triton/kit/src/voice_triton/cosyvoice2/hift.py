"""CosyVoice2's HiFT vocoder: HiFTNet (neural source filter + iSTFTNet, arXiv 2309.09493) at 24 kHz.

Written from the published structure of upstream CosyVoice (`cosyvoice/hifigan/generator.py`: HiFTGenerator with
SourceModuleHnNSF2/SineGen2 at 24 kHz, `f0_predictor.py`: ConvRNNF0Predictor, `transformer/activation.py`: Snake),
with the same module names so a published `hift.pt` loads with `load_state_dict(strict=True)`:

    f0_predictor.condnet.{0,2,4,6,8}.*   weight-normed Conv1d(k=3) + ELU, mel -> cond_channels
    f0_predictor.classifier.*            Linear(cond_channels, 1); |.| is the F0 in Hz per mel frame
    m_source.l_linear.*                  Linear(nb_harmonics + 1, 1) merging the harmonic sines (then tanh)
    conv_pre.*                           weight-normed Conv1d(in_channels, base_channels, 7)
    ups.{i}.*                            weight-normed ConvTranspose1d, channels halved per stage
    source_downs.{i}.*                   plain Conv1d taking the source's STFT (n_fft + 2 channels) to stage i
    source_resblocks.{i}.*, resblocks.{j}.*   ResBlock: convs1/convs2.{k} (weight-normed), activations1/2.{k}.alpha
    conv_post.*                          weight-normed Conv1d(ch, n_fft + 2, 7): log-magnitude and phase for the ISTFT

Weight norm is torch's parametrization (`parametrizations.weight.original0` = g, `original1` = v), as upstream uses
whenever `torch.nn.utils.parametrizations.weight_norm` exists; checkpoints saved with the older
`torch.nn.utils.weight_norm` (`weight_g`/`weight_v`) load too, through torch's own compatibility hook.

Randomness (the harmonics' initial phases and the additive noise of the sine source) is drawn per call, in upstream's
order: `rand` [B, nb_harmonics + 1] for the phases, `randn` [B, L, nb_harmonics + 1] for the noise, then `randn`
[B, L, 1] for upstream's noise branch, which HiFT discards but still draws. With `generator=None` the draws come from
torch's global RNG of the mel's device, so `torch.manual_seed(s)` then the same calls gives upstream's audio call for
call; pass a `torch.Generator` (on the mel's device) to seed one request without touching global state.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

# Published CosyVoice2-0.5B values (cosyvoice2.yaml, `hift:`).
PUBLISHED_UPSAMPLE_RATES = (8, 5, 3)
PUBLISHED_UPSAMPLE_KERNEL_SIZES = (16, 11, 7)
PUBLISHED_RESBLOCK_KERNEL_SIZES = (3, 7, 11)
PUBLISHED_SOURCE_RESBLOCK_KERNEL_SIZES = (7, 7, 11)
PUBLISHED_DILATIONS = ((1, 3, 5), (1, 3, 5), (1, 3, 5))


class Snake(nn.Module):
    """Snake activation x + sin²(αx)/α with a learned α per channel (upstream's Snake, linear-scale α)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        alpha = self.alpha[None, :, None]
        return x + (1.0 / (alpha + 1e-9)) * torch.sin(x * alpha).pow(2)  # upstream's epsilon: keeps α=0 finite


class ResBlock(nn.Module):
    """HiFi-GAN/BigVGAN residual block: per dilation, Snake -> dilated conv -> Snake -> conv, added to the input."""

    def __init__(self, channels: int, kernel_size: int, dilations: tuple[int, ...] | list[int]) -> None:
        super().__init__()

        def conv(dilation: int) -> nn.Module:
            padding = (kernel_size - 1) * dilation // 2  # "same" length
            return weight_norm(nn.Conv1d(channels, channels, kernel_size, dilation=dilation, padding=padding))

        self.convs1 = nn.ModuleList(conv(d) for d in dilations)
        self.convs2 = nn.ModuleList(conv(1) for _ in dilations)
        self.activations1 = nn.ModuleList(Snake(channels) for _ in dilations)
        self.activations2 = nn.ModuleList(Snake(channels) for _ in dilations)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        layers = zip(self.activations1, self.convs1, self.activations2, self.convs2, strict=True)
        for act1, conv1, act2, conv2 in layers:
            x = x + conv2(act2(conv1(act1(x))))
        return x


class ConvRNNF0Predictor(nn.Module):
    """F0 (Hz) per mel frame: five weight-normed 3-tap convs with ELU, then a linear head; [B, C, T] -> [B, T]."""

    def __init__(self, num_class: int = 1, in_channels: int = 80, cond_channels: int = 512) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(5):
            layers += [weight_norm(nn.Conv1d(in_channels if i == 0 else cond_channels, cond_channels, 3, padding=1))]
            layers += [nn.ELU()]
        self.condnet = nn.Sequential(*layers)  # indices 0, 2, .., 8 are the convs, as published
        self.classifier = nn.Linear(cond_channels, num_class)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.condnet(mel).transpose(1, 2)).squeeze(-1).abs()


class SourceModuleHnNSF(nn.Module):
    """Harmonic-plus-noise NSF excitation (upstream's SourceModuleHnNSF2 with SineGen2, used at 24 kHz).

    Sines at F0 and its harmonics are summed by a learned linear layer and tanh. The phase is integrated at frame
    rate (the per-sample frequency is linearly downsampled by `upsample_scale`, cumulated, and linearly upsampled
    back), which keeps the phase continuous without a per-sample cumulative sum.
    """

    def __init__(
        self,
        sampling_rate: int,
        upsample_scale: int,
        harmonic_num: int = 0,
        sine_amp: float = 0.1,
        add_noise_std: float = 0.003,
        voiced_threshold: float = 0.0,
    ) -> None:
        super().__init__()
        self.sampling_rate = sampling_rate
        self.upsample_scale = upsample_scale
        self.harmonic_num = harmonic_num
        self.sine_amp = sine_amp
        self.noise_std = add_noise_std
        self.voiced_threshold = voiced_threshold
        self.l_linear = nn.Linear(harmonic_num + 1, 1)

    @torch.no_grad()
    def _sines(self, f0: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """f0 [B, L, 1] Hz per sample -> voiced sines plus noise [B, L, harmonic_num + 1]."""
        batch = f0.shape[0]
        dim = self.harmonic_num + 1
        harmonics = torch.arange(1, dim + 1, device=f0.device, dtype=f0.dtype)
        rad = (f0 * harmonics / self.sampling_rate) % 1  # cycles per sample; whole turns do not matter
        initial_phase = torch.rand(batch, dim, device=f0.device, generator=generator)
        initial_phase[:, 0] = 0  # the fundamental starts at phase 0, the overtones at random phases
        rad[:, 0, :] = rad[:, 0, :] + initial_phase
        # Same interpolate calls as upstream (scale factors, not sizes), so lengths and sample positions agree.
        rad = F.interpolate(rad.transpose(1, 2), scale_factor=1 / self.upsample_scale, mode="linear")
        phase = torch.cumsum(rad, dim=2) * 2 * math.pi
        phase = F.interpolate(phase * self.upsample_scale, scale_factor=float(self.upsample_scale), mode="linear")
        sines = torch.sin(phase.transpose(1, 2)) * self.sine_amp

        uv = (f0 > self.voiced_threshold).to(f0.dtype)
        # Voiced: a little noise on the sines; unvoiced: noise alone, peaking around sine_amp (std sine_amp / 3).
        noise_amp = uv * self.noise_std + (1 - uv) * self.sine_amp / 3
        # empty_like keeps `sines`' (transposed) strides, as upstream's randn_like does, so the same draws land on
        # the same samples.
        noise = noise_amp * torch.empty_like(sines).normal_(generator=generator)
        return sines * uv + noise

    def forward(self, f0: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """f0 [B, L, 1] Hz per sample -> excitation [B, L, 1]."""
        source = torch.tanh(self.l_linear(self._sines(f0, generator)))
        # Upstream also draws its noise branch here, which HiFT discards; drawn too so the RNG advances identically.
        torch.empty_like(f0).normal_(generator=generator)
        return source


class HiFTGenerator(nn.Module):
    """HiFT generator: mel [B, in_channels, T] -> audio [B, T * prod(upsample_rates) * hop_len].

    Defaults are the published CosyVoice2 values (24 kHz, 480 samples per mel frame). The F0 predictor defaults to
    ConvRNNF0Predictor(1, in_channels, base_channels), the published one.
    """

    def __init__(
        self,
        in_channels: int = 80,
        base_channels: int = 512,
        nb_harmonics: int = 8,
        sampling_rate: int = 24000,
        nsf_alpha: float = 0.1,
        nsf_sigma: float = 0.003,
        nsf_voiced_threshold: float = 10,
        upsample_rates: tuple[int, ...] | list[int] = PUBLISHED_UPSAMPLE_RATES,
        upsample_kernel_sizes: tuple[int, ...] | list[int] = PUBLISHED_UPSAMPLE_KERNEL_SIZES,
        istft_params: dict[str, int] | None = None,
        resblock_kernel_sizes: tuple[int, ...] | list[int] = PUBLISHED_RESBLOCK_KERNEL_SIZES,
        resblock_dilation_sizes: tuple[tuple[int, ...], ...] | list[list[int]] = PUBLISHED_DILATIONS,
        source_resblock_kernel_sizes: tuple[int, ...] | list[int] = PUBLISHED_SOURCE_RESBLOCK_KERNEL_SIZES,
        source_resblock_dilation_sizes: tuple[tuple[int, ...], ...] | list[list[int]] = PUBLISHED_DILATIONS,
        lrelu_slope: float = 0.1,
        audio_limit: float = 0.99,
        f0_predictor: nn.Module | None = None,
    ) -> None:
        super().__init__()
        if sampling_rate == 22050:
            # Upstream switches to the older SineGen (per-sample phase) at 22.05 kHz, i.e. CosyVoice 1's HiFT.
            raise NotImplementedError("the 22.05 kHz (CosyVoice 1) source module is not implemented")
        istft_params = istft_params or {"n_fft": 16, "hop_len": 4}
        self.n_fft = istft_params["n_fft"]
        self.hop_len = istft_params["hop_len"]
        self.sampling_rate = sampling_rate
        self.lrelu_slope = lrelu_slope
        self.audio_limit = audio_limit
        self.num_kernels = len(resblock_kernel_sizes)
        self.upsample_scale = math.prod(upsample_rates) * self.hop_len  # audio samples per mel frame
        spec_channels = self.n_fft + 2  # real and imaginary halves of n_fft // 2 + 1 bins

        self.m_source = SourceModuleHnNSF(
            sampling_rate, self.upsample_scale, nb_harmonics, nsf_alpha, nsf_sigma, nsf_voiced_threshold
        )
        self.conv_pre = weight_norm(nn.Conv1d(in_channels, base_channels, 7, padding=3))
        self.ups = nn.ModuleList(
            weight_norm(
                nn.ConvTranspose1d(base_channels // 2**i, base_channels // 2 ** (i + 1), k, u, padding=(k - u) // 2)
            )
            for i, (u, k) in enumerate(zip(upsample_rates, upsample_kernel_sizes, strict=True))
        )

        # The source enters every stage: its STFT (at the final frame rate) is strided down to that stage's rate.
        rates = [1, *upsample_rates[::-1][:-1]]
        down_rates = [math.prod(rates[: n + 1]) for n in range(len(rates))][::-1]
        self.source_downs = nn.ModuleList()
        self.source_resblocks = nn.ModuleList()
        for i, (u, k, d) in enumerate(
            zip(down_rates, source_resblock_kernel_sizes, source_resblock_dilation_sizes, strict=False)
        ):
            ch = base_channels // 2 ** (i + 1)
            down = nn.Conv1d(spec_channels, ch, 1) if u == 1 else nn.Conv1d(spec_channels, ch, u * 2, u, padding=u // 2)
            self.source_downs.append(down)
            self.source_resblocks.append(ResBlock(ch, k, d))

        self.resblocks = nn.ModuleList(
            ResBlock(base_channels // 2 ** (i + 1), k, d)
            for i in range(len(self.ups))
            for k, d in zip(resblock_kernel_sizes, resblock_dilation_sizes, strict=True)
        )
        ch = base_channels // 2 ** len(self.ups)
        self.conv_post = weight_norm(nn.Conv1d(ch, spec_channels, 7, padding=3))
        # Periodic Hann (scipy's get_window("hann", fftbins=True)); not a state-dict entry, as upstream.
        window = torch.hann_window(self.n_fft, periodic=True, dtype=torch.float64).float()
        self.register_buffer("stft_window", window, persistent=False)
        self.f0_predictor = (
            f0_predictor if f0_predictor is not None else ConvRNNF0Predictor(1, in_channels, base_channels)
        )

    def _stft(self, x: torch.Tensor) -> torch.Tensor:
        """[B, L] -> [B, n_fft + 2, L // hop + 1]: real parts then imaginary parts."""
        spec = torch.stft(x, self.n_fft, self.hop_len, self.n_fft, window=self.stft_window, return_complex=True)
        return torch.cat([spec.real, spec.imag], dim=1)

    def decode(self, mel: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        """mel [B, C, T] and source [B, 1, T * upsample_scale] -> audio [B, T * upsample_scale]."""
        s_stft = self._stft(source.squeeze(1))
        x = self.conv_pre(mel)
        for i, up in enumerate(self.ups):
            x = up(F.leaky_relu(x, self.lrelu_slope))
            if i == len(self.ups) - 1:
                x = F.pad(x, (1, 0), mode="reflect")  # one frame to match the source STFT's L // hop + 1 frames
            x = x + self.source_resblocks[i](self.source_downs[i](s_stft))
            blocks = self.resblocks[i * self.num_kernels : (i + 1) * self.num_kernels]
            x = sum(block(x) for block in blocks) / self.num_kernels
        x = self.conv_post(F.leaky_relu(x))  # default slope 0.01 here, as upstream
        bins = self.n_fft // 2 + 1
        magnitude = torch.exp(x[:, :bins]).clip(max=1e2)
        phase = torch.sin(x[:, bins:])  # upstream's sin: the phase stays in [-1, 1] rad, kept for parity
        spec = torch.complex(magnitude * torch.cos(phase), magnitude * torch.sin(phase))
        audio = torch.istft(spec, self.n_fft, self.hop_len, self.n_fft, window=self.stft_window)
        return audio.clamp(-self.audio_limit, self.audio_limit)

    @torch.inference_mode()
    def inference(
        self,
        speech_feat: torch.Tensor,
        cache_source: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """mel [B, in_channels, T] -> (audio [B, T * upsample_scale], source [B, 1, T * upsample_scale]).

        `cache_source` [B, 1, S] (the tail of the previous chunk's returned source, in streaming) replaces the first
        S samples of this chunk's source, so the excitation is continuous across the join (upstream's anti-glitch).
        """
        f0 = self.f0_predictor(speech_feat)  # [B, T]
        f0 = F.interpolate(f0[:, None], scale_factor=float(self.upsample_scale), mode="nearest")  # [B, 1, L]
        source = self.m_source(f0.transpose(1, 2), generator).transpose(1, 2)  # [B, 1, L]
        if cache_source is not None and cache_source.shape[2] > 0:
            if cache_source.shape[2] > source.shape[2]:
                raise ValueError(f"cache_source has {cache_source.shape[2]} samples, the chunk only {source.shape[2]}")
            source[:, :, : cache_source.shape[2]] = cache_source
        return self.decode(speech_feat, source), source


def hift_state_dict(checkpoint: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A loaded `hift.pt` as HiFTGenerator keys: upstream strips a `generator.` prefix (HiFi-GAN training wrapper)."""
    return {k.replace("generator.", ""): v for k, v in checkpoint.items()}
