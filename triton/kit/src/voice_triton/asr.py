"""The recognition models' shared tensor interface: request checks and the response every ASR model answers with.

Inputs (max_batch_size 1): `audio` FP32 [-1] (mono at the model's `sample_rate_hz`), optional `audio_len` INT32 [1]
(the valid samples of `audio`), `language` STRING [1] (BCP-47 "en-US" or ISO "en"; empty: the model's detection or
default) and `word_timestamps` BOOL [1]. Outputs: `transcript` STRING [1], `words` STRING [1] (a JSON array of
{"word", "start_s", "end_s", "confidence"}; "[]" when none), `language` STRING [1] (ISO code; "" when the model
cannot tell) and `confidence` FP32 [1] (0..1). A request that cannot be served raises RequestError saying what to fix.

The request checks and word grouping import nothing of Triton (tests use them directly); `read_request` and
`response` run inside the python-backend stub.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from voice_triton.errors import RequestError
from voice_triton.params import ConfigError, ModelParams


@dataclass(frozen=True)
class AsrSettings:
    """The config parameters every recognition model reads."""

    sample_rate_hz: int
    languages: tuple[str, ...]
    max_audio_seconds: float
    word_time_offsets: bool

    @classmethod
    def from_params(cls, params: ModelParams, languages: Sequence[str], strict: bool = True) -> AsrSettings:
        """`languages`: what the checkpoint supports; the `language_codes` parameter may narrow it (first = default).
        A configured code the checkpoint lacks fails the load, or with `strict` False is left out (one config serving
        checkpoints of a family with fewer languages, such as Whisper's 99 before large-v3's 100)."""
        configured = [normalize_code(code) for code in params.names("language_codes")]
        unknown = [code for code in configured if code not in languages]
        if unknown and strict:
            raise ConfigError(
                f"{params.model_name}: config parameter language_codes names languages the checkpoint lacks: "
                f"{', '.join(unknown)} (it has {', '.join(languages)})"
            )
        kept = [code for code in configured if code in languages]
        return cls(
            sample_rate_hz=params.integer("sample_rate_hz", 16000, 16000, 16000),
            languages=tuple(kept or languages),
            max_audio_seconds=params.number("max_audio_seconds", 1800.0, 1.0, 86400.0),
            word_time_offsets=params.flag("word_time_offsets", False),
        )


@dataclass(frozen=True)
class AsrRequest:
    audio: np.ndarray  # float32, mono
    language: str  # normalized ISO code, "" when the request names none
    word_timestamps: bool


@dataclass(frozen=True)
class Word:
    word: str
    start_s: float
    end_s: float
    confidence: float


def normalize_code(raw: str) -> str:
    """ "en-US" / "en_us" / "EN" -> "en"; three-letter codes (yue, haw) kept."""
    return raw.strip().replace("_", "-").split("-")[0].lower()


def check_language(raw: str, languages: Sequence[str]) -> str:
    if not raw.strip():
        return ""
    code = normalize_code(raw)
    if code not in languages:
        shown = ", ".join(languages[:40]) + (", ..." if len(languages) > 40 else "")
        raise RequestError(f"language {raw.strip()!r} is not supported by this model: use one of {shown}")
    return code


def check_audio(audio: np.ndarray, sample_rate_hz: int, max_seconds: float) -> np.ndarray:
    audio = np.asarray(audio, dtype=np.float32).reshape(-1)
    if audio.size == 0:
        raise RequestError("audio is empty: send mono float32 samples at 16000 Hz")
    seconds = audio.size / sample_rate_hz
    if seconds > max_seconds:
        raise RequestError(
            f"audio is {seconds:.1f} s long, over this model's max_audio_seconds {max_seconds:g}: "
            "split it or send it in parts"
        )
    if not np.isfinite(audio).all():
        raise RequestError("audio holds NaN or infinite samples: send finite float32 samples in -1..1")
    return audio


def check_request(
    audio: np.ndarray, audio_len: int | None, language: str, word_timestamps: bool, settings: AsrSettings
) -> AsrRequest:
    audio = np.asarray(audio, dtype=np.float32).reshape(-1)
    if audio_len is not None:
        if not 0 <= audio_len <= audio.size:
            raise RequestError(f"audio_len {audio_len} is outside 0..{audio.size} (the samples sent)")
        audio = audio[:audio_len]
    audio = check_audio(audio, settings.sample_rate_hz, settings.max_audio_seconds)
    code = check_language(language, settings.languages)
    return AsrRequest(audio, code, bool(word_timestamps) and settings.word_time_offsets)


def words_from_pieces(
    pieces: Sequence[str], starts: Sequence[float], ends: Sequence[float], probs: Sequence[float]
) -> list[Word]:
    """Group decoded token pieces into words: a piece starting with whitespace starts a new word."""
    words: list[Word] = []
    text, start, end, group = "", 0.0, 0.0, []  # type: ignore[var-annotated]
    for piece, t0, t1, prob in zip(pieces, starts, ends, probs, strict=True):
        if (piece[:1].isspace() or not text) and text.strip():
            words.append(Word(text.strip(), round(start, 3), round(end, 3), round(float(np.mean(group)), 6)))
            text, group = "", []
        if not text:
            start = t0
        text += piece
        end = max(t1, t0)
        group.append(prob)
    if text.strip():
        words.append(Word(text.strip(), round(start, 3), round(end, 3), round(float(np.mean(group)), 6)))
    return words


def mean_probability(probs: Sequence[float]) -> float:
    value = float(np.mean(probs)) if len(probs) else 0.0
    return value if math.isfinite(value) else 0.0


def _string(request: Any, name: str) -> str:
    import triton_python_backend_utils as pb_utils

    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        return ""
    values = tensor.as_numpy().reshape(-1)
    if values.size == 0:
        return ""
    value = values[0]
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def read_request(request: Any, settings: AsrSettings) -> AsrRequest:
    """The request's tensors, checked (RequestError saying what to fix)."""
    import triton_python_backend_utils as pb_utils

    audio = pb_utils.get_input_tensor_by_name(request, "audio").as_numpy()
    length = pb_utils.get_input_tensor_by_name(request, "audio_len")
    audio_len = int(length.as_numpy().reshape(-1)[0]) if length is not None and length.as_numpy().size else None
    flag = pb_utils.get_input_tensor_by_name(request, "word_timestamps")
    word_timestamps = bool(flag.as_numpy().reshape(-1)[0]) if flag is not None and flag.as_numpy().size else False
    return check_request(audio, audio_len, _string(request, "language"), word_timestamps, settings)


def response(transcript: str, words: Sequence[Word], language: str, confidence: float) -> Any:
    import triton_python_backend_utils as pb_utils

    def text(name: str, value: str) -> Any:
        return pb_utils.Tensor(name, np.array([[value.encode("utf-8")]], dtype=np.object_))

    return pb_utils.InferenceResponse(
        output_tensors=[
            text("transcript", transcript),
            text("words", json.dumps([asdict(word) for word in words])),
            text("language", language),
            pb_utils.Tensor("confidence", np.array([[confidence]], dtype=np.float32)),
        ]
    )
