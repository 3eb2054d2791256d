"""CosyVoice2's reference front end: what a zero-shot prompt needs from a reference recording.

Three features, each as the published checkpoint was trained on them:

- `prompt_mel(wav_24k)`: the flow's prompt features, [1, T, 80] at 50 frames/s (hop 480 at 24 kHz): the natural log
  of the clamped magnitude mel spectrogram of Matcha-TTS's `mel_spectrogram` with the yaml's `feat_extractor`
  arguments (n_fft 1920, hop 480, window 1920, fmin 0, fmax 8000, center False, Slaney mel filters).
- `speaker_embedding(wav_16k)`: CAM++ (`campplus.onnx`) on Kaldi fbank features (80 bins, 25 ms / 10 ms frames,
  povey window, no dither), mean-normalised over time; a 192-d x-vector for the LLM and the flow.
- `speech_tokens(wav_16k)`: the V2 speech tokenizer (`speech_tokenizer_v2.onnx`) on Whisper's 128-bin log-mel
  spectrogram (n_fft 400, hop 160, log10, 8-decade dynamic range, (x + 4) / 4): tokens in 0..6560 at 25 Hz.

The features are our own code (torch.stft and a Slaney filterbank; kaldi-native-fbank for the fbank), checked
against librosa and torchaudio.compliance.kaldi in tests/cosyvoice2/test_frontend.py. Nothing here needs Triton.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

# The published feat_extractor section of cosyvoice2.yaml (matcha.utils.audio.mel_spectrogram's arguments).
PUBLISHED_FEAT_EXTRACTOR: dict[str, Any] = {
    "n_fft": 1920,
    "num_mels": 80,
    "sampling_rate": 24000,
    "hop_size": 480,
    "win_size": 1920,
    "fmin": 0,
    "fmax": 8000,
    "center": False,
}
TOKENIZER_SAMPLE_RATE = 16000  # speech tokens and the speaker embedding are computed at 16 kHz
SPEECH_TOKEN_RATE = 25  # tokens per second: 100 mel frames/s, downsampled 4x inside the tokenizer
# Upstream refuses longer references: the tokenizer was trained on Whisper's 30-second windows.
MAX_TOKENIZER_SECONDS = 30.0
WHISPER_N_FFT = 400
WHISPER_HOP = 160
WHISPER_MELS = 128
FBANK_BINS = 80
EMBEDDING_SIZE = 192
CAMPPLUS_FILE = "campplus.onnx"
SPEECH_TOKENIZER_FILE = "speech_tokenizer_v2.onnx"


def _hz_to_slaney_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney's Auditory Toolbox mel scale: linear (200/3 Hz per mel) below 1 kHz, logarithmic above."""
    f_sp = 200.0 / 3
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = np.log(6.4) / 27.0
    hz = np.asarray(hz, dtype=np.float64)
    linear = hz / f_sp
    # np.maximum keeps log() away from 0 Hz; those entries take the linear branch anyway.
    logarithmic = min_log_mel + np.log(np.maximum(hz, min_log_hz) / min_log_hz) / logstep
    return np.where(hz >= min_log_hz, logarithmic, linear)


def _slaney_mel_to_hz(mel: np.ndarray) -> np.ndarray:
    f_sp = 200.0 / 3
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = np.log(6.4) / 27.0
    mel = np.asarray(mel, dtype=np.float64)
    return np.where(mel >= min_log_mel, min_log_hz * np.exp(logstep * (mel - min_log_mel)), f_sp * mel)


