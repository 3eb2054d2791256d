"""Facts several parts must agree on are defined once (services/common/contract.py, request_id.py) and imported.

A literal copy that comes back where it matters (ports, message caps, the request-id key, MiB, the name rule) fails
here with the file and line, so the fix is to import the definition. Clients that cannot import the services (the
Python client, the Node scripts) keep their own spelling of the default targets, compared with the contract.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from services.common import contract
from services.common.request_id import REQUEST_ID_METADATA_KEY
from services.tts_gateway.app import make_parser
from services.tts_gateway.validation import Limits

REPO = Path(__file__).resolve().parents[2]
SERVICE_SOURCES = sorted((REPO / "services").rglob("*.py"))
HOMES = {REPO / "services/common/contract.py", REPO / "services/common/request_id.py"}

# (what, pattern): each must appear in services/ only in its home.
LITERALS = [
    ("a well-known port", re.compile(r"(?<![\d.])(50051|50052|9101|9102)(?![\d.])")),
    ("a MiB written out", re.compile(r"1024\s*\*\s*1024|1\s*<<\s*20|2\s*\*\*\s*20")),
    ("a MiB definition", re.compile(r"^\s*MiB\s*=", re.M)),
    ("the request-id metadata key", re.compile(r"[\"']x-request-id[\"']")),
    ("the name rule's character class", re.compile(r"A-Za-z0-9\._")),
    ("the old speaking-rate range", re.compile(r"0\.5\s*<=\s*\w+\s*<=\s*2\.0")),
]


def _code_lines(path: Path) -> list[tuple[int, str]]:
    """Lines without their comments (a comment may name a port to explain it)."""
    return [(n, line.split("#", 1)[0]) for n, line in enumerate(path.read_text().splitlines(), 1)]


@pytest.mark.parametrize(("what", "pattern"), LITERALS, ids=[w for w, _ in LITERALS])
def test_no_literal_copy_in_services(what: str, pattern: re.Pattern[str]) -> None:
    copies = [
        f"{path.relative_to(REPO)}:{number}: {line.strip()}"
        for path in SERVICE_SOURCES
        if path not in HOMES
        for number, line in _code_lines(path)
        if pattern.search(line)
    ]
    assert copies == [], f"{what} written again; import it from services/common/contract.py or request_id.py"


def test_the_literal_finder_finds_copies() -> None:
    patterns = dict(LITERALS)
    assert patterns["a well-known port"].search('default="127.0.0.1:50051"')
    assert not patterns["a well-known port"].search("timeout=150051.0")
    assert patterns["a MiB written out"].search("MAX = 64 * 1024 * 1024")
    assert patterns["the request-id metadata key"].search('headers.get("x-request-id")')


def test_gateway_flag_defaults_are_the_limits_defaults() -> None:
    args = make_parser().parse_args([])
    limits = Limits()
    assert args.max_text_chars == limits.max_text_chars
    assert args.max_stream_text_chars == limits.max_stream_text_chars
    assert args.max_reference_mb * contract.MiB == limits.max_reference_bytes
    assert (limits.min_reference_s, limits.max_reference_s) == (contract.MIN_REFERENCE_S, contract.MAX_REFERENCE_S)
    assert args.port == contract.GATEWAY_PORT and args.rvc_url == contract.RVC_TARGET
    assert args.triton_url == contract.TRITON_TARGET


def test_the_python_client_targets_are_the_contract_ones() -> None:
    from voice_client import DEFAULT_RVC_TARGET, DEFAULT_TTS_TARGET

    assert (DEFAULT_TTS_TARGET, DEFAULT_RVC_TARGET) == (contract.GATEWAY_TARGET, contract.RVC_TARGET)


@pytest.mark.parametrize("script", ["synthesize.js", "transcribe.js"])
def test_the_node_scripts_default_to_the_gateway_target(script: str) -> None:
    defaults = set(re.findall(r"127\.0\.0\.1:\d+", (REPO / "clients/node" / script).read_text()))
    assert defaults == {contract.GATEWAY_TARGET}


def test_the_request_id_key_is_the_clients_key() -> None:
    client = (REPO / "clients/python/voice_client/client.py").read_text()
    assert f'"{REQUEST_ID_METADATA_KEY}"' in client


@pytest.mark.parametrize(
    ("name", "allow_spaces", "ok"),
    [
        ("joe", False, True),
        ("my voice", False, False),
        ("my voice", True, True),
        ("../etc", True, False),
        ("a/b", True, False),
        ("x" * contract.MAX_NAME_CHARS, False, True),
        ("x" * (contract.MAX_NAME_CHARS + 1), False, False),
        ("-leading", False, False),
        ("nul\x00", True, False),
    ],
)
def test_one_name_rule(name: str, allow_spaces: bool, ok: bool) -> None:
    assert (contract.name_problem(name, allow_spaces=allow_spaces) is None) is ok


@pytest.mark.parametrize(("rate", "ok"), [(0.0, True), (0.25, True), (4.0, True), (0.2, False), (4.5, False)])
def test_one_speaking_rate_range(rate: float, ok: bool) -> None:
    assert (contract.speaking_rate_problem(rate) is None) is ok
    assert contract.speaking_rate_problem(float("nan")) is not None


def test_the_cloning_modes_are_the_contract_ones() -> None:
    from services.tts_gateway.domain import CLONING_MODES, MODE_CROSS_LINGUAL, MODE_ZERO_SHOT

    assert CLONING_MODES == contract.CLONING_MODE_NAMES == (MODE_ZERO_SHOT, MODE_CROSS_LINGUAL)
