"""routers/pages.py and the /static mount: the page, its files, and that they need no token."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx

from tests.http_edge.test_edge import assert_error


def test_page_and_files_are_public(http_edge_factory: Callable[..., Any], gateway: Any) -> None:
    edge = http_edge_factory(gateway.address, "--auth-token=secret")
    page = httpx.get(edge.url, timeout=30)
    assert page.status_code == 200 and page.headers["cache-control"] == "no-cache"
    assert "<html" in page.text.lower()
    for name in ("app.js", "style.css", "talk.html"):
        assert httpx.get(edge.http(f"/static/{name}"), timeout=30).status_code == 200, name
    assert_error(httpx.get(edge.http("/static/none.css"), timeout=30), 404, "not_found")
    assert_error(httpx.get(edge.http("/v1/models"), timeout=30), 401, "unauthenticated")
