"""app.create_app in process, with no upstream behind it: the routers are all included, once each, and the errors
of requests that never reach an upstream have the edge's one JSON shape."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.routing import APIRoute, APIWebSocketRoute
from fastapi.testclient import TestClient

from services.http_edge.app import create_app
from services.http_edge.settings import Settings

ROUTES = {
    ("POST", "/v1/audio/speech"),
    ("GET", "/v1/models"),
    ("GET", "/v1/models/{model_id}"),
    ("GET", "/v1/voices"),
    ("GET", "/health"),
    ("GET", "/status"),
    ("POST", "/synthesize"),
    ("POST", "/synthesize/stream"),
    ("POST", "/tts"),
    ("POST", "/rvc"),
    ("GET", "/"),
    ("WS", "/v1/audio/speech/stream"),
    ("WS", "/stream"),
    ("WS", "/v1/talk"),
}


class NoUpstreams:
    async def close(self) -> None:
        pass


@pytest.fixture
def client() -> Iterator[TestClient]:
    with TestClient(create_app(Settings(auth_token=None), NoUpstreams)) as test_client:  # type: ignore[arg-type]
        yield test_client


def flat_routes(routes: list[Any]) -> list[tuple[str, str]]:
    """(method or WS, path) of every route, through included routers (FastAPI keeps them as routers)."""
    found: list[tuple[str, str]] = []
    for route in routes:
        if isinstance(route, APIRoute):
            found += [(method, route.path) for method in route.methods]
        elif isinstance(route, APIWebSocketRoute):
            found.append(("WS", route.path))
        elif hasattr(route, "original_router"):
            found += flat_routes(route.original_router.routes)
    return found


def test_every_route_once(client: TestClient) -> None:
    found = flat_routes(client.app.routes)  # type: ignore[attr-defined]
    assert len(found) == len(set(found))
    assert set(found) >= ROUTES, ROUTES - set(found)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b"not json", None),
        (b"[1, 2]", None),
        (b'{"voice": "joe", "input": "Hi."}', "model"),
        (b'{"model": "m", "voice": "joe", "input": "Hi.", "speed": 0.2}', "speed"),
        (b'{"model": "m", "voice": "joe", "input": "Hi.", "response_format": "ogg"}', "response_format"),
    ],
)
def test_speech_bodies_are_validated_before_any_upstream(client: TestClient, body: bytes, param: Any) -> None:
    reply = client.post("/v1/audio/speech", content=body, headers={"Content-Type": "application/json"})
    assert reply.status_code == 400
    error = reply.json()["error"]
    assert (error["code"], error["type"], error["param"]) == ("invalid_argument", "invalid_request_error", param)
    assert error["request_id"] == reply.headers["x-request-id"]


def test_models_need_no_upstream(client: TestClient) -> None:
    listed = client.get("/v1/models").json()
    assert listed["object"] == "list" and {m["id"] for m in listed["data"]} >= {"tts-1", "tts-1-hd"}
    missing = client.get("/v1/models/whisper-1")
    assert missing.status_code == 404 and missing.json()["error"]["param"] == "model"
    assert client.get("/nowhere").json()["error"]["code"] == "not_found"
    assert client.delete("/v1/models").json()["error"]["code"] == "method_not_allowed"
