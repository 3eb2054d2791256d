"""Orpheus TTS on Triton's python backend: a decoupled model that streams one response per SNAC frame.

One request is one piece of text for one preset speaker. The Llama LM (transformers, the published checkpoint
directory unchanged) is prompted with Orpheus' layout (`orpheus_codec.prompt_ids` around "{speaker}: {text}") and
sampled token by token with its KV cache (temperature, top-p, repetition penalty over prompt and output, as vLLM
applies it for Orpheus). Every token goes to `orpheus_codec.StreamingDecoder`, which skips and counts tokens that
are no audio code for their frame position and hands back 2048 samples per frame once two more frames exist; each
block is sent at once. End of speech (or max_new_tokens) flushes the last frames, then the final flag.

Requests run on threads (up to max_concurrent_requests; torch releases the GIL); every call into Triton goes through
one lock, as in spark_tts (the python backend of Triton 2.51 crashed when several threads called it at once).
Cancellation is checked at every frame boundary (every 7 valid tokens, and at least every 7 generated tokens), so a
cancelled request stops within one frame of tokens.

Real time needs 82.03 tokens/s (7 tokens per 2048 samples at 24 kHz). Each request's generation rate goes to the
metrics (orpheus_tokens_per_second of the last request, orpheus_slow_requests_total for those below real time) and a
slow request is logged as a warning, so a listener's stutter has a visible cause.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils
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


class RequestError(ValueError):
    """The request cannot be served as sent; the message goes back to the client as INVALID_ARG."""


class Cancelled(Exception):
    """The client cancelled the request."""


@dataclass(frozen=True)
class Sampling:
    temperature: float
    top_p: float
    repetition_penalty: float
    max_new_tokens: int
    seed: int = 0


class _Metrics:
    """Custom metrics on Triton's metrics port (the families must outlive their metrics: keep both)."""

    def __init__(self, model_name: str) -> None:
        self.families: list[Any] = []
        labels = {"model": model_name}
        counter, gauge = pb_utils.MetricFamily.COUNTER, pb_utils.MetricFamily.GAUGE
        self.tokens = self._metric("orpheus_tokens_total", "Tokens the LM generated", counter, labels)
        self.invalid = self._metric(
            "orpheus_invalid_tokens_total", "Generated tokens skipped: no audio code at their position", counter, labels
        )
        self.frames = self._metric("orpheus_audio_frames_total", "SNAC frames (2048 samples) sent", counter, labels)
        self.seconds = self._metric("orpheus_generation_seconds_total", "Seconds spent generating", counter, labels)
        self.cancelled = self._metric(
            "orpheus_requests_cancelled_total", "Requests stopped by cancellation", counter, labels
        )
        self.slow = self._metric(
            "orpheus_slow_requests_total", "Requests generated below real time (82.03 tokens/s)", counter, labels
        )
        self.rate = self._metric(
            "orpheus_tokens_per_second", "Generation rate of the last finished request", gauge, labels
        )

    def _metric(self, name: str, description: str, kind: Any, labels: dict[str, str]) -> Any:
        family = pb_utils.MetricFamily(name=name, description=description, kind=kind)
        self.families.append(family)
        return family.Metric(labels=labels)


def _input(request: Any, name: str) -> Any:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy().reshape(-1)[0]


