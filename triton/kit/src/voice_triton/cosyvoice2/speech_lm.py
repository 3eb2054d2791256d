"""CosyVoice2 speech-token decoding: whole-text generation and text-in streaming ("bi-streaming"), pure torch.

Both drive `CosyVoice2LM.step` over one KV cache. Whole text (upstream `Qwen2LM.inference`):

    [sos_eos, prompt text + text, task_id, prompt speech tokens] -> speech tokens ... end of speech

Text-in streaming (upstream `Qwen2LM.inference_bistream`, and the sequence CosyVoice2 was trained on for it): text
and speech tokens interleave in blocks of 5 text tokens then 15 speech tokens. The prompt's speech tokens are
interleaved first (the prompt text is the head of the text queue); afterwards the model writes speech tokens, and at
the end of each 15-token block predicts the fill token, meaning "the next 5 text tokens, please". When the text ends,
the rest of the text and task_id go in and the model decodes to the end of speech:

    sos_eos, T5, S15, T5, S15, ..., T5, s s s ... (fill), T5, s ... (fill), ..., T<5, task_id, s s ... eos

Training places the fill token as a *target* after the 15th speech token of a block; it is never an input (the next
input is the next text block), so this decoder never feeds it. Upstream's loop forces a fill token every 16 outputs
after the first sampled one and, in its final step, feeds the last speech token a second time when the text ends
right after a fill; here the block position is tracked from the start, so the first fill is forced as well (a
random-weight model would otherwise never stop), and no input is fed twice.

Sampling is CosyVoice2's repetition-aware sampling (RAS, from VALL-E 2): nucleus sampling (top_p 0.8, at most top_k
25 candidates); when the drawn token occurs in the last `win_size` (10) tokens at least `win_size * tau_r` (1) times,
it is redrawn from the whole distribution. Ids the phase does not allow (end of speech while text is streaming, the
fill token in the final phase, the two other specials always) are masked before sampling.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

from voice_triton.cosyvoice2.llm import SOS_EOS, TASK_ID, CosyVoice2LM, LlmState

# Text and speech tokens per interleaved block (upstream mix_ratio).
TEXT_BLOCK = 5
SPEECH_BLOCK = 15


@dataclass(frozen=True)
class Sampling:
    """RAS sampling and the length bounds of upstream's defaults (cosyvoice2.yaml's `sampling`, llm inference)."""

    top_p: float = 0.8
    top_k: int = 25
    win_size: int = 10
    tau_r: float = 0.1
    # Speech tokens per text token: at least min (end of speech is masked before), at most max (then it stops).
    min_token_text_ratio: float = 2.0
    max_token_text_ratio: float = 20.0


@dataclass
class Prompt:
    """The LLM's view of the speaker: the prompt's text ids and speech tokens (both empty for cross-lingual,
    instruct and preset speakers without a recorded prompt)."""

    text_ids: list[int] = field(default_factory=list)
    speech_tokens: list[int] = field(default_factory=list)


class RasSampler:
    """Repetition-aware sampling with its own torch.Generator, so a seed fixes the token sequence."""

    def __init__(self, params: Sampling, seed: int, speech_token_size: int) -> None:
        self.params = params
        self.generator = torch.Generator().manual_seed(seed)
        self.speech_token_size = speech_token_size

    def _draw(self, probs: torch.Tensor) -> int:
        return int(torch.multinomial(probs, 1, generator=self.generator).item())

    def sample(self, logits: torch.Tensor, history: list[int], allowed: torch.Tensor) -> int:
        """One token from (V,) logits; `allowed` is a (V,) bool mask of ids this step may produce."""
        logp = torch.where(allowed, logits.float().log_softmax(-1), torch.tensor(float("-inf")))
        probs = logp.softmax(-1)
        sorted_probs, order = probs.sort(descending=True)
        cumulative = sorted_probs.cumsum(0)
        # Nucleus: the smallest prefix whose mass reaches top_p, at most top_k tokens, at least one.
        keep = int((cumulative < self.params.top_p).sum().item()) + 1
        keep = max(1, min(keep, self.params.top_k, int(allowed.sum().item())))
        nucleus = sorted_probs[:keep]
        token = int(order[self._draw(nucleus / nucleus.sum())].item())
        window = history[-self.params.win_size :]
        if window.count(token) >= max(1, int(self.params.win_size * self.params.tau_r)):
            token = self._draw(probs)  # repetition: redraw from the whole distribution
        return token


def _mask(size: int, speech_token_size: int, *extra: int) -> torch.Tensor:
    allowed = torch.zeros(size, dtype=torch.bool)
    allowed[:speech_token_size] = True
    for index in extra:
        allowed[index] = True
    return allowed


@torch.inference_mode()
def generate_whole(
    lm: CosyVoice2LM,
    text_ids: list[int],
    prompt: Prompt,
    sampler: RasSampler,
    should_stop: Callable[[], bool] = lambda: False,
) -> Iterator[int]:
    """Speech tokens of one whole text, one at a time (upstream `Qwen2LM.inference`). Ends at end of speech, at the
    length bound (max_token_text_ratio * len(text_ids)) or when `should_stop()` says so."""
    if not text_ids:
        raise ValueError("no text tokens to speak")
    device = lm.llm_embedding.weight.device
    params = sampler.params
    min_len = int(len(text_ids) * params.min_token_text_ratio)
    max_len = max(1, int(len(text_ids) * params.max_token_text_ratio))
    size = lm.speech_token_size + 3
    speech_only = _mask(size, lm.speech_token_size).to(device)
    with_eos = _mask(size, lm.speech_token_size, lm.eos_token).to(device)
    logits, state = lm.start(
        torch.tensor([text_ids], dtype=torch.long, device=device),
        torch.tensor([prompt.text_ids], dtype=torch.long, device=device),
        torch.tensor([prompt.speech_tokens], dtype=torch.long, device=device),
    )
    out: list[int] = []
    while len(out) < max_len:
        token = sampler.sample(logits[0], out, with_eos if len(out) >= min_len else speech_only)
        if token == lm.eos_token:
            return
        out.append(token)
        yield token
        if should_stop():
            return
        logits = lm.next_logits(token, state)


class BistreamDecoder:
    """Text-in streaming for one utterance: `feed` text token ids as they come, `finish` when the text has ended.

    Both yield the speech tokens they produce. `feed` returns once the model waits for text (at a fill token, or
    before the first block when fewer than 5 text tokens are queued). Not thread-safe; one caller per utterance.
    """

    def __init__(self, lm: CosyVoice2LM, prompt: Prompt, sampler: RasSampler) -> None:
        self.lm = lm
        self.sampler = sampler
        self.device = lm.llm_embedding.weight.device
        self.state: LlmState = lm.new_state()
        self.text_queue: list[int] = list(prompt.text_ids)  # text ids not yet fed (the prompt text first)
        self.prompt_speech: list[int] = list(prompt.speech_tokens)  # prompt speech tokens not yet interleaved
        self.pending: list[torch.Tensor] = [lm.special_embedding(SOS_EOS)]  # embeddings to feed at the next step
        self.text_tokens = 0  # target text ids received
        self.out: list[int] = []  # speech tokens written
        self.block_speech = 0  # speech tokens (prompt or written) in the current block
        self.waiting_for_text = True  # at a block boundary: the next input is a text block
        self.finished = False
        size = lm.speech_token_size + 3
        self._streaming_ids = _mask(size, lm.speech_token_size, lm.fill_token).to(self.device)
        self._final_ids = _mask(size, lm.speech_token_size, lm.eos_token).to(self.device)
        self._speech_ids = _mask(size, lm.speech_token_size).to(self.device)

    def _text_embedding(self, ids: list[int]) -> torch.Tensor:
        return self.lm.text_embeddings(torch.tensor([ids], dtype=torch.long, device=self.device))

    def _step(self) -> torch.Tensor:
        inputs = torch.cat(self.pending, dim=1)
        self.pending = []
        return self.lm.step(inputs, self.state)[0]

    def _fill_blocks(self) -> bool:
        """Move text blocks (and the prompt's speech tokens) into the input while the model waits for text and 5 text
        ids are queued; True when the model may write speech tokens now."""
        while self.waiting_for_text and len(self.text_queue) >= TEXT_BLOCK:
            block, self.text_queue = self.text_queue[:TEXT_BLOCK], self.text_queue[TEXT_BLOCK:]
            self.pending.append(self._text_embedding(block))
            speech, self.prompt_speech = self.prompt_speech[:SPEECH_BLOCK], self.prompt_speech[SPEECH_BLOCK:]
            if speech:
                self.pending.append(self.lm.speech_embeddings(torch.tensor([speech], device=self.device)))
            self.block_speech = len(speech)
            # A full block of prompt speech ends at a fill target: the next input is again text.
            self.waiting_for_text = self.block_speech == SPEECH_BLOCK
        return not self.waiting_for_text

    @torch.inference_mode()
    def feed(self, text_ids: list[int], should_stop: Callable[[], bool] = lambda: False) -> Iterator[int]:
        if self.finished:
            raise RuntimeError("the utterance is finished")
        self.text_queue.extend(text_ids)
        self.text_tokens += len(text_ids)
        while self._fill_blocks():
            # Write the rest of the block; its last position predicts the fill token (forced: see the docstring).
            while True:
                logits = self._step()
                if self.block_speech == SPEECH_BLOCK:
                    self.waiting_for_text = True  # fill: the model waits for the next text block
                    break
                token = self.sampler.sample(logits, self.out, self._streaming_ids)
                if token == self.lm.fill_token:  # the model asked for text early: honour it
                    self.waiting_for_text = True
                    break
                self.out.append(token)
                self.block_speech += 1
                self.pending.append(self.lm.speech_embedding.weight[token].reshape(1, 1, -1))
                yield token
                if should_stop():
                    return

    @torch.inference_mode()
    def finish(self, should_stop: Callable[[], bool] = lambda: False) -> Iterator[int]:
        """The text has ended: feed what is left of it (and of the prompt's speech) and decode to the end."""
        if self.finished:
            raise RuntimeError("the utterance is finished")
        self.finished = True
        if self.text_tokens == 0:
            return
        # The streaming phase is bounded by its blocks (15 speech tokens per 5 text tokens); the final phase speaks the
        # text not yet in a block, at most max_token_text_ratio speech tokens per text token of it.
        rest = len(self.text_queue)
        budget = len(self.out) + max(SPEECH_BLOCK, int((rest + 1) * self.sampler.params.max_token_text_ratio))
        # Short text: the prompt's speech may not be interleaved yet; the rest goes in as the whole-text form has it.
        if self.text_queue:
            self.pending.append(self._text_embedding(self.text_queue))
            self.text_queue = []
        self.pending.append(self.lm.special_embedding(TASK_ID))
        if self.prompt_speech:
            self.pending.append(self.lm.speech_embeddings(torch.tensor([self.prompt_speech], device=self.device)))
            self.prompt_speech = []
        start = len(self.out)
        min_len = int(self.text_tokens * self.sampler.params.min_token_text_ratio)
        while len(self.out) < budget:
            logits = self._step()
            # End of speech once the text's minimum is written and the final text has at least one token of its own.
            allowed = self._final_ids if len(self.out) >= max(min_len, start + 1) else self._speech_ids
            token = self.sampler.sample(logits, self.out, allowed)
            if token == self.lm.eos_token:
                return
            self.out.append(token)
            self.pending.append(self.lm.speech_embedding.weight[token].reshape(1, 1, -1))
            yield token
            if should_stop():
                return


__all__ = [
    "SPEECH_BLOCK",
    "TEXT_BLOCK",
    "BistreamDecoder",
    "Prompt",
    "RasSampler",
    "Sampling",
    "generate_whole",
]
