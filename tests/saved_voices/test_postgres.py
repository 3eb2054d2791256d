"""The PostgreSQL store's own promises, on a real server: migrations, replicas kept in step by LISTEN/NOTIFY,
reconciling after a lost connection, losing and regaining the database, and the directory import."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import asyncpg
import grpc
import numpy as np
import pytest

from services.common.errors import NotFound, Unavailable
from services.tts_gateway import saved_voices_import
from services.tts_gateway.saved_voices import encode_wav
from services.tts_gateway.saved_voices_dir import DirectorySavedVoiceStore
from services.tts_gateway.saved_voices_pg import (
    PostgresSavedVoiceStore,
    apply_migrations,
    database_target,
    migrations,
)
from tests.fixtures.postgres import DUMMY_PASSWORD, PostgresServer
from tests.saved_voices.helpers import make, speech_like

pytestmark = pytest.mark.timeout(300)


async def eventually(predicate: Callable[[], bool], limit_s: float) -> float:
    """Seconds until `predicate()` held; fails after `timeout`."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > limit_s:
            raise AssertionError(f"not within {limit_s} s")
        await asyncio.sleep(0.005)
    return time.monotonic() - start


@pytest.fixture
async def replicas(pg_url: str) -> AsyncIterator[Callable[..., object]]:
    opened: list[PostgresSavedVoiceStore] = []

    async def open_(url: str = pg_url, **kwargs: object) -> PostgresSavedVoiceStore:
        store = PostgresSavedVoiceStore(url, **kwargs)  # type: ignore[arg-type]
        await store.start()
        opened.append(store)
        return store

    yield open_
    for store in opened:
        await store.close()


# --------------------------------------------------------------------------------------------------- migrations


async def schema_versions(url: str) -> list[int]:
    conn = await asyncpg.connect(url)
    try:
        return [
            row["version"] for row in await conn.fetch("SELECT version FROM saved_voices_schema_version ORDER BY 1")
        ]
    finally:
        await conn.close()


async def test_migrations_from_an_empty_database_and_rerunning_them_is_a_no_op(pg_url: str) -> None:
    latest = len(migrations())
    assert latest >= 2
    conn = await asyncpg.connect(pg_url)
    try:
        assert await apply_migrations(conn) == latest
        applied = await conn.fetch("SELECT version, applied_at FROM saved_voices_schema_version ORDER BY 1")
        assert await apply_migrations(conn) == latest  # nothing left to do
        assert await conn.fetch("SELECT version, applied_at FROM saved_voices_schema_version ORDER BY 1") == applied
        columns = {
            r["column_name"]
            for r in await conn.fetch(
                "SELECT column_name FROM information_schema.columns WHERE table_name = 'saved_voices'"
            )
        }
        assert {"name", "audio", "size_bytes", "revision", "update_time"} <= columns
    finally:
        await conn.close()
    assert await schema_versions(pg_url) == list(range(1, latest + 1))


async def test_a_database_at_version_1_is_upgraded_and_keeps_its_voices(pg_url: str, replicas: object) -> None:
    version, name, sql = migrations()[0]
    conn = await asyncpg.connect(pg_url)
    try:  # what a gateway of schema version 1 left behind, with one voice in it
        await conn.execute(
            "CREATE TABLE saved_voices_schema_version (version integer PRIMARY KEY, name text NOT NULL, "
            "applied_at timestamptz NOT NULL DEFAULT now())"
        )
        await conn.execute(sql)
        await conn.execute("INSERT INTO saved_voices_schema_version (version, name) VALUES ($1, $2)", version, name)
        samples = speech_like(2.0)
        wav = encode_wav(samples, 16_000)
        await conn.execute(
            "INSERT INTO saved_voices VALUES ('old-voice', 'spark', 'hi', '', 16000, 1.5, $1, $2)", wav, len(wav)
        )
    finally:
        await conn.close()
    store = await replicas()  # type: ignore[operator]
    assert store.health().schema_version == len(migrations())
    assert await schema_versions(pg_url) == list(range(1, len(migrations()) + 1))
    voice = store.get("old-voice")
    assert voice.reference_text == "hi" and voice.create_time == 1.5
    assert np.array_equal(voice.samples, samples)


async def test_replicas_starting_together_migrate_once(pg_url: str, replicas: object) -> None:
    stores = await asyncio.gather(*(replicas() for _ in range(5)))  # type: ignore[operator]
    assert all(store.health().available for store in stores)
    assert await schema_versions(pg_url) == list(range(1, len(migrations()) + 1))


# --------------------------------------------------------------------------------------------- replicas in step


async def test_a_change_through_one_replica_reaches_the_other_within_a_second(replicas: object) -> None:
    first, second = await replicas(), await replicas()  # type: ignore[operator]
    heard: list[str] = []
    second.on_change(heard.append)
    created = await make(first, "shared", reference_text="Hello.")
    waited = await eventually(lambda: "shared" in second, 1.0)
    assert second.get("shared") == created and np.array_equal(second.get("shared").samples, created.samples)
    assert heard == ["shared"]
    await first.delete("shared")
    waited = max(waited, await eventually(lambda: "shared" not in second, 1.0))
    with pytest.raises(NotFound):
        second.get("shared")
    assert heard == ["shared", "shared"]
    assert waited < 1.0


