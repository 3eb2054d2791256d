"""The gateway reaching secured upstreams: per-upstream bearer token, TLS with an own CA, mTLS client certificate.

End to end with real processes: a conversion service that requires mTLS and a token, gateways (some themselves on
TLS with their own token) in front of it and of the session Triton; and a second real Triton that serves gRPC over
mTLS and requires an `authorization` header (tritonserver's --grpc-restricted-protocol). Certificates come from
tests/fixtures/certs.py. Start-up errors and flag parsing are checked in-process and once as a real process.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from services.common.channels import UpstreamCredentials, credentials_from_args, open_channel
from services.common.errors import Unavailable
from services.tts_gateway.app import make_parser
from services.tts_gateway.triton_client import TritonTts
from tests.fixtures.certs import OTHER_SERVER_NAME, TestPki, make_test_pki, openssl_available
from tests.fixtures.gateway import start_gateway
from tests.fixtures.rvc_service import start_rvc_service
from tests.fixtures.service_process import REPO_ROOT, ServiceProcess
from tests.fixtures.triton_server import LAUNCHER, TRITON_PYTHON, _http_ok, _stop, free_ports
from tests.waiting import wait_until
from voice.v1 import audio_pb2, tts_gateway_pb2, tts_gateway_pb2_grpc

pytestmark = [pytest.mark.timeout(300)]

GATEWAY_TOKEN = "gateway-token-7f3a9c"
RVC_TOKEN = "rvc-token-51d0e2b8"  # distinct strings, so a leak into a log is unmistakable
TRITON_TOKEN = "triton-token-c4e6a1"
TEXT = "The conversion service only answers callers it knows. This sentence has to get through it."
RATE = 16000
UNAVAILABLE_CODES = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.FAILED_PRECONDITION)
TLS_ERROR = re.compile(r"ssl|tls|handshake|certificate|verification", re.IGNORECASE)


# ---- fixtures -------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    if not openssl_available():
        pytest.skip("the openssl CLI is needed to make test certificates")
    return make_test_pki(tmp_path_factory.mktemp("pki"))


def token_file(directory: Path, name: str, token: str) -> Path:
    path = directory / name
    path.write_text(token + "\n")  # a trailing newline, as `echo` or a k8s secret leaves it
    path.chmod(0o600)
    return path


@pytest.fixture(scope="module")
def secured_rvc(pki: TestPki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    """A conversion service that requires a client certificate signed by the test CA and a bearer token."""
    service = start_rvc_service(
        "--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key), "--tls-client-ca", str(pki.ca),
        "--auth-token", RVC_TOKEN,
        log_dir=tmp_path_factory.mktemp("secured_rvc"),
    )  # fmt: skip
    yield service
    service.stop()


@pytest.fixture
def gateways(tmp_path: Path) -> Iterator[Callable[..., ServiceProcess]]:
    started: list[ServiceProcess] = []

    def start(triton_url: str, rvc_url: str, *flags: str) -> ServiceProcess:
        process = start_gateway(triton_url, rvc_url, *flags, log_dir=tmp_path)
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop(signal.SIGKILL)


def rvc_client_flags(pki: TestPki, *, ca: Path | None = None, client_cert: bool = True) -> list[str]:
    flags = ["--rvc-tls-ca", str(ca or pki.ca)]
    if client_cert:
        flags += ["--rvc-tls-cert", str(pki.client_cert), "--rvc-tls-key", str(pki.client_key)]
    return flags


# ---- client helpers -------------------------------------------------------------------------------------------------


def tls_channel(gateway: ServiceProcess, pki: TestPki, token: str | None) -> grpc.aio.Channel:
    credentials = grpc.ssl_channel_credentials(root_certificates=pki.ca.read_bytes())
    if token is not None:
        credentials = grpc.composite_channel_credentials(credentials, grpc.access_token_call_credentials(token))
    return grpc.aio.secure_channel(gateway.address, credentials)


def synthesize_request(voice: str) -> tts_gateway_pb2.SynthesizeRequest:
    return tts_gateway_pb2.SynthesizeRequest(
        text=TEXT,
        voice=voice,
        output_format=audio_pb2.AudioFormat(encoding=audio_pb2.AUDIO_ENCODING_PCM16, sample_rate_hz=RATE),
    )


async def synthesize_seconds(channel: grpc.aio.Channel, voice: str) -> float:
    """Seconds of PCM16 audio one Synthesize returns; checks every chunk has the asked rate."""
    stub = tts_gateway_pb2_grpc.TtsGatewayServiceStub(channel)
    samples = 0
    async for chunk in stub.Synthesize(synthesize_request(voice), timeout=120):
        assert chunk.format.sample_rate_hz == RATE and chunk.format.encoding == audio_pb2.AUDIO_ENCODING_PCM16
        samples += len(chunk.audio) // 2
    return samples / RATE


async def synthesize_error(channel: grpc.aio.Channel, voice: str) -> grpc.aio.AioRpcError:
    stub = tts_gateway_pb2_grpc.TtsGatewayServiceStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in stub.Synthesize(synthesize_request(voice), timeout=60):
            pass
    return caught.value


async def upstreams(channel: grpc.aio.Channel) -> dict[str, tts_gateway_pb2.UpstreamStatus]:
    status = await tts_gateway_pb2_grpc.TtsGatewayServiceStub(channel).GetStatus(
        tts_gateway_pb2.TtsGatewayServiceGetStatusRequest(), timeout=10
    )
    return {u.name: u for u in status.upstreams}


# ---- end to end: conversion service with mTLS + token ---------------------------------------------------------------


@pytest.mark.slow
async def test_converted_voice_through_tls_gateway_to_mtls_token_conversion_service(
    triton_server: object, secured_rvc: ServiceProcess, pki: TestPki, gateways: Callable[..., ServiceProcess]
) -> None:
    rvc_token = token_file(pki.ca.parent, "rvc.token", RVC_TOKEN)
    gateway = gateways(
        triton_server.grpc_url,  # type: ignore[attr-defined]
        secured_rvc.address,
        "--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key), "--auth-token", GATEWAY_TOKEN,
        *rvc_client_flags(pki), "--rvc-auth-token-file", str(rvc_token),
    )  # fmt: skip
    async with tls_channel(gateway, pki, GATEWAY_TOKEN) as channel:
        state = (await upstreams(channel))["voice_conversion"]
        assert state.serving, state.last_error
        converted = await synthesize_seconds(channel, "joe-world-high")
        plain = await synthesize_seconds(channel, "joe")
    assert converted > 1.0
    # The conversion keeps the timing of the speech: same text, about the same length.
    assert 0.8 < converted / plain < 1.25, (converted, plain)
    # The gateway itself still wants its own token.
    async with tls_channel(gateway, pki, None) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await upstreams(channel)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    log = gateway.log_text()
    assert "voice conversion service channel to" in log and "TLS, own CA, client certificate, bearer token" in log
    assert RVC_TOKEN not in log and GATEWAY_TOKEN not in log


@pytest.mark.slow
async def test_missing_rvc_token_is_a_clear_error_and_unconverted_voices_still_work(
    triton_server: object, secured_rvc: ServiceProcess, pki: TestPki, gateways: Callable[..., ServiceProcess]
) -> None:
    gateway = gateways(triton_server.grpc_url, secured_rvc.address, *rvc_client_flags(pki))  # type: ignore[attr-defined]
    async with grpc.aio.insecure_channel(gateway.address) as channel:
        state = (await upstreams(channel))["voice_conversion"]
        assert not state.serving
        assert "refused the gateway's credentials (UNAUTHENTICATED)" in state.last_error, state.last_error
        assert "--rvc-auth-token" in state.last_error
        error = await synthesize_error(channel, "joe-world-high")
        assert error.code() in UNAVAILABLE_CODES, (error.code(), error.details())
        assert "voice conversion" in error.details() and "credentials" in error.details(), error.details()
        assert "Bearer" not in error.details()  # the upstream's advice to send a header would mislead our caller
        assert await synthesize_seconds(channel, "joe") > 1.0


@pytest.mark.slow
async def test_wrong_rvc_token_names_the_flag_to_check(
    triton_server: object, secured_rvc: ServiceProcess, pki: TestPki, gateways: Callable[..., ServiceProcess]
) -> None:
    gateway = gateways(
        triton_server.grpc_url,  # type: ignore[attr-defined]
        secured_rvc.address,
        *rvc_client_flags(pki), "--rvc-auth-token", "not-the-token",
    )  # fmt: skip
    async with grpc.aio.insecure_channel(gateway.address) as channel:
        error = await synthesize_error(channel, "joe-world-high")
    assert error.code() in UNAVAILABLE_CODES
    assert "check the token given with --rvc-auth-token" in error.details(), error.details()


@pytest.mark.slow
@pytest.mark.parametrize("case", ["wrong CA", "no client certificate"])
async def test_tls_failures_show_in_status_and_fail_converted_voices_fast(
    case: str,
    triton_server: object,
    secured_rvc: ServiceProcess,
    pki: TestPki,
    gateways: Callable[..., ServiceProcess],
) -> None:
    wrong_ca = case == "wrong CA"
    flags = rvc_client_flags(pki, ca=pki.other_ca) if wrong_ca else rvc_client_flags(pki, client_cert=False)
    gateway = gateways(
        triton_server.grpc_url,  # type: ignore[attr-defined]
        secured_rvc.address,
        *flags, "--rvc-auth-token", RVC_TOKEN,
    )  # fmt: skip
    async with grpc.aio.insecure_channel(gateway.address) as channel:
        state = (await upstreams(channel))["voice_conversion"]
        assert not state.serving
        assert state.last_error.startswith(f"voice conversion service unavailable at {secured_rvc.address}")
        if wrong_ca:
            assert TLS_ERROR.search(state.last_error), state.last_error
        started = time.perf_counter()
        error = await synthesize_error(channel, "joe-world-high")
        elapsed = time.perf_counter() - started
        assert error.code() == grpc.StatusCode.UNAVAILABLE, (error.code(), error.details())
        assert elapsed < 10.0
        assert await synthesize_seconds(channel, "joe") > 1.0


@pytest.mark.slow
async def test_plaintext_token_rides_as_metadata_on_every_call(
    triton_server: object, pki: TestPki, gateways: Callable[..., ServiceProcess], tmp_path: Path
) -> None:
    """No TLS: gRPC refuses call credentials, so the token goes into each call's metadata (probe and Convert)."""
    service = start_rvc_service("--auth-token", RVC_TOKEN, log_dir=tmp_path)
    try:
        gateway = gateways(triton_server.grpc_url, service.address, "--rvc-auth-token", RVC_TOKEN)  # type: ignore[attr-defined]
        async with grpc.aio.insecure_channel(gateway.address) as channel:
            assert (await upstreams(channel))["voice_conversion"].serving
            assert await synthesize_seconds(channel, "joe-world-high") > 1.0
        log = gateway.log_text()
        assert "travels unencrypted" in log and RVC_TOKEN not in log
    finally:
        service.stop()


