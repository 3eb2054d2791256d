"""CosyVoice2 token2wav on Triton's python backend: streamed speech tokens -> 24 kHz audio (flow matching + HiFT).

One `Token2WavStream` (voice_triton.cosyvoice2.token2wav) per utterance, kept between calls under its `stream_id`:
the first call brings the speaker (prompt tokens, prompt mel, x-vector) and the seed of HiFT's excitation noise; each
call adds tokens and answers the chunks that became ready, joined, with `tokens_needed`, how many more tokens the
next chunk waits for (so the caller calls exactly when a chunk is due); `finalize` decodes the rest and ends the
stream; `cancel` drops it. Streams idle longer than stream_idle_timeout_s, or beyond max_streams, are dropped (the
least recently used first). A plain model: Triton runs one call at a time per instance.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from voice_triton.checkpoint import checkpoint_dir
from voice_triton.cosyvoice2.token2wav import Token2WavSchedule, Token2WavStream, load_token2wav
from voice_triton.device import pick_device
from voice_triton.errors import RequestError
from voice_triton.params import ModelParams
from voice_triton.plain import PlainModel


class TritonPythonModel(PlainModel):
    def setup(self, params: ModelParams) -> None:
        import torch

        self.torch = torch
        root = checkpoint_dir(params, "cosyvoice2")
        self.device = pick_device(params.text("device", "auto"))
        self.flow, self.hift = load_token2wav(root, self.device)
        max_hop = params.integer("max_hop_tokens", 0, 0, 100_000)
        self.schedule = Token2WavSchedule(
            first_hop_tokens=params.integer("first_hop_tokens", 15, 1, 10_000),
            hop_tokens=params.integer("hop_tokens", 25, 1, 10_000),
            hop_scale=params.integer("hop_scale", 2, 1, 100),
            max_hop_tokens=max_hop or None,
            pre_lookahead_tokens=params.integer("pre_lookahead_tokens", 3, 0, 100),
            n_timesteps=params.integer("n_timesteps", 10, 1, 1000),
            mel_cache_frames=params.integer("mel_cache_frames", 8, 1, 1000),
        )
        self.max_streams = params.integer("max_streams", 256, 1, 100_000)
        self.idle_timeout_s = params.number("stream_idle_timeout_s", 600.0, 1.0, 86_400.0)
        self.streams: OrderedDict[str, tuple[Token2WavStream, float]] = OrderedDict()
        self.log_info(f"loaded {root} (flow, hift) on {self.device}; schedule {self.schedule}")

    def _input(self, request: Any, name: str) -> np.ndarray | None:
        tensor = pb_utils.get_input_tensor_by_name(request, name)
        return None if tensor is None else tensor.as_numpy()

    def _flag(self, request: Any, name: str) -> bool:
        value = self._input(request, name)
        return bool(value is not None and value.size and value.reshape(-1)[0])

    def _drop_stale(self) -> None:
        now = time.monotonic()
        for stream_id in [s for s, (_, used) in self.streams.items() if now - used > self.idle_timeout_s]:
            del self.streams[stream_id]
        while len(self.streams) >= self.max_streams:
            stream_id, _ = self.streams.popitem(last=False)
            self.log_info(f"dropped stream {stream_id}: more than max_streams={self.max_streams} open")

    def _new_stream(self, request: Any) -> Token2WavStream:
        torch = self.torch
        feat = self._input(request, "prompt_speech_feat")
        embedding = self._input(request, "prompt_spk_embedding")
        if feat is None or embedding is None:
            raise RequestError("the first call of a stream needs prompt_speech_feat and prompt_spk_embedding")
        tokens = self._input(request, "prompt_speech_tokens")
        tokens = np.zeros(0, np.int64) if tokens is None else tokens.reshape(-1).astype(np.int64)
        feat = feat.reshape(-1, 80)
        if feat.shape[0] != tokens.size * self.flow.token_mel_ratio:
            raise RequestError(
                f"prompt_speech_feat has {feat.shape[0]} frames for {tokens.size} prompt tokens; "
                f"{self.flow.token_mel_ratio} frames per token expected"
            )
        seed = self._input(request, "seed")
        generator = torch.Generator(device=self.device)
        generator.manual_seed(int(seed.reshape(-1)[0]) if seed is not None and seed.size else 0)
        self._drop_stale()
        return Token2WavStream(
            self.flow,
            self.hift,
            torch.from_numpy(tokens).reshape(1, -1),
            torch.from_numpy(np.ascontiguousarray(feat, dtype=np.float32)).reshape(1, -1, 80),
            torch.from_numpy(np.ascontiguousarray(embedding, dtype=np.float32)).reshape(1, -1),
            self.schedule,
            generator,
        )

    def respond(self, request: Any) -> Any:
        stream_id = bytes(self._input(request, "stream_id").reshape(-1)[0]).decode("utf-8", "replace")
        if self._flag(request, "cancel"):
            self.streams.pop(stream_id, None)
            return self._answer(np.zeros(0, np.float32), 0)
        tokens = self._input(request, "speech_tokens")
        tokens = np.zeros(0, np.int64) if tokens is None else tokens.reshape(-1).astype(np.int64)
        if tokens.size and (tokens.min() < 0 or tokens.max() >= self.flow.vocab_size):
            raise RequestError(f"speech_tokens must be codes in 0..{self.flow.vocab_size - 1}")
        entry = self.streams.pop(stream_id, None)
        stream = entry[0] if entry is not None else self._new_stream(request)
        chunks = stream.add(tokens) if tokens.size else []
        if self._flag(request, "finalize"):
            chunks.append(stream.finish())
            return self._answer(_joined(chunks), 0)
        self.streams[stream_id] = (stream, time.monotonic())
        needed = stream.next_hop() + stream.schedule.pre_lookahead_tokens - (len(stream.tokens) - stream.token_offset)
        return self._answer(_joined(chunks), max(needed, 1))

    def _answer(self, audio: np.ndarray, needed: int) -> Any:
        return pb_utils.InferenceResponse(
            output_tensors=[
                pb_utils.Tensor("waveform", np.ascontiguousarray(audio, dtype=np.float32)),
                pb_utils.Tensor("tokens_needed", np.array([needed], dtype=np.int32)),
            ]
        )


def _joined(chunks: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