async def test_a_replica_reconciles_what_it_missed_when_it_reconnects(
    pg_url: str, pg_server: PostgresServer, replicas: object
) -> None:
    store = await replicas()  # type: ignore[operator]
    await make(store, "kept")
    await make(store, "dropped")
    # Changes the replica never hears about (no NOTIFY): a row deleted and one added behind its back.
    dbname = pg_url.rsplit("/", 1)[1]
    other = await asyncpg.connect(pg_url)
    try:
        await other.execute("DELETE FROM saved_voices WHERE name = 'dropped'")
        await other.execute(
            "INSERT INTO saved_voices (name, base_voice, reference_text, description, sample_rate_hz, create_time, "
            "audio, size_bytes) SELECT 'added', base_voice, reference_text, description, sample_rate_hz, "
            "create_time, audio, size_bytes FROM saved_voices WHERE name = 'kept'"
        )
        assert "added" not in store and "dropped" in store
        # Then the replica loses its connections (as in a network blip) and reconnects.
        await other.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
            dbname,
        )
    finally:
        await other.close()
    await eventually(lambda: "added" in store and "dropped" not in store, 10.0)
    assert store.health().available
    assert np.array_equal(store.get("added").samples, store.get("kept").samples)


# ----------------------------------------------------------------------------------------- losing the database


@pytest.fixture
def own_server() -> object:
    server = PostgresServer.start_new()
    yield server
    server.destroy()


async def test_losing_the_database_says_unavailable_and_catches_up_when_it_returns(own_server: PostgresServer) -> None:
    url = own_server.create_database()
    target = database_target(url)
    assert target == f"127.0.0.1:{own_server.port}/{url.rsplit('/', 1)[1]}"
    store = PostgresSavedVoiceStore(url, ping_interval_s=0.2)
    await store.start()
    try:
        cached = await make(store, "cached")
        await asyncio.to_thread(own_server.stop)
        await eventually(lambda: not store.health().available, 5.0)
        health = store.health()
        assert health.target == target and health.last_error and DUMMY_PASSWORD not in health.last_error

        assert store.get("cached") == cached  # what the replica holds still synthesizes
        for action in (lambda: store.get("unknown"), store.require_available):
            with pytest.raises(Unavailable) as exc:
                action()
            assert exc.value.code == grpc.StatusCode.UNAVAILABLE
            assert target in exc.value.message and DUMMY_PASSWORD not in exc.value.message
        with pytest.raises(Unavailable) as create_error:
            await make(store, "during")
        with pytest.raises(Unavailable):
            await store.delete("cached")
        assert target in create_error.value.message and DUMMY_PASSWORD not in create_error.value.message

        await asyncio.to_thread(own_server.start)
        # Another replica changes things as soon as the database is back; this one catches up.
        other = PostgresSavedVoiceStore(url)
        await other.start()
        await make(other, "after")
        await other.delete("cached")
        await other.close()
        await eventually(lambda: store.health().available and "after" in store and "cached" not in store, 15.0)
        assert (await make(store, "again")).name == "again"
    finally:
        await store.close()


async def test_a_gateway_starts_without_its_database_and_connects_when_it_appears(own_server: PostgresServer) -> None:
    url = own_server.create_database()
    await asyncio.to_thread(own_server.stop)
    store = PostgresSavedVoiceStore(url, max_backoff_s=0.5)
    try:
        await store.start(wait_s=0.5)
        assert not store.health().available and store.health().last_error
        await asyncio.to_thread(own_server.start)
        await eventually(lambda: store.health().available, 15.0)
        assert (await make(store, "late")).name == "late"
    finally:
        await store.close()


# ------------------------------------------------------------------------------------------------ import-dir


async def test_import_dir_is_idempotent_and_reports_conflicts(tmp_path: Path, pg_url: str, replicas: object) -> None:
    directory = tmp_path / "saved"
    local = DirectorySavedVoiceStore(directory)
    anna = await make(local, "anna", reference_text="Guten Tag.", description="German")
    bob = await make(local, "bob", samples=speech_like(2.0, rate=24_000, seed=3), sample_rate_hz=24_000)
    (directory / "broken").mkdir()
    (directory / "broken" / "voice.json").write_text("{not json")

    listening = await replicas()  # type: ignore[operator]
    code = await asyncio.to_thread(saved_voices_import.main, ["import-dir", str(directory), "--database", pg_url])
    assert code == 1  # the damaged directory was skipped
    await eventually(lambda: "anna" in listening and "bob" in listening, 1.0)  # running replicas see imports at once
    report = await saved_voices_import.import_dir(directory, pg_url)
    assert (report.imported, sorted(report.already_there)) == ([], ["anna", "bob"])
    assert [name for name, _ in report.skipped] == ["broken"]

    fresh = await replicas()  # type: ignore[operator]
    for original in (anna, bob):
        imported = fresh.get(original.name)
        assert (imported.base_voice, imported.reference_text, imported.description) == (
            original.base_voice,
            original.reference_text,
            original.description,
        )
        assert imported.create_time == original.create_time and imported.sample_rate_hz == original.sample_rate_hz
        assert np.array_equal(imported.samples, original.samples)

    # Another voice of the same name in the database is a conflict, left as it is.
    await fresh.delete("anna")
    await make(fresh, "anna", samples=speech_like(2.0, seed=42))
    report = await saved_voices_import.import_dir(directory, pg_url)
    assert report.conflicts == ["anna"] and not report.complete
