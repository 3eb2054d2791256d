"""The PostgreSQL store: saved voices shared by every gateway replica (`--saved-voices-database postgresql://...`).

* One row per voice (metadata and the float32 WAV as bytea, see migrations/0001) written in one transaction, so a
  crash leaves the whole voice or none of it.
* Creates take a transaction-scoped advisory lock before counting, so the count and byte quotas hold across
  replicas; the primary key makes two concurrent creates of one name end in one voice and one ALREADY_EXISTS.
* Every write sends NOTIFY on `saved_voices_changed` in its own transaction (delivered at commit). Each replica
  LISTENs on a dedicated connection and re-reads the named row, so a change made through one replica is live on all
  of them within milliseconds. After losing the database a replica reconnects with backoff and reconciles by
  comparing (name, revision) pairs with what it holds.
* While the database is unreachable the store keeps what it holds (cached saved voices still synthesize), reports
  itself unavailable (health, GetStatus) and answers what needs the database with UNAVAILABLE naming
  host:port/dbname (never the password).
* Schema migrations (services/tts_gateway/migrations/NNNN_*.sql) are applied at connect under a session advisory lock,
  so replicas starting together do not race; `saved_voices_schema_version` records what is applied.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlsplit

import asyncpg

from services.common.contract import MiB
from services.common.errors import Unavailable
from services.tts_gateway.saved_voices import (
    UNAVAILABLE_RETRY_AFTER_S,
    NewVoice,
    SavedVoice,
    SavedVoiceStore,
    StoreHealth,
    already_exists,
    check_quota,
    decode_wav,
    encode_wav,
    not_found,
)

__all__ = ["CHANNEL", "PostgresSavedVoiceStore", "apply_migrations", "database_target", "migrations"]

logger = logging.getLogger(__name__)

CHANNEL = "saved_voices_changed"
SCHEMA_TABLE = "saved_voices_schema_version"
# Advisory lock keys (any bigint unique to this application): one serializes migrations (session lock), one
# serializes creates so their quota check sees every committed voice (transaction lock).
MIGRATION_LOCK_KEY = 0x5A7ED_0001
QUOTA_LOCK_KEY = 0x5A7ED_0002
_MIGRATION_RE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_COLUMNS = "name, base_voice, reference_text, description, sample_rate_hz, create_time, size_bytes, revision"
# What losing the database looks like: connection refused or reset, a server shutting down, a closed connection,
# a pool that cannot hand out a connection in time.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InternalClientError,
)


def database_target(url: str) -> str:
    """host:port/dbname of a postgresql:// URL: what errors and health name. Never the user's password."""
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    host = parts.hostname or (query.get("host") or ["localhost"])[0]
    try:
        port = parts.port or int((query.get("port") or ["5432"])[0])
    except ValueError:
        port = 5432
    dbname = parts.path.lstrip("/") or (query.get("dbname") or [parts.username or "postgres"])[0]
    return f"{host}:{port}/{dbname}"


def migrations() -> list[tuple[int, str, str]]:
    """(version, name, SQL) of every migration shipped in the package, in version order."""
    found = []
    for entry in (resources.files("services.tts_gateway") / "migrations").iterdir():
        match = _MIGRATION_RE.match(entry.name)
        if match:
            found.append((int(match.group(1)), match.group(2), entry.read_text(encoding="utf-8")))
    found.sort()
    if [version for version, _, _ in found] != list(range(1, len(found) + 1)):
        raise RuntimeError(f"saved-voice migrations must be numbered 1..n without gaps: {[v for v, _, _ in found]}")
    return found


async def apply_migrations(conn: asyncpg.Connection) -> int:
    """Bring the schema up to date under a session advisory lock (replicas starting together wait for the first);
    each migration runs in its own transaction with its schema_version row. Returns the version now in force."""
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
    try:
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS {SCHEMA_TABLE} ("
            "version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        current: int = await conn.fetchval(f"SELECT coalesce(max(version), 0) FROM {SCHEMA_TABLE}")
        known = migrations()
        if current > len(known):
            logger.warning("saved-voice schema is at version %d, newer than this gateway's %d", current, len(known))
        for version, name, sql in known:
            if version <= current:
                continue
            async with conn.transaction():
                await conn.execute(sql)
                await conn.execute(f"INSERT INTO {SCHEMA_TABLE} (version, name) VALUES ($1, $2)", version, name)
            logger.info("saved-voice schema migrated to version %d (%s)", version, name)
            current = version
        return current
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)


