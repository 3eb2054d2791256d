"""Parity of our CosyVoice2 LM (voice_triton.cosyvoice2.llm) with upstream's Qwen2LM (tests/cosyvoice2/reference.py):
the same tiny state dict loads strictly into both, and the same prompt gives the same next-speech-token log-probs at
every step of a KV-cached decode, the reference driven through its own `inference` loop."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from tests.cosyvoice2.reference import reference_llm
from voice_triton.cosyvoice2.llm import LLM_WEIGHTS, QWEN2_DIR, SPEECH_TOKEN_SIZE, CosyVoice2LM

TEXT_VOCAB = 300


def tiny_qwen2() -> Qwen2Config:
    """The published BlankEN shape in miniature: grouped-query attention (heads 4 : kv heads 2), tied embeddings."""
    return Qwen2Config(
        vocab_size=TEXT_VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        rope_theta=1_000_000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        use_sliding_window=False,
    )


def ours(seed: int = 3) -> CosyVoice2LM:
    torch.manual_seed(seed)
    model = CosyVoice2LM(tiny_qwen2())
    # Qwen2's init draws weights with std 0.02; wider ones give logits whose differences are worth comparing.
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    return model.eval()


def reference(tmp_path: Path, sampling: Any = None) -> torch.nn.Module:
    ref = reference_llm()
    qwen2_dir = tmp_path / "qwen2"
    Qwen2ForCausalLM(tiny_qwen2()).save_pretrained(qwen2_dir)  # Qwen2Encoder only loads from a directory
    size = tiny_qwen2().hidden_size
    return ref.Qwen2LM(size, size, SPEECH_TOKEN_SIZE, ref.Qwen2Encoder(str(qwen2_dir)), sampling).eval()


def test_state_dict_loads_strictly_both_ways(tmp_path: Path) -> None:
    mine, theirs = ours(), reference(tmp_path)
    assert list(mine.state_dict()) == list(theirs.state_dict())  # same keys, same (published) order
    assert {k: v.shape for k, v in mine.state_dict().items()} == {k: v.shape for k, v in theirs.state_dict().items()}
    theirs.load_state_dict(mine.state_dict(), strict=True)
    CosyVoice2LM(tiny_qwen2()).load_state_dict(theirs.state_dict(), strict=True)


def test_special_tokens_as_published(tmp_path: Path) -> None:
    mine, theirs = ours(), reference(tmp_path)
    assert (mine.eos_token, mine.fill_token) == (6561, 6563)
    assert theirs.stop_token_ids == [mine.eos_token, mine.eos_token + 1, mine.fill_token]
    assert (theirs.sos_eos, theirs.task_id) == (0, 1)
    assert mine.llm_decoder.out_features == mine.speech_embedding.num_embeddings == SPEECH_TOKEN_SIZE + 3


def _prompt(prompt_text_len: int, prompt_speech_len: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(7)
    text = torch.randint(0, TEXT_VOCAB, (1, 6), generator=gen)
    prompt_text = torch.randint(0, TEXT_VOCAB, (1, prompt_text_len), generator=gen)
    prompt_speech = torch.randint(0, SPEECH_TOKEN_SIZE, (1, prompt_speech_len), generator=gen)
    return text, prompt_text, prompt_speech


def _greedy_decode(model: CosyVoice2LM, prompt: tuple[torch.Tensor, ...], steps: int) -> tuple[list[int], torch.Tensor]:
    """Our KV-cached decode, always taking the likeliest speech code: the tokens and each step's log-probs."""
    tokens, logps = [], []
    with torch.inference_mode():
        logits, state = model.start(*prompt)
        for _ in range(steps):
            logps.append(logits.log_softmax(dim=-1).squeeze(0))
            tokens.append(int(logits[0, :SPEECH_TOKEN_SIZE].argmax()))
            logits = model.next_logits(tokens[-1], state)
    assert state.length == 1 + prompt[1].shape[1] + prompt[0].shape[1] + 1 + prompt[2].shape[1] + steps
    return tokens, torch.stack(logps)


