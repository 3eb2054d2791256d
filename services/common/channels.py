"""Client channels to secured upstreams: TLS (own CA, mTLS client certificate, server-name override) and bearer token.

Each upstream gets its own flag set (``--<prefix>-auth-token``, ``--<prefix>-tls-ca`` ...). With TLS the token rides
on the channel as call credentials; gRPC refuses call credentials on a plaintext channel, so there the token is
returned as metadata that every call of the client adds (``UpstreamChannel.call_metadata``). Tokens are never logged.

The token goes out as ``authorization: Bearer <token>`` (what our services and most proxies check) or, with
``--<prefix>-auth-header KEY``, as ``KEY: <token>``: Triton's own ``--grpc-restricted-protocol=<protocols>:<k>=<v>``
checks the header ``triton-grpc-protocol-<k>`` and answers UNAVAILABLE "This protocol is restricted" without it.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

from services.common.config import EnvArgumentParser, parse_bool
from services.common.contract import MAX_MESSAGE_MB, MiB
from services.common.errors import Unavailable

log = logging.getLogger(__name__)

Metadata = tuple[tuple[str, str], ...]
ChannelOptions = Sequence[tuple[str, int | str]]
# The codes an upstream answers when it does not accept who we are (no/bad token, certificate not allowed).
REFUSED_CODES = frozenset({grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED})
# Triton's answer (code UNAVAILABLE) to a call without the header its --grpc-restricted-protocol asks for.
_TRITON_RESTRICTED = re.compile(r"This protocol is restricted, expecting header '([^']*)'")
BEARER_HEADER = "authorization"
# A metadata key we may send: lowercase ASCII, not binary (-bin), not reserved (grpc-*, pseudo-headers).
_HEADER_KEY = re.compile(r"[a-z0-9][a-z0-9_.-]*")


@dataclass(frozen=True, repr=False)
class UpstreamCredentials:
    """What the gateway presents to one upstream. `flag_prefix` ("rvc", "triton") names the flags in messages."""

    flag_prefix: str = ""
    token: str | None = None
    auth_header: str = BEARER_HEADER
    tls: bool = False
    root_certificates: bytes | None = None
    private_key: bytes | None = None
    certificate_chain: bytes | None = None
    server_name: str | None = None

    def __repr__(self) -> str:  # never let the token or the key reach a log through repr()
        return f"UpstreamCredentials({self.describe()})"

    def describe(self) -> str:
        """How the channel is secured, for logs: no secrets."""
        if self.tls:
            parts = ["TLS", "own CA" if self.root_certificates else "system CAs"]
            if self.certificate_chain:
                parts.append("client certificate")
            if self.server_name:
                parts.append(f"server name {self.server_name}")
            text = ", ".join(parts)
        else:
            text = "plaintext"
        if not self.token:
            return text
        return f"{text}, bearer token" if self.auth_header == BEARER_HEADER else f"{text}, token in {self.auth_header}"

    def auth_metadata(self) -> Metadata:
        """The token as the metadata entry the upstream checks; empty without a token."""
        if not self.token:
            return ()
        value = f"Bearer {self.token}" if self.auth_header == BEARER_HEADER else self.token
        return ((self.auth_header, value),)

    def flag(self, name: str) -> str:
        return f"--{self.flag_prefix}-{name}" if self.flag_prefix else f"--{name}"


def add_upstream_credential_options(parser: EnvArgumentParser, prefix: str, label: str) -> None:
    """Add --<prefix>-auth-token[-file] and --<prefix>-tls* for the upstream called `label`."""
    parser.add_option(
        f"--{prefix}-auth-token",
        default=None,
        help=f"bearer token sent to {label} (visible in `ps`: prefer the environment variable or the -file flag)",
    )
    parser.add_option(
        f"--{prefix}-auth-token-file", type=Path, default=None, help=f"file holding the bearer token for {label}"
    )
    parser.add_option(
        f"--{prefix}-auth-header",
        default=BEARER_HEADER,
        help=f"metadata key carrying the token to {label}: '{BEARER_HEADER}' sends 'Bearer <token>', any other key "
        "the bare token (Triton's --grpc-restricted-protocol=...:<k>=<v> checks 'triton-grpc-protocol-<k>')",
    )
    parser.add_option(
        f"--{prefix}-tls",
        type=parse_bool,
        default=False,
        help=f"talk TLS to {label} (implied by any other --{prefix}-tls-* flag); system CAs unless --{prefix}-tls-ca",
    )
    parser.add_option(f"--{prefix}-tls-ca", type=Path, default=None, help=f"PEM CA bundle that signed {label}'s cert")
    parser.add_option(
        f"--{prefix}-tls-cert", type=Path, default=None, help=f"PEM client certificate for {label} (mTLS; needs -key)"
    )
    parser.add_option(f"--{prefix}-tls-key", type=Path, default=None, help=f"PEM private key of --{prefix}-tls-cert")
    parser.add_option(
        f"--{prefix}-tls-server-name",
        default=None,
        help=f"name to verify {label}'s certificate against when it differs from the address's host",
    )


def _read_pem(flag: str, path: Path | None) -> bytes | None:
    if path is None:
        return None
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SystemExit(f"cannot read {flag} {path}: {exc.strerror or exc}") from None
    if b"-----BEGIN " not in data:
        raise SystemExit(f"{flag} {path} is not a PEM file (no '-----BEGIN' line)")
    return data


def _read_token(creds: UpstreamCredentials, token: str | None, token_file: Path | None) -> str | None:
    flag, file_flag = creds.flag("auth-token"), creds.flag("auth-token-file")
    if token is not None and token_file is not None:
        raise SystemExit(f"give {flag} or {file_flag}, not both")
    if token_file is not None:
        try:
            token = token_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise SystemExit(f"cannot read {file_flag} {token_file}: {getattr(exc, 'strerror', None) or exc}") from None
        flag = file_flag
    if token is None:
        return None
    if not token:
        raise SystemExit(f"{flag} is empty")
    # A metadata value must be printable ASCII; a space would split "Bearer <token>" on the server.
    if not all("!" <= ch <= "~" for ch in token):
        raise SystemExit(f"{flag}: the token must be printable ASCII without spaces")
    return token


def _check_header(creds: UpstreamCredentials, header: str) -> str:
    key = header.strip().lower()
    if not _HEADER_KEY.fullmatch(key) or key.endswith("-bin") or key.startswith("grpc-"):
        raise SystemExit(
            f"{creds.flag('auth-header')} {header!r} is not a metadata key we can send: use lowercase letters, digits "
            "and -_. , not ending in -bin and not starting with grpc-"
        )
    return key


def credentials_from_args(args: argparse.Namespace, prefix: str) -> UpstreamCredentials:
    """The credentials the --<prefix>-* flags describe; SystemExit with the flag to fix when they do not add up."""
    attr = prefix.replace("-", "_")
    blank = UpstreamCredentials(flag_prefix=prefix)
    cert_path: Path | None = getattr(args, f"{attr}_tls_cert")
    key_path: Path | None = getattr(args, f"{attr}_tls_key")
    if (cert_path is None) != (key_path is None):
        raise SystemExit(
            f"{blank.flag('tls-cert')} and {blank.flag('tls-key')} go together (the client certificate for mTLS): "
            "give both or neither"
        )
    ca = _read_pem(blank.flag("tls-ca"), getattr(args, f"{attr}_tls_ca"))
    cert = _read_pem(blank.flag("tls-cert"), cert_path)
    key = _read_pem(blank.flag("tls-key"), key_path)
    server_name: str | None = getattr(args, f"{attr}_tls_server_name") or None
    tls = bool(getattr(args, f"{attr}_tls")) or any(v is not None for v in (ca, cert, server_name))
    token = _read_token(blank, getattr(args, f"{attr}_auth_token"), getattr(args, f"{attr}_auth_token_file"))
    header = _check_header(blank, getattr(args, f"{attr}_auth_header", None) or BEARER_HEADER)
    return UpstreamCredentials(
        flag_prefix=prefix,
        token=token,
        auth_header=header,
        tls=tls,
        root_certificates=ca,
        private_key=key,
        certificate_chain=cert,
        server_name=server_name,
    )


@dataclass
class UpstreamChannel:
    """A channel plus what each call on it must carry; `refused` turns a credentials refusal into a clear status."""

    label: str
    url: str
    credentials: UpstreamCredentials
    channel: grpc.aio.Channel
    call_metadata: Metadata

    def refused(self, exc: grpc.aio.AioRpcError) -> Unavailable | None:
        """Unavailable naming the upstream and the flag to fix when it refused our credentials; None otherwise."""
        code, creds = exc.code(), self.credentials
        token_flags = f"{creds.flag('auth-token')} or {creds.flag('auth-token-file')}"
        restricted = _TRITON_RESTRICTED.search(exc.details() or "") if code == grpc.StatusCode.UNAVAILABLE else None
        if restricted:
            expected = restricted.group(1)
            reason = f"it expects the header {expected!r}"
            if not creds.token:
                fix = f"set {token_flags} with {creds.flag('auth-header')} {expected}"
            elif creds.auth_header != expected:
                fix = f"set {creds.flag('auth-header')} {expected}"
            else:
                fix = f"check the token given with {creds.flag('auth-token')}"
        elif code in REFUSED_CODES:
            reason = code.name
            fix = f"check the token given with {creds.flag('auth-token')}" if creds.token else f"set {token_flags}"
            if code == grpc.StatusCode.PERMISSION_DENIED:
                fix += f" and the client certificate ({creds.flag('tls-cert')})"
        else:
            return None
        # The upstream's own text ("send metadata 'authorization: ...'") would mislead the gateway's caller.
        return Unavailable(f"{self.label} at {self.url} refused the gateway's credentials ({reason}): {fix}")


class _StaticMetadata(grpc.AuthMetadataPlugin):
    """Call credentials that add fixed metadata (gRPC sends them only over a secure channel)."""

    def __init__(self, metadata: Metadata) -> None:
        self._metadata = metadata

    def __call__(self, context: grpc.AuthMetadataContext, callback: grpc.AuthMetadataPluginCallback) -> None:
        callback(self._metadata, None)


# Keepalive so a dead peer is noticed on quiet connections; short reconnect backoff so service resumes quickly after
# an upstream restart. The project's services accept a ping every 5 s (services/common/server.py).
UPSTREAM_CHANNEL_OPTIONS: list[tuple[str, int]] = [
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 1_000),
    ("grpc.max_send_message_length", MAX_MESSAGE_MB * MiB),
    ("grpc.max_receive_message_length", MAX_MESSAGE_MB * MiB),
]

# Targets whose resolver may return several addresses; a plain host:port (one ClusterIP, or a mesh) stays as it is.
BALANCED_SCHEMES = ("dns:", "ipv4:", "ipv6:")
ROUND_ROBIN_SERVICE_CONFIG = json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})


def open_channel(
    label: str, url: str, options: ChannelOptions, credentials: UpstreamCredentials | None = None
) -> UpstreamChannel:
    """A grpc.aio channel to `url` with `options`, secured as `credentials` say."""
    creds = credentials or UpstreamCredentials()
    opts: list[tuple[str, int | str]] = list(options)
    if url.startswith(BALANCED_SCHEMES):
        # A name that resolves to several replicas (a headless Service) or a list of addresses: spread calls over
        # all of them. gRPC's default, pick_first, would send every call down one connection to one replica.
        opts.append(("grpc.service_config", ROUND_ROBIN_SERVICE_CONFIG))
    if creds.server_name:
        opts.append(("grpc.ssl_target_name_override", creds.server_name))
    log.info("%s channel to %s: %s", label, url, creds.describe())
    if not creds.tls:
        if creds.token:
            log.warning("the token for %s at %s travels unencrypted: enable TLS for that upstream", label, url)
        channel = grpc.aio.insecure_channel(url, options=opts)
        return UpstreamChannel(label, url, creds, channel, creds.auth_metadata())
    channel_credentials = grpc.ssl_channel_credentials(
        root_certificates=creds.root_certificates,
        private_key=creds.private_key,
        certificate_chain=creds.certificate_chain,
    )
    if creds.token:
        plugin = _StaticMetadata(creds.auth_metadata())
        channel_credentials = grpc.composite_channel_credentials(
            channel_credentials, grpc.metadata_call_credentials(plugin, name="upstream-token")
        )
    return UpstreamChannel(label, url, creds, grpc.aio.secure_channel(url, channel_credentials, options=opts), ())


__all__ = [
    "BEARER_HEADER",
    "REFUSED_CODES",
    "UPSTREAM_CHANNEL_OPTIONS",
    "UpstreamChannel",
    "UpstreamCredentials",
    "add_upstream_credential_options",
    "credentials_from_args",
    "open_channel",
]
