"""routers/status.py: `/health`, `/status`, `/v1/voices` (with the voice aliases) against the real stack."""

from __future__ import annotations

from typing import Any

import httpx

from services.http_edge.settings import OPENAI_VOICES
from tests.http_edge.test_edge import VOICE


def test_voices_list_the_aliases_beside_the_voices(http_edge: Any) -> None:
    listing = httpx.get(http_edge.http("/v1/voices"), timeout=30).json()
    assert set(listing) == {"object", "data", "conversion_models", "aliases"}
    names = {voice["id"] for voice in listing["data"]}
    aliases = {alias["id"]: alias for alias in listing["aliases"]}
    assert set(aliases) == set(OPENAI_VOICES) - names
    assert all(alias["object"] == "voice_alias" and alias["voice"] == VOICE for alias in aliases.values())
    voice = next(voice for voice in listing["data"] if voice["id"] == VOICE)
    assert voice["supports_cloning"] is False and voice["available"] is True


def test_health_and_status_shapes(http_edge: Any) -> None:
    health = httpx.get(http_edge.http("/health"), timeout=30)
    assert health.status_code == 200 and set(health.json()) == {"status", "gateway", "conversion"}
    status = httpx.get(http_edge.http("/status"), headers={"X-Request-Id": "status-1"}, timeout=30)
    assert status.status_code == 200 and status.headers["x-request-id"] == "status-1"
    assert set(status.json()) == {"gateway", "conversion"}
