"""CosyVoice2 streaming token2wav: speech tokens as they arrive -> 24 kHz audio chunks (flow matching + HiFT).

Pure torch, no Triton: the token2wav Triton model wraps one `Token2WavStream` per request (or session).

The streaming scheme is CosyVoice2's published one (upstream `CosyVoice2Model.token2wav`/`tts` and the official Triton
runtime `runtime/triton_trtllm`), written here from its description:

* Chunks of tokens ("hops"). A chunk is decoded once `hop + pre_lookahead` tokens beyond the emitted ones exist: the
  last `pre_lookahead` (3) tokens are right context for the flow encoder only and are decoded with the next chunk.
* The flow is re-run over *all* tokens so far (prompt tokens first) with the encoder's and estimator's static-chunk
  attention (`streaming=True`, `finalize=False`); the mel frames of tokens already emitted are sliced off
  (`token_offset * token_mel_ratio`). The flow's noise is a fixed buffer indexed by frame, so every re-run starts
  the same frames from the same noise.
* HiFT joins: each chunk is vocoded together with the last `mel_cache_frames` (8) mel frames of the previous chunk,
  whose audio was held back; the first 8 * 480 = 3840 samples of its excitation are replaced by the previous chunk's
  source for those frames (the source cache), and its first 3840 samples are cross-faded with the held-back audio by
  a Hamming window of 2 * 3840 (rising half on the new audio, falling half on the old). The last 3840 samples of
  every non-final chunk are held back for the next join.
* The final chunk (`finish`) decodes all tokens with `finalize=True` and full attention (`streaming=False`, as both
  upstream paths do) and emits everything left.

Audio length: a non-final chunk of `h` tokens emits 960 h samples, less 3840 held back after the first chunk and
given back by the final chunk; so a finished stream of N tokens has exactly 480 * 2 * N samples, the length of one
whole decode (`decode_whole`), however the chunks fell.

Schedule (`Token2WavSchedule`): issue 24 names the official Triton runtime's default ("exponential"): a first hop of
15 tokens, then 25 * 2^k (25, 50, 100, ...), uncapped there; `max_hop_tokens` caps it. Upstream's own
`CosyVoice2Model.tts` differs: every hop is 25 tokens (the encoder's `static_chunk_size`), and the first hop is
lengthened by the prompt's padding to a multiple of 25 so that (prompt + emitted) tokens always end on an encoder
chunk boundary; `align_first_hop=True` with `first_hop_tokens=25, hop_scale=1` reproduces that schedule.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from voice_triton.cosyvoice2.flow import CausalMaskedDiffWithXvec
from voice_triton.cosyvoice2.hift import HiFTGenerator

TokenInput = Sequence[int] | np.ndarray | torch.Tensor


@dataclass(frozen=True)
class Token2WavSchedule:
    """When chunks are decoded and how they are joined; defaults are the published CosyVoice2 streaming values.

    first_hop_tokens: tokens emitted by the first chunk (15: the official Triton runtime's first hop).
    hop_tokens, hop_scale: chunk k >= 1 emits `hop_tokens * hop_scale ** (k - 1)` tokens (25, 50, 100, ...).
    max_hop_tokens: cap on a hop (None: uncapped, as published).
    align_first_hop: lengthen the first hop so that prompt + first hop is a multiple of `hop_tokens` (upstream
        `CosyVoice2Model.tts`, whose chunks then end on the encoder's 25-token attention chunks).
    pre_lookahead_tokens: right context of the flow encoder (the flow's own `pre_lookahead_len`, 3 published).
    n_timesteps: Euler steps of the flow matching (10).
    mel_cache_frames: mel frames re-vocoded with the next chunk (8); the source cache and the cross-fade are
        `mel_cache_frames` times HiFT's samples per frame (8 * 480 = 3840 samples).
    cross_fade: False vocodes each chunk's new frames alone and concatenates them (no mel/source cache, no
        cross-fade); only for measuring what the join buys.
    final_streaming: decode the final chunk with static-chunk attention too (upstream uses full attention).
    """

    first_hop_tokens: int = 15
    hop_tokens: int = 25
    hop_scale: int = 2
    max_hop_tokens: int | None = None
    align_first_hop: bool = False
    pre_lookahead_tokens: int = 3
    n_timesteps: int = 10
    mel_cache_frames: int = 8
    cross_fade: bool = True
    final_streaming: bool = False

    def __post_init__(self) -> None:
        for name in ("first_hop_tokens", "hop_tokens", "hop_scale", "n_timesteps", "mel_cache_frames"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.pre_lookahead_tokens < 0:
            raise ValueError(f"pre_lookahead_tokens must not be negative, got {self.pre_lookahead_tokens}")
        if self.max_hop_tokens is not None and self.max_hop_tokens < self.hop_tokens:
            raise ValueError(f"max_hop_tokens ({self.max_hop_tokens}) is below hop_tokens ({self.hop_tokens})")

    def hop(self, index: int, prompt_tokens: int = 0) -> int:
        """Tokens emitted by chunk `index` (0-based) of a stream whose prompt has `prompt_tokens` tokens."""
        if index == 0:
            if self.align_first_hop:
                # Upstream pads the prompt to a whole number of hops: prompt + first hop ends on a chunk boundary.
                return self.first_hop_tokens + (-prompt_tokens) % self.hop_tokens
            return self.first_hop_tokens
        hop = self.hop_tokens * self.hop_scale ** (index - 1)
        return hop if self.max_hop_tokens is None else min(hop, self.max_hop_tokens)


def _as_token_list(tokens: TokenInput) -> list[int]:
    if isinstance(tokens, torch.Tensor):
        tokens = tokens.detach().cpu().numpy()
    array = np.asarray(tokens)
    if array.ndim == 2 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 1:
        raise ValueError(f"speech tokens must be one sequence, got shape {array.shape}")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"speech tokens must be integers, got {array.dtype}")
    return [int(t) for t in array]


def _device(module: torch.nn.Module) -> torch.device:
    return next(module.parameters()).device


def decode_whole(
    flow: CausalMaskedDiffWithXvec,
    hift: HiFTGenerator,
    tokens: TokenInput,
    prompt_token: torch.Tensor,
    prompt_feat: torch.Tensor,
    embedding: torch.Tensor,
    n_timesteps: int = 10,
    generator: torch.Generator | None = None,
) -> np.ndarray:
    """All tokens at once (flow with full attention, finalize=True; one HiFT call): 480 * 2 * N float32 samples."""
    ids = _as_token_list(tokens)
    if not ids:
        return np.zeros(0, dtype=np.float32)
    device = _device(flow)
    token = torch.tensor([ids], dtype=torch.long, device=device)
    mel = flow.inference(
        token,
        prompt_token.to(device),
        prompt_feat.to(device),
        embedding.to(device),
        n_timesteps=n_timesteps,
        finalize=True,
        streaming=False,
    )
    audio, _ = hift.inference(mel.to(_device(hift)), generator=generator)
    return audio[0].float().cpu().numpy()


class Token2WavStream:
    """One utterance's streaming decode: `add` tokens as they arrive, `finish` once the LLM is done.

    prompt_token (1, P) speech token ids of the reference, prompt_feat (1, 2P, 80) its mel frames, embedding (1, 192)
    its CAM++ x-vector. `generator` (on HiFT's device) seeds HiFT's excitation noise; None uses torch's global RNG.
    Not thread-safe: one caller feeds one stream.
    """

    def __init__(
        self,
        flow: CausalMaskedDiffWithXvec,
        hift: HiFTGenerator,
        prompt_token: torch.Tensor,
        prompt_feat: torch.Tensor,
        embedding: torch.Tensor,
        schedule: Token2WavSchedule | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        self.schedule = schedule or Token2WavSchedule()
        if self.schedule.pre_lookahead_tokens != flow.pre_lookahead_len:
            raise ValueError(
                f"schedule pre_lookahead_tokens={self.schedule.pre_lookahead_tokens} but the flow was built with "
                f"pre_lookahead_len={flow.pre_lookahead_len}"
            )
        if prompt_token.dim() != 2 or prompt_token.size(0) != 1:
            raise ValueError(f"prompt_token must be (1, P), got {tuple(prompt_token.shape)}")
        self.flow = flow
        self.hift = hift
        self._flow_device = _device(flow)
        self._hift_device = _device(hift)
        self.prompt_token = prompt_token.to(self._flow_device)
        self.prompt_feat = prompt_feat.to(self._flow_device)
        self.embedding = embedding.to(self._flow_device)
        self.generator = generator
        self.cache_samples = self.schedule.mel_cache_frames * hift.upsample_scale  # 8 * 480 = 3840
        # np.hamming(2L): rising half weighs the new chunk, falling half the held-back audio (as published).
        self._window = torch.hamming_window(2 * self.cache_samples, periodic=False, dtype=torch.float64).float()
        self._window = self._window.to(self._hift_device)
        first_frames = self.schedule.hop(0, self.prompt_token.size(1)) * flow.token_mel_ratio
        if self.schedule.cross_fade and first_frames < self.schedule.mel_cache_frames:
            raise ValueError(f"the first hop gives {first_frames} mel frames, fewer than the mel cache")
        self.tokens: list[int] = []
        self.token_offset = 0  # tokens whose audio has been emitted (less the held-back cache)
        self.chunk_hops: list[int] = []  # tokens emitted by each non-final chunk, in order
        self.finished = False
        self._cache_mel: torch.Tensor | None = None  # (1, 80, mel_cache_frames)
        self._cache_source: torch.Tensor | None = None  # (1, 1, cache_samples)
        self._cache_speech: torch.Tensor | None = None  # (1, cache_samples), not yet emitted

    def next_hop(self) -> int:
        """Tokens the next non-final chunk emits."""
        return self.schedule.hop(len(self.chunk_hops), self.prompt_token.size(1))

    def add(self, tokens: TokenInput) -> list[np.ndarray]:
        """Append speech tokens; return the audio chunks (float32, 24 kHz) that became ready (possibly none)."""
        if self.finished:
            raise RuntimeError("the stream is finished")
        self.tokens.extend(_as_token_list(tokens))
        chunks = []
        lookahead = self.schedule.pre_lookahead_tokens
        while len(self.tokens) - self.token_offset >= self.next_hop() + lookahead:
            hop = self.next_hop()
            end = self.token_offset + hop
            chunks.append(self._decode(self.tokens[: end + lookahead], finalize=False))
            self.token_offset = end
            self.chunk_hops.append(hop)
        return chunks

    def finish(self) -> np.ndarray:
        """Decode the remaining tokens (finalize=True) and return the rest of the audio; the stream is then closed."""
        if self.finished:
            raise RuntimeError("the stream is finished")
        self.finished = True
        if not self.tokens:
            return np.zeros(0, dtype=np.float32)
        return self._decode(self.tokens, finalize=True)

    def whole(self, tokens: TokenInput, generator: torch.Generator | None = None) -> np.ndarray:
        """One whole decode of `tokens` in this stream's voice (for comparison); leaves the stream untouched."""
        return decode_whole(
            self.flow,
            self.hift,
            tokens,
            self.prompt_token,
            self.prompt_feat,
            self.embedding,
            self.schedule.n_timesteps,
            generator,
        )

    @torch.inference_mode()
    def _decode(self, ids: list[int], finalize: bool) -> np.ndarray:
        """Flow over `ids` (all tokens so far), new frames only, joined to the previous chunk; the audio to emit."""
        token = torch.tensor([ids], dtype=torch.long, device=self._flow_device)
        mel = self.flow.inference(
            token,
            self.prompt_token,
            self.prompt_feat,
            self.embedding,
            n_timesteps=self.schedule.n_timesteps,
            finalize=finalize,
            streaming=self.schedule.final_streaming if finalize else True,
        )
        mel = mel[:, :, self.token_offset * self.flow.token_mel_ratio :].to(self._hift_device)
        if not self.schedule.cross_fade:
            audio, _ = self.hift.inference(mel, generator=self.generator)
            return audio[0].float().cpu().numpy()

        if self._cache_mel is not None:
            mel = torch.cat([self._cache_mel, mel], dim=2)  # re-vocode the held-back frames with the new ones
        audio, source = self.hift.inference(mel, cache_source=self._cache_source, generator=self.generator)
        if self._cache_speech is not None:
            n = self.cache_samples
            audio = audio.clone()
            audio[:, :n] = audio[:, :n] * self._window[:n] + self._cache_speech * self._window[n:]
        if finalize:
            self._cache_mel = self._cache_source = self._cache_speech = None
            return audio[0].float().cpu().numpy()
        # Hold back the tail: the next chunk re-renders these frames and fades into them.
        self._cache_mel = mel[:, :, -self.schedule.mel_cache_frames :]
        self._cache_source = source[:, :, -self.cache_samples :]
        self._cache_speech = audio[:, -self.cache_samples :]
        return audio[0, : -self.cache_samples].float().cpu().numpy()


def samples_for_tokens(tokens: int, flow: CausalMaskedDiffWithXvec, hift: HiFTGenerator) -> int:
    """Audio samples of `tokens` speech tokens: token_mel_ratio (2) frames of upsample_scale (480) samples each."""
    return tokens * flow.token_mel_ratio * hift.upsample_scale


__all__ = ["Token2WavSchedule", "Token2WavStream", "decode_whole", "load_token2wav", "samples_for_tokens"]


def load_token2wav(
    directory: Path, device: torch.device | str = "cpu"
) -> tuple[CausalMaskedDiffWithXvec, HiFTGenerator]:
    """The flow and HiFT of a published checkpoint directory: built from its cosyvoice2.yaml, flow.pt and hift.pt
    loaded strictly (a key or shape that differs from the yaml fails here, naming it)."""
    from voice_triton.cosyvoice2.config import build_hift, read_config
    from voice_triton.cosyvoice2.flow import build_flow
    from voice_triton.cosyvoice2.hift import hift_state_dict

    config = read_config(directory)
    flow = build_flow(config.flow)
    flow.load_state_dict(torch.load(Path(directory) / "flow.pt", map_location="cpu", weights_only=True), strict=True)
    hift = build_hift(config)
    hift_checkpoint = torch.load(Path(directory) / "hift.pt", map_location="cpu", weights_only=True)
    hift.load_state_dict(hift_state_dict(hift_checkpoint), strict=True)
    return flow.to(device).eval(), hift.to(device).eval()
