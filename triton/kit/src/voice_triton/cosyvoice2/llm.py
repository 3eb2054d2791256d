"""CosyVoice2's text-to-speech-token language model (upstream `cosyvoice.llm.llm.Qwen2LM`), written for serving.

The module tree keeps the published parameter names, so CosyVoice2-0.5B's `llm.pt` loads unchanged (strict):

    llm_embedding     Embedding(2, llm_input_size)              rows sos_eos (0) and task_id (1)
    llm.model         transformers Qwen2ForCausalLM               built from CosyVoice-BlankEN/config.json
    llm_decoder       Linear(llm_output_size, speech_token_size + 3)
    speech_embedding  Embedding(speech_token_size + 3, llm_input_size)

(`llm` is upstream's `Qwen2Encoder`, a module whose only child is `model`, hence the keys `llm.model.model.layers.*`
and `llm.model.lm_head.weight`.) The published `cosyvoice2.yaml` has speech_token_size 6561 and llm_input_size =
llm_output_size = 896 (the Qwen2 hidden size). Speech-token ids above the 6561 codes: 6561 is end of speech, 6563
(speech_token_size + 2) the fill token the text-in streaming model emits when it wants more text.

Inference works on embedding sequences with a transformers KV cache, so both the whole-text prompt and the
text-in streaming interleave (text and speech tokens fed in increments) drive the same `step`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import Cache, DynamicCache, Qwen2Config, Qwen2ForCausalLM

SPEECH_TOKEN_SIZE = 6561
# Rows of llm_embedding.
SOS_EOS = 0
TASK_ID = 1
# Offsets above speech_token_size in the speech-token space (llm_decoder outputs, speech_embedding rows).
EOS_OFFSET = 0
FILL_OFFSET = 2
# Published file names inside the checkpoint directory.
LLM_WEIGHTS = "llm.pt"
QWEN2_DIR = "CosyVoice-BlankEN"


class Qwen2Backbone(nn.Module):
    """Upstream's `Qwen2Encoder`: the Qwen2 causal LM under the attribute `model` (that name is in llm.pt's keys)."""

    def __init__(self, config: Qwen2Config) -> None:
        super().__init__()
        self.model = Qwen2ForCausalLM(config)

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    def embed_text(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model.get_input_embeddings()(ids)

    def forward(self, inputs_embeds: torch.Tensor, cache: Cache | None) -> tuple[torch.Tensor, Cache]:
        """Last-layer hidden states (after the final norm) of `inputs_embeds` appended to `cache`."""
        # The decoder stack only: lm_head's 151936-way text logits are never used by CosyVoice2.
        out = self.model.model(inputs_embeds=inputs_embeds, past_key_values=cache, use_cache=True, return_dict=True)
        assert out.past_key_values is not None
        return out.last_hidden_state, out.past_key_values


@dataclass
class LlmState:
    """One decode's KV cache and how many positions it holds."""

    cache: Cache
    length: int = 0


