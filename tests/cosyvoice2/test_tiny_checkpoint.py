"""The tiny CosyVoice2 checkpoint writer (voice_triton.tiny.cosyvoice2) writes the whole published layout, and our
real loading code reads it: the LM through CosyVoice2LM.from_checkpoint, the flow and HiFT from the written yaml
through voice_triton.cosyvoice2.config, every state dict strictly, the two ONNX models through the front end. Short
end-to-end passes check the published timing: N speech tokens -> 2N mel frames -> 960 N samples at 24 kHz, with and
without a reference recording (speech tokens, prompt mel and speaker embedding from voice_triton.cosyvoice2.frontend).
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from voice_triton.cosyvoice2 import LAYOUT
from voice_triton.cosyvoice2.config import build_hift, parse_config, read_config
from voice_triton.cosyvoice2.flow import PUBLISHED_FLOW, build_flow
from voice_triton.cosyvoice2.frontend import CosyVoice2Frontend, align_prompt
from voice_triton.cosyvoice2.hift import hift_state_dict
from voice_triton.cosyvoice2.llm import QWEN2_DIR, CosyVoice2LM
from voice_triton.tiny.cosyvoice2 import ONNX_FILES, cosyvoice2_yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
TRITON_PYTHON = REPO_ROOT / ".venv-triton" / "bin" / "python"
WRITER = "voice_triton.tiny.cosyvoice2"
# What upstream's QwenTokenizer adds to CosyVoice-BlankEN's tokenizer (besides making <|endoftext|> eos and pad).
COSYVOICE_SPECIALS = [
    "<|im_start|>",
    "<|im_end|>",
    "<|endofprompt|>",
    "[breath]",
    "<strong>",
    "</strong>",
    "[noise]",
    "[laughter]",
    "[cough]",
    "[clucking]",
    "[accent]",
    "[quick_breath]",
    "<laughter>",
    "</laughter>",
    "[hissing]",
    "[sigh]",
    "[vocalized-noise]",
    "[lipsmack]",
    "[mn]",
]


def write(out: Path, seed: int = 0) -> Path:
    """Run the writer as the fixtures run tiny writers: the Triton environment's interpreter, from outside the
    repository root (its triton/ folder would shadow OpenAI's triton package for `-m`)."""
    if not TRITON_PYTHON.exists():
        pytest.skip(f"{TRITON_PYTHON} is missing: run `make .venv-triton/.installed`")
    out.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    command = [str(TRITON_PYTHON), "-m", WRITER, str(out), f"--seed={seed}"]
    subprocess.run(command, check=True, capture_output=True, cwd=out.parent, timeout=120)
    print(f"writer took {time.monotonic() - started:.1f} s")
    return out


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write(tmp_path_factory.mktemp("cosyvoice2") / "tiny")


def test_writer_yaml_template_is_the_published_structure() -> None:
    """With the published widths, the writer's yaml reads as the published configuration."""
    published = {
        "llm_size": 896,
        "encoder_size": 512,
        "encoder_heads": 8,
        "encoder_linear_units": 2048,
        "encoder_blocks": 6,
        "estimator_channels": 256,
        "estimator_head_dim": 64,
        "estimator_blocks": 4,
        "estimator_mid_blocks": 12,
        "estimator_heads": 8,
        "hift_channels": 512,
    }
    config = parse_config(cosyvoice2_yaml(published))
    assert config.flow == PUBLISHED_FLOW
    assert config.hift["base_channels"] == 512 and config.f0_predictor["cond_channels"] == 512
    assert (config.llm.llm_input_size, config.llm.llm_output_size, config.llm.speech_token_size) == (896, 896, 6561)


def test_same_seed_same_checkpoint(checkpoint: Path, tmp_path: Path) -> None:
    again = write(tmp_path / "again")
    for name in ("llm.pt", "flow.pt", "hift.pt"):
        first, second = (torch.load(d / name, map_location="cpu", weights_only=True) for d in (checkpoint, again))
        assert first.keys() == second.keys()
        assert all(torch.equal(first[k], second[k]) for k in first), name
    for name in ("cosyvoice2.yaml", f"{QWEN2_DIR}/tokenizer.json", f"{QWEN2_DIR}/model.safetensors", *ONNX_FILES):
        assert (checkpoint / name).read_bytes() == (again / name).read_bytes(), name


def test_published_layout(checkpoint: Path) -> None:
    assert LAYOUT.missing(checkpoint) == []
    assert (checkpoint / QWEN2_DIR / "config.json").is_file()
    assert set(ONNX_FILES) == {"campplus.onnx", "speech_tokenizer_v2.onnx"}


def test_yaml_has_the_published_token_facts(checkpoint: Path) -> None:
    config = read_config(checkpoint)
    assert config.llm.speech_token_size == 6561
    assert (config.sample_rate, config.token_frame_rate, config.token_mel_ratio) == (24000, 25, 2)
    assert config.flow["vocab_size"] == 6561 and config.flow["pre_lookahead_len"] == 3
    assert config.flow["spk_embed_dim"] == 192
    assert config.flow["decoder"]["estimator"]["static_chunk_size"] == 50


def test_tokenizer_carries_cosyvoice_specials(checkpoint: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(checkpoint / QWEN2_DIR)
    assert tokenizer.eos_token == tokenizer.pad_token == "<|endoftext|>"
    assert tokenizer.additional_special_tokens == COSYVOICE_SPECIALS
    size = len(tokenizer)
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in COSYVOICE_SPECIALS}
    # Upstream adds the same tokens at load time: already present, so nothing moves.
    tokenizer.add_special_tokens({"additional_special_tokens": COSYVOICE_SPECIALS})
    assert len(tokenizer) == size
    assert {token: tokenizer.convert_tokens_to_ids(token) for token in COSYVOICE_SPECIALS} == ids
    encoded = tokenizer("Say it softly.<|endofprompt|>Hello [laughter] there")["input_ids"]
    assert ids["<|endofprompt|>"] in encoded and ids["[laughter]"] in encoded
    assert tokenizer.decode(encoded, skip_special_tokens=True) == "Say it softly.Hello  there"


def load_models(checkpoint: Path) -> tuple[Any, ...]:
    """LM, flow and HiFT of the checkpoint, each state dict strictly, as the backend loads them."""
    config = read_config(checkpoint)
    lm = CosyVoice2LM.from_checkpoint(checkpoint)
    config.llm.check_hidden_size(lm.llm.hidden_size)
    flow = build_flow(config.flow).eval()
    flow.load_state_dict(torch.load(checkpoint / "flow.pt", map_location="cpu", weights_only=True), strict=True)
    hift = build_hift(config).eval()
    hift_checkpoint = torch.load(checkpoint / "hift.pt", map_location="cpu", weights_only=True)
    hift.load_state_dict(hift_state_dict(hift_checkpoint), strict=True)
    return config, lm, flow, hift


def greedy_tokens(lm: CosyVoice2LM, logits: torch.Tensor, state: Any, n: int) -> list[int]:
    """n speech codes by argmax (codes only: the random LM may prefer end of speech)."""
    tokens: list[int] = []
    for _ in range(n):
        token = int(logits[0, : lm.speech_token_size].argmax())
        tokens.append(token)
        logits = lm.next_logits(token, state)
    return tokens


def test_llm_flow_hift_end_to_end(checkpoint: Path) -> None:
    _, lm, flow, hift = load_models(checkpoint)
    assert lm.speech_token_size == 6561 and lm.fill_token == 6563

    tokenizer = AutoTokenizer.from_pretrained(checkpoint / QWEN2_DIR)
    text = torch.tensor([tokenizer("<|en|>Hello there.")["input_ids"]])
    empty = torch.zeros(1, 0, dtype=torch.long)
    n = 6
    with torch.inference_mode():
        logits, state = lm.start(text, empty, empty)
        assert logits.shape == (1, 6561 + 3)
        # Prefill length: sos_eos + text + task_id.
        assert state.length == text.shape[1] + 2
        tokens = greedy_tokens(lm, logits, state, n)
        assert state.length == text.shape[1] + 2 + n

    mel = flow.inference(
        torch.tensor([tokens]),
        prompt_token=empty,
        prompt_feat=torch.zeros(1, 0, 80),
        embedding=torch.randn(1, 192, generator=torch.Generator().manual_seed(0)),
    )
    assert mel.shape == (1, 80, 2 * n)
    audio, _ = hift.inference(mel, generator=torch.Generator().manual_seed(0))
    assert audio.shape == (1, 960 * n)  # 25 tokens/s -> 24000 samples/s
    assert torch.isfinite(audio).all() and audio.abs().max() <= 0.99


def reference_recording(sample_rate: int, seconds: float, pitch: float) -> np.ndarray:
    """A voiced test signal (harmonics with vibrato) defined in time, so its 16 and 24 kHz copies need no resampler."""
    t = np.arange(round(sample_rate * seconds)) / sample_rate
    phase = 2 * np.pi * pitch * (t + 0.02 * np.sin(2 * np.pi * 3 * t))
    return (0.2 * sum(np.sin(k * phase) / k for k in range(1, 8))).astype(np.float32)


def test_zero_shot_from_a_reference_recording(checkpoint: Path) -> None:
    """wav -> speech tokens + prompt mel + embedding (the front end on the tiny ONNX files) -> LLM -> flow -> HiFT."""
    config, lm, flow, hift = load_models(checkpoint)
    frontend = CosyVoice2Frontend.from_checkpoint(checkpoint)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint / QWEN2_DIR)
    text = torch.tensor([tokenizer("<|en|>Hello there.")["input_ids"]])
    prompt_text = torch.tensor([tokenizer("A short reference.")["input_ids"]])
    n = 6

    def synthesize(pitch: float) -> tuple[torch.Tensor, torch.Tensor]:
        wav_16k, wav_24k = (reference_recording(rate, 1.0, pitch) for rate in (16000, 24000))
        prompt_tokens = frontend.speech_tokens(wav_16k)
        assert prompt_tokens.shape == (25,) and prompt_tokens.min() >= 0 and prompt_tokens.max() <= 6560
        prompt_feat = frontend.prompt_mel(wav_24k)
        assert prompt_feat.shape == (1, 50, 80)
        embedding = frontend.speaker_embedding(wav_16k)
        assert embedding.shape == (192,)
        prompt_feat, prompt_tokens = align_prompt(prompt_feat, prompt_tokens, config.token_mel_ratio)
        prompt = torch.from_numpy(prompt_tokens)[None]
        with torch.inference_mode():
            logits, state = lm.start(text, prompt_text, prompt)
            # sos_eos + prompt text + text + task_id + the prompt's 25 speech tokens.
            assert state.length == 1 + prompt_text.shape[1] + text.shape[1] + 1 + 25
            tokens = greedy_tokens(lm, logits, state, n)
            mel = flow.inference(torch.tensor([tokens]), prompt, prompt_feat, torch.from_numpy(embedding)[None])
            assert mel.shape == (1, 80, 2 * n)  # the prompt's 50 frames are not returned
            audio, _ = hift.inference(mel, generator=torch.Generator().manual_seed(0))
        assert audio.shape == (1, 960 * n)
        assert torch.isfinite(audio).all() and audio.abs().max() <= 0.99
        return mel, audio

    mel, audio = synthesize(140.0)
    mel_again, audio_again = synthesize(140.0)
    assert torch.equal(mel, mel_again) and torch.equal(audio, audio_again)  # deterministic
    other_mel, _ = synthesize(230.0)
    assert not torch.allclose(mel, other_mel, atol=1e-4)  # another reference, another voice
