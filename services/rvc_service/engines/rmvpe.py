"""RMVPE pitch estimator (deep U-Net + BiGRU over a log-mel spectrogram), loading the `rmvpe.pt` state dict that RVC
users download. The module tree reproduces the original's parameter names (unet.encoder.layers.N.conv.M.conv.K...,
cnn, fc.0.gru, fc.1); the weights themselves never ship with a package."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import librosa
import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from torch import nn

N_MELS = 128
N_CLASS = 360
_CENTS = 20 * np.arange(N_CLASS) + 1997.3794084376191


class ConvBlockRes(nn.Module):
    def __init__(self, cin: int, cout: int, momentum: float = 0.01) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(cin, cout, 3, 1, 1, bias=False),
            nn.BatchNorm2d(cout, momentum=momentum),
            nn.ReLU(),
            nn.Conv2d(cout, cout, 3, 1, 1, bias=False),
            nn.BatchNorm2d(cout, momentum=momentum),
            nn.ReLU(),
        )
        self.shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = self.conv(x)
        return y + (self.shortcut(x) if self.shortcut is not None else x)


class ResEncoderBlock(nn.Module):
    def __init__(self, cin: int, cout: int, pool: tuple[int, int] | None, n_blocks: int) -> None:
        super().__init__()
        self.conv = nn.ModuleList([ConvBlockRes(cin, cout)] + [ConvBlockRes(cout, cout) for _ in range(n_blocks - 1)])
        self.pool = nn.AvgPool2d(pool) if pool is not None else None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        for c in self.conv:
            x = c(x)
        return x, (self.pool(x) if self.pool is not None else x)


class Encoder(nn.Module):
    def __init__(self, cin: int, n_layers: int, pool: tuple[int, int], n_blocks: int, cout: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(cin, momentum=0.01)
        self.layers = nn.ModuleList()
        for _ in range(n_layers):
            self.layers.append(ResEncoderBlock(cin, cout, pool, n_blocks))
            cin, cout = cout, cout * 2
        self.out_channel = cout

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        x = self.bn(x)
        skips = []
        for layer in self.layers:
            skip, x = layer(x)
            skips.append(skip)
        return x, skips


class Intermediate(nn.Module):
    def __init__(self, cin: int, cout: int, n_inters: int, n_blocks: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            [ResEncoderBlock(cin, cout, None, n_blocks)]
            + [ResEncoderBlock(cout, cout, None, n_blocks) for _ in range(n_inters - 1)]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)[0]
        return x


class ResDecoderBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: tuple[int, int], n_blocks: int) -> None:
        super().__init__()
        out_pad = (0, 1) if stride == (1, 2) else (1, 1)
        self.conv1 = nn.Sequential(
            nn.ConvTranspose2d(cin, cout, 3, stride, padding=1, output_padding=out_pad, bias=False),
            nn.BatchNorm2d(cout, momentum=0.01),
            nn.ReLU(),
        )
        self.conv2 = nn.ModuleList(
            [ConvBlockRes(cout * 2, cout)] + [ConvBlockRes(cout, cout) for _ in range(n_blocks - 1)]
        )

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = torch.cat((self.conv1(x), skip), dim=1)
        for c in self.conv2:
            x = c(x)
        return x


class Decoder(nn.Module):
    def __init__(self, cin: int, n_layers: int, stride: tuple[int, int], n_blocks: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList()
        for _ in range(n_layers):
            self.layers.append(ResDecoderBlock(cin, cin // 2, stride, n_blocks))
            cin //= 2

    def forward(self, x: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        for layer, skip in zip(self.layers, reversed(skips), strict=True):
            x = layer(x, skip)
        return x


class DeepUnet(nn.Module):
    def __init__(self, pool: tuple[int, int], n_blocks: int, layers: int = 5, inters: int = 4, cout: int = 16) -> None:
        super().__init__()
        self.encoder = Encoder(1, layers, pool, n_blocks, cout)
        self.intermediate = Intermediate(self.encoder.out_channel // 2, self.encoder.out_channel, inters, n_blocks)
        self.decoder = Decoder(self.encoder.out_channel, layers, pool, n_blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, skips = self.encoder(x)
        y: torch.Tensor = self.decoder(self.intermediate(x), skips)
        return y


class BiGRU(nn.Module):
    def __init__(self, n_in: int, hidden: int, layers: int) -> None:
        super().__init__()
        self.gru = nn.GRU(n_in, hidden, num_layers=layers, batch_first=True, bidirectional=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = self.gru(x)[0]
        return y


class E2E(nn.Module):
    """The RMVPE network as RVC instantiates it: E2E(n_blocks=4, n_gru=1, kernel_size=(2, 2))."""

    def __init__(self, n_blocks: int = 4, n_gru: int = 1, pool: tuple[int, int] = (2, 2)) -> None:
        super().__init__()
        self.unet = DeepUnet(pool, n_blocks)
        self.cnn = nn.Conv2d(16, 3, 3, padding=1)
        if n_gru:
            self.fc = nn.Sequential(
                BiGRU(3 * N_MELS, 256, n_gru), nn.Linear(512, N_CLASS), nn.Dropout(0.25), nn.Sigmoid()
            )
        else:
            self.fc = nn.Sequential(nn.Linear(3 * N_MELS, N_CLASS), nn.Dropout(0.25), nn.Sigmoid())

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        # mel [b, n_mels, t] -> salience [b, t, 360]
        x = self.cnn(self.unet(mel.transpose(-1, -2).unsqueeze(1)))
        salience: torch.Tensor = self.fc(x.transpose(1, 2).flatten(-2))
        return salience


class Rmvpe:
    """Loaded RMVPE model; `infer(audio16k)` gives F0 in Hz per 10 ms frame (0 where unvoiced)."""

    sr = 16000
    hop = 160
    n_fft = 1024

    def __init__(self, path: str | Path, device: torch.device) -> None:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
            state = state["model"]
        self.device = device
        self.model = E2E()
        self.model.load_state_dict(state)  # strict: a wrong file fails here, not at inference
        self.model.eval().to(device)
        mel = librosa.filters.mel(sr=self.sr, n_fft=self.n_fft, n_mels=N_MELS, fmin=30, fmax=8000, htk=True)
        self.mel_basis = torch.from_numpy(mel).float().to(device)
        self.window = torch.hann_window(self.n_fft, device=device)

    def mel(self, audio: torch.Tensor) -> torch.Tensor:
        spec = torch.stft(
            audio, self.n_fft, self.hop, self.n_fft, window=self.window, center=True, return_complex=True
        ).abs()
        return torch.log(torch.clamp(self.mel_basis @ spec, min=1e-5))

    @torch.inference_mode()
    def salience(self, audio: NDArray[np.floating[Any]]) -> NDArray[np.float32]:
        mel = self.mel(torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32)).to(self.device)[None])
        n = mel.shape[-1]
        mel = F.pad(mel, (0, 32 * ((n - 1) // 32 + 1) - n))  # the U-Net halves time 5 times
        sal: NDArray[np.float32] = self.model(mel)[0, :n].float().cpu().numpy()
        return sal

    def infer(self, audio: NDArray[np.floating[Any]], threshold: float = 0.03) -> NDArray[np.float32]:
        return decode_salience(self.salience(audio), threshold)


def decode_salience(sal: NDArray[np.float32], threshold: float) -> NDArray[np.float32]:
    """Weighted average of cents over the 9 bins around each frame's peak; 0 Hz where the peak is below threshold."""
    center = np.argmax(sal, axis=1) + 4
    padded = np.pad(sal, ((0, 0), (4, 4)))
    cents = np.pad(_CENTS, (4, 4))
    idx = center[:, None] + np.arange(-4, 5)[None, :]
    w = np.take_along_axis(padded, idx, axis=1)
    c = (w * cents[idx]).sum(1) / np.maximum(w.sum(1), 1e-12)
    f0 = 10 * 2 ** (c / 1200)
    f0[padded.max(axis=1) <= threshold] = 0
    hz: NDArray[np.float32] = f0.astype(np.float32)
    return hz