class CosyVoice2LM(nn.Module):
    """CosyVoice2's LM: Qwen2 over [sos_eos, text, task_id, speech tokens...] predicting the next speech token."""

    def __init__(self, qwen2: Qwen2Config, speech_token_size: int = SPEECH_TOKEN_SIZE) -> None:
        super().__init__()
        # llm_input_size = llm_output_size = the Qwen2 hidden size, as in the published YAML (896).
        size = int(qwen2.hidden_size)
        self.llm_input_size = self.llm_output_size = size
        self.speech_token_size = speech_token_size
        # Registration order as upstream, so a saved state dict lists its keys in the published order.
        self.llm = Qwen2Backbone(qwen2)
        self.llm_embedding = nn.Embedding(2, size)
        self.llm_decoder = nn.Linear(size, speech_token_size + 3)
        self.speech_embedding = nn.Embedding(speech_token_size + 3, size)

    @property
    def eos_token(self) -> int:
        return self.speech_token_size + EOS_OFFSET

    @property
    def fill_token(self) -> int:
        return self.speech_token_size + FILL_OFFSET

    @classmethod
    def from_checkpoint(
        cls, directory: Path, device: torch.device | str = "cpu", attn_implementation: str | None = None
    ) -> CosyVoice2LM:
        """Build from a published checkpoint directory: the Qwen2 shape from CosyVoice-BlankEN/config.json, every
        weight (Qwen2 included) from llm.pt. BlankEN's own model.safetensors is not read: llm.pt supersedes it."""
        state = torch.load(Path(directory) / LLM_WEIGHTS, map_location="cpu", weights_only=True)
        # attn_implementation: None lets transformers choose (sdpa); "eager" or "flash_attention_2" where wanted.
        config = Qwen2Config.from_pretrained(Path(directory) / QWEN2_DIR, attn_implementation=attn_implementation)
        # speech_token_size is not in llm.pt's metadata; the speech embedding's rows say it (codes + 3 specials).
        model = cls(config, speech_token_size=int(state["speech_embedding.weight"].shape[0]) - 3)
        model.load_state_dict(state, strict=True)
        return model.to(device).eval()

    # -- embeddings of the pieces of an input sequence -----------------------------------------------------------

    def special_embedding(self, index: int) -> torch.Tensor:
        """(1, 1, D) embedding of llm_embedding row `index` (SOS_EOS or TASK_ID)."""
        return self.llm_embedding.weight[index].reshape(1, 1, -1)

    def text_embeddings(self, ids: torch.Tensor) -> torch.Tensor:
        """(1, T, D) embeddings of text token ids (1, T) through the Qwen2 input embeddings."""
        return self.llm.embed_text(ids)

    def speech_embeddings(self, tokens: torch.Tensor) -> torch.Tensor:
        """(1, S, D) embeddings of speech tokens (1, S); an empty prompt gives (1, 0, D)."""
        return self.speech_embedding(tokens.reshape(1, -1))

    def prompt_embeddings(
        self, text_ids: torch.Tensor, prompt_text_ids: torch.Tensor, prompt_speech_tokens: torch.Tensor
    ) -> torch.Tensor:
        """The non-streaming input sequence: [sos_eos, prompt text + text, task_id, prompt speech tokens]."""
        text = torch.cat([prompt_text_ids.reshape(1, -1), text_ids.reshape(1, -1)], dim=1)
        return torch.cat(
            [
                self.special_embedding(SOS_EOS),
                self.text_embeddings(text),
                self.special_embedding(TASK_ID),
                self.speech_embeddings(prompt_speech_tokens),
            ],
            dim=1,
        )

    # -- decoding --------------------------------------------------------------------------------------------------

    def new_state(self) -> LlmState:
        return LlmState(DynamicCache(config=self.llm.model.config))

    def step(self, inputs_embeds: torch.Tensor, state: LlmState) -> torch.Tensor:
        """Append `inputs_embeds` (1, N, D) to the state's KV cache; logits (1, speech_token_size + 3) of the speech
        token after the last position. The state is updated in place."""
        hidden, state.cache = self.llm(inputs_embeds, state.cache)
        state.length += inputs_embeds.shape[1]
        return self.llm_decoder(hidden[:, -1])

    def start(
        self,
        text_ids: torch.Tensor,
        prompt_text_ids: torch.Tensor,
        prompt_speech_tokens: torch.Tensor,
    ) -> tuple[torch.Tensor, LlmState]:
        """Prefill the whole-text prompt; the first speech token's logits and the state to continue with."""
        state = self.new_state()
        logits = self.step(self.prompt_embeddings(text_ids, prompt_text_ids, prompt_speech_tokens), state)
        return logits, state

    def next_logits(self, token: int, state: LlmState) -> torch.Tensor:
        """Feed back the speech token just chosen; the next one's logits."""
        return self.step(self.speech_embedding.weight[token].reshape(1, 1, -1), state)
