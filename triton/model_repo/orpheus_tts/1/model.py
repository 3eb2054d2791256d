"""Orpheus TTS on Triton's python backend: a decoupled model that streams one response per SNAC frame.

One request is one piece of text for one preset speaker. The Llama LM (transformers, the published checkpoint
directory unchanged) is prompted with Orpheus' layout (`orpheus_codec.prompt_ids` around "{speaker}: {text}") and
sampled token by token with its KV cache (temperature, top-p, repetition penalty over prompt and output, as vLLM
applies it for Orpheus). Every token goes to `orpheus_codec.StreamingDecoder`, which skips and counts tokens that
are no audio code for their frame position and hands back 2048 samples per frame once two more frames exist; each
block is sent at once. End of speech (or max_new_tokens) flushes the last frames, then the final flag.

Requests run on threads and every call into Triton goes through one lock (voice_triton.decoupled, as for spark_tts).
Cancellation is checked at every frame boundary (every 7 valid tokens, and at least every 7 generated tokens), so a
cancelled request stops within one frame of tokens.

Real time needs 82.03 tokens/s (7 tokens per 2048 samples at 24 kHz). Each request's generation rate goes to the
metrics (orpheus_tokens_per_second of the last request, orpheus_slow_requests_total for those below real time) and a
slow request is logged as a warning, so a listener's stutter has a visible cause.
"""

from __future__ import annotations

import math
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from orpheus_codec import (
    END_OF_AI,
    END_OF_SPEECH,
    END_OF_TEXT,
    REAL_TIME_TOKENS_PER_S,
    SAMPLES_PER_FRAME,
    TOKENS_PER_FRAME,
    StreamingDecoder,
    prompt_ids,
    snac_decode,
)

from voice_triton.checkpoint import checkpoint_dir
from voice_triton.decoupled import RequestContext, ThreadedDecoupledModel
from voice_triton.device import pick_device, pick_dtype
from voice_triton.errors import RequestError
from voice_triton.params import ConfigError, ModelParams

SAMPLING_KEYS = ("temperature", "top_p", "repetition_penalty", "max_new_tokens")
# Orpheus' own sampling defaults, used when config.pbtxt leaves one out.
DEFAULTS = {"temperature": 0.6, "top_p": 0.8, "repetition_penalty": 1.3, "max_new_tokens": 1200}


@dataclass(frozen=True)
class Sampling:
    temperature: float
    top_p: float
    repetition_penalty: float
    max_new_tokens: int
    seed: int = 0


@dataclass
class Progress:
    """What one request generated so far; accounted in the metrics before its final flag, however it ended."""

    decoder: StreamingDecoder
    started: float = field(default_factory=time.monotonic)
    generated: int = 0


