"""The CosyVoice2 front end (voice_triton.cosyvoice2.frontend): each feature against an independent implementation
where one is installed (librosa's filterbank and STFT, Matcha's mel_spectrogram from the upstream reference,
torchaudio.compliance.kaldi's fbank), the published rates (2 mel frames and 1 speech token per 40 ms, a 192-d
embedding), determinism, and the two ONNX models through onnxruntime on the tiny writer's graphs."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from voice_triton.cosyvoice2.frontend import (
    PUBLISHED_FEAT_EXTRACTOR,
    CosyVoice2Frontend,
    align_prompt,
    kaldi_fbank,
    mel_spectrogram,
    prompt_mel,
    slaney_mel_filterbank,
    whisper_log_mel,
)
from voice_triton.tiny.cosyvoice2 import ONNX_FILES, write_onnx_models

pytest.importorskip("onnx", reason="the tiny ONNX graphs are written with the onnx package")


def voice(sample_rate: int, seconds: float, pitch: float = 140.0, seed: int = 0) -> np.ndarray:
    """A speech-like test signal: a harmonic tone with a slow vibrato and a little noise, the same waveform at any
    sample rate (so a 16 kHz and a 24 kHz copy need no resampler)."""
    t = np.arange(round(sample_rate * seconds)) / sample_rate
    phase = 2 * np.pi * pitch * (t + 0.02 * np.sin(2 * np.pi * 3 * t))
    tone = sum(np.sin(k * phase) / k for k in range(1, 8))
    noise = np.random.default_rng(seed).normal(0.0, 0.01, t.shape)
    return (0.2 * tone * (0.6 + 0.4 * np.sin(2 * np.pi * 1.5 * t) ** 2) + noise).astype(np.float32)


@pytest.fixture(scope="module")
def onnx_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cosyvoice2-onnx")
    write_onnx_models(out, seed=0)
    return out


@pytest.fixture(scope="module")
def frontend(onnx_dir: Path) -> CosyVoice2Frontend:
    return CosyVoice2Frontend(onnx_dir / "campplus.onnx", onnx_dir / "speech_tokenizer_v2.onnx")


# -- features against independent implementations ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("sample_rate", "n_fft", "n_mels", "fmin", "fmax"),
    [
        (16000, 400, 128, 0.0, None),  # Whisper's mel_filters.npz (the speech tokenizer)
        (24000, 1920, 80, 0.0, 8000.0),  # cosyvoice2.yaml's feat_extractor (the flow's prompt)
        (24000, 1920, 80, 0.0, None),  # its mel_spec_transform1 (fmax null)
        (22050, 1024, 80, 40.0, 7600.0),  # a nonzero fmin, another rate
    ],
)
def test_slaney_filterbank_matches_librosa(
    sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float | None
) -> None:
    librosa = pytest.importorskip("librosa")
    ours = slaney_mel_filterbank(sample_rate, n_fft, n_mels, fmin, fmax)
    theirs = librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax)
    assert ours.shape == theirs.shape == (n_mels, n_fft // 2 + 1) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-8)


def test_prompt_mel_matches_matcha() -> None:
    """Matcha's mel_spectrogram (bundled with the upstream reference) with the yaml's arguments."""
    from tests.cosyvoice2.reference import import_reference

    pytest.importorskip("librosa")
    matcha_audio = import_reference("matcha.utils.audio")
    wav = voice(24000, 1.3)
    theirs = matcha_audio.mel_spectrogram(torch.from_numpy(wav)[None], **PUBLISHED_FEAT_EXTRACTOR)
    ours = prompt_mel(wav)
    assert ours.shape == (1, theirs.shape[2], 80)
    torch.testing.assert_close(ours, theirs.transpose(1, 2), rtol=1e-4, atol=1e-4)


def test_whisper_log_mel_matches_librosa_composition() -> None:
    """Whisper's recipe assembled from librosa's STFT and filterbank: centred reflect-padded frames, the last one
    dropped, power, Slaney mel, log10, 8-decade floor, (x + 4) / 4."""
    librosa = pytest.importorskip("librosa")
    wav = voice(16000, 1.7)
    stft = librosa.stft(wav, n_fft=400, hop_length=160, window="hann", center=True, pad_mode="reflect")
    power = np.abs(stft[:, :-1]) ** 2
    mel = librosa.filters.mel(sr=16000, n_fft=400, n_mels=128) @ power
    log_spec = np.log10(np.maximum(mel, 1e-10))
    expected = (np.maximum(log_spec, log_spec.max() - 8.0) + 4.0) / 4.0
    ours = whisper_log_mel(wav)
    assert ours.shape == (1, 128, expected.shape[1])
    np.testing.assert_allclose(ours[0].numpy(), expected, rtol=1e-4, atol=1e-4)


def test_kaldi_fbank_matches_torchaudio() -> None:
    """Upstream's call: torchaudio.compliance.kaldi.fbank(speech, num_mel_bins=80, dither=0, sample_frequency=16000)."""
    kaldi = pytest.importorskip("torchaudio.compliance.kaldi")
    wav = voice(16000, 1.25)
    theirs = kaldi.fbank(torch.from_numpy(wav)[None], num_mel_bins=80, dither=0, sample_frequency=16000).numpy()
    ours = kaldi_fbank(wav)
    assert ours.shape == theirs.shape == (123, 80)  # snip_edges: 1 + (20000 - 400) // 160
    # float32 FFTs of two libraries: the log energies agree to well under a thousandth.
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-3)