def _assert_close(got: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    finite = expected.isfinite()
    assert torch.equal(finite, got.isfinite()), what
    diff = (got[finite] - expected[finite]).abs().max().item()
    assert diff < 1e-4, f"{what}: max abs diff {diff}"


PROMPTS = pytest.mark.parametrize(
    ("prompt_text_len", "prompt_speech_len"),
    [(4, 7), (0, 0)],
    ids=["zero-shot", "cross-lingual"],  # cross-lingual: no prompt text or speech tokens reach the LM
)
STEPS = 9


@PROMPTS
def test_first_token_matches_reference_inference(tmp_path: Path, prompt_text_len: int, prompt_speech_len: int) -> None:
    """Upstream's own `inference` builds the prompt sequence; its first log-probs are ours (end of speech masked)."""
    recorded: list[torch.Tensor] = []

    def record(scores: torch.Tensor, _decoded: list[int], _top_k: int) -> torch.Tensor:
        recorded.append(scores.detach().clone())
        return scores[:SPEECH_TOKEN_SIZE].argmax()

    mine, theirs = ours(), reference(tmp_path, record)
    theirs.load_state_dict(mine.state_dict(), strict=True)
    text, prompt_text, prompt_speech = prompt = _prompt(prompt_text_len, prompt_speech_len)
    generated = theirs.inference(
        text=text,
        text_len=torch.tensor([text.shape[1]]),
        prompt_text=prompt_text,
        prompt_text_len=torch.tensor([prompt_text_len]),
        prompt_speech_token=prompt_speech,
        prompt_speech_token_len=torch.tensor([prompt_speech_len]),
        embedding=torch.zeros(1, 0),
        sampling=25,
        max_token_text_ratio=1 / text.shape[1],  # max_len 1: one step
        min_token_text_ratio=0,
    )
    first = list(generated)
    tokens, logps = _greedy_decode(mine, prompt, 1)
    assert first == tokens and len(recorded) == 1
    logps[0, mine.eos_token] = float("-inf")  # upstream forbids end of speech as the first token
    _assert_close(logps[0], recorded[0], "first step")


@PROMPTS
def test_next_token_logits_match_reference(tmp_path: Path, prompt_text_len: int, prompt_speech_len: int) -> None:
    """Every step of our KV-cached decode against the reference's Qwen2Encoder, run two ways: one uncached pass over
    the whole sequence (`forward`), and its own cached `forward_one_step` step by step.

    The reference's decode loop itself is not used past the first token: it hands `forward_one_step` a mask covering
    only the new position, which transformers 4.40 (its pin) dropped as all-ones but 4.57 pads with zeros, hiding the
    cache. The masks here cover the cache, which is what upstream computes under its pin."""
    mine, theirs = ours(), reference(tmp_path)
    theirs.load_state_dict(mine.state_dict(), strict=True)
    prompt = _prompt(prompt_text_len, prompt_speech_len)
    tokens, logps = _greedy_decode(mine, prompt, STEPS)

    with torch.inference_mode():
        # The prompt sequence as upstream's inference builds it (checked against it above), then the fed-back tokens.
        text, prompt_text, prompt_speech = prompt
        embed = theirs.llm.model.get_input_embeddings()
        head = [theirs.llm_embedding.weight[theirs.sos_eos].reshape(1, 1, -1)]
        head += [embed(torch.cat([prompt_text, text], dim=1))]
        head += [theirs.llm_embedding.weight[theirs.task_id].reshape(1, 1, -1), theirs.speech_embedding(prompt_speech)]
        prefix = torch.cat(head, dim=1)
        fed = theirs.speech_embedding(torch.tensor([tokens[:-1]]))
        whole = torch.cat([prefix, fed], dim=1)

        hidden, _ = theirs.llm(whole, torch.tensor([whole.shape[1]]))
        uncached = theirs.llm_decoder(hidden[0, prefix.shape[1] - 1 :]).log_softmax(dim=-1)
        _assert_close(logps, uncached, "uncached reference")

        cache, position, pieces = None, 0, [prefix, *fed.split(1, dim=1)]
        for i, piece in enumerate(pieces):
            position += piece.shape[1]
            masks = torch.ones(1, piece.shape[1], position, dtype=torch.bool)  # forward_one_step takes the last row
            hidden, cache = theirs.llm.forward_one_step(piece, masks, cache)
            cached = theirs.llm_decoder(hidden[:, -1]).log_softmax(dim=-1)[0]
            _assert_close(logps[i], cached, f"cached reference step {i}")


def test_from_checkpoint_reads_published_layout(tmp_path: Path) -> None:
    """llm.pt plus CosyVoice-BlankEN/config.json is all it takes; speech_token_size comes from the weights."""
    mine = ours()
    torch.save(mine.state_dict(), tmp_path / LLM_WEIGHTS)
    tiny_qwen2().save_pretrained(tmp_path / QWEN2_DIR)
    loaded = CosyVoice2LM.from_checkpoint(tmp_path)
    assert loaded.speech_token_size == SPEECH_TOKEN_SIZE
    text, prompt_text, prompt_speech = torch.tensor([[5, 6, 7]]), torch.tensor([[1, 2]]), torch.tensor([[10, 20]])
    with torch.inference_mode():
        expected, _ = mine.start(text, prompt_text, prompt_speech)
        got, _ = loaded.start(text, prompt_text, prompt_speech)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


# CosyVoice-BlankEN/config.json of CosyVoice2-0.5B (the Qwen2.5-0.5B shape), the fields that set parameter shapes.
PUBLISHED_BLANKEN = {
    "vocab_size": 151936,
    "hidden_size": 896,
    "intermediate_size": 4864,
    "num_hidden_layers": 24,
    "num_attention_heads": 14,
    "num_key_value_heads": 2,
    "tie_word_embeddings": True,
}


def test_published_shapes() -> None:
    """The published configuration gives llm.pt's shapes: 896-wide LM input/output, 6561 + 3 speech-token rows."""
    with torch.device("meta"):
        model = CosyVoice2LM(Qwen2Config(**PUBLISHED_BLANKEN))
    shapes = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    assert model.llm_input_size == model.llm_output_size == 896
    assert shapes["llm_embedding.weight"] == (2, 896)
    assert shapes["llm_decoder.weight"] == (6564, 896) and shapes["llm_decoder.bias"] == (6564,)
    assert shapes["speech_embedding.weight"] == (6564, 896)
    assert shapes["llm.model.model.embed_tokens.weight"] == shapes["llm.model.lm_head.weight"] == (151936, 896)
    assert shapes["llm.model.model.layers.23.self_attn.k_proj.weight"] == (128, 896)  # 2 kv heads of 64
    assert "llm.model.model.layers.24.mlp.up_proj.weight" not in shapes