class TritonPythonModel(ThreadedDecoupledModel):
    def setup(self, params: ModelParams) -> None:
        import torch
        from snac import SNAC
        from transformers import AutoModelForCausalLM, AutoTokenizer

        # The parameters first: a wrong config fails the load before any weights are read.
        self.context_frames = params.integer("snac_context_frames", 1, 0, 64)
        self.speakers = params.names("speakers")
        if not self.speakers:
            raise ConfigError(f"{self.model_name}: config parameter speakers must name at least one speaker")
        self.default_speaker = params.text("default_speaker", self.speakers[0])
        if self.default_speaker not in self.speakers:
            raise ConfigError(f"{self.model_name}: default_speaker {self.default_speaker!r} is not in speakers")
        self.ranges = {key: params.interval(f"{key}_range") for key in SAMPLING_KEYS}
        low, high = self.ranges["max_new_tokens"]
        self.defaults = Sampling(
            **{key: params.number(key, DEFAULTS[key], *self.ranges[key]) for key in SAMPLING_KEYS[:-1]},
            max_new_tokens=params.integer("max_new_tokens", int(DEFAULTS["max_new_tokens"]), int(low), int(high)),
        )
        self.stops = {END_OF_SPEECH, END_OF_AI, END_OF_TEXT}
        self.max_text_chars = params.integer("max_text_chars", 1000, 1)

        root = checkpoint_dir(params, "orpheus")
        snac_dir = Path(params.text("snac_dir") or root / "snac")
        if not (snac_dir / "config.json").is_file() or not (snac_dir / "pytorch_model.bin").is_file():
            raise ConfigError(f"{self.model_name}: no SNAC 24 kHz model (config.json, pytorch_model.bin) at {snac_dir}")
        self.torch = torch
        self.device = pick_device(params.text("device", "auto"))
        dtype = pick_dtype(params.text("llm_dtype", "auto"), self.device)
        self.tokenizer = AutoTokenizer.from_pretrained(root)
        self.llm = AutoModelForCausalLM.from_pretrained(root, torch_dtype=dtype).to(self.device).eval()
        self.vocab_size = int(self.llm.config.vocab_size)
        self.snac = SNAC.from_pretrained(str(snac_dir)).to(self.device).eval()
        sample_rate = params.integer("sample_rate_hz", 24000, 1)
        if int(self.snac.sampling_rate) != sample_rate:
            raise ConfigError(
                f"{self.model_name}: SNAC at {snac_dir} runs at {self.snac.sampling_rate} Hz, "
                f"not sample_rate_hz {sample_rate}"
            )
        hop = int(self.snac.hop_length) * int(self.snac.vq_strides[0])
        if hop != SAMPLES_PER_FRAME or self.snac.n_codebooks != 3:
            raise ConfigError(f"{self.model_name}: SNAC at {snac_dir} is not the 24 kHz 3-codebook model Orpheus uses")
        self.decode = snac_decode(self.snac)
        # SNAC's noise blocks draw from torch's process-wide generator; each window forks and seeds it (one window at
        # a time), so the same request seed gives the same audio.
        self._decode_lock = threading.Lock()
        self._rng_devices = [torch.cuda.current_device()] if self.device.type == "cuda" else []

        counter, gauge = self.metrics.counter, self.metrics.gauge
        self.tokens = counter("orpheus_tokens_total", "Tokens the LM generated")
        self.invalid = counter(
            "orpheus_invalid_tokens_total", "Generated tokens skipped: no audio code at their position"
        )
        self.frames = counter("orpheus_audio_frames_total", "SNAC frames (2048 samples) sent")
        self.seconds = counter("orpheus_generation_seconds_total", "Seconds spent generating")
        self.cancelled = counter("orpheus_requests_cancelled_total", "Requests stopped by cancellation")
        self.slow = counter("orpheus_slow_requests_total", "Requests generated below real time (82.03 tokens/s)")
        self.rate = gauge("orpheus_tokens_per_second", "Generation rate of the last finished request")
        self.log_info(f"loaded {root} and {snac_dir} on {self.device} ({dtype})")

    # ---- one request ----------------------------------------------------------------------------------------------

    def _sampling(self, ctx: RequestContext) -> Sampling:
        values: dict[str, Any] = {}
        for key in SAMPLING_KEYS:
            value = ctx.scalar(key)
            if value is None:
                values[key] = getattr(self.defaults, key)
                continue
            low, high = self.ranges[key]
            if not (math.isfinite(float(value)) and low <= float(value) <= high):
                raise RequestError(f"{key} must be between {low:g} and {high:g}; got {float(value):g}")
            values[key] = int(value) if key == "max_new_tokens" else float(value)
        seed = ctx.scalar("seed")
        seed = int(seed or 0) or int.from_bytes(os.urandom(8), "little") >> 1
        return Sampling(**values, seed=seed % (1 << 63))

    def _speaker(self, ctx: RequestContext) -> str:
        index = ctx.scalar("speaker_id")
        if index is None:
            return self.default_speaker
        if not 0 <= int(index) < len(self.speakers):
            raise RequestError(
                f"speaker_id {int(index)} is not a speaker: 0..{len(self.speakers) - 1} ({', '.join(self.speakers)})"
            )
        return self.speakers[int(index)]

    def _sample(self, logits: Any, seen: Any, sampling: Sampling, generator: Any) -> int:
        """One token from the step's logits (changed in place). `seen`: ids of the prompt and the output so far."""
        torch = self.torch
        if sampling.repetition_penalty != 1.0 and seen.numel():
            # Only the seen ids: a where() over all 157k logits cost more than the tiny model's forward step.
            values = logits[seen]
            logits[seen] = torch.where(
                values > 0, values / sampling.repetition_penalty, values * sampling.repetition_penalty
            )
        if sampling.temperature <= 0:
            return int(torch.argmax(logits))
        probs = torch.softmax(logits / sampling.temperature, dim=-1)
        order = None
        if sampling.top_p < 1.0:
            # The nucleus almost always lies in the top few thousand of 157k tokens: sort those only, and the whole
            # vocabulary only when they do not reach top_p.
            probs, order = torch.topk(probs, min(4096, probs.numel()))
            if float(probs.sum()) < sampling.top_p:
                probs, order = torch.sort(torch.softmax(logits / sampling.temperature, dim=-1), descending=True)
            probs = probs.clone()
            probs[torch.cumsum(probs, dim=-1) - probs >= sampling.top_p] = 0.0
        # Inverse CDF with the request's generator (torch.multinomial over 157k weights took ~25 ms a step).
        cumulative = torch.cumsum(probs, dim=-1)
        draw = torch.rand(1, generator=generator) * cumulative[-1]
        index = min(int(torch.searchsorted(cumulative, draw)), probs.numel() - 1)
        return int(order[index]) if order is not None else index

    def _send(self, ctx: RequestContext, audio: np.ndarray) -> None:
        ctx.send_waveform(audio)
        self.frames.increment(audio.size // SAMPLES_PER_FRAME)

    def serve(self, ctx: RequestContext) -> None:
        torch = self.torch
        request_seed = 0

        def decode(codebooks: tuple[list[int], list[int], list[int]]) -> np.ndarray:
            with self._decode_lock, torch.random.fork_rng(devices=self._rng_devices):
                torch.manual_seed((request_seed * 1_000_003 + decoder.emitted_frames) % (1 << 63))
                return self.decode(codebooks)

        decoder = StreamingDecoder(decode, context_frames=self.context_frames)
        progress = ctx.state = Progress(decoder)
        text = ctx.required_text("target_text", self.max_text_chars)
        speaker = self._speaker(ctx)
        sampling = self._sampling(ctx)
        request_seed = sampling.seed
        ids = prompt_ids(self.tokenizer(f"{speaker}: {text}")["input_ids"])
        generator = torch.Generator(device="cpu").manual_seed(sampling.seed)
        seen_ids = set(ids)
        seen = torch.tensor(sorted(seen_ids), dtype=torch.long)
        past = None
        step_ids = torch.tensor([ids], dtype=torch.long, device=self.device)
        since_check = 0
        with torch.inference_mode():
            for _ in range(sampling.max_new_tokens):
                out = self.llm(input_ids=step_ids, past_key_values=past, use_cache=True)
                past = out.past_key_values
                logits = out.logits[0, -1, : self.vocab_size].float().cpu()
                token = self._sample(logits, seen, sampling, generator)
                progress.generated += 1
                if token in self.stops:
                    break
                if token not in seen_ids:
                    seen_ids.add(token)
                    seen = torch.cat([seen, torch.tensor([token], dtype=torch.long)])
                step_ids = torch.tensor([[token]], dtype=torch.long, device=self.device)
                before = len(decoder.codes)
                block = decoder.push(token)
                if block is not None:
                    self._send(ctx, block)
                since_check += 1
                # At every frame boundary, and every 7 tokens while the LM strays.
                if (len(decoder.codes) != before and decoder.position == 0) or since_check >= TOKENS_PER_FRAME:
                    since_check = 0
                    ctx.raise_if_cancelled()
        ctx.raise_if_cancelled()
        tail = decoder.flush()
        if tail.size:
            self._send(ctx, tail)
        if decoder.frames == 0:
            raise RuntimeError(f"the model produced no audio frame in {progress.generated} tokens")

    def on_cancelled(self, ctx: RequestContext) -> None:
        self.cancelled.increment(1)

    def before_final(self, ctx: RequestContext) -> None:
        """Counted before the final flag, so a client that saw the end also sees the request in the metrics."""
        progress: Progress | None = ctx.state
        if progress is None or progress.generated == 0:
            return
        seconds = time.monotonic() - progress.started
        rate = progress.generated / max(seconds, 1e-9)
        self.tokens.increment(progress.generated)
        self.invalid.increment(progress.decoder.invalid_tokens)
        self.seconds.increment(seconds)
        self.rate.set(rate)
        if rate < REAL_TIME_TOKENS_PER_S:
            self.slow.increment(1)
            self.log_warn(
                f"{progress.generated} tokens at {rate:.1f} tokens/s, below the "
                f"{REAL_TIME_TOKENS_PER_S:.2f} tokens/s real time needs: a listener would hear gaps"
            )
