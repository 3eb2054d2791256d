"""Fixtures of the saved-voice tests: a real PostgreSQL server, and each store test run against both stores.

* ``pg_server`` (session): PostgreSQL started by tests.fixtures.postgres in a temporary directory on a free port.
* ``pg_url`` (function): a fresh, empty database on it.
* ``store_kind`` / ``open_store`` (function): "directory" or "postgresql"; ``await open_store(**limits)`` opens a store
  of that kind on this test's directory or database (a second call is a second replica or a restart on the same
  data). Every store opened is closed after the test.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from services.tts_gateway.saved_voices import SavedVoiceStore
from services.tts_gateway.saved_voices_dir import DirectorySavedVoiceStore
from services.tts_gateway.saved_voices_pg import PostgresSavedVoiceStore
from tests.fixtures.postgres import PostgresServer

OpenStore = Callable[..., Awaitable[SavedVoiceStore]]


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    server = PostgresServer.start_new()
    yield server
    server.destroy()


@pytest.fixture
def pg_url(pg_server: PostgresServer) -> str:
    if not pg_server.running():  # a test that stopped it and failed before starting it again
        pg_server.start()
    return pg_server.create_database()


@pytest.fixture(params=["directory", "postgresql"])
def store_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def open_store(store_kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[OpenStore]:
    opened: list[SavedVoiceStore] = []
    url = request.getfixturevalue("pg_url") if store_kind == "postgresql" else ""

    async def open_(**limits: Any) -> SavedVoiceStore:
        store: SavedVoiceStore
        if store_kind == "directory":
            store = DirectorySavedVoiceStore(tmp_path / "saved", **limits)
        else:
            store = PostgresSavedVoiceStore(url, **limits)
        await store.start()
        opened.append(store)
        return store

    yield open_
    for store in opened:
        await store.close()
