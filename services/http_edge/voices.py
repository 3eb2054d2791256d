"""The gateway's voices as the edge sees them: a short-lived copy of ListVoices, the default voice choices, and the
OpenAI voice-name aliases (`--voice-alias`, `--default-voice`).

An alias applies only where no gateway voice has that name: a configured (or saved) voice always wins. Names that are
neither a voice nor an alias go to the gateway unchanged, so an unknown voice is the gateway's own 404.
"""

from __future__ import annotations

import time
from typing import Annotated, cast

import grpc
from fastapi import Depends
from starlette.requests import HTTPConnection

from services.http_edge.dependencies import Calls
from services.http_edge.errors import EdgeError, from_rpc_error
from services.http_edge.settings import OPENAI_VOICES, Settings
from voice.v1 import tts_gateway_pb2

# How long a ListVoices answer is reused for choosing defaults and resolving aliases.
LISTING_TTL_S = 30.0


def choose_voice(voices: list[tts_gateway_pb2.Voice]) -> str | None:
    """The first voice that streams text input (available ones first), else the first available voice."""
    ranked = (
        [v for v in voices if v.streams_text_input and v.available]
        + [v for v in voices if v.streams_text_input]
        + [v for v in voices if v.available]
        + list(voices)
    )
    return ranked[0].name if ranked else None


def first_configured(voices: list[tts_gateway_pb2.Voice]) -> str | None:
    """The first available configured (not saved) voice, else the first voice: OpenAI names' default target."""
    ranked = [v for v in voices if v.available and not v.HasField("saved")] + [v for v in voices if v.available]
    ranked += list(voices)
    return ranked[0].name if ranked else None


class VoiceDirectory:
    """One per app (`app.state.voices`)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._listing: tuple[list[tts_gateway_pb2.Voice], float] | None = None

    async def listing(self, calls: Calls, request_id: str, *, fresh: bool = False) -> list[tts_gateway_pb2.Voice]:
        now = time.monotonic()
        if not fresh and self._listing is not None and now - self._listing[1] < LISTING_TTL_S:
            return self._listing[0]
        try:
            reply = await calls.gateway.ListVoices(
                tts_gateway_pb2.ListVoicesRequest(),
                metadata=calls.gateway_md(request_id),
                timeout=calls.unary_timeout_s,
            )
        except grpc.aio.AioRpcError as error:
            raise from_rpc_error(error) from None
        voices = list(reply.voices)
        self._listing = (voices, now)
        return voices

    def is_alias(self, name: str) -> bool:
        return name in self.settings.voice_aliases or name in OPENAI_VOICES

    def aliases(self, voices: list[tts_gateway_pb2.Voice]) -> dict[str, str]:
        """The aliases in effect over `voices`: NAME -> voice, leaving out names a gateway voice has."""
        names = {voice.name for voice in voices}
        default = self.settings.default_voice or first_configured(voices)
        table = {name: default for name in OPENAI_VOICES if default} | self.settings.voice_aliases
        return {name: target for name, target in table.items() if name not in names}

    async def resolve(self, name: str, calls: Calls, request_id: str) -> str:
        """The gateway voice `name` stands for (itself unless it is an alias no gateway voice shadows)."""
        if not self.is_alias(name):
            return name
        voices = await self.listing(calls, request_id)
        return self.aliases(voices).get(name, name)

    async def bistream_default(self, calls: Calls, request_id: str) -> str:
        if self.settings.bistream_voice:
            return self.settings.bistream_voice
        name = choose_voice(await self.listing(calls, request_id))
        if name is None:
            raise EdgeError(503, 'the gateway lists no voices; name one with "voice"', "unavailable")
        return name


def get_voices(conn: HTTPConnection) -> VoiceDirectory:
    return cast(VoiceDirectory, conn.app.state.voices)


VoicesDep = Annotated[VoiceDirectory, Depends(get_voices)]
