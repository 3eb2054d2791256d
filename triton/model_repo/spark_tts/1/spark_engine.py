"""The parts of Spark-TTS serving that need no Triton: prompts, constrained sampling, and the streaming decoder.

- `SparkVocabulary` maps the LLM tokenizer's codec tokens (<|bicodec_semantic_N|>, <|bicodec_global_N|>) to codes.
- `build_prompt` writes Spark-TTS's three prompt forms: zero-shot (reference transcript + semantic prompt tokens),
  cross-lingual (global tokens only) and voice design (gender, pitch and speed labels, no reference).
- `TokenGenerator` samples the LLM token by token with its KV cache (temperature, top-k, top-p, a seed), allowing
  only tokens that can come next (global tokens while a designed voice is being made, then semantic tokens), and
  asks a `should_stop` callback between steps so a cancelled request stops within a step.
- `StreamingVocoder` turns a growing list of semantic tokens into audio chunks on the official runtime's schedule (a
  short first chunk, then chunks growing by a factor up to a maximum). Each window is decoded with left context, and
  the last `overlap` tokens of every chunk are held back and cross-faded with the next window's decode of the same
  tokens, so seams carry no click and the total length is exactly tokens x hop samples.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

GLOBAL_TOKEN_COUNT = 32  # BiCodec's speaker is always 32 global tokens

GENDERS = ("female", "male")  # Spark's <|gender_N|> order
LEVELS = ("very_low", "low", "moderate", "high", "very_high")  # Spark's <|pitch_label_N|> / <|speed_label_N|> order


class PromptError(ValueError):
    """A request the model cannot turn into a prompt; the message says what to fix."""


@dataclass(frozen=True)
class SparkVocabulary:
    """Token ids of the LLM tokenizer that matter for decoding, and code lookups."""

    eos_id: int
    semantic_ids: np.ndarray  # code -> token id
    global_ids: np.ndarray
    code_of: np.ndarray  # token id -> code, -1 for other tokens
    is_global: np.ndarray  # token id -> bool
    structure_ids: dict[str, int] = field(default_factory=dict)
    vocab_size: int = 0

    @classmethod
    def from_tokenizer(cls, tokenizer: object, model_vocab_size: int) -> SparkVocabulary:
        def ids_for(template: str) -> np.ndarray:
            found: list[int] = []
            while True:
                token_id = tokenizer.convert_tokens_to_ids(template.format(len(found)))  # type: ignore[attr-defined]
                if token_id is None or token_id == tokenizer.unk_token_id or token_id < 0:  # type: ignore[attr-defined]
                    return np.asarray(found, dtype=np.int64)
                found.append(int(token_id))

        semantic = ids_for("<|bicodec_semantic_{}|>")
        global_ = ids_for("<|bicodec_global_{}|>")
        if semantic.size == 0 or global_.size == 0:
            raise ValueError("the LLM tokenizer has no <|bicodec_semantic_N|> / <|bicodec_global_N|> tokens")
        size = max(model_vocab_size, int(semantic.max()) + 1, int(global_.max()) + 1)
        code_of = np.full(size, -1, dtype=np.int64)
        code_of[semantic] = np.arange(semantic.size)
        code_of[global_] = np.arange(global_.size)
        is_global = np.zeros(size, dtype=bool)
        is_global[global_] = True
        structure = {}
        for name in ("start_global_token", "end_global_token", "start_semantic_token", "end_semantic_token"):
            token_id = tokenizer.convert_tokens_to_ids(f"<|{name}|>")  # type: ignore[attr-defined]
            if token_id is not None and token_id != tokenizer.unk_token_id:  # type: ignore[attr-defined]
                structure[name] = int(token_id)
        eos = tokenizer.eos_token_id  # type: ignore[attr-defined]
        if eos is None:
            raise ValueError("the LLM tokenizer declares no eos token")
        return cls(int(eos), semantic, global_, code_of, is_global, structure, size)


def build_prompt(
    text: str,
    *,
    global_codes: np.ndarray | None = None,
    semantic_codes: np.ndarray | None = None,
    reference_text: str | None = None,
    gender: str | None = None,
    pitch: str = "moderate",
    speed: str = "moderate",
) -> str:
    """Spark-TTS's prompt for one piece of text. Cloning needs `global_codes`; zero-shot adds the reference transcript
    and its `semantic_codes`; with `gender` (and no codes) the model designs a voice."""
    if global_codes is not None:
        speaker = "".join(f"<|bicodec_global_{int(c)}|>" for c in global_codes.reshape(-1))
        parts = ["<|task_tts|>", "<|start_content|>"]
        if reference_text:
            if semantic_codes is None:
                raise PromptError("zero-shot cloning needs the reference's semantic tokens")
            prompt_tokens = "".join(f"<|bicodec_semantic_{int(c)}|>" for c in semantic_codes.reshape(-1))
            parts += [reference_text, text, "<|end_content|>", "<|start_global_token|>", speaker]
            parts += ["<|end_global_token|>", "<|start_semantic_token|>", prompt_tokens]
        else:
            parts += [text, "<|end_content|>", "<|start_global_token|>", speaker, "<|end_global_token|>"]
        return "".join(parts)
    if gender is None:
        raise PromptError("give reference audio (voice cloning) or a gender (voice design)")
    for name, value, allowed in (("gender", gender, GENDERS), ("pitch", pitch, LEVELS), ("speed", speed, LEVELS)):
        if value not in allowed:
            raise PromptError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")
    labels = (
        f"<|gender_{GENDERS.index(gender)}|><|pitch_label_{LEVELS.index(pitch)}|><|speed_label_{LEVELS.index(speed)}|>"
    )
    content = f"<|start_content|>{text}<|end_content|>"
    return f"<|task_controllable_tts|>{content}<|start_style_label|>{labels}<|end_style_label|>"


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.8
    top_k: int = 50
    top_p: float = 0.95
    max_new_tokens: int = 1500
    min_new_tokens: int = 5  # semantic tokens before eos may end a piece (0.1 s): a piece never comes back empty
    seed: int = 0


@dataclass
class Generated:
    """A token the LLM produced, classified."""

    kind: str  # "semantic" or "global"
    code: int


class TokenGenerator:
    """Token-by-token sampling with a KV cache, constrained to what may come next."""

    def __init__(self, model: object, vocabulary: SparkVocabulary, device: object) -> None:
        import torch

        self.torch = torch
        self.model = model
        self.vocabulary = vocabulary
        self.device = device
        size = vocabulary.vocab_size
        stops = [vocabulary.eos_id, vocabulary.structure_ids.get("end_semantic_token", -1)]
        structure = vocabulary.structure_ids
        semantic_phase = np.zeros(size, dtype=bool)
        semantic_phase[vocabulary.semantic_ids] = True
        for extra in (*stops, structure.get("end_global_token", -1), structure.get("start_semantic_token", -1)):
            if 0 <= extra < size:
                semantic_phase[extra] = True
        global_phase = np.zeros(size, dtype=bool)
        global_phase[vocabulary.global_ids] = True
        if 0 <= structure.get("start_global_token", -1) < size:
            global_phase[structure["start_global_token"]] = True
        self._stops = {s for s in stops if s >= 0}
        opening = semantic_phase.copy()  # the first semantic tokens: no stop yet
        opening[list(self._stops)] = False
        self._masks = {
            phase: torch.from_numpy(np.where(allowed, 0.0, -math.inf).astype(np.float32)).to(device)
            for phase, allowed in (("semantic", semantic_phase), ("global", global_phase), ("opening", opening))
        }

    def _sample(self, logits: object, params: SamplingParams, generator: object) -> int:
        torch = self.torch
        if params.temperature <= 0:
            return int(torch.argmax(logits))
        logits = logits / params.temperature
        if 0 < params.top_k < logits.numel():
            kth = torch.topk(logits, params.top_k).values[-1]
            logits = torch.where(logits < kth, torch.full_like(logits, -math.inf), logits)
        probs = torch.softmax(logits, dim=-1)
        if 0 < params.top_p < 1:
            sorted_probs, order = torch.sort(probs, descending=True)
            # Keep the smallest prefix whose mass reaches top_p (always at least the most likely token).
            drop = torch.cumsum(sorted_probs, dim=-1) - sorted_probs >= params.top_p
            sorted_probs[drop] = 0.0
            probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
        return int(torch.multinomial(probs, 1, generator=generator))

    def generate(
        self,
        prompt_ids: list[int],
        params: SamplingParams,
        *,
        design: bool,
        should_stop: Callable[[], bool] = lambda: False,
    ) -> Iterator[Generated]:
        """Yield codec tokens until eos, `max_new_tokens` or `should_stop()`. With `design`, the first 32 are global
        tokens (the designed speaker), then semantic tokens."""
        torch = self.torch
        generator = torch.Generator(device="cpu").manual_seed(params.seed)
        vocabulary = self.vocabulary
        phase = "global" if design else "semantic"
        globals_made = 0
        semantic_made = 0
        past = None
        ids = torch.tensor([prompt_ids], dtype=torch.long, device=self.device)
        with torch.inference_mode():
            for _ in range(params.max_new_tokens):
                if should_stop():
                    return
                out = self.model(input_ids=ids, past_key_values=past, use_cache=True)  # type: ignore[operator]
                past = out.past_key_values
                logits = out.logits[0, -1, : vocabulary.vocab_size].float()
                if logits.numel() < vocabulary.vocab_size:
                    logits = torch.nn.functional.pad(logits, (0, vocabulary.vocab_size - logits.numel()), value=-1e9)
                mask = "opening" if phase == "semantic" and semantic_made < params.min_new_tokens else phase
                logits = (logits + self._masks[mask]).cpu()
                token = self._sample(logits, params, generator)
                if token in self._stops and phase == "semantic":
                    return
                ids = torch.tensor([[token]], dtype=torch.long, device=self.device)
                code = int(vocabulary.code_of[token])
                if code < 0:
                    continue  # a structure token (<|start_semantic_token|>, ...): part of the sequence, not audio
                if vocabulary.is_global[token]:
                    globals_made += 1
                    yield Generated("global", code)
                    if globals_made == GLOBAL_TOKEN_COUNT:
                        phase = "semantic"
                else:
                    semantic_made += 1
                    yield Generated("semantic", code)


@dataclass(frozen=True)
class ChunkSchedule:
    """Token counts of the streaming schedule (the official runtime's parameters, converted to tokens)."""

    first: int  # tokens in the first chunk
    scale: float  # each next chunk is this much longer
    maximum: int  # ... up to this many tokens
    overlap: int  # tokens held back and cross-faded into the next chunk
    context: int  # tokens of left context decoded (and dropped) before each window

    @classmethod
    def from_seconds(
        cls, *, first_s: float, scale: float, max_s: float, overlap_s: float, context_s: float, token_rate: int
    ) -> ChunkSchedule:
        def tokens(seconds: float) -> int:
            return max(0, math.ceil(seconds * token_rate))

        first = max(1, tokens(first_s))
        overlap = min(tokens(overlap_s), first - 1)
        return cls(first, max(1.0, scale), max(first, tokens(max_s)), overlap, tokens(context_s))


def crossfade(outgoing: np.ndarray, incoming: np.ndarray) -> np.ndarray:
    """Raised-cosine cross-fade of two renderings of the same audio (gains sum to one: no level bump)."""
    n = outgoing.size
    if n == 0:
        return incoming
    fade_in = np.sin(0.5 * np.pi * (np.arange(n, dtype=np.float64) + 0.5) / n) ** 2
    return (outgoing * (1.0 - fade_in) + incoming * fade_in).astype(np.float32)


class StreamingVocoder:
    """Feed semantic codes as the LLM makes them; `ready()` says a chunk is due, `take()` decodes it. `decode(codes)`
    is the vocoder: codes -> exactly len(codes) * hop samples."""

    def __init__(self, decode: Callable[[np.ndarray], np.ndarray], schedule: ChunkSchedule, hop: int) -> None:
        self._decode = decode
        self.schedule = schedule
        self.hop = hop
        self.codes: list[int] = []
        self.emitted = 0  # tokens whose audio has been sent
        self._tail = np.zeros(0, dtype=np.float32)  # audio of tokens [emitted, emitted + overlap), not yet sent
        self.chunk = schedule.first
        self.windows = 0  # vocoder calls so far

    def add(self, code: int) -> None:
        self.codes.append(code)

    def ready(self) -> bool:
        return len(self.codes) - self.emitted >= self.chunk

    def take(self, *, final: bool = False) -> np.ndarray:
        """Audio of every token added so far (final), or of all but the last `overlap` tokens (held for the fade)."""
        end = len(self.codes)
        if end <= self.emitted:
            audio, self._tail = self._tail, np.zeros(0, dtype=np.float32)
            return audio
        start = max(0, self.emitted - self.schedule.context)
        window = self._decode(np.asarray(self.codes[start:end], dtype=np.int32))
        self.windows += 1
        expected = (end - start) * self.hop
        if window.size != expected:
            raise RuntimeError(f"vocoder returned {window.size} samples for {end - start} tokens, not {expected}")
        audio = window[(self.emitted - start) * self.hop :]
        if self._tail.size:
            audio = np.concatenate((crossfade(self._tail, audio[: self._tail.size]), audio[self._tail.size :]))
        hold = 0 if final else min(self.schedule.overlap, end - self.emitted - 1) * self.hop
        if hold:
            audio, self._tail = audio[:-hold], audio[-hold:].copy()
        else:
            self._tail = np.zeros(0, dtype=np.float32)
        self.emitted = end - hold // self.hop
        if not final:
            self.chunk = min(self.schedule.maximum, max(self.chunk + 1, int(self.chunk * self.schedule.scale)))
        return audio.astype(np.float32, copy=False)
