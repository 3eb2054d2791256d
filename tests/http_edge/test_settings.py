"""The edge's settings: every flag parsed in one place (settings.py), the voice aliases, the shared defaults.

The edge's shape (no import cycle, no function over 80 lines) is checked for all of services/ by
tests/architecture/test_layering.py."""

from __future__ import annotations

import pytest

from services.http_edge.settings import Settings, make_parser, parse_voice_aliases


def test_voice_alias_option(monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse_voice_aliases(["alloy=joe", " echo = joe-whole , nova=x", ""]) == {
        "alloy": "joe",
        "echo": "joe-whole",
        "nova": "x",
    }
    for bad in (["alloy"], ["=joe"], ["alloy="]):
        with pytest.raises(ValueError):
            parse_voice_aliases(bad)
    monkeypatch.setenv("EDGE_VOICE_ALIAS", "alloy=joe,echo=joe-whole")
    args = make_parser().parse_args(["--voice-alias", "fable=joe-world-high", "--voice-alias=alloy=joe-whole"])
    settings = Settings.from_args(args)
    assert settings.voice_aliases == {"alloy": "joe-whole", "echo": "joe-whole", "fable": "joe-world-high"}
    assert settings.default_voice is None


def test_upstream_defaults_are_the_shared_targets() -> None:
    from services.common.contract import GATEWAY_TARGET, RVC_TARGET

    args = make_parser().parse_args([])
    assert (args.gateway_url, args.rvc_url) == (GATEWAY_TARGET, RVC_TARGET)