@functools.lru_cache(maxsize=8)
def slaney_mel_filterbank(
    sample_rate: int, n_fft: int, n_mels: int, fmin: float = 0.0, fmax: float | None = None
) -> np.ndarray:
    """Triangular mel filters [n_mels, n_fft // 2 + 1] on the Slaney mel scale with Slaney (area) normalisation.

    This is the filterbank `librosa.filters.mel` builds with its defaults (htk=False, norm="slaney"), which is what
    both Matcha's mel_spectrogram and Whisper's mel_filters.npz use. librosa is not in the Triton environment, so it
    is written here (float64 arithmetic, float32 result, like librosa). Cached: the arrays are read-only.
    """
    top = sample_rate / 2 if fmax is None else float(fmax)
    fft_freqs = np.linspace(0.0, sample_rate / 2, 1 + n_fft // 2)
    # n_mels + 2 edges: filter i rises from edge i to its peak at edge i + 1 and falls to edge i + 2.
    edges = _slaney_mel_to_hz(np.linspace(_hz_to_slaney_mel(fmin), _hz_to_slaney_mel(top), n_mels + 2))
    widths = np.diff(edges)
    ramps = edges[:, None] - fft_freqs[None, :]
    rising = -ramps[:-2] / widths[:-1, None]
    falling = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(rising, falling))
    # Slaney normalisation: every filter has the same area, so wide high-frequency bands are not louder.
    weights *= (2.0 / (edges[2:] - edges[:-2]))[:, None]
    result = weights.astype(np.float32)
    result.flags.writeable = False
    return result


def _mono(wav: np.ndarray | torch.Tensor) -> torch.Tensor:
    """A float32 1-D waveform from [N] or [1, N], numpy or torch."""
    tensor = torch.as_tensor(np.asarray(wav) if not isinstance(wav, torch.Tensor) else wav)
    if tensor.dim() == 2 and tensor.shape[0] == 1:
        tensor = tensor[0]
    if tensor.dim() != 1:
        raise ValueError(f"expected a mono waveform [N] or [1, N], got shape {tuple(tensor.shape)}")
    return tensor.detach().to(device="cpu", dtype=torch.float32)


def mel_spectrogram(
    wav: np.ndarray | torch.Tensor,
    n_fft: int,
    num_mels: int,
    sampling_rate: int,
    hop_size: int,
    win_size: int,
    fmin: float,
    fmax: float | None,
    center: bool = False,
) -> torch.Tensor:
    """Matcha-TTS's mel spectrogram (the arguments of cosyvoice2.yaml's `feat_extractor`): [num_mels, frames].

    Reflect-pad (n_fft - hop) / 2 on both sides, STFT with a periodic Hann window, magnitude sqrt(re^2 + im^2 + 1e-9),
    Slaney mel filters, natural log of max(x, 1e-5). With center False that gives exactly len // hop frames, frame t
    centred on sample t * hop + hop / 2, which is what lets 2 mel frames line up with each 25 Hz speech token.
    """
    audio = _mono(wav)
    pad = (n_fft - hop_size) // 2
    if audio.shape[0] <= pad:
        raise ValueError(f"audio of {audio.shape[0]} samples is too short for the mel spectrogram (needs > {pad})")
    padded = torch.nn.functional.pad(audio[None, None], (pad, pad), mode="reflect")[0, 0]
    spec = torch.stft(
        padded,
        n_fft,
        hop_length=hop_size,
        win_length=win_size,
        window=torch.hann_window(win_size),
        center=center,
        pad_mode="reflect",
        normalized=False,
        onesided=True,
        return_complex=True,
    )
    # The 1e-9 inside the root (not a clamp after it) is part of the trained features' definition.
    magnitude = torch.sqrt(spec.real.pow(2) + spec.imag.pow(2) + 1e-9)
    filters = torch.from_numpy(np.array(slaney_mel_filterbank(sampling_rate, n_fft, num_mels, fmin, fmax)))
    return torch.log(torch.clamp(filters @ magnitude, min=1e-5))


def prompt_mel(wav_24k: np.ndarray | torch.Tensor, feat_extractor: Mapping[str, Any] | None = None) -> torch.Tensor:
    """The flow's prompt features [1, T, 80] of a 24 kHz reference (T = samples // 480 with the published yaml)."""
    params = dict(PUBLISHED_FEAT_EXTRACTOR if feat_extractor is None else feat_extractor)
    return mel_spectrogram(wav_24k, **params).transpose(0, 1).unsqueeze(0).contiguous()


