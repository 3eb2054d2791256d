"""The tiny CosyVoice2 checkpoint writer (voice_triton.tiny.cosyvoice2) writes the published layout, and our real
loading code reads it: the LM through CosyVoice2LM.from_checkpoint, the flow and HiFT from the written yaml through
voice_triton.cosyvoice2.config, every state dict strictly. One short end-to-end pass checks the published timing:
N speech tokens -> 2N mel frames -> 960 N samples at 24 kHz."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from voice_triton.cosyvoice2 import LAYOUT
from voice_triton.cosyvoice2.config import build_hift, parse_config, read_config
from voice_triton.cosyvoice2.flow import PUBLISHED_FLOW, build_flow
from voice_triton.cosyvoice2.hift import hift_state_dict
from voice_triton.cosyvoice2.llm import QWEN2_DIR, CosyVoice2LM
from voice_triton.tiny.cosyvoice2 import cosyvoice2_yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
TRITON_PYTHON = REPO_ROOT / ".venv-triton" / "bin" / "python"
WRITER = "voice_triton.tiny.cosyvoice2"
# Not written yet (no onnx package in the Triton environment); see the writer's docstring.
ONNX_FILES = {"campplus.onnx", "speech_tokenizer_v2.onnx"}
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
    for name in ("cosyvoice2.yaml", f"{QWEN2_DIR}/tokenizer.json", f"{QWEN2_DIR}/model.safetensors"):
        assert (checkpoint / name).read_bytes() == (again / name).read_bytes(), name


def test_published_layout_but_the_onnx_files(checkpoint: Path) -> None:
    assert set(LAYOUT.missing(checkpoint)) == ONNX_FILES
    assert (checkpoint / QWEN2_DIR / "config.json").is_file()


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


def test_llm_flow_hift_end_to_end(checkpoint: Path) -> None:
    config = read_config(checkpoint)
    lm = CosyVoice2LM.from_checkpoint(checkpoint)
    assert lm.speech_token_size == 6561 and lm.fill_token == 6563
    config.llm.check_hidden_size(lm.llm.hidden_size)
    flow = build_flow(config.flow).eval()
    flow.load_state_dict(torch.load(checkpoint / "flow.pt", map_location="cpu", weights_only=True), strict=True)
    hift = build_hift(config).eval()
    hift_checkpoint = torch.load(checkpoint / "hift.pt", map_location="cpu", weights_only=True)
    hift.load_state_dict(hift_state_dict(hift_checkpoint), strict=True)

    tokenizer = AutoTokenizer.from_pretrained(checkpoint / QWEN2_DIR)
    text = torch.tensor([tokenizer("<|en|>Hello there.")["input_ids"]])
    empty = torch.zeros(1, 0, dtype=torch.long)
    n = 6
    tokens: list[int] = []
    with torch.inference_mode():
        logits, state = lm.start(text, empty, empty)
        assert logits.shape == (1, 6561 + 3)
        # Prefill length: sos_eos + text + task_id.
        assert state.length == text.shape[1] + 2
        for _ in range(n):
            token = int(logits[0, : lm.speech_token_size].argmax())  # codes only: the random LM may prefer eos
            tokens.append(token)
            logits = lm.next_logits(token, state)
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