# ---- Triton over mTLS with a required header ------------------------------------------------------------------------

TRITON_HEADER = "triton-grpc-protocol-gateway-key"  # what --grpc-restricted-protocol=...:gateway-key=... checks


@pytest.fixture(scope="module")
def secured_triton(pki: TestPki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A second real Triton (piper_tts only) on gRPC over mTLS that serves only calls carrying TRITON_TOKEN.

    Its certificate names only OTHER_SERVER_NAME, so a client dialling 127.0.0.1 needs the target-name override.
    """
    if not TRITON_PYTHON.exists():
        pytest.fail(f"{TRITON_PYTHON} is missing: run `make .venv-triton/.installed`")
    http_port, grpc_port, metrics_port = free_ports(3)
    log_path = tmp_path_factory.mktemp("secured_triton") / "tritonserver.log"
    command = [
        str(TRITON_PYTHON), str(LAUNCHER), "--address=127.0.0.1", f"--http-port={http_port}",
        f"--grpc-port={grpc_port}", f"--metrics-port={metrics_port}", "--models=piper_tts", "--",
        "--grpc-use-ssl=true", "--grpc-use-ssl-mutual=true", f"--grpc-server-cert={pki.named_server_cert}",
        f"--grpc-server-key={pki.named_server_key}", f"--grpc-root-cert={pki.ca}",
        f"--grpc-restricted-protocol=health,metadata,inference,model-config:gateway-key={TRITON_TOKEN}",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRITON_")}
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT, env=env, start_new_session=True
        )

    def log_tail() -> str:
        return log_path.read_text(errors="replace")[-3000:]

    def ready() -> bool:
        assert process.poll() is None, f"secured Triton exited:\n{log_tail()}"
        return _http_ok(f"http://127.0.0.1:{http_port}/v2/health/ready")

    try:
        wait_until(ready, within=240, interval=0.25, what=lambda: f"secured Triton to be ready:\n{log_tail()}")
        yield f"127.0.0.1:{grpc_port}"
    finally:
        _stop(process)


def triton_credentials(pki: TestPki, **overrides: object) -> UpstreamCredentials:
    fields: dict[str, object] = {
        "flag_prefix": "triton",
        "token": TRITON_TOKEN,
        "auth_header": TRITON_HEADER,
        "tls": True,
        "root_certificates": pki.ca.read_bytes(),
        "certificate_chain": pki.client_cert.read_bytes(),
        "private_key": pki.client_key.read_bytes(),
        "server_name": OTHER_SERVER_NAME,
    }
    fields.update(overrides)
    return UpstreamCredentials(**fields)  # type: ignore[arg-type]


@pytest.fixture
def joe_only_voices(tmp_path: Path) -> Path:
    path = tmp_path / "voices.toml"
    path.write_text('[[voice]]\nname = "joe"\ntts_model = "piper_tts"\nspeaker = "joe"\n')
    return path


@pytest.mark.slow
async def test_gateway_through_triton_over_mtls_with_token(
    secured_triton: str,
    rvc_service: ServiceProcess,
    pki: TestPki,
    joe_only_voices: Path,
    gateways: Callable[..., ServiceProcess],
) -> None:
    triton_tls = [
        "--voices", str(joe_only_voices), "--triton-tls-ca", str(pki.ca), "--triton-tls-cert", str(pki.client_cert),
        "--triton-tls-key", str(pki.client_key), "--triton-tls-server-name", OTHER_SERVER_NAME,
        "--triton-auth-header", TRITON_HEADER,
    ]  # fmt: skip
    token = token_file(pki.ca.parent, "triton.token", TRITON_TOKEN)
    good = gateways(secured_triton, rvc_service.address, *triton_tls, "--triton-auth-token-file", str(token))
    async with grpc.aio.insecure_channel(good.address) as channel:
        state = (await upstreams(channel))["triton"]
        assert state.serving, state.last_error
        assert await synthesize_seconds(channel, "joe") > 1.0
    assert TRITON_TOKEN not in good.log_text()
    assert f"TLS, own CA, client certificate, server name {OTHER_SERVER_NAME}, token in {TRITON_HEADER}" in (
        good.log_text()
    )

    no_token = gateways(secured_triton, rvc_service.address, *triton_tls)
    async with grpc.aio.insecure_channel(no_token.address) as channel:
        state = (await upstreams(channel))["triton"]
        assert not state.serving
        assert f"Triton at {secured_triton} refused the gateway's credentials" in state.last_error, state.last_error
        error = await synthesize_error(channel, "joe")
        assert error.code() == grpc.StatusCode.UNAVAILABLE and "--triton-auth-token" in error.details()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("case", "overrides", "expected"),
    [
        ("all right", {}, None),
        ("default header", {"auth_header": "authorization"}, f"set --triton-auth-header {TRITON_HEADER}"),
        ("wrong token", {"token": "nope"}, "check the token given with --triton-auth-token"),
        ("no token", {"token": None}, "set --triton-auth-token or --triton-auth-token-file with --triton-auth-header"),
        ("no server-name override", {"server_name": None}, TLS_ERROR),
        ("no client certificate", {"certificate_chain": None, "private_key": None}, "triton unavailable at"),
    ],
)
async def test_triton_client_says_what_to_fix(
    case: str, overrides: dict[str, object], expected: str | re.Pattern[str] | None, secured_triton: str, pki: TestPki
) -> None:
    client = TritonTts(secured_triton, triton_credentials(pki, **overrides))
    try:
        if expected is None:
            assert await client.probe()
            assert (await client.model_info("piper_tts")).sample_rate_hz == 22050
            return
        with pytest.raises(Unavailable) as caught:
            await client.probe()
        message = caught.value.message
        assert expected.search(message) if isinstance(expected, re.Pattern) else expected in message, message
        assert TRITON_TOKEN not in message
    finally:
        await client.close()


# ---- flags and start-up errors --------------------------------------------------------------------------------------


def parse(*argv: str) -> argparse.Namespace:
    return make_parser().parse_args(list(argv))


@pytest.mark.parametrize("prefix", ["triton", "rvc"])
def test_every_credential_flag_is_documented_with_its_environment_variable(prefix: str) -> None:
    text = " ".join(make_parser().format_help().split())
    flags = ("auth-token", "auth-token-file", "auth-header", "tls", "tls-ca", "tls-cert", "tls-key", "tls-server-name")
    for flag in flags:
        env = f"GATEWAY_{prefix.upper()}_{flag.upper().replace('-', '_')}"
        assert f"--{prefix}-{flag} " in text and f"[env {env}]" in text, flag


def test_environment_and_token_file_supply_the_token(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GATEWAY_RVC_AUTH_TOKEN", RVC_TOKEN)
    assert credentials_from_args(parse(), "rvc").token == RVC_TOKEN
    monkeypatch.delenv("GATEWAY_RVC_AUTH_TOKEN")
    path = token_file(tmp_path, "t", TRITON_TOKEN)
    creds = credentials_from_args(parse("--triton-auth-token-file", str(path)), "triton")
    assert creds.token == TRITON_TOKEN and not creds.tls
    assert credentials_from_args(parse(), "triton") == UpstreamCredentials(flag_prefix="triton")


def test_tls_is_on_when_any_tls_flag_is_given(pki: TestPki) -> None:
    assert credentials_from_args(parse("--rvc-tls", "true"), "rvc").tls
    assert credentials_from_args(parse("--rvc-tls-server-name", "x.internal"), "rvc").tls
    creds = credentials_from_args(parse("--rvc-tls-ca", str(pki.ca)), "rvc")
    assert creds.tls and creds.root_certificates == pki.ca.read_bytes() and creds.certificate_chain is None


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--rvc-tls-cert", "{client_cert}"], "--rvc-tls-cert and --rvc-tls-key go together"),
        (["--triton-tls-key", "{client_key}"], "--triton-tls-cert and --triton-tls-key go together"),
        (
            ["--rvc-auth-token", "a", "--rvc-auth-token-file", "{token}"],
            "give --rvc-auth-token or --rvc-auth-token-file",
        ),
        (["--rvc-auth-token-file", "{empty}"], "--rvc-auth-token-file is empty"),
        (["--rvc-auth-token-file", "{missing}"], "cannot read --rvc-auth-token-file"),
        (["--triton-auth-token", "two words"], "--triton-auth-token: the token must be printable ASCII"),
        (["--rvc-tls-ca", "{missing}"], "cannot read --rvc-tls-ca"),
        (["--rvc-tls-ca", "{token}"], "is not a PEM file"),
        (["--triton-auth-header", "grpc-timeout"], "--triton-auth-header 'grpc-timeout' is not a metadata key"),
        (["--rvc-auth-header", "x-token-bin"], "is not a metadata key we can send"),
    ],
)
def test_start_up_errors_name_the_flag(argv: list[str], message: str, pki: TestPki, tmp_path: Path) -> None:
    (tmp_path / "empty").write_text("\n")
    paths = {
        "client_cert": str(pki.client_cert),
        "client_key": str(pki.client_key),
        "token": str(token_file(tmp_path, "token", "abc")),
        "empty": str(tmp_path / "empty"),
        "missing": str(tmp_path / "missing.pem"),
    }
    args = parse(*(a.format(**paths) for a in argv))
    prefix = "triton" if argv[0].startswith("--triton") else "rvc"
    with pytest.raises(SystemExit) as caught:
        credentials_from_args(args, prefix)
    assert message in str(caught.value)


def test_a_half_client_certificate_stops_the_real_gateway_at_start_up(pki: TestPki) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    result = subprocess.run(
        [sys.executable, "-m", "services.tts_gateway", "--port=0", "--metrics-port=-1", "--rvc-tls-cert",
         str(pki.client_cert)],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode != 0
    assert "--rvc-tls-cert and --rvc-tls-key go together" in result.stderr
    assert "Traceback" not in result.stderr


def test_secrets_stay_out_of_repr_and_logs(pki: TestPki) -> None:
    creds = credentials_from_args(
        parse("--rvc-auth-token", RVC_TOKEN, "--rvc-tls-cert", str(pki.client_cert), "--rvc-tls-key",
              str(pki.client_key)),
        "rvc",
    )  # fmt: skip
    assert RVC_TOKEN not in repr(creds) and "PRIVATE KEY" not in repr(creds)
    assert repr(creds) == "UpstreamCredentials(TLS, system CAs, client certificate, bearer token)"


async def test_token_placement_follows_the_transport() -> None:
    """With TLS the token is a call credential of the channel; on plaintext it is metadata each call must add."""
    plain = open_channel("x", "127.0.0.1:1", [], UpstreamCredentials(token="t0k"))
    secure = open_channel("x", "127.0.0.1:1", [], UpstreamCredentials(token="t0k", tls=True))
    none = open_channel("x", "127.0.0.1:1", [])
    try:
        assert plain.call_metadata == (("authorization", "Bearer t0k"),)
        assert secure.call_metadata == () and none.call_metadata == ()
    finally:
        for upstream in (plain, secure, none):
            await upstream.channel.close()
