"""The speech-token decoders (whole text and text-in streaming) on a tiny random LM, the RAS sampler, the session
rules (text cut at word boundaries, the bounded session table) and the preset-speaker reader."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import Qwen2Config

from voice_triton.cosyvoice2.llm import CosyVoice2LM
from voice_triton.cosyvoice2.serving import Speaker, checked_clip, speaker_from_spk2info
from voice_triton.cosyvoice2.sessions import SessionLimit, SessionTable, TextIncrements, UnknownSession, last_boundary
from voice_triton.cosyvoice2.speech_lm import (
    SPEECH_BLOCK,
    TEXT_BLOCK,
    BistreamDecoder,
    Prompt,
    RasSampler,
    Sampling,
    generate_whole,
)
from voice_triton.errors import RequestError
from voice_triton.params import ConfigError

SPEECH_TOKENS = 6561


@pytest.fixture(scope="module")
def lm() -> CosyVoice2LM:
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=300,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
    )
    return CosyVoice2LM(config, speech_token_size=SPEECH_TOKENS).eval()


class CountingLM:
    """Wraps the LM and records the length of every input fed to it (to check the interleave's blocks)."""

    def __init__(self, lm: CosyVoice2LM) -> None:
        self.lm = lm
        self.fed: list[int] = []

    def __getattr__(self, name: str) -> object:
        return getattr(self.lm, name)

    def step(self, inputs: torch.Tensor, state: object) -> torch.Tensor:
        self.fed.append(inputs.shape[1])
        return self.lm.step(inputs, state)  # type: ignore[arg-type]


def sampler(seed: int = 0, **params: float) -> RasSampler:
    return RasSampler(Sampling(**params), seed, SPEECH_TOKENS)  # type: ignore[arg-type]


def test_ras_sampler_keeps_to_the_nucleus_and_redraws_repeats() -> None:
    logits = torch.full((SPEECH_TOKENS + 3,), -10.0)
    logits[5] = 10.0  # one token holds nearly all the mass
    allowed = torch.ones(SPEECH_TOKENS + 3, dtype=torch.bool)
    draws = [sampler(seed).sample(logits, [], allowed) for seed in range(20)]
    assert set(draws) == {5}
    # Token 5 in the recent window: RAS redraws from the whole distribution, which is still token 5 nearly always,
    # but a flat distribution after a repeat can give anything allowed.
    flat = torch.zeros(SPEECH_TOKENS + 3)
    repeated = {sampler(seed).sample(flat, [7] * 10, allowed) for seed in range(20)}
    assert len(repeated) > 1
    masked = allowed.clone()
    masked[5] = False
    assert sampler(1).sample(logits, [], masked) != 5


def test_whole_text_respects_the_length_bounds_and_the_seed(lm: CosyVoice2LM) -> None:
    text = list(range(10, 20))
    tokens = list(generate_whole(lm, text, Prompt(), sampler(3, max_token_text_ratio=3.0)))
    again = list(generate_whole(lm, text, Prompt(), sampler(3, max_token_text_ratio=3.0)))
    assert tokens == again
    assert 2 * len(text) <= len(tokens) <= 3 * len(text)
    assert all(0 <= t < SPEECH_TOKENS for t in tokens)
    with pytest.raises(ValueError, match="no text tokens"):
        list(generate_whole(lm, [], Prompt(), sampler()))


def test_bistream_writes_15_speech_tokens_per_5_text_tokens(lm: CosyVoice2LM) -> None:
    counting = CountingLM(lm)
    decoder = BistreamDecoder(counting, Prompt(), sampler(4, max_token_text_ratio=3.0))  # type: ignore[arg-type]
    assert list(decoder.feed([11, 12, 13, 14])) == []  # fewer than 5 text tokens: nothing to say yet
    first = list(decoder.feed([15]))
    assert len(first) == SPEECH_BLOCK and decoder.waiting_for_text
    # [sos_eos + 5 text] went in at once, then one step per written token; the fill step feeds the 15th token.
    assert counting.fed[0] == 1 + TEXT_BLOCK and counting.fed[1:] == [1] * SPEECH_BLOCK
    second = list(decoder.feed(list(range(20, 27))))  # 7 more: one block of 5, 2 wait
    assert len(second) == SPEECH_BLOCK and decoder.text_queue == [25, 26]
    rest = list(decoder.finish())
    # The final phase's own bound: (2 leftover text tokens + 1) * 3, at least a block.
    assert 1 <= len(rest) <= max(SPEECH_BLOCK, 3 * 3)
    assert all(0 <= t < SPEECH_TOKENS for t in first + second + rest)
    with pytest.raises(RuntimeError, match="finished"):
        list(decoder.feed([1]))


def test_bistream_interleaves_the_prompt_speech_first(lm: CosyVoice2LM) -> None:
    counting = CountingLM(lm)
    prompt = Prompt(text_ids=[1, 2, 3], speech_tokens=list(range(100, 140)))  # 40 tokens: 15 + 15 + 10
    decoder = BistreamDecoder(counting, prompt, sampler(5))  # type: ignore[arg-type]
    assert list(decoder.feed([4, 5, 6, 7, 8, 9, 10])) == []  # 10 text ids: two full prompt blocks, no speech yet
    assert decoder.prompt_speech == list(range(130, 140)) and counting.fed == []
    written = list(decoder.feed([11, 12, 13, 14, 15]))
    # One step with sos + (5 text + 15 speech) * 2 + 5 text + 10 speech, then the block's last 5 speech tokens.
    assert counting.fed[0] == 1 + 2 * (TEXT_BLOCK + SPEECH_BLOCK) + TEXT_BLOCK + 10
    assert len(written) == SPEECH_BLOCK - 10


def test_bistream_tokens_do_not_depend_on_how_text_arrives(lm: CosyVoice2LM) -> None:
    text = list(range(30, 53))

    def run(pieces: list[list[int]]) -> list[int]:
        decoder = BistreamDecoder(lm, Prompt([1, 2], list(range(200, 220))), sampler(9))
        out = [t for piece in pieces for t in decoder.feed(piece)]
        return out + list(decoder.finish())

    one_by_one = run([[t] for t in text])
    assert one_by_one == run([text]) == run([text[:3], text[3:17], text[17:]])


def test_text_is_cut_at_word_boundaries() -> None:
    assert last_boundary("Hello there") == 5
    assert last_boundary("Hello") == 0
    assert last_boundary("你好世界") == 4  # wide characters: every one ends a unit
    seen: list[str] = []
    increments = TextIncrements(lambda text: (seen.append(text), [len(text)])[1])
    for delta in ["Hel", "lo wor", "ld, how ", "are", " you"]:
        increments.feed(delta)
    increments.rest()
    assert "".join(seen) == "Hello world, how are you"
    assert seen == ["Hello", " world, how", " are", " you"]
    assert increments.received_chars == len("Hello world, how are you")


def test_session_table_bounds_and_expires() -> None:
    now = [0.0]
    table = SessionTable(2, idle_timeout_s=5.0, clock=lambda: now[0])
    a = table.open("a", "state-a")
    table.open("b", "state-b")
    with pytest.raises(SessionLimit):
        table.open("c", None)
    with pytest.raises(ValueError, match="already open"):
        table.open("a", None)
    now[0] = 4.0
    with table.use(a):
        now[0] = 20.0
        assert [s.id for s in table.expire()] == ["b"]  # a is in use: never expired while held
    now[0] = 24.0
    assert table.expire() == []  # a's idle time restarted when it was released (at 20)
    now[0] = 26.0
    assert [s.id for s in table.expire()] == ["a"]
    with pytest.raises(UnknownSession):
        table.get("a")
    assert len(table) == 0


def test_preset_speakers_in_both_published_forms() -> None:
    sft = speaker_from_spk2info("sft", {"embedding": torch.ones(1, 192)})
    assert sft.prompt == Prompt() and sft.flow_tokens.size == 0 and sft.embedding.shape == (192,)
    saved = speaker_from_spk2info(
        "saved",
        {
            "prompt_text": torch.tensor([[1, 2, 3]]),
            "llm_prompt_speech_token": torch.tensor([[7, 8]]),
            "flow_prompt_speech_token": torch.tensor([[7, 8]]),
            "prompt_speech_feat": torch.zeros(1, 4, 80),
            "llm_embedding": torch.ones(1, 192),
            "flow_embedding": torch.full((1, 192), 2.0),
        },
    )
    assert saved.prompt == Prompt([1, 2, 3], [7, 8]) and saved.flow_feat.shape == (4, 80)
    assert np.all(saved.embedding == 2.0)
    instruct = saved.for_instruct([9, 10])
    assert instruct.prompt == Prompt([9, 10], []) and instruct.flow_tokens.tolist() == [7, 8]
    assert Speaker(saved.prompt).cross_lingual().prompt == Prompt()
    with pytest.raises(ConfigError, match="no embedding"):
        speaker_from_spk2info("bad", {"speech_feat": torch.zeros(1)})
    with pytest.raises(ConfigError, match="64-d"):
        speaker_from_spk2info("bad", {"embedding": torch.zeros(64)})


def test_reference_clip_checks() -> None:
    with pytest.raises(RequestError, match="between 1 and 10"):
        checked_clip(np.zeros(10, np.float32), 11)
    with pytest.raises(RequestError, match="at least 400"):
        checked_clip(np.zeros(100, np.float32), 100)
    bad = np.zeros(1000, np.float32)
    bad[3] = np.nan
    with pytest.raises(RequestError, match="NaN"):
        checked_clip(bad, 1000)
    assert checked_clip(np.ones(1000, np.float32), 600).size == 600