def whisper_log_mel(wav_16k: np.ndarray | torch.Tensor, n_mels: int = WHISPER_MELS) -> torch.Tensor:
    """Whisper's log-mel spectrogram of 16 kHz audio, [1, n_mels, samples // 160], as the speech tokenizer takes it.

    Centred STFT (n_fft 400, hop 160, periodic Hann, reflect padding) without its last frame, power spectrum, Slaney
    mel filters, log10 of max(x, 1e-10), floored at 8 below the utterance's maximum, then (x + 4) / 4. Note that the
    floor depends on the whole utterance: features of a clip are not those of a longer recording cut afterwards.
    """
    audio = _mono(wav_16k)
    if audio.shape[0] <= WHISPER_N_FFT // 2:
        raise ValueError(f"audio of {audio.shape[0]} samples is too short for the speech tokenizer's features")
    spec = torch.stft(audio, WHISPER_N_FFT, WHISPER_HOP, window=torch.hann_window(WHISPER_N_FFT), return_complex=True)
    # Whisper drops the last centred frame, so N samples give N // 160 frames (exactly 100 per second).
    power = spec[..., :-1].abs() ** 2
    filters = torch.from_numpy(np.array(slaney_mel_filterbank(TOKENIZER_SAMPLE_RATE, WHISPER_N_FFT, n_mels)))
    log_spec = torch.clamp(filters @ power, min=1e-10).log10()
    log_spec = torch.maximum(log_spec, log_spec.max() - 8.0)
    return ((log_spec + 4.0) / 4.0).unsqueeze(0)


def kaldi_fbank(wav_16k: np.ndarray | torch.Tensor, num_bins: int = FBANK_BINS) -> np.ndarray:
    """Kaldi fbank features [frames, num_bins] of 16 kHz audio, as upstream computes them for CAM++.

    Upstream calls torchaudio.compliance.kaldi.fbank(speech, num_mel_bins=80, dither=0, sample_frequency=16000) on
    float audio in [-1, 1] (not rescaled to 16-bit range); every other option is Kaldi's default: 25 ms frames every
    10 ms with snip_edges, povey window, pre-emphasis 0.97, DC removal, power spectrum, 20 Hz to Nyquist, log with
    a float-epsilon floor. kaldi-native-fbank computes the same (torchaudio has no build for torch 2.13).
    """
    import kaldi_native_fbank as knf  # imported here: only the embedding needs it

    audio = _mono(wav_16k).numpy()
    options = knf.FbankOptions()
    options.frame_opts.samp_freq = TOKENIZER_SAMPLE_RATE
    options.frame_opts.dither = 0.0  # kaldi-native-fbank's default dither (3e-5) would make features random
    options.frame_opts.window_type = "povey"
    options.frame_opts.snip_edges = True
    options.mel_opts.num_bins = num_bins
    options.use_energy = False
    fbank = knf.OnlineFbank(options)
    fbank.accept_waveform(TOKENIZER_SAMPLE_RATE, audio)
    fbank.input_finished()
    frames = fbank.num_frames_ready
    if frames == 0:
        raise ValueError(f"audio of {audio.shape[0]} samples is shorter than one 25 ms fbank frame")
    return np.stack([np.asarray(fbank.get_frame(i), dtype=np.float32) for i in range(frames)])


