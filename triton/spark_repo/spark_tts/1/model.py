"""Spark-TTS on Triton's python backend: the decoupled model that orchestrates audio_tokenizer, the LLM and vocoder.

One request is one piece of text. Its speaker comes from reference audio (zero-shot with the reference transcript,
cross-lingual without) or from voice-design attributes (gender, pitch, speed). For a reference clip, the global and
semantic tokens come from the `audio_tokenizer` model once per distinct clip (content hash, LRU of
reference_cache_size); later requests with the same clip, such as the next sentences of one gateway stream, skip it.
The Qwen2 LLM runs here with transformers, sampling semantic tokens one at a time; every chunk of the schedule goes to
the `vocoder` model and out as a `waveform` response, the last one followed by the final flag.

Requests run on threads (up to max_concurrent_requests at once; torch releases the GIL), so a long request does not
hold up a short one. Every call into Triton (sending a response, asking whether a request was cancelled, a BLS call
to audio_tokenizer or vocoder) goes through one lock: the python backend of Triton 2.51 crashed the server (SIGSEGV in
libtriton_python.so) when four request threads made such calls at once; the LLM steps, where the time goes, run
outside it. Cancellation is checked between LLM steps (rate-limited to cancel_poll_ms) and between chunks.

On GPU hosts the official runtime serves the LLM from TensorRT-LLM instead; see triton/README.md.
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils
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

HOP = 320  # samples per semantic token at 16 kHz (BiCodec's latent_hop_length)


class RequestError(ValueError):
    """The request cannot be served as sent; the message goes back to the client as INVALID_ARG."""


class Cancelled(Exception):
    """The client cancelled the request."""


class ReferenceTokens:
    """LRU of (global tokens, semantic tokens) by a hash of the 16 kHz reference samples."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: collections.OrderedDict[str, tuple[np.ndarray, np.ndarray]] = collections.OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> tuple[np.ndarray, np.ndarray] | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: str, value: tuple[np.ndarray, np.ndarray]) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)


class _Metrics:
    """Custom counters on Triton's metrics port (the families must outlive their metrics: keep both)."""

    def __init__(self, model_name: str) -> None:
        self.families: list[Any] = []
        labels = {"model": model_name}
        self.reference_hits = self._counter(
            "spark_reference_tokens_total", "Reference clips tokenized, by cache result", {**labels, "result": "hit"}
        )
        self.reference_misses = self.families[-1].Metric(labels={**labels, "result": "miss"})
        self.semantic_tokens = self._counter("spark_semantic_tokens_total", "Semantic tokens generated", labels)
        self.chunks = self._counter("spark_audio_chunks_total", "Audio chunks sent", labels)
        self.cancelled = self._counter("spark_requests_cancelled_total", "Requests stopped by cancellation", labels)

    def _counter(self, name: str, description: str, labels: dict[str, str]) -> Any:
        family = pb_utils.MetricFamily(name=name, description=description, kind=pb_utils.MetricFamily.COUNTER)
        self.families.append(family)
        return family.Metric(labels=labels)


