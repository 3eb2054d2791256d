"""Request bodies and WebSocket messages as pydantic models: FastAPI validates the HTTP bodies, the sockets validate
their JSON frames with the same models, and either way a failure becomes one 400 (errors.validation_message).

Messages that read better whole than as "field: problem" are raised as `edge_message` errors (`_problem`)."""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictStr, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError

from services.common.contract import MAX_SPEAKING_RATE, MIN_SPEAKING_RATE, speaking_rate_problem
from services.http_edge.encode import FORMATS, supported_formats
from services.http_edge.errors import EDGE_MESSAGE
from voice.v1 import conversion_pb2

# The WebSocket answers what the gateway encodes itself (no edge-side encoder on a socket).
WS_FORMATS = ("pcm", "wav", "opus")
TALK_MIN_RATE, TALK_MAX_RATE = 8000, 48000
DEFAULT_REFERENCE_RATE = 24_000


def _problem(message: str) -> PydanticCustomError:
    return PydanticCustomError(EDGE_MESSAGE, message)


def _check_speed(value: float | None) -> float | None:
    if value is not None and speaking_rate_problem(value) is not None:
        raise _problem(
            f"speed must be between {MIN_SPEAKING_RATE:g} and {MAX_SPEAKING_RATE:g} (1.0 is the voice's normal "
            f"pace), got {value}"
        )
    return value


def conversion_settings(model: str | None, pitch_shift: float | None) -> conversion_pb2.ConversionSettings | None:
    if not model and pitch_shift is None:
        return None
    settings = conversion_pb2.ConversionSettings(model=model or "")
    if pitch_shift is not None:
        settings.pitch_shift_semitones = pitch_shift
    return settings


class SpeechRequest(BaseModel):
    """OpenAI's speech request plus the edge's extensions; unknown fields are ignored (newer OpenAI clients).

    The body is JSON whatever its Content-Type says (`curl -d` sends JSON as a form): raw bytes are decoded here."""

    model_config = ConfigDict(extra="ignore")

    model: str
    input: str
    voice: str
    response_format: str = "mp3"
    speed: float = 1.0
    instructions: str | None = None
    conversion_model: str | None = None
    pitch_shift: float | None = None
    stream_format: Literal["audio"] = "audio"

    @model_validator(mode="before")
    @classmethod
    def _json_text(cls, data: Any) -> Any:
        if not isinstance(data, bytes | str):
            return data
        try:
            return json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise _problem(f"the body must be a JSON object: {error}") from None

    @field_validator("response_format")
    @classmethod
    def _known_format(cls, value: str) -> str:
        if value not in FORMATS:
            raise _problem(f"response_format must be one of {supported_formats()}")
        return value

    @field_validator("speed")
    @classmethod
    def _speed(cls, value: float) -> float:
        _check_speed(value)
        return value


class SpeechSocketConfig(BaseModel):
    """The first frame of `/v1/audio/speech/stream`."""

    model_config = ConfigDict(extra="ignore", strict=True)

    voice: str = Field("", validate_default=True)
    response_format: str = "pcm"
    sample_rate: int = 0  # 0: the voice's own rate
    speed: float | None = None
    conversion_model: StrictStr | None = None
    pitch_shift: float | None = None
    text_input_mode: Literal["sentences", "incremental"] | None = None  # unset: the voice's default

    @field_validator("voice")
    @classmethod
    def _named(cls, value: str) -> str:
        if not value:
            raise _problem('the first message must name a voice: {"voice": "..."}')
        return value

    @field_validator("response_format")
    @classmethod
    def _socket_format(cls, value: str) -> str:
        if value not in WS_FORMATS:
            raise _problem(f"response_format must be one of {', '.join(WS_FORMATS)} on the WebSocket")
        return value

    @field_validator("speed")
    @classmethod
    def _speed(cls, value: float | None) -> float | None:
        return _check_speed(value)


class SocketTextMessage(BaseModel):
    """A later frame of `/v1/audio/speech/stream`: `{"text"}`, `{"type": "flush"}` or `{"type": "end"}`."""

    model_config = ConfigDict(extra="ignore", strict=True)

    type: Literal["text", "flush", "end"] | None = None  # None: text
    text: str | None = None

    @model_validator(mode="after")
    def _text_needed(self) -> SocketTextMessage:
        if self.type in (None, "text") and self.text is None:
            raise _problem('expected {"text": "..."}, {"type": "flush"} or {"type": "end"}')
        return self


class TalkConfig(BaseModel):
    """The config frame of `/v1/talk`. `reply` defaults to chat when the edge has a chat endpoint (validation
    context `{"chat": bool}`), else echo."""

    model_config = ConfigDict(extra="ignore", strict=True)

    voice: str = Field("", validate_default=True)
    sample_rate: int = Field(0, validate_default=True)
    reply: str | None = Field(None, validate_default=True)
    language: str = ""
    recognition_model: str = ""

    @field_validator("voice")
    @classmethod
    def _named(cls, value: str) -> str:
        if not value:
            raise _problem('the config frame must name a voice: {"voice": "...", "sample_rate": 16000}')
        return value

    @field_validator("sample_rate")
    @classmethod
    def _rate(cls, value: int) -> int:
        if not TALK_MIN_RATE <= value <= TALK_MAX_RATE:
            raise _problem(
                f"sample_rate must be the integer rate of the PCM16 audio you send ({TALK_MIN_RATE}..{TALK_MAX_RATE})"
            )
        return value

    @field_validator("reply")
    @classmethod
    def _reply(cls, value: str | None, info: ValidationInfo) -> str:
        chat = bool((info.context or {}).get("chat"))
        value = value if value is not None else ("chat" if chat else "echo")
        if value not in ("echo", "chat"):
            raise _problem("reply must be one of echo, chat")
        if value == "chat" and not chat:
            raise _problem('reply "chat" needs a chat endpoint: start the edge with --chat-url')
        return value


class BistreamRequest(BaseModel):
    """One `/tts` JSON body or one `/stream` frame. Unknown fields are ignored (newer clients of the runtime)."""

    model_config = ConfigDict(extra="ignore", strict=True)

    text: str
    session_id: str | None = None
    reference: str | None = None
    reference_text: str | None = None
    reference_format: Literal["audio", "pcm16"] = "audio"
    reference_sample_rate: int = Field(DEFAULT_REFERENCE_RATE, gt=0, le=384_000)
    voice: str | None = None
    seed: int | None = Field(None, ge=0, lt=2**64)
    partial: bool = False