def _range(params: dict[str, str], key: str) -> tuple[float, float]:
    low, high = (float(v) for v in params[f"{key}_range"].split(","))
    return low, high


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        import torch
        from snac import SNAC
        from transformers import AutoModelForCausalLM, AutoTokenizer

        config = json.loads(args["model_config"])
        if not pb_utils.using_decoupled_model_transaction_policy(config):
            raise pb_utils.TritonModelException("orpheus_tts streams its audio: set decoupled: true")
        self.model_name = args["model_name"]
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        root = Path(params.get("checkpoint_dir", "").strip() or os.environ.get("ORPHEUS_CHECKPOINT", "") or "-")
        if not (root / "config.json").is_file():
            raise pb_utils.TritonModelException(
                f"no Orpheus checkpoint at {str(root)!r}: set parameter checkpoint_dir (launch.py --orpheus-checkpoint)"
            )
        snac_dir = Path(params.get("snac_dir", "").strip() or root / "snac")
        if not (snac_dir / "config.json").is_file() or not (snac_dir / "pytorch_model.bin").is_file():
            raise pb_utils.TritonModelException(f"no SNAC 24 kHz model (config.json, pytorch_model.bin) at {snac_dir}")
        self.torch = torch
        device = params.get("device", "auto")
        self.device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)
        dtype_name = params.get("llm_dtype", "auto")
        dtype = (torch.bfloat16 if self.device.type == "cuda" else torch.float32) if dtype_name == "auto" else None
        dtype = dtype or getattr(torch, dtype_name)
        self.tokenizer = AutoTokenizer.from_pretrained(root)
        self.llm = AutoModelForCausalLM.from_pretrained(root, torch_dtype=dtype).to(self.device).eval()
        self.vocab_size = int(self.llm.config.vocab_size)
        self.snac = SNAC.from_pretrained(str(snac_dir)).to(self.device).eval()
        if int(self.snac.sampling_rate) != int(params["sample_rate_hz"]):
            raise pb_utils.TritonModelException(
                f"SNAC at {snac_dir} runs at {self.snac.sampling_rate} Hz, "
                f"not sample_rate_hz {params['sample_rate_hz']}"
            )
        hop = int(self.snac.hop_length) * int(self.snac.vq_strides[0])
        if hop != SAMPLES_PER_FRAME or self.snac.n_codebooks != 3:
            raise pb_utils.TritonModelException(f"SNAC at {snac_dir} is not the 24 kHz 3-codebook model Orpheus uses")
        self.decode = snac_decode(self.snac)
        # SNAC's noise blocks draw from torch's process-wide generator; each window forks and seeds it (one window at
        # a time), so the same request seed gives the same audio.
        self._decode_lock = threading.Lock()
        self._rng_devices = [torch.cuda.current_device()] if self.device.type == "cuda" else []
        self.context_frames = int(params.get("snac_context_frames", "1"))
        self.speakers = [s.strip() for s in params["speakers"].split(",") if s.strip()]
        self.default_speaker = params.get("default_speaker", self.speakers[0])
        if self.default_speaker not in self.speakers:
            raise pb_utils.TritonModelException(f"default_speaker {self.default_speaker!r} is not in speakers")
        self.defaults = Sampling(
            temperature=float(params["temperature"]),
            top_p=float(params["top_p"]),
            repetition_penalty=float(params["repetition_penalty"]),
            max_new_tokens=int(params["max_new_tokens"]),
        )
        self.ranges = {
            key: _range(params, key) for key in ("temperature", "top_p", "repetition_penalty", "max_new_tokens")
        }
        for key, (low, high) in self.ranges.items():
            if not low <= getattr(self.defaults, key) <= high:
                raise pb_utils.TritonModelException(f"default {key} is outside {key}_range {low:g}..{high:g}")
        self.stops = {END_OF_SPEECH, END_OF_AI, END_OF_TEXT}
        self.max_text_chars = int(params.get("max_text_chars", "1000"))
        self.metrics = _Metrics(self.model_name)
        self._slots = threading.Semaphore(max(1, int(params.get("max_concurrent_requests", "4"))))
        self._ipc = threading.Lock()  # one thread at a time talks to Triton (see the module docstring)
        self._threads: set[threading.Thread] = set()
        self._threads_lock = threading.Lock()
        pb_utils.Logger.log_info(f"{self.model_name}: loaded {root} and {snac_dir} on {self.device} ({dtype})")

    # ---- one request ------------------------------------------------------------------------------------------

    def _sampling(self, request: Any) -> Sampling:
        values: dict[str, Any] = {}
        for key in ("temperature", "top_p", "repetition_penalty", "max_new_tokens"):
            value = _input(request, key)
            if value is None:
                values[key] = getattr(self.defaults, key)
                continue
            low, high = self.ranges[key]
            if not (math.isfinite(float(value)) and low <= float(value) <= high):
                raise RequestError(f"{key} must be between {low:g} and {high:g}; got {float(value):g}")
            values[key] = int(value) if key == "max_new_tokens" else float(value)
        seed = _input(request, "seed")
        seed = int(seed or 0) or int.from_bytes(os.urandom(8), "little") >> 1
        return Sampling(**values, seed=seed % (1 << 63))

    def _speaker(self, request: Any) -> str:
        index = _input(request, "speaker_id")
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

    def _serve(self, request: Any) -> None:
        torch = self.torch
        with self._ipc:
            sender = request.get_response_sender()

        def is_cancelled() -> bool:
            with self._ipc:
                return request.is_cancelled()

        def respond(response: Any = None, final: bool = False) -> None:
            flags = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL if final else 0
            with self._ipc:
                if response is None:
                    sender.send(flags=flags)
                else:
                    sender.send(response, flags=flags)

        def finish(response: Any = None) -> None:
            # Counted before the final flag, so a client that saw the end also sees the request in the metrics.
            self._account(generated, decoder.invalid_tokens, time.monotonic() - started)
            respond(response, final=True)

        def count(metric: Any, value: float) -> None:
            with self._ipc:  # a metric update is a message to the server too
                metric.increment(value)

        def send(audio: np.ndarray) -> None:
            tensor = pb_utils.Tensor("waveform", audio.reshape(1, -1).astype(np.float32))
            respond(pb_utils.InferenceResponse(output_tensors=[tensor]))
            count(self.metrics.frames, audio.size // SAMPLES_PER_FRAME)

        request_seed = [0]

        def decode(codebooks: tuple[list[int], list[int], list[int]]) -> np.ndarray:
            with self._decode_lock, torch.random.fork_rng(devices=self._rng_devices):
                torch.manual_seed((request_seed[0] * 1_000_003 + decoder.emitted_frames) % (1 << 63))
                return self.decode(codebooks)

        decoder = StreamingDecoder(decode, context_frames=self.context_frames)
        generated = 0
        started = time.monotonic()
        try:
            raw = _input(request, "target_text")
            text = (raw.decode("utf-8") if isinstance(raw, bytes) else str(raw or "")).strip()
            if not text:
                raise RequestError("target_text is empty")
            if len(text) > self.max_text_chars:
                raise RequestError(f"target_text has {len(text)} characters; at most {self.max_text_chars} per request")
            speaker = self._speaker(request)
            sampling = self._sampling(request)
            request_seed[0] = sampling.seed
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
                    generated += 1
                    if token in self.stops:
                        break
                    if token not in seen_ids:
                        seen_ids.add(token)
                        seen = torch.cat([seen, torch.tensor([token], dtype=torch.long)])
                    step_ids = torch.tensor([[token]], dtype=torch.long, device=self.device)
                    before = len(decoder.codes)
                    block = decoder.push(token)
                    if block is not None:
                        send(block)
                    since_check += 1
                    # At every frame boundary, and every 7 tokens while the LM strays.
                    if (len(decoder.codes) != before and decoder.position == 0) or since_check >= TOKENS_PER_FRAME:
                        since_check = 0
                        if is_cancelled():
                            raise Cancelled
            if is_cancelled():
                raise Cancelled
            tail = decoder.flush()
            if tail.size:
                send(tail)
            if decoder.frames == 0:
                raise RuntimeError(f"the model produced no audio frame in {generated} tokens")
            finish()
        except Cancelled:
            count(self.metrics.cancelled, 1)
            finish()
        except RequestError as exc:
            finish(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc), pb_utils.TritonError.INVALID_ARG)))
        except Exception as exc:  # the client must get an error, never a stream that does not end
            with self._ipc:
                pb_utils.Logger.log_error(f"{self.model_name}: request {request.request_id()} failed: {exc!r}")
            finish(pb_utils.InferenceResponse(error=pb_utils.TritonError(f"orpheus_tts failed: {exc}")))

    def _account(self, generated: int, invalid: int, seconds: float) -> None:
        if generated == 0:
            return
        rate = generated / max(seconds, 1e-9)
        with self._ipc:
            self.metrics.tokens.increment(generated)
            self.metrics.invalid.increment(invalid)
            self.metrics.seconds.increment(seconds)
            self.metrics.rate.set(rate)
            if rate < REAL_TIME_TOKENS_PER_S:
                self.metrics.slow.increment(1)
                pb_utils.Logger.log_warn(
                    f"{self.model_name}: {generated} tokens at {rate:.1f} tokens/s, below the "
                    f"{REAL_TIME_TOKENS_PER_S:.2f} tokens/s real time needs: a listener would hear gaps"
                )

    def _run(self, request: Any) -> None:
        try:
            with self._slots:
                self._serve(request)
        finally:
            with self._threads_lock:
                self._threads.discard(threading.current_thread())

    def execute(self, requests: list[Any]) -> None:
        for request in requests:
            thread = threading.Thread(target=self._run, args=(request,), name=f"{self.model_name}-request", daemon=True)
            with self._threads_lock:
                self._threads.add(thread)
            thread.start()
        return None

    def finalize(self) -> None:
        with self._threads_lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(timeout=10.0)
