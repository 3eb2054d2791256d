"""CosyVoice2 on Triton's python backend: the decoupled model that orchestrates the front-end models, the LLM and
cosyvoice2_token2wav, for whole pieces of text and for text-in streaming sessions.

The speaker comes from a reference clip (zero-shot with its transcript, cross-lingual without; its speech tokens and
x-vector from cosyvoice2_speech_tokenizer / cosyvoice2_speaker_embedding and its prompt mel from here, once per
distinct clip: content hash, LRU of reference_cache_size) or from a preset speaker of spk2info.pt, optionally with
an instruction (CosyVoice2's instruct form). The Qwen2 LLM runs here with transformers (voice_triton.cosyvoice2:
`generate_whole` for a whole piece, `BistreamDecoder` for a session); each speech token goes to an `Utterance`,
which calls cosyvoice2_token2wav when the next chunk of the published schedule is due and sends its audio out.

Requests run on threads of voice_triton's ThreadedDecoupledModel; every call into Triton takes the instance's lock.
Sessions live in a SessionTable (bounded, idle expiry by a reaper thread); a session's requests are served one at a
time under its own lock. A cancelled request or a failed one ends its session at once.

On GPU hosts the official runtime serves the LLM from TensorRT-LLM instead; see triton/README.md.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
import uuid
from collections.abc import Iterable

import numpy as np

from voice_triton.checkpoint import checkpoint_dir
from voice_triton.cosyvoice2.config import read_config
from voice_triton.cosyvoice2.frontend import align_prompt, prompt_mel
from voice_triton.cosyvoice2.llm import QWEN2_DIR, CosyVoice2LM
from voice_triton.cosyvoice2.serving import Speaker, checked_clip, load_speakers
from voice_triton.cosyvoice2.sessions import SessionLimit, SessionTable, TextIncrements, UnknownSession
from voice_triton.cosyvoice2.speech_lm import (
    BistreamDecoder,
    Prompt,
    RasSampler,
    Sampling,
    generate_whole,
)
from voice_triton.decoupled import RequestContext, ThreadedDecoupledModel
from voice_triton.device import pick_device, pick_dtype
from voice_triton.errors import BlsError, Cancelled, RequestError
from voice_triton.lru import LockedLRU
from voice_triton.params import ModelParams

RATE = 24000  # output and reference rate
TOKENIZER_RATE = 16000  # the two front-end models' rate
SPEECH_TOKENIZER = "cosyvoice2_speech_tokenizer"
SPEAKER_EMBEDDING = "cosyvoice2_speaker_embedding"
TOKEN2WAV = "cosyvoice2_token2wav"
END_OF_PROMPT = "<|endofprompt|>"


class Utterance:
    """One decode's link to cosyvoice2_token2wav: tokens are collected and sent when the next chunk is due."""

    def __init__(self, speaker: Speaker, seed: int) -> None:
        self.stream_id = uuid.uuid4().hex
        self.speaker = speaker
        self.seed = seed
        self.pending: list[int] = []
        self.needed = 0  # tokens the next chunk waits for; 0 until the stream is opened
        self.opened = False
        self.samples = 0

    def _call(self, ctx: RequestContext, *, finalize: bool = False, cancel: bool = False) -> None:
        inputs: dict[str, np.ndarray] = {
            "stream_id": np.array([self.stream_id.encode()], dtype=np.object_),
            "speech_tokens": np.asarray(self.pending, dtype=np.int32),
            "finalize": np.array([finalize]),
            "cancel": np.array([cancel]),
        }
        if not self.opened:
            inputs |= {
                "prompt_speech_tokens": self.speaker.flow_tokens.astype(np.int32),
                "prompt_speech_feat": self.speaker.flow_feat.astype(np.float32).reshape(-1, 80),
                "prompt_spk_embedding": self.speaker.embedding.astype(np.float32).reshape(-1),
                "seed": np.array([self.seed], dtype=np.uint64),
            }
        out = ctx.bls(TOKEN2WAV, inputs, ["waveform", "tokens_needed"])
        self.opened = True
        self.pending = []
        self.needed = int(out["tokens_needed"].reshape(-1)[0])
        audio = out["waveform"].reshape(-1)
        if audio.size and not cancel:
            self.samples += audio.size
            ctx.send_waveform(audio)

    def open(self, ctx: RequestContext) -> None:
        self._call(ctx)

    def add(self, ctx: RequestContext, token: int) -> None:
        self.pending.append(token)
        if len(self.pending) >= self.needed:
            self._call(ctx)

    def finish(self, ctx: RequestContext) -> None:
        self._call(ctx, finalize=True)

    def cancel(self, ctx: RequestContext) -> None:
        if self.opened:
            self.pending = []
            self._call(ctx, cancel=True)