# -- rates and shapes ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("samples", [24000, 24000 + 479, 48000 + 480, 4800])
def test_prompt_mel_is_50_frames_per_second(samples: int) -> None:
    mel = prompt_mel(voice(24000, samples / 24000))
    assert mel.shape == (1, samples // 480, 80) and mel.dtype == torch.float32
    assert torch.isfinite(mel).all()
    assert float(mel.min()) >= math.log(1e-5) - 1e-6  # the clamp before the log


def test_whisper_log_mel_is_100_frames_per_second() -> None:
    features = whisper_log_mel(voice(16000, 1.0))
    assert features.shape == (1, 128, 100)
    # Everything within 8 decades of the maximum, scaled by 1/4.
    assert float(features.max() - features.min()) <= 2.0 + 1e-6


def test_mel_spectrogram_takes_the_yaml_arguments() -> None:
    wav = voice(24000, 1.0)
    full_band = mel_spectrogram(wav, **{**PUBLISHED_FEAT_EXTRACTOR, "fmax": None})
    published = mel_spectrogram(wav, **PUBLISHED_FEAT_EXTRACTOR)
    assert full_band.shape == published.shape == (80, 50)
    assert not torch.allclose(full_band, published)


def test_inputs_numpy_or_torch_mono_only() -> None:
    wav = voice(24000, 0.5)
    assert torch.equal(prompt_mel(wav), prompt_mel(torch.from_numpy(wav)[None]))
    assert torch.equal(prompt_mel(wav), prompt_mel(wav.astype(np.float64)))
    with pytest.raises(ValueError, match="mono"):
        prompt_mel(np.stack([wav, wav]))
    with pytest.raises(ValueError, match="too short"):
        prompt_mel(wav[:500])
    with pytest.raises(ValueError, match="too short"):
        whisper_log_mel(wav[:100])
    with pytest.raises(ValueError, match="fbank frame"):
        kaldi_fbank(wav[:300])


# -- the ONNX models through the front end ---------------------------------------------------------------------------


def test_speech_tokens_are_25_per_second(frontend: CosyVoice2Frontend) -> None:
    # N samples -> N // 160 frames -> ceil(frames / 4) tokens (the real model's two stride-2 convolutions).
    for seconds, expected in ((1.0, 25), (2.0, 50), (0.5, 13), (0.33, 9)):
        tokens = frontend.speech_tokens(voice(16000, seconds))
        assert tokens.shape == (expected,), seconds
        assert tokens.dtype == np.int64 and tokens.min() >= 0 and tokens.max() <= 6560


def test_speech_tokens_refuse_more_than_30_seconds(frontend: CosyVoice2Frontend) -> None:
    assert len(frontend.speech_tokens(np.zeros(30 * 16000, dtype=np.float32) + 0.01)) == 750
    with pytest.raises(ValueError, match="at most 30 s"):
        frontend.speech_tokens(np.zeros(30 * 16000 + 1, dtype=np.float32))


def test_speaker_embedding_is_192_d(frontend: CosyVoice2Frontend) -> None:
    embedding = frontend.speaker_embedding(voice(16000, 1.5))
    assert embedding.shape == (192,) and embedding.dtype == np.float32
    assert np.isfinite(embedding).all()


def test_deterministic_and_voice_dependent(frontend: CosyVoice2Frontend, onnx_dir: Path) -> None:
    first, second = voice(16000, 1.2, pitch=120.0), voice(16000, 1.2, pitch=230.0, seed=1)
    again = CosyVoice2Frontend(onnx_dir / "campplus.onnx", onnx_dir / "speech_tokenizer_v2.onnx")
    np.testing.assert_array_equal(frontend.speech_tokens(first), again.speech_tokens(first))
    np.testing.assert_array_equal(frontend.speaker_embedding(first), again.speaker_embedding(first))
    assert not np.array_equal(frontend.speech_tokens(first), frontend.speech_tokens(second))
    assert not np.allclose(frontend.speaker_embedding(first), frontend.speaker_embedding(second), atol=1e-3)


def test_sessions_cpu_by_default_and_configurable(frontend: CosyVoice2Frontend, onnx_dir: Path) -> None:
    assert frontend.speaker_encoder.session.get_providers() == ["CPUExecutionProvider"]
    assert frontend.tokenizer.session.get_providers() == ["CPUExecutionProvider"]
    explicit = CosyVoice2Frontend(
        onnx_dir / "campplus.onnx", onnx_dir / "speech_tokenizer_v2.onnx", providers=["CPUExecutionProvider"]
    )
    assert explicit.speaker_encoder.session.get_providers() == ["CPUExecutionProvider"]


def test_align_prompt_two_frames_per_token() -> None:
    feat = torch.zeros(1, 101, 80)
    tokens = np.arange(53)
    aligned_feat, aligned_tokens = align_prompt(feat, tokens)
    assert aligned_feat.shape == (1, 100, 80) and aligned_tokens.tolist() == list(range(50))
    aligned_feat, aligned_tokens = align_prompt(torch.zeros(1, 120, 80), np.arange(40))
    assert aligned_feat.shape == (1, 80, 80) and len(aligned_tokens) == 40


# -- the tiny writer's ONNX graphs -----------------------------------------------------------------------------------


def test_onnx_graphs_published_interface(onnx_dir: Path) -> None:
    import onnxruntime

    campplus = onnxruntime.InferenceSession(str(onnx_dir / "campplus.onnx"), providers=["CPUExecutionProvider"])
    assert [(i.name, i.type, i.shape) for i in campplus.get_inputs()] == [
        ("input", "tensor(float)", ["batch", "frames", 80])
    ]
    assert [(o.name, o.type, o.shape) for o in campplus.get_outputs()] == [("output", "tensor(float)", ["batch", 192])]
    tokenizer = onnxruntime.InferenceSession(
        str(onnx_dir / "speech_tokenizer_v2.onnx"), providers=["CPUExecutionProvider"]
    )
    assert [(i.name, i.type, i.shape) for i in tokenizer.get_inputs()] == [
        ("feats", "tensor(float)", ["batch", 128, "frames"]),
        ("feats_length", "tensor(int32)", ["batch"]),
    ]
    assert [(o.name, o.type, o.shape) for o in tokenizer.get_outputs()] == [
        ("indices", "tensor(int64)", ["batch", "tokens"])
    ]
    # feats_length is honoured: only the first 40 of 100 frames are tokenized.
    feats = whisper_log_mel(voice(16000, 1.0)).numpy()
    (cut,) = tokenizer.run(None, {"feats": feats, "feats_length": np.array([40], dtype=np.int32)})
    (whole,) = tokenizer.run(None, {"feats": feats, "feats_length": np.array([100], dtype=np.int32)})
    assert cut.shape == (1, 10) and whole.shape == (1, 25)
    np.testing.assert_array_equal(cut[0], whole[0, :10])


def test_onnx_graphs_deterministic_under_the_seed(onnx_dir: Path, tmp_path: Path) -> None:
    for name, seed in (("same", 0), ("other", 1)):
        (tmp_path / name).mkdir()
        write_onnx_models(tmp_path / name, seed=seed)
    for name in ONNX_FILES:
        assert (tmp_path / "same" / name).read_bytes() == (onnx_dir / name).read_bytes(), name
        assert (tmp_path / "other" / name).read_bytes() != (onnx_dir / name).read_bytes(), name
