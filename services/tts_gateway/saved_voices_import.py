"""Move saved voices into PostgreSQL, and migrate its schema, from the command line.

    python -m services.tts_gateway.saved_voices_import import-dir DIR --database postgresql://...
    python -m services.tts_gateway.saved_voices_import migrate --database postgresql://...

`import-dir` reads a directory store (`--saved-voices-dir`; nothing in it is changed) and inserts every readable voice
with its metadata, create time and exact WAV bytes. It is idempotent: a voice already in the database with the same
content counts as done; one with other content under the same name is reported as a conflict and left alone. Each
voice is inserted in its own transaction with a notification, so running gateways pick imported voices up at once.
Quotas are not applied (the operator is moving voices that were already accepted). Exit status 0 when every voice of
the directory is in the database afterwards, 1 when something was skipped. `--database` defaults to the gateway's
GATEWAY_SAVED_VOICES_DATABASE.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

from services.tts_gateway.saved_voices import SavedVoice
from services.tts_gateway.saved_voices_dir import read_voice_directory
from services.tts_gateway.saved_voices_pg import CHANNEL, apply_migrations, database_target, metadata_bytes

DATABASE_ENV = "GATEWAY_SAVED_VOICES_DATABASE"


@dataclass
class ImportReport:
    imported: list[str] = field(default_factory=list)
    already_there: list[str] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (entry, why)

    @property
    def complete(self) -> bool:
        return not self.conflicts and not self.skipped


async def _insert(conn: asyncpg.Connection, voice: SavedVoice, wav: bytes) -> bool:
    """Insert one voice unless its name is taken; True when it was inserted."""
    size = len(wav) + metadata_bytes(voice.name, voice.base_voice, voice.reference_text, voice.description)
    async with conn.transaction():
        inserted = await conn.fetchval(
            "INSERT INTO saved_voices (name, base_voice, reference_text, description, sample_rate_hz, create_time, "
            "audio, size_bytes) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (name) DO NOTHING RETURNING 1",
            voice.name,
            voice.base_voice,
            voice.reference_text,
            voice.description,
            voice.sample_rate_hz,
            voice.create_time,
            wav,
            size,
        )
        if inserted:
            payload = json.dumps({"name": voice.name, "op": "import", "origin": "import-dir"})
            await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, payload)
    return bool(inserted)


async def _same(conn: asyncpg.Connection, voice: SavedVoice, wav: bytes) -> bool:
    row = await conn.fetchrow(
        "SELECT base_voice, reference_text, description, sample_rate_hz, audio FROM saved_voices WHERE name = $1",
        voice.name,
    )
    if row is None:
        return False
    mine = (voice.base_voice, voice.reference_text, voice.description, voice.sample_rate_hz, wav)
    return tuple(row) == mine


async def import_dir(directory: Path, url: str) -> ImportReport:
    """Import every voice of a directory store into the database at `url` (schema migrated first)."""
    entries = await asyncio.to_thread(lambda: sorted(directory.iterdir()))  # FileNotFoundError when it is not there
    report = ImportReport()
    conn = await asyncpg.connect(url)
    try:
        await apply_migrations(conn)
        for entry in entries:
            if entry.name.startswith("."):
                continue  # work directories of interrupted writes, editor files
            try:
                voice, wav = await asyncio.to_thread(read_voice_directory, entry)
            except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
                report.skipped.append((entry.name, f"unreadable: {exc}"))
                continue
            try:
                inserted = await _insert(conn, voice, wav)
            except asyncpg.CheckViolationError as exc:
                report.skipped.append((entry.name, f"refused by the database: {exc}"))
                continue
            if inserted:
                report.imported.append(voice.name)
            elif await _same(conn, voice, wav):
                report.already_there.append(voice.name)
            else:
                report.conflicts.append(voice.name)
    finally:
        await conn.close()
    return report


async def migrate(url: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        return await apply_migrations(conn)
    finally:
        await conn.close()


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m services.tts_gateway.saved_voices_import", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    importer = commands.add_parser("import-dir", help="copy a saved-voices directory into the database")
    importer.add_argument("directory", type=Path)
    migrator = commands.add_parser("migrate", help="bring the database's saved-voice schema up to date")
    for sub in (importer, migrator):
        sub.add_argument("--database", default=os.environ.get(DATABASE_ENV, ""), help="postgresql:// URL")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    if not args.database:
        print(f"--database (or {DATABASE_ENV}) is required", file=sys.stderr)
        return 2
    target = database_target(args.database)
    if args.command == "migrate":
        version = asyncio.run(migrate(args.database))
        print(f"{target}: saved-voice schema at version {version}")
        return 0
    report = asyncio.run(import_dir(args.directory, args.database))
    print(
        f"{target}: {len(report.imported)} imported, {len(report.already_there)} already there, "
        f"{len(report.conflicts)} conflicting, {len(report.skipped)} skipped"
    )
    for name in report.conflicts:
        print(f"  conflict: {name!r} exists in the database with other content; left as it is", file=sys.stderr)
    for name, why in report.skipped:
        print(f"  skipped: {name!r}: {why}", file=sys.stderr)
    return 0 if report.complete else 1


if __name__ == "__main__":
    sys.exit(main())
