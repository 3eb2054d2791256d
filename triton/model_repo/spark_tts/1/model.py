"""Spark-TTS on Triton's python backend: the decoupled model that orchestrates spark_audio_tokenizer, the LLM and
spark_vocoder.

One request is one piece of text. Its speaker comes from reference audio (zero-shot with the reference transcript,
cross-lingual without) or from voice-design attributes (gender, pitch, speed). For a reference clip, the global and
semantic tokens come from the `spark_audio_tokenizer` model once per distinct clip (content hash, LRU of
reference_cache_size); later requests with the same clip, such as the next sentences of one gateway stream, skip it.
The Qwen2 LLM runs here with transformers, sampling semantic tokens one at a time; every chunk of the schedule goes to
the `spark_vocoder` model and out as a `waveform` response, the last one followed by the final flag.

Requests run on threads of voice_triton's ThreadedDecoupledModel (up to max_concurrent_requests at once; torch
releases the GIL), whose every call into Triton (responses, cancellation checks, the BLS calls, metrics) takes the
instance's lock; the LLM steps, where the time goes, run outside it. Cancellation is checked between LLM steps
(rate-limited to cancel_poll_ms) and between chunks.

On GPU hosts the official runtime serves the LLM from TensorRT-LLM instead; see triton/README.md.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os

import numpy as np
from spark_engine import (
    GLOBAL_TOKEN_COUNT,
    ChunkSchedule,
    PromptError,
    SamplingParams,
    SparkVocabulary,
    StreamingVocoder,
    TokenGenerator,
    build_prompt,
)

from voice_triton.checkpoint import checkpoint_dir
from voice_triton.decoupled import RequestContext, ThreadedDecoupledModel
from voice_triton.device import pick_device, pick_dtype
from voice_triton.errors import BlsError, RequestError
from voice_triton.lru import LockedLRU
from voice_triton.params import ModelParams

HOP = 320  # samples per semantic token at 16 kHz (BiCodec's latent_hop_length)
RATE = 16000  # the reference clip's sample rate (reference_sample_rate_hz)
TOKENIZER = "spark_audio_tokenizer"
VOCODER = "spark_vocoder"


class TritonPythonModel(ThreadedDecoupledModel):
    def setup(self, params: ModelParams) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        root = checkpoint_dir(params, "spark")
        self.device = pick_device(params.text("device", "auto"))
        dtype = pick_dtype(params.text("llm_dtype", "auto"), self.device)
        self.tokenizer = AutoTokenizer.from_pretrained(root / "LLM")
        self.llm = AutoModelForCausalLM.from_pretrained(root / "LLM", torch_dtype=dtype).to(self.device).eval()
        self.vocabulary = SparkVocabulary.from_tokenizer(self.tokenizer, int(self.llm.config.vocab_size))
        self.generator = TokenGenerator(self.llm, self.vocabulary, self.device)
        self.schedule = ChunkSchedule.from_seconds(
            first_s=params.number("audio_chunk_duration", 1.0, 0.02, 60.0),
            scale=params.number("audio_chunk_size_scale_factor", 2.0, 1.0, 100.0),
            max_s=params.number("max_audio_chunk_duration", 8.0, 0.02, 600.0),
            overlap_s=params.number("audio_chunk_overlap_duration", 0.1, 0.0, 10.0),
            context_s=params.number("audio_chunk_left_context_duration", 0.2, 0.0, 10.0),
            token_rate=params.integer("audio_tokenizer_frame_rate", 50, 1, 1000),
        )
        self.sampling = SamplingParams(
            temperature=params.number("temperature", 0.8, 0.0, 10.0),  # 0: greedy
            top_k=params.integer("top_k", 50, 0, 1_000_000),  # 0: off
            top_p=params.number("top_p", 0.95, 0.0, 1.0),
            max_new_tokens=params.integer("max_new_tokens", 1500, 1, 100_000),
            min_new_tokens=params.integer("min_new_tokens", 5, 0, 100_000),
        )
        self.max_text_chars = params.integer("max_text_chars", 300, 1, 1_000_000)
        self.max_reference_samples = int(params.number("max_reference_seconds", 30.0, 0.1, 3600.0) * RATE)
        self.references: LockedLRU[str, tuple[np.ndarray, np.ndarray]] = LockedLRU(
            params.integer("reference_cache_size", 64, 1, 1_000_000)
        )
        by_result = "Reference clips tokenized, by cache result"
        self.reference_hits = self.metrics.counter("spark_reference_tokens_total", by_result, result="hit")
        self.reference_misses = self.metrics.counter("spark_reference_tokens_total", by_result, result="miss")
        self.semantic_tokens = self.metrics.counter("spark_semantic_tokens_total", "Semantic tokens generated")
        self.chunks = self.metrics.counter("spark_audio_chunks_total", "Audio chunks sent")
        self.cancelled = self.metrics.counter("spark_requests_cancelled_total", "Requests stopped by cancellation")
        self.log_info(f"loaded {root} on {self.device} ({dtype}); schedule {self.schedule}")

    # ---- the two models this one calls ----------------------------------------------------------------------------

    def _reference_tokens(self, ctx: RequestContext, wav: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The clip's (global, semantic) tokens: from the cache, else from spark_audio_tokenizer."""
        length = ctx.scalar("reference_wav_len")
        length = wav.size if length is None else int(length)
        if not 0 < length <= wav.size:
            raise RequestError(f"reference_wav_len {length} must be between 1 and {wav.size}")
        if length > self.max_reference_samples:
            raise RequestError(
                f"reference_wav holds {length / RATE:.1f} s; at most {self.max_reference_samples / RATE:g} s of "
                "16 kHz audio (a few seconds of clean speech clone best)"
            )
        clip = np.ascontiguousarray(wav[:length], dtype=np.float32)
        key = hashlib.sha256(clip.tobytes()).hexdigest()
        cached = self.references.get(key)
        if cached is not None:
            self.reference_hits.increment()
            return cached
        self.reference_misses.increment()
        inputs = {"reference_wav": clip.reshape(1, -1), "reference_wav_len": np.array([[length]], dtype=np.int32)}
        try:
            out = ctx.bls(TOKENIZER, inputs, ["global_tokens", "semantic_tokens"])
        except BlsError as exc:
            # The tokenizer refuses only a clip it cannot take (too short, not finite): the client's to fix (Triton
            # 2.51 hands BLS callers every error as INTERNAL, so its code cannot say so).
            raise RequestError(str(exc)) from None
        tokens = (out["global_tokens"].reshape(-1), out["semantic_tokens"].reshape(-1))
        self.references.put(key, tokens)
        return tokens

    def _vocode(self, ctx: RequestContext, global_codes: np.ndarray, semantic_codes: np.ndarray) -> np.ndarray:
        inputs = {
            "global_tokens": global_codes.astype(np.int32).reshape(1, -1),
            "semantic_tokens": semantic_codes.astype(np.int32).reshape(1, -1),
        }
        return ctx.bls(VOCODER, inputs, ["waveform"])["waveform"].reshape(-1).astype(np.float32)

    # ---- one request ----------------------------------------------------------------------------------------------

    def _prompt(self, ctx: RequestContext, text: str) -> tuple[str, np.ndarray | None]:
        """The LLM prompt and the speaker's global codes (None: the LLM designs them)."""
        wav = ctx.array("reference_wav")
        try:
            if wav is not None:
                global_codes, semantic_codes = self._reference_tokens(ctx, wav)
                reference_text = (ctx.text("reference_text") or "").strip()
                prompt = build_prompt(
                    text,
                    global_codes=global_codes,
                    semantic_codes=semantic_codes,
                    reference_text=reference_text or None,
                )
                return prompt, global_codes
            gender = ctx.text("gender")
            prompt = build_prompt(
                text,
                gender=gender.strip().lower() if gender else None,
                pitch=(ctx.text("pitch_level") or "moderate").strip().lower(),
                speed=(ctx.text("speed_level") or "moderate").strip().lower(),
            )
        except PromptError as exc:  # the engine knows no Triton; its refusals are the client's to fix
            raise RequestError(str(exc)) from None
        return prompt, None

    def serve(self, ctx: RequestContext) -> None:
        text = ctx.required_text("target_text", self.max_text_chars)
        seed = ctx.scalar("seed")
        seed = int(seed) if seed is not None else 0
        seed = seed or int.from_bytes(os.urandom(8), "little") >> 1  # 0 or absent: a random seed
        prompt, global_codes = self._prompt(ctx, text)
        prompt_ids = self.tokenizer(prompt)["input_ids"]
        sampling = dataclasses.replace(self.sampling, seed=seed % (1 << 63))
        designed: list[int] = []
        vocoder: StreamingVocoder | None = None

        def vocode(codes: np.ndarray) -> np.ndarray:
            assert global_codes is not None
            return self._vocode(ctx, global_codes, codes)

        def send(audio: np.ndarray) -> None:
            if audio.size:
                ctx.send_waveform(audio)
                self.chunks.increment()

        if global_codes is not None:
            vocoder = StreamingVocoder(vocode, self.schedule, HOP)
        produced = 0
        for token in self.generator.generate(
            prompt_ids, sampling, design=global_codes is None, should_stop=ctx.cancelled
        ):
            if token.kind == "global":
                designed.append(token.code)
                if len(designed) == GLOBAL_TOKEN_COUNT:
                    global_codes = np.asarray(designed, dtype=np.int32)
                    vocoder = StreamingVocoder(vocode, self.schedule, HOP)
                continue
            if vocoder is None:
                continue  # cannot happen: the generator makes all global tokens first
            vocoder.add(token.code)
            produced += 1
            if vocoder.ready():
                send(vocoder.take())
                ctx.raise_if_cancelled()
        # generate() also ends when ctx.cancelled() said so: a cancelled piece is not finished with a last chunk.
        ctx.raise_if_cancelled()
        self.semantic_tokens.increment(produced)
        if vocoder is None or not vocoder.codes:
            raise RuntimeError("the model produced no speech tokens for this text")
        send(vocoder.take(final=True))

    def on_cancelled(self, ctx: RequestContext) -> None:
        self.cancelled.increment()