def metadata_bytes(name: str, base_voice: str, reference_text: str, description: str) -> int:
    """What a row's text takes, counted with its audio against the byte quota."""
    return sum(len(text.encode("utf-8")) for text in (name, base_voice, reference_text, description)) + 32


def voice_from_row(row: asyncpg.Record | dict[str, Any], audio: bytes) -> SavedVoice:
    samples = decode_wav(audio, row["sample_rate_hz"])
    return SavedVoice(
        name=row["name"],
        base_voice=row["base_voice"],
        reference_text=row["reference_text"],
        description=row["description"],
        sample_rate_hz=row["sample_rate_hz"],
        create_time=row["create_time"],
        duration_s=samples.size / row["sample_rate_hz"],
        size_bytes=row["size_bytes"],
        samples=samples,
    )


def _describe(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:200]


@dataclass
class _Connected:
    pool: asyncpg.Pool
    listener: asyncpg.Connection
    lost: asyncio.Event
    worker: asyncio.Task[None]


class PostgresSavedVoiceStore(SavedVoiceStore):
    kind = "postgresql"

    def __init__(
        self,
        url: str,
        *,
        max_voices: int = 100,
        max_total_bytes: int = 256 * MiB,
        reserved_names: Callable[[], Iterable[str]] = tuple,
        min_reference_s: float = 1.0,
        max_reference_s: float = 30.0,
        timeout_s: float = 5.0,
        ping_interval_s: float = 1.0,
        max_backoff_s: float = 5.0,
    ) -> None:
        super().__init__(
            max_voices=max_voices,
            max_total_bytes=max_total_bytes,
            reserved_names=reserved_names,
            min_reference_s=min_reference_s,
            max_reference_s=max_reference_s,
        )
        if not url.startswith(("postgresql://", "postgres://")):
            raise ValueError("the saved-voices database must be a postgresql:// URL")
        self.url = url
        self.target = database_target(url)
        self.timeout_s = timeout_s
        self.ping_interval_s = ping_interval_s
        self.max_backoff_s = max_backoff_s
        self._origin = uuid.uuid4().hex  # this replica's notifications are skipped when they come back
        self._revisions: dict[str, int] = {}
        self._connected: _Connected | None = None
        self._last_error = "not connected yet"
        self._schema_version = 0
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._health_listeners: list[Callable[[StoreHealth], None]] = []

    # ------------------------------------------------------------------------------------------------ lifecycle

    async def start(self, wait_s: float = 15.0) -> None:
        """Start the connection loop; wait up to `wait_s` for the first connection (the gateway starts either way
        and serves configured voices until the database answers)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="saved-voices-postgresql")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ready.wait(), wait_s)
        if not self._ready.is_set():
            logger.warning("saved-voice database %s not reachable yet: %s", self.target, self._last_error)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._disconnect()

    def health(self) -> StoreHealth:
        connected = self._connected is not None and not self._connected.lost.is_set()
        return StoreHealth(
            kind=self.kind,
            target=self.target,
            available=connected,
            last_error="" if connected else self._last_error,
            schema_version=self._schema_version,
        )

    def on_health_change(self, listener: Callable[[StoreHealth], None]) -> None:
        self._health_listeners.append(listener)

    def _health_changed(self) -> None:
        health = self.health()
        for listener in self._health_listeners:
            try:
                listener(health)
            except Exception:
                logger.exception("saved-voice health listener failed")

    async def _run(self) -> None:
        """Connect, serve until the connection is lost, back off, again; forever (until cancelled)."""
        delay = 0.1
        while True:
            try:
                await self._connect()
                delay = 0.1
                await self._watch()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._lose(exc)
            await self._disconnect()
            self._health_changed()
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.max_backoff_s)

    async def _connect(self) -> None:
        pool = await asyncpg.create_pool(
            self.url, min_size=1, max_size=8, timeout=self.timeout_s, command_timeout=self.timeout_s
        )
        listener: asyncpg.Connection | None = None
        try:
            async with pool.acquire() as conn:
                self._schema_version = await apply_migrations(conn)
            listener = await asyncpg.connect(self.url, timeout=self.timeout_s, command_timeout=self.timeout_s)
            queue: asyncio.Queue[str] = asyncio.Queue()
            lost = asyncio.Event()
            await listener.add_listener(CHANNEL, self._notification_handler(queue))
            listener.add_termination_listener(lambda _conn: self._lose(ConnectionError("connection closed"), lost))
            await self._reconcile(pool)  # after LISTEN: nothing committed from here on is missed
            worker = asyncio.create_task(self._refresher(pool, queue, lost), name="saved-voices-refresh")
        except BaseException:
            if listener is not None:
                listener.terminate()
            pool.terminate()
            raise
        self._connected = _Connected(pool, listener, lost, worker)
        self._last_error = ""
        self._ready.set()
        logger.info("saved voices: %d in database %s (schema version %d)", len(self), self.target, self._schema_version)
        self._health_changed()

    async def _watch(self) -> None:
        """Return when the connection is lost: the server closed it, or a ping got no answer in time."""
        connected = self._connected
        assert connected is not None
        while not connected.lost.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(connected.lost.wait(), self.ping_interval_s)
                return
            await asyncio.wait_for(connected.listener.fetchval("SELECT 1"), self.timeout_s)

    async def _disconnect(self) -> None:
        connected, self._connected = self._connected, None
        if connected is None:
            return
        connected.worker.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await connected.worker
        connected.listener.terminate()
        connected.pool.terminate()

    def _lose(self, exc: BaseException, lost: asyncio.Event | None = None) -> None:
        """The database went away: note why, and wake the connection loop so it reconnects."""
        event = lost or (self._connected.lost if self._connected is not None else None)
        if event is not None and event.is_set():
            return
        self._last_error = _describe(exc)
        logger.warning("saved-voice database %s unavailable: %s", self.target, self._last_error)
        if event is not None:
            event.set()
            self._health_changed()

    # ---------------------------------------------------------------------------------------- staying current

    def _notification_handler(self, queue: asyncio.Queue[str]) -> Callable[..., None]:
        def handle(_conn: object, _pid: int, _channel: str, payload: str) -> None:
            try:
                message = json.loads(payload)
                name, origin = str(message["name"]), message.get("origin")
            except (ValueError, KeyError, TypeError):
                logger.warning("ignoring malformed saved-voice notification %r", payload[:200])
                return
            if origin != self._origin:
                queue.put_nowait(name)

        return handle

    async def _refresher(self, pool: asyncpg.Pool, queue: asyncio.Queue[str], lost: asyncio.Event) -> None:
        """Re-read each notified voice, one at a time and in notification order, so the newest state wins."""
        while True:
            name = await queue.get()
            try:
                await self._refresh(pool, name)
            except CONNECTION_ERRORS as exc:
                self._lose(exc, lost)
                return
            except Exception:
                logger.exception("could not refresh saved voice %r", name)

    async def _refresh(self, pool: asyncpg.Pool, name: str) -> None:
        row = await pool.fetchrow(f"SELECT {_COLUMNS}, audio FROM saved_voices WHERE name = $1", name)
        if row is None:
            with self._lock:
                gone = self._voices.pop(name, None)
                self._revisions.pop(name, None)
            if gone is not None:
                logger.info("saved voice %r deleted through another replica", name)
                self._changed(name)
            return
        if self._revisions.get(name) == row["revision"]:
            return
        voice = await asyncio.to_thread(voice_from_row, row, row["audio"])
        with self._lock:
            self._voices[name] = voice
            self._revisions[name] = row["revision"]
        logger.info("saved voice %r created or changed through another replica", name)
        self._changed(name)

    async def _reconcile(self, pool: asyncpg.Pool) -> None:
        """Make what this replica holds match the database: drop what is gone, fetch what is new or changed."""
        rows = await pool.fetch("SELECT name, revision FROM saved_voices")
        current = {row["name"]: row["revision"] for row in rows}
        stale = [name for name, revision in current.items() if self._revisions.get(name) != revision]
        fetched: dict[str, tuple[SavedVoice, int]] = {}
        if stale:
            full = await pool.fetch(f"SELECT {_COLUMNS}, audio FROM saved_voices WHERE name = ANY($1::text[])", stale)
            for row in full:
                try:
                    voice = await asyncio.to_thread(voice_from_row, row, row["audio"])
                except (ValueError, RuntimeError) as exc:
                    logger.warning("skipping unreadable saved voice %r in the database: %s", row["name"], exc)
                    continue
                fetched[row["name"]] = (voice, row["revision"])
        with self._lock:
            changed = (set(self._voices) - set(current)) | set(fetched)
            for name in set(self._voices) - set(current):
                del self._voices[name]
                self._revisions.pop(name, None)
            for name, (voice, revision) in fetched.items():
                self._voices[name] = voice
                self._revisions[name] = revision
        for name in sorted(changed):
            self._changed(name)

    # -------------------------------------------------------------------------------------------- mutations

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection; losing the database on the way becomes Unavailable (and wakes the reconnect loop)."""
        self.require_available()
        connected = self._connected
        assert connected is not None
        try:
            async with connected.pool.acquire(timeout=self.timeout_s) as conn:
                yield conn
        except CONNECTION_ERRORS as exc:
            self._lose(exc, connected.lost)
            raise Unavailable(
                f"the saved-voice database at {self.target} is unavailable: {_describe(exc)}",
                retry_after_s=UNAVAILABLE_RETRY_AFTER_S,
            ) from None

    async def _notify(self, conn: asyncpg.Connection, name: str, op: str) -> None:
        payload = json.dumps({"name": name, "op": op, "origin": self._origin})
        await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, payload)

    async def _create(self, new: NewVoice) -> SavedVoice:
        name = new.name
        self._check_not_reserved(name)
        self.require_available()
        wav = await asyncio.to_thread(encode_wav, new.samples, new.sample_rate_hz)
        size_bytes = len(wav) + metadata_bytes(name, new.base_voice, new.reference_text, new.description)
        create_time = time.time()
        revision = await self._insert(new, wav, size_bytes, create_time)
        voice = new.saved(create_time, size_bytes)
        with self._lock:
            self._voices[name] = voice
            self._revisions[name] = revision
        logger.info(
            "saved voice %r created in %s (%.2f s at %d Hz, %d bytes)",
            name,
            self.target,
            voice.duration_s,
            voice.sample_rate_hz,
            size_bytes,
        )
        self._changed(name)
        return voice

    async def _insert(self, new: NewVoice, wav: bytes, size_bytes: int, create_time: float) -> int:
        """One transaction: quota lock, duplicate and quota checks, the row, the notification."""
        async with self._connection() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", QUOTA_LOCK_KEY)
            if await conn.fetchval("SELECT 1 FROM saved_voices WHERE name = $1", new.name):
                raise already_exists(new.name)
            count, used = await conn.fetchrow("SELECT count(*), coalesce(sum(size_bytes), 0) FROM saved_voices")
            check_quota(count, int(used), size_bytes, self.max_voices, self.max_total_bytes)
            try:
                revision: int = await conn.fetchval(
                    "INSERT INTO saved_voices (name, base_voice, reference_text, description, sample_rate_hz, "
                    "create_time, audio, size_bytes) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING revision",
                    new.name,
                    new.base_voice,
                    new.reference_text,
                    new.description,
                    new.sample_rate_hz,
                    create_time,
                    wav,
                    size_bytes,
                )
            except asyncpg.UniqueViolationError:
                raise already_exists(new.name) from None
            await self._notify(conn, new.name, "create")
        return revision

    async def delete(self, name: str) -> SavedVoice:
        self._check_name(name)
        async with self._connection() as conn, conn.transaction():
            row = await conn.fetchrow(f"DELETE FROM saved_voices WHERE name = $1 RETURNING {_COLUMNS}, audio", name)
            if row is None:
                raise not_found(name)
            await self._notify(conn, name, "delete")
        with self._lock:
            voice = self._voices.pop(name, None)
            self._revisions.pop(name, None)
        if voice is None:
            voice = await asyncio.to_thread(voice_from_row, row, row["audio"])
        logger.info("saved voice %r deleted from %s", name, self.target)
        self._changed(name)
        return voice