def align_prompt(
    prompt_feat: torch.Tensor, prompt_tokens: np.ndarray, token_mel_ratio: int = 2
) -> tuple[torch.Tensor, np.ndarray]:
    """Trim a prompt so that its mel has exactly token_mel_ratio frames per speech token (what the flow assumes).

    The two features come from different sample rates and framings, so their lengths can differ by a frame or a
    token; upstream cuts both to the shorter. Returns (prompt_feat [1, ratio * n, 80], prompt_tokens [n]).
    """
    n = min(prompt_feat.shape[1] // token_mel_ratio, len(prompt_tokens))
    return prompt_feat[:, : token_mel_ratio * n], np.asarray(prompt_tokens)[:n]


def _onnx_session(path: Path, providers: Sequence[str] | None, threads: int) -> Any:
    """One onnxruntime session. Upstream runs both front-end models with one intra-op thread: a serving process runs
    many requests side by side, and one session grabbing every core for a short reference only slows the others."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    chosen = list(providers) if providers else ["CPUExecutionProvider"]
    return onnxruntime.InferenceSession(str(path), sess_options=options, providers=chosen)


class SpeakerEncoder:
    """CAM++ (`campplus.onnx`): 16 kHz audio -> 192-d x-vector. Thread-safe (onnxruntime sessions are).

    The input is fed by position, as upstream does: the published name ("input") is not part of any contract, so a
    re-exported model with another name works too."""

    def __init__(self, path: Path, providers: Sequence[str] | None = None, threads: int = 1) -> None:
        self.session = _onnx_session(path, providers, threads)
        self._input = self.session.get_inputs()[0].name

    def __call__(self, wav_16k: np.ndarray | torch.Tensor) -> np.ndarray:
        feats = kaldi_fbank(wav_16k)
        # Per-utterance mean normalisation: CAM++ was trained on mean-normalised fbank.
        feats = feats - feats.mean(axis=0, keepdims=True)
        (embedding,) = self.session.run(None, {self._input: feats[None].astype(np.float32)})[:1]
        return np.asarray(embedding, dtype=np.float32).reshape(-1)


class SpeechTokenizer:
    """The V2 speech tokenizer (`speech_tokenizer_v2.onnx`): at most 30 s of 16 kHz audio -> tokens 0..6560 at 25 Hz.
    Thread-safe; inputs fed by position ("feats", "feats_length" published)."""

    def __init__(self, path: Path, providers: Sequence[str] | None = None, threads: int = 1) -> None:
        self.session = _onnx_session(path, providers, threads)
        self._inputs = [i.name for i in self.session.get_inputs()[:2]]

    def __call__(self, wav_16k: np.ndarray | torch.Tensor) -> np.ndarray:
        audio = _mono(wav_16k)
        if audio.shape[0] > MAX_TOKENIZER_SECONDS * TOKENIZER_SAMPLE_RATE:
            raise ValueError(
                f"reference of {audio.shape[0] / TOKENIZER_SAMPLE_RATE:.1f} s: the speech tokenizer takes at most "
                f"{MAX_TOKENIZER_SECONDS:.0f} s"
            )
        feats = whisper_log_mel(audio).numpy()
        feed = {self._inputs[0]: feats, self._inputs[1]: np.array([feats.shape[2]], dtype=np.int32)}
        (tokens,) = self.session.run(None, feed)[:1]
        return np.asarray(tokens).reshape(-1).astype(np.int64)


class CosyVoice2Frontend:
    """The reference features of a CosyVoice2 checkpoint: its two ONNX models, each loaded once, and the prompt mel.

    `providers` are onnxruntime execution providers (CPU by default; CUDA on GPU hosts). The Triton backend serves
    the two ONNX models as models of their own (cosyvoice2_speech_tokenizer, cosyvoice2_speaker_embedding) through
    `SpeechTokenizer` and `SpeakerEncoder`; this class puts the three features side by side for tests and tools.
    """

    def __init__(
        self,
        campplus: Path,
        speech_tokenizer: Path,
        feat_extractor: Mapping[str, Any] | None = None,
        providers: Sequence[str] | None = None,
        threads: int = 1,
    ) -> None:
        self.speaker_encoder = SpeakerEncoder(campplus, providers, threads)
        self.tokenizer = SpeechTokenizer(speech_tokenizer, providers, threads)
        self.feat_extractor = dict(PUBLISHED_FEAT_EXTRACTOR if feat_extractor is None else feat_extractor)

    @classmethod
    def from_checkpoint(
        cls, directory: Path, providers: Sequence[str] | None = None, threads: int = 1
    ) -> CosyVoice2Frontend:
        """The front end of a checkpoint directory in the published layout (its yaml's feat_extractor)."""
        from voice_triton.cosyvoice2.config import read_config

        config = read_config(directory)
        return cls(
            directory / CAMPPLUS_FILE,
            directory / SPEECH_TOKENIZER_FILE,
            feat_extractor=config.feat_extractor,
            providers=providers,
            threads=threads,
        )

    def prompt_mel(self, wav_24k: np.ndarray | torch.Tensor) -> torch.Tensor:
        """The flow's prompt features [1, T, 80] of 24 kHz audio."""
        return prompt_mel(wav_24k, self.feat_extractor)

    def speaker_embedding(self, wav_16k: np.ndarray | torch.Tensor) -> np.ndarray:
        """CAM++'s x-vector [192] (float32) of 16 kHz audio."""
        return self.speaker_encoder(wav_16k)

    def speech_tokens(self, wav_16k: np.ndarray | torch.Tensor) -> np.ndarray:
        """Speech tokens (int64, 0..6560, 25 per second) of at most 30 s of 16 kHz audio."""
        return self.tokenizer(wav_16k)
