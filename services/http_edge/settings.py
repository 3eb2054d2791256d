"""The edge's options in one place: the flags (each also an `EDGE_*` environment variable) and `Settings`, what the
routes read from them. The upstream addresses and credentials stay in the parsed flags: `Upstreams.open` reads them.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from services.common.channels import add_upstream_credential_options
from services.common.config import EnvArgumentParser
from services.common.contract import GATEWAY_TARGET, RVC_TARGET, MiB

STATIC_DIR = Path(__file__).resolve().parent / "static"
# OpenAI's voice names; most OpenAI-compatible tools send one of them (alloy by default).
OPENAI_VOICES = ("alloy", "ash", "ballad", "coral", "echo", "fable", "onyx", "nova", "sage", "shimmer", "verse")


def make_parser() -> EnvArgumentParser:
    parser = EnvArgumentParser(
        description="HTTP edge: OpenAI-compatible speech API, HTTP/WebSocket streaming and a web page over the gRPC "
        "services",
        env_prefix="EDGE",
    )
    parser.add_option("--host", default="127.0.0.1", help="address to listen on for HTTP (0.0.0.0 in containers)")
    parser.add_option("--port", type=int, default=8080, help="HTTP port (0 picks a free port)")
    parser.add_option("--metrics-host", default="127.0.0.1", help="address for the Prometheus /metrics endpoint")
    parser.add_option("--metrics-port", type=int, default=9103, help="Prometheus port (0 free port, -1 off)")
    parser.add_option("--gateway-url", default=GATEWAY_TARGET, help="TTS gateway gRPC address")
    parser.add_option("--rvc-url", default=RVC_TARGET, help="voice-conversion service gRPC address (/rvc)")
    add_upstream_credential_options(parser, "gateway", "the gateway")
    add_upstream_credential_options(parser, "rvc", "the voice-conversion service")
    _add_access_options(parser)
    _add_voice_options(parser)
    _add_chat_options(parser)
    parser.add_option("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="log level")
    parser.add_option("--log-format", default="json", choices=["json", "text"], help="log line format")
    return parser


def _add_access_options(parser: EnvArgumentParser) -> None:
    parser.add_option(
        "--auth-token",
        default=None,
        help="when set, every request except /, /static/, /health needs 'Authorization: Bearer <token>' "
        "(WebSocket: the header or ?token=)",
    )
    parser.add_option(
        "--upstream-token",
        default=None,
        help="bearer token sent to both upstreams unless --gateway-auth-token/--rvc-auth-token say otherwise; "
        "without any, the client's own bearer token is forwarded",
    )
    parser.add_option("--max-body-mb", type=float, default=32.0, help="largest request body, MiB (413 above)")
    parser.add_option("--max-upload-seconds", type=float, default=60.0, help="longest uploaded audio, seconds")
    parser.add_option("--upstream-timeout", type=float, default=10.0, help="deadline of unary upstream calls, s")
    parser.add_option(
        "--synthesis-timeout", type=float, default=600.0, help="deadline of one synthesis or conversion call, s"
    )
    parser.add_option(
        "--grace-seconds", type=float, default=10.0, help="on SIGTERM, how long open responses may run before close"
    )


def _add_voice_options(parser: EnvArgumentParser) -> None:
    parser.add_list_option(
        "--voice-alias",
        metavar="NAME=VOICE",
        help="a voice name the OpenAI routes (/v1/audio/speech and its WebSocket) accept for a gateway voice, e.g. "
        "alloy=joe; a comma list works too. OpenAI's names (alloy, ash, ballad, coral, echo, fable, onyx, nova, "
        "sage, shimmer, verse) not given here go to --default-voice. A gateway voice of the same name always wins "
        "over an alias. GET /v1/voices lists the aliases in effect",
    )
    parser.add_option(
        "--default-voice",
        default=None,
        help="the voice OpenAI's voice names map to unless --voice-alias says otherwise; default: the first "
        "available configured voice the gateway lists (the first of its voices.toml)",
    )
    parser.add_option(
        "--bistream-voice",
        default=None,
        help="voice of the CosyVoice2 runtime API (JSON /tts, /stream) when a request names none; default: the first "
        "voice that streams text input, else the first available one",
    )
    parser.add_option(
        "--bistream-session-ttl",
        type=float,
        default=600.0,
        help="idle seconds a /tts or /stream session's reference is kept",
    )
    parser.add_option("--bistream-max-sessions", type=int, default=256, help="session references kept (LRU)")


def _add_chat_options(parser: EnvArgumentParser) -> None:
    parser.add_option(
        "--chat-url",
        default=None,
        help="OpenAI-compatible chat-completions URL (e.g. http://127.0.0.1:11434/v1/chat/completions) that answers "
        "/v1/talk utterances; without it /v1/talk echoes the transcript",
    )
    parser.add_option("--chat-model", default="", help="model named in chat requests (empty: the endpoint's default)")
    parser.add_option(
        "--chat-system-prompt",
        default="You are a helpful voice assistant. Answer briefly, in plain spoken sentences without markup.",
        help="system message of every /v1/talk conversation (empty: none)",
    )
    parser.add_option("--chat-api-key", default=None, help="bearer token for the chat endpoint (env EDGE_CHAT_API_KEY)")
    parser.add_option("--chat-timeout", type=float, default=60.0, help="deadline of one chat answer, s")
    parser.add_option(
        "--chat-max-history", type=int, default=20, help="messages of a /v1/talk conversation kept as context"
    )


def parse_voice_aliases(values: Iterable[str]) -> dict[str, str]:
    """`NAME=VOICE` items (each value may hold a comma list) -> {NAME: VOICE}; a later item for a name wins.
    Raises ValueError for an item that is not NAME=VOICE."""
    aliases: dict[str, str] = {}
    for value in values:
        for item in (part.strip() for part in value.split(",")):
            if not item:
                continue
            name, sep, voice = (part.strip() for part in item.partition("="))
            if not sep or not name or not voice:
                raise ValueError(f"--voice-alias wants NAME=VOICE items (e.g. alloy=joe), got {item!r}")
            aliases[name] = voice
    return aliases


@dataclass
class Settings:
    auth_token: str | None = None
    max_body_bytes: int = 32 * MiB
    max_upload_seconds: float = 60.0
    synthesis_timeout_s: float = 600.0
    static_dir: Path = STATIC_DIR
    voice_aliases: dict[str, str] = field(default_factory=dict)
    default_voice: str | None = None
    bistream_voice: str | None = None
    bistream_session_ttl_s: float = 600.0
    bistream_max_sessions: int = 256
    chat_url: str | None = None
    chat_model: str = ""
    chat_system_prompt: str = ""
    chat_api_key: str | None = None
    chat_timeout_s: float = 60.0
    chat_max_history: int = 20
    started_at: int = field(default_factory=lambda: int(time.time()))  # `created` of GET /v1/models

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Settings:
        return cls(
            auth_token=args.auth_token or None,
            max_body_bytes=int(args.max_body_mb * MiB),
            max_upload_seconds=args.max_upload_seconds,
            synthesis_timeout_s=args.synthesis_timeout,
            voice_aliases=parse_voice_aliases(args.voice_alias),
            default_voice=args.default_voice or None,
            bistream_voice=args.bistream_voice or None,
            bistream_session_ttl_s=args.bistream_session_ttl,
            bistream_max_sessions=args.bistream_max_sessions,
            chat_url=args.chat_url or None,
            chat_model=args.chat_model,
            chat_system_prompt=args.chat_system_prompt,
            chat_api_key=args.chat_api_key or None,
            chat_timeout_s=args.chat_timeout,
            chat_max_history=args.chat_max_history,
        )
