"""CMU PocketSphinx as a Triton python-backend model: the embedded default recognition model (CPU, offline).

The en-US acoustic model, trigram language model and pronunciation dictionary ship inside the `pocketsphinx` wheel, so
nothing is downloaded. A plain model following the ASR tensor interface (max_batch_size 1, so every tensor carries a
leading batch dimension of 1):
  inputs   audio FP32 [1,N] (mono, sample_rate_hz, [-1, 1]); optional audio_len INT32 [1,1] (valid samples),
           language BYTES [1,1] ("en-US" or "en"), word_timestamps BOOL [1,1]
  outputs  transcript BYTES [1,1]; words BYTES [1,1] (JSON array of {"word", "start_s", "end_s", "confidence"},
           "[]" when not asked for or none); language BYTES [1,1]; confidence FP32 [1,1]
Word times come from the decoder's segmentation (10 ms frames); fillers (<s>, </s>, <sil>, [NOISE]) are left out
and alternative pronunciations ("read(2)") are reported as the word.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from voice_triton.errors import RequestError
from voice_triton.params import ConfigError, ModelParams
from voice_triton.plain import PlainModel

FRAME_S = 0.01  # PocketSphinx's default frame rate: 100 frames per second
_ALTERNATIVE = re.compile(r"\(\d+\)$")


def _optional(request: Any, name: str) -> np.ndarray | None:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy()


def is_filler(word: str) -> bool:
    return not word or word.startswith(("<", "[", "+")) or word in ("<s>", "</s>", "<sil>")


class TritonPythonModel(PlainModel):
    def setup(self, params: ModelParams) -> None:
        from pocketsphinx import Decoder

        self.sample_rate = params.integer("sample_rate_hz", 16000, 8000, 48000)
        if self.sample_rate != 16000:
            raise ConfigError(f"{self.model_name}: the packaged acoustic model is 16000 Hz; set sample_rate_hz=16000")
        self.languages = params.names("language_codes") or ["en-US"]
        self.max_seconds = params.number("max_audio_seconds", 600.0, 1.0)
        self.decoder = Decoder(samprate=self.sample_rate, loglevel="FATAL")
        self.logmath = self.decoder.get_logmath()
        self.log_info(f"loaded the packaged en-US model ({self.decoder.config['hmm']})")

    def _language(self, request: Any) -> str:
        value = _optional(request, "language")
        text = ""
        if value is not None and value.size:
            raw = value.reshape(-1)[0]
            text = (raw.decode("utf-8", "replace") if isinstance(raw, bytes | bytearray) else str(raw)).strip()
        if not text:
            return self.languages[0]
        for code in self.languages:
            if text.lower().replace("_", "-") in (code.lower(), code.split("-")[0].lower()):
                return code
        raise RequestError(f"language {text!r} is not supported by {self.model_name}: it recognises {self.languages}")

    def _audio(self, request: Any) -> np.ndarray:
        audio = pb_utils.get_input_tensor_by_name(request, "audio").as_numpy().reshape(-1)
        length = _optional(request, "audio_len")
        if length is not None and length.size:
            n = int(length.reshape(-1)[0])
            if not 0 <= n <= audio.size:
                raise RequestError(f"audio_len {n} is outside 0..{audio.size} (the samples sent)")
            audio = audio[:n]
        if audio.size == 0:
            raise RequestError("audio is empty: send at least one sample")
        if audio.size > self.max_seconds * self.sample_rate:
            raise RequestError(
                f"audio is {audio.size / self.sample_rate:.1f} s, over this model's limit of {self.max_seconds:g} s "
                "(config parameter max_audio_seconds): cut it into shorter pieces"
            )
        if not np.all(np.isfinite(audio)):
            raise RequestError("audio contains NaN or infinite samples: send finite values in [-1, 1]")
        return audio.astype(np.float32)

    def respond(self, request: Any) -> Any:
        audio = self._audio(request)
        language = self._language(request)
        flag = _optional(request, "word_timestamps")
        want_words = bool(flag is not None and flag.size and flag.reshape(-1)[0])
        pcm = np.rint(np.clip(audio, -1.0, 1.0) * 32767.0).astype("<i2")
        decoder = self.decoder
        decoder.start_utt()
        decoder.process_raw(pcm.tobytes(), full_utt=True)
        decoder.end_utt()
        hyp = decoder.hyp()
        words: list[dict[str, Any]] = []
        spoken: list[str] = []
        for seg in decoder.seg() if hyp is not None else ():
            word = _ALTERNATIVE.sub("", seg.word)
            if is_filler(word):
                continue
            spoken.append(word)
            if want_words:
                words.append(
                    {
                        "word": word,
                        "start_s": round(seg.start_frame * FRAME_S, 3),
                        "end_s": round((seg.end_frame + 1) * FRAME_S, 3),
                        "confidence": round(self._probability(seg.prob), 4),
                    }
                )
        transcript = " ".join(spoken)
        confidence = self._probability(hyp.prob) if hyp is not None and spoken else 0.0
        outputs = [
            pb_utils.Tensor("transcript", np.array([[transcript.encode("utf-8")]], dtype=np.object_)),
            pb_utils.Tensor("words", np.array([[json.dumps(words).encode("utf-8")]], dtype=np.object_)),
            pb_utils.Tensor("language", np.array([[language.encode("utf-8")]], dtype=np.object_)),
            pb_utils.Tensor("confidence", np.array([[confidence]], dtype=np.float32)),
        ]
        return pb_utils.InferenceResponse(output_tensors=outputs)

    def _probability(self, log_prob: int) -> float:
        """A posterior in the decoder's log base as 0..1 (0 where the decoder computed none)."""
        value = float(self.logmath.exp(log_prob)) if log_prob else 0.0
        return value if math.isfinite(value) and 0.0 <= value <= 1.0 else 0.0