def _string(request: Any, name: str) -> str | None:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        return None
    value = tensor.as_numpy().reshape(-1)[0]
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _checkpoint(params: dict[str, str]) -> Path:
    path = params.get("checkpoint_dir", "").strip() or os.environ.get("SPARK_TTS_CHECKPOINT", "")
    if not path or not Path(path, "LLM", "config.json").is_file():
        raise pb_utils.TritonModelException(
            f"no Spark-TTS checkpoint at {path!r}: set parameter checkpoint_dir (triton/launch.py --spark-checkpoint)"
        )
    return Path(path)


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        config = json.loads(args["model_config"])
        if not pb_utils.using_decoupled_model_transaction_policy(config):
            raise pb_utils.TritonModelException("spark_tts streams its audio: set decoupled: true")
        self.model_name = args["model_name"]
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        self.params = params
        root = _checkpoint(params)
        device = params.get("device", "auto")
        self.device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)
        dtype_name = params.get("llm_dtype", "auto")
        dtype = (torch.bfloat16 if self.device.type == "cuda" else torch.float32) if dtype_name == "auto" else None
        dtype = dtype or getattr(torch, dtype_name)
        self.tokenizer = AutoTokenizer.from_pretrained(root / "LLM")
        self.llm = AutoModelForCausalLM.from_pretrained(root / "LLM", torch_dtype=dtype).to(self.device).eval()
        self.vocabulary = SparkVocabulary.from_tokenizer(self.tokenizer, int(self.llm.config.vocab_size))
        self.generator = TokenGenerator(self.llm, self.vocabulary, self.device)
        rate = int(params.get("audio_tokenizer_frame_rate", "50"))
        self.schedule = ChunkSchedule.from_seconds(
            first_s=float(params.get("audio_chunk_duration", "1.0")),
            scale=float(params.get("audio_chunk_size_scale_factor", "2.0")),
            max_s=float(params.get("max_audio_chunk_duration", "8.0")),
            overlap_s=float(params.get("audio_chunk_overlap_duration", "0.1")),
            context_s=float(params.get("audio_chunk_left_context_duration", "0.2")),
            token_rate=rate,
        )
        self.sampling = SamplingParams(
            temperature=float(params.get("temperature", "0.8")),
            top_k=int(params.get("top_k", "50")),
            top_p=float(params.get("top_p", "0.95")),
            max_new_tokens=int(params.get("max_new_tokens", "1500")),
            min_new_tokens=int(params.get("min_new_tokens", "5")),
        )
        self.max_text_chars = int(params.get("max_text_chars", "300"))
        self.max_reference_samples = int(float(params.get("max_reference_seconds", "30")) * 16000)
        self.cancel_poll_s = float(params.get("cancel_poll_ms", "40")) / 1000.0
        self.references = ReferenceTokens(int(params.get("reference_cache_size", "64")))
        self.metrics = _Metrics(self.model_name)
        self._slots = threading.Semaphore(max(1, int(params.get("max_concurrent_requests", "4"))))
        self._ipc = threading.Lock()  # one thread at a time talks to Triton (see the module docstring)
        self._threads: set[threading.Thread] = set()
        self._threads_lock = threading.Lock()
        pb_utils.Logger.log_info(
            f"{self.model_name}: loaded {root} on {self.device} ({dtype}); schedule {self.schedule}"
        )

    def _count(self, counter: Any, value: float) -> None:
        with self._ipc:  # a metric update is a message to the server too
            counter.increment(value)

    # ---- the two models this one calls ------------------------------------------------------------------------

    def _reference_tokens(self, request: Any) -> tuple[np.ndarray, np.ndarray]:
        wav_tensor = pb_utils.get_input_tensor_by_name(request, "reference_wav")
        wav = wav_tensor.as_numpy().reshape(-1)
        length_tensor = pb_utils.get_input_tensor_by_name(request, "reference_wav_len")
        length = int(length_tensor.as_numpy().reshape(-1)[0]) if length_tensor is not None else wav.size
        if not 0 < length <= wav.size:
            raise RequestError(f"reference_wav_len {length} must be between 1 and {wav.size}")
        if length > self.max_reference_samples:
            raise RequestError(
                f"reference_wav holds {length / 16000:.1f} s; at most {self.max_reference_samples / 16000:g} s of "
                "16 kHz audio (a few seconds of clean speech clone best)"
            )
        clip = np.ascontiguousarray(wav[:length], dtype=np.float32)
        key = hashlib.sha256(clip.tobytes()).hexdigest()
        cached = self.references.get(key)
        if cached is not None:
            self._count(self.metrics.reference_hits, 1)
            return cached
        self._count(self.metrics.reference_misses, 1)
        request_tokens = pb_utils.InferenceRequest(
            model_name="audio_tokenizer",
            requested_output_names=["global_tokens", "semantic_tokens"],
            inputs=[
                pb_utils.Tensor("reference_wav", clip.reshape(1, -1)),
                pb_utils.Tensor("reference_wav_len", np.array([[length]], dtype=np.int32)),
            ],
        )
        with self._ipc:
            response = request_tokens.exec()
        if response.has_error():
            raise RequestError(f"audio_tokenizer: {response.error().message()}")
        tokens = (
            pb_utils.get_output_tensor_by_name(response, "global_tokens").as_numpy().reshape(-1).copy(),
            pb_utils.get_output_tensor_by_name(response, "semantic_tokens").as_numpy().reshape(-1).copy(),
        )
        self.references.put(key, tokens)
        return tokens

    def _vocode(self, global_codes: np.ndarray, semantic_codes: np.ndarray) -> np.ndarray:
        request = pb_utils.InferenceRequest(
            model_name="vocoder",
            requested_output_names=["waveform"],
            inputs=[
                pb_utils.Tensor("global_tokens", global_codes.astype(np.int32).reshape(1, -1)),
                pb_utils.Tensor("semantic_tokens", semantic_codes.astype(np.int32).reshape(1, -1)),
            ],
        )
        with self._ipc:
            response = request.exec()
        if response.has_error():
            raise RuntimeError(f"vocoder: {response.error().message()}")
        return pb_utils.get_output_tensor_by_name(response, "waveform").as_numpy().reshape(-1).astype(np.float32)

    # ---- one request ------------------------------------------------------------------------------------------

    def _prompt(self, request: Any, text: str) -> tuple[str, np.ndarray | None]:
        """The LLM prompt and the speaker's global codes (None: the LLM designs them)."""
        if pb_utils.get_input_tensor_by_name(request, "reference_wav") is not None:
            global_codes, semantic_codes = self._reference_tokens(request)
            reference_text = (_string(request, "reference_text") or "").strip()
            prompt = build_prompt(
                text, global_codes=global_codes, semantic_codes=semantic_codes, reference_text=reference_text or None
            )
            return prompt, global_codes
        gender = _string(request, "gender")
        prompt = build_prompt(
            text,
            gender=gender.strip().lower() if gender else None,
            pitch=(_string(request, "pitch_level") or "moderate").strip().lower(),
            speed=(_string(request, "speed_level") or "moderate").strip().lower(),
        )
        return prompt, None

    def _serve(self, request: Any) -> None:
        with self._ipc:
            sender = request.get_response_sender()
        last_poll = [0.0]

        def is_cancelled() -> bool:
            with self._ipc:
                return request.is_cancelled()

        def cancelled() -> bool:
            now = time.monotonic()
            if now - last_poll[0] < self.cancel_poll_s:
                return False
            last_poll[0] = now
            return is_cancelled()

        def respond(response: Any = None, final: bool = False) -> None:
            flags = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL if final else 0
            with self._ipc:
                if response is None:
                    sender.send(flags=flags)
                else:
                    sender.send(response, flags=flags)

        try:
            text = (_string(request, "target_text") or "").strip()
            if not text:
                raise RequestError("target_text is empty")
            if len(text) > self.max_text_chars:
                raise RequestError(f"target_text has {len(text)} characters; at most {self.max_text_chars} per request")
            seed_tensor = pb_utils.get_input_tensor_by_name(request, "seed")
            seed = int(seed_tensor.as_numpy().reshape(-1)[0]) if seed_tensor is not None else 0
            seed = seed or int.from_bytes(os.urandom(8), "little") >> 1
            prompt, global_codes = self._prompt(request, text)
            prompt_ids = self.tokenizer(prompt)["input_ids"]
            params = SamplingParams(**{**self.sampling.__dict__, "seed": seed % (1 << 63)})
            designed: list[int] = []
            vocoder: StreamingVocoder | None = None

            def vocode(codes: np.ndarray) -> np.ndarray:
                assert global_codes is not None
                return self._vocode(global_codes, codes)

            def send(audio: np.ndarray) -> None:
                if audio.size:
                    tensor = pb_utils.Tensor("waveform", audio.reshape(1, -1))
                    respond(pb_utils.InferenceResponse(output_tensors=[tensor]))
                    self._count(self.metrics.chunks, 1)

            if global_codes is not None:
                vocoder = StreamingVocoder(vocode, self.schedule, HOP)
            produced = 0
            for token in self.generator.generate(
                prompt_ids, params, design=global_codes is None, should_stop=cancelled
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
                    if is_cancelled():
                        raise Cancelled
            if is_cancelled():
                raise Cancelled
            self._count(self.metrics.semantic_tokens, produced)
            if vocoder is None or not vocoder.codes:
                raise RuntimeError("the model produced no speech tokens for this text")
            send(vocoder.take(final=True))
            respond(final=True)
        except Cancelled:
            self._count(self.metrics.cancelled, 1)
            respond(final=True)
        except (RequestError, PromptError) as exc:
            respond(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc))), final=True)
        except Exception as exc:  # the client must get an error, never a stream that does not end
            with self._ipc:
                pb_utils.Logger.log_error(f"{self.model_name}: request {request.request_id()} failed: {exc!r}")
            respond(pb_utils.InferenceResponse(error=pb_utils.TritonError(f"spark_tts failed: {exc}")), final=True)

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