class SessionState:
    """A text-in streaming session: the LLM's decoder, the text cut at word boundaries, the token2wav stream."""

    def __init__(self, decoder: BistreamDecoder, text: TextIncrements, utterance: Utterance) -> None:
        self.decoder = decoder
        self.text = text
        self.utterance = utterance


class TritonPythonModel(ThreadedDecoupledModel):
    def setup(self, params: ModelParams) -> None:
        from transformers import AutoTokenizer

        root = checkpoint_dir(params, "cosyvoice2")
        self.config = read_config(root)
        self.device = pick_device(params.text("device", "auto"))
        dtype = pick_dtype(params.text("llm_dtype", "auto"), self.device)
        self.lm = CosyVoice2LM.from_checkpoint(root, self.device).to(dtype)
        self.config.llm.check_hidden_size(self.lm.llm.hidden_size)
        self.tokenizer = AutoTokenizer.from_pretrained(root / QWEN2_DIR)
        self.speaker_names = params.names("speakers")
        self.speakers = load_speakers(root, self.speaker_names)
        self.sampling = Sampling(
            top_p=params.number("top_p", 0.8, 0.0, 1.0),
            top_k=params.integer("top_k", 25, 1, 100_000),
            win_size=params.integer("win_size", 10, 1, 10_000),
            tau_r=params.number("tau_r", 0.1, 0.0, 1.0),
            min_token_text_ratio=params.number("min_token_text_ratio", 2.0, 0.0, 100.0),
            max_token_text_ratio=params.number("max_token_text_ratio", 20.0, 0.1, 1000.0),
        )
        self.max_text_chars = params.integer("max_text_chars", 300, 1, 1_000_000)
        self.max_session_chars = params.integer("max_session_text_chars", 20_000, 1, 10_000_000)
        self.max_reference_samples = int(params.number("max_reference_seconds", 30.0, 0.1, 30.0) * RATE)
        self.references: LockedLRU[str, Speaker] = LockedLRU(params.integer("reference_cache_size", 64, 1, 100_000))
        self.idle_timeout_s = params.number("session_idle_timeout_s", 60.0, 0.1, 86_400.0)
        self.sessions = SessionTable(params.integer("max_sessions", 16, 1, 10_000), self.idle_timeout_s)
        self._orphans: list[str] = []  # token2wav streams of expired sessions, dropped by the next request
        self._orphans_lock = threading.Lock()

        m = self.metrics
        by_result = "Reference clips whose features were computed (miss) or reused (hit)"
        self.reference_hits = m.counter("cosyvoice2_reference_features_total", by_result, result="hit")
        self.reference_misses = m.counter("cosyvoice2_reference_features_total", by_result, result="miss")
        self.speech_tokens = m.counter("cosyvoice2_speech_tokens_total", "Speech tokens generated")
        self.increments = m.counter(
            "cosyvoice2_text_increments_total", "Text deltas received by text-in streaming sessions"
        )
        events = "Text-in streaming sessions by what happened to them"
        self.session_events = {
            event: m.counter("cosyvoice2_sessions_total", events, event=event)
            for event in ("opened", "ended", "cancelled", "expired", "refused", "failed")
        }
        self.sessions_open = m.gauge("cosyvoice2_sessions_open", "Text-in streaming sessions open now")
        self.cancelled = m.counter("cosyvoice2_requests_cancelled_total", "Requests stopped by cancellation")
        self._stop = threading.Event()
        self._reaper = threading.Thread(target=self._reap, name="cosyvoice2-sessions", daemon=True)
        self._reaper.start()
        self.log_info(
            f"loaded {root} on {self.device} ({dtype}); preset speakers: {', '.join(self.speaker_names) or 'none'}"
        )

    # ---- sessions' housekeeping ---------------------------------------------------------------------------------

    def _reap(self) -> None:
        while not self._stop.wait(min(1.0, self.idle_timeout_s / 2)):
            expired = self.sessions.expire()
            if not expired:
                continue
            with self._orphans_lock:
                self._orphans.extend(s.state.utterance.stream_id for s in expired)
            self.session_events["expired"].increment(len(expired))
            self.sessions_open.set(len(self.sessions))
            self.log_info(f"expired {len(expired)} idle text-input session(s) after {self.idle_timeout_s:g} s")

    def _drop_orphans(self, ctx: RequestContext) -> None:
        with self._orphans_lock:
            orphans, self._orphans = self._orphans, []
        for stream_id in orphans:
            utterance = Utterance(Speaker(), 0)
            utterance.stream_id, utterance.opened = stream_id, True
            try:
                utterance.cancel(ctx)
            except BlsError as exc:
                self.log_warn(f"could not drop token2wav stream {stream_id}: {exc}")

    def finalize(self) -> None:
        self._stop.set()
        super().finalize()

    # ---- the speaker --------------------------------------------------------------------------------------------

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _reference(self, ctx: RequestContext, wav: np.ndarray) -> Speaker:
        """The clip's speaker features: from the cache, else from the two front-end models and the prompt mel."""
        length = ctx.scalar("reference_wav_len")
        clip = checked_clip(wav, wav.size if length is None else int(length))
        if clip.size > self.max_reference_samples:
            raise RequestError(
                f"reference_wav holds {clip.size / RATE:.1f} s; at most {self.max_reference_samples / RATE:g} s of "
                "24 kHz audio (3 to 10 s of clean speech clone best)"
            )
        key = hashlib.sha256(clip.tobytes()).hexdigest()
        cached = self.references.get(key)
        if cached is not None:
            self.reference_hits.increment()
            return cached
        self.reference_misses.increment()
        import soxr

        clip_16k = soxr.resample(clip, RATE, TOKENIZER_RATE).astype(np.float32)
        inputs = {
            "reference_wav": clip_16k.reshape(1, -1),
            "reference_wav_len": np.array([[clip_16k.size]], dtype=np.int32),
        }
        try:
            tokens = ctx.bls(SPEECH_TOKENIZER, inputs, ["prompt_speech_tokens"])["prompt_speech_tokens"]
            embedding = ctx.bls(SPEAKER_EMBEDDING, inputs, ["prompt_spk_embedding"])["prompt_spk_embedding"]
        except BlsError as exc:
            # Both refuse only a clip they cannot take (too short, too long): the client's to fix.
            raise RequestError(str(exc)) from None
        mel = prompt_mel(clip, self.config.feat_extractor)
        feat, aligned = align_prompt(mel, tokens.reshape(-1), self.config.token_mel_ratio)
        speaker = Speaker(
            prompt=Prompt([], aligned.astype(np.int64).tolist()),
            flow_tokens=aligned.astype(np.int32),
            flow_feat=feat[0].numpy().astype(np.float32),
            embedding=embedding.reshape(-1).astype(np.float32),
        )
        self.references.put(key, speaker)
        return speaker

    def _speaker(self, ctx: RequestContext) -> Speaker:
        wav = ctx.array("reference_wav")
        instruction = (ctx.text("instruct_text") or "").strip()
        speaker_id = ctx.scalar("speaker_id")
        if wav is not None:
            base = self._reference(ctx, wav)
            reference_text = (ctx.text("reference_text") or "").strip()
            if instruction:
                return base.for_instruct(self._encode(instruction + END_OF_PROMPT))
            if reference_text:  # zero-shot: the transcript and the clip's speech tokens prompt the LLM
                return Speaker(Prompt(self._encode(reference_text), base.prompt.speech_tokens), *_flow(base))
            return base.cross_lingual()
        if speaker_id is not None or (instruction and self.speakers):
            index = 0 if speaker_id is None else int(speaker_id)
            if not self.speaker_names:
                raise RequestError("this CosyVoice2 checkpoint serves no preset speakers: send reference_wav")
            if not 0 <= index < len(self.speaker_names):
                raise RequestError(f"speaker_id {index} is out of range 0..{len(self.speaker_names) - 1}")
            preset = self.speakers[self.speaker_names[index]]
            return preset.for_instruct(self._encode(instruction + END_OF_PROMPT)) if instruction else preset
        if instruction:
            raise RequestError("instruct_text needs a speaker: a preset speaker (speaker_id) or reference_wav")
        if self.speaker_names:
            return self.speakers[self.speaker_names[0]]
        raise RequestError(
            "CosyVoice2 speaks in a cloned voice: send reference_wav (zero-shot with reference_text, cross-lingual "
            "without); this checkpoint lists no preset speakers"
        )

    def _seed(self, ctx: RequestContext) -> int:
        seed = ctx.scalar("seed")
        seed = int(seed) if seed is not None else 0
        return (seed or int.from_bytes(os.urandom(8), "little")) % (1 << 63)

    # ---- requests -----------------------------------------------------------------------------------------------

    def serve(self, ctx: RequestContext) -> None:
        self._drop_orphans(ctx)
        session_id = ctx.text("session_id")
        if session_id is None:
            self._serve_whole(ctx)
        else:
            self._serve_session(ctx, session_id.strip())

    def _speak(self, ctx: RequestContext, utterance: Utterance, tokens: Iterable[int]) -> None:
        count = 0
        try:
            for token in tokens:
                utterance.add(ctx, token)
                count += 1
        finally:
            self.speech_tokens.increment(count)
        ctx.raise_if_cancelled()

    def _serve_whole(self, ctx: RequestContext) -> None:
        text = ctx.required_text("target_text", self.max_text_chars)
        speaker = self._speaker(ctx)
        ids = self._encode(text)
        seed = self._seed(ctx)
        utterance = Utterance(speaker, seed)
        try:
            utterance.open(ctx)
            sampler = RasSampler(self.sampling, seed, self.lm.speech_token_size)
            self._speak(ctx, utterance, generate_whole(self.lm, ids, speaker.prompt, sampler, ctx.cancelled))
            utterance.finish(ctx)
        except BaseException:
            _quietly_cancel(utterance, ctx)
            raise

    def _open_session(self, ctx: RequestContext, session_id: str) -> None:
        speaker = self._speaker(ctx)
        seed = self._seed(ctx)
        sampler = RasSampler(self.sampling, seed, self.lm.speech_token_size)
        state = SessionState(
            BistreamDecoder(self.lm, speaker.prompt, sampler), TextIncrements(self._encode), Utterance(speaker, seed)
        )
        try:
            self.sessions.open(session_id, state)
        except SessionLimit as exc:
            self.session_events["refused"].increment()
            raise RequestError(f"RESOURCE_EXHAUSTED: {exc}; retry when one ends") from None
        except ValueError as exc:
            raise RequestError(f"FAILED_PRECONDITION: {exc}: use a new session_id for each utterance") from None
        self.session_events["opened"].increment()
        self.sessions_open.set(len(self.sessions))

    def _close_session(self, session_id: str, event: str) -> SessionState | None:
        session = self.sessions.close(session_id)
        if session is not None:
            self.session_events[event].increment()
            self.sessions_open.set(len(self.sessions))
        return None if session is None else session.state

    def _serve_session(self, ctx: RequestContext, session_id: str) -> None:
        if not session_id:
            raise RequestError("session_id is empty: name the session (unique per utterance)")
        if _flag(ctx, "session_cancel"):
            state = self._close_session(session_id, "cancelled")
            if state is not None:
                _quietly_cancel(state.utterance, ctx)
            return
        end = _flag(ctx, "session_end")
        if _flag(ctx, "session_start"):
            self._open_session(ctx, session_id)
        try:
            session = self.sessions.get(session_id)
        except UnknownSession:
            raise RequestError(
                f"FAILED_PRECONDITION: no open text-input session {session_id!r}: it ended, was idle for more than "
                f"{self.idle_timeout_s:g} s, or was never started (send session_start first)"
            ) from None
        with self.sessions.use(session):
            state: SessionState = session.state
            utterance = state.utterance
            try:
                if not utterance.opened:
                    utterance.open(ctx)
                delta = ctx.text("target_text") or ""
                if state.text.received_chars + len(delta) > self.max_session_chars:
                    raise RequestError(f"the session's text exceeds {self.max_session_chars} characters")
                if delta:
                    self.increments.increment()
                ids = state.text.feed(delta)
                if end:
                    ids += state.text.rest()
                self._speak(ctx, utterance, state.decoder.feed(ids, ctx.cancelled))
                if end:
                    self._speak(ctx, utterance, state.decoder.finish(ctx.cancelled))
                    utterance.finish(ctx)
                    self._close_session(session_id, "ended")
            except BaseException as exc:
                event = "cancelled" if isinstance(exc, Cancelled) else "failed"
                if self._close_session(session_id, event) is not None:
                    _quietly_cancel(utterance, ctx)
                raise

    def on_cancelled(self, ctx: RequestContext) -> None:
        self.cancelled.increment()


def _flow(speaker: Speaker) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return speaker.flow_tokens, speaker.flow_feat, speaker.embedding


def _flag(ctx: RequestContext, name: str) -> bool:
    value = ctx.scalar(name)
    return bool(value) if value is not None else False


def _quietly_cancel(utterance: Utterance, ctx: RequestContext) -> None:
    """Drop the token2wav stream of a decode that did not finish; the request's own error is what matters."""
    with contextlib.suppress(Exception):
        utterance.cancel(ctx)
