"""SQLite backend on aiosqlite: the embedded default."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiosqlite

from darkbloom.server.store.base import ApiKeyRecord, StoreError
from darkbloom.server.store.migrations import SQLITE, newer_schema_message

_KEY_COLUMNS = "id, account_id, prefix, created_at, revoked, last_used_at"


def _key_record(row: Any) -> ApiKeyRecord:
    return ApiKeyRecord(row[0], row[1], row[2], row[3], bool(row[4]), row[5])


class SQLiteTx:
    """A transaction on the store's one connection (see ``base.Tx``)."""

    dialect = "sqlite"
    lock = ""

    def __init__(self, db: aiosqlite.Connection) -> None:
        self._db = db

    async def fetchone(self, sql: str, *args: Any) -> tuple[Any, ...] | None:
        async with self._db.execute(sql, args) as cur:
            row = await cur.fetchone()
        return tuple(row) if row is not None else None

    async def fetchall(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        async with self._db.execute(sql, args) as cur:
            return [tuple(r) for r in await cur.fetchall()]

    async def execute(self, sql: str, *args: Any) -> int:
        async with self._db.execute(sql, args) as cur:
            return cur.rowcount


class SQLiteStore:
    """A ``Store`` in one SQLite file (WAL mode, so readers never block the writer).

    Transactions run on their own connection under an asyncio lock: two
    coroutines must never interleave statements inside one ``BEGIN
    IMMEDIATE``, and code that uses ``db`` directly (autocommit) must never
    land inside, or be rolled back with, someone else's transaction. Other
    connections and processes (the CLI) wait on ``busy_timeout``.
    """

    def __init__(self, url: str, path: Path) -> None:
        self.url = url
        self.path = path
        self._db: aiosqlite.Connection | None = None
        self._tx_db: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()

    async def _connect(self) -> aiosqlite.Connection:
        conn = await aiosqlite.connect(self.path, isolation_level=None)
        await conn.execute("PRAGMA journal_mode=WAL")
        await conn.execute("PRAGMA foreign_keys=ON")
        await conn.execute("PRAGMA busy_timeout=15000")
        return conn

    @property
    def db(self) -> aiosqlite.Connection:
        if self._db is None:
            raise StoreError("store is not open; call migrate() first")
        return self._db

    async def migrate(self) -> int:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = await self._connect()
        self._tx_db = await self._connect()
        await self._db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        async with self._db.execute("SELECT MAX(version) FROM schema_version") as cur:
            row = await cur.fetchone()
        current = (row[0] if row else None) or 0
        if current > len(SQLITE):
            raise StoreError(newer_schema_message(current, len(SQLITE), self.url))
        for version in range(current + 1, len(SQLITE) + 1):
            async with self.transaction() as tx:
                for stmt in SQLITE[version - 1]:
                    await tx.execute(stmt)
                await tx.execute("INSERT INTO schema_version (version) VALUES (?)", version)
        return len(SQLITE)

    async def close(self) -> None:
        for conn in (self._tx_db, self._db):
            if conn is not None:
                await conn.close()
        self._db = self._tx_db = None

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[SQLiteTx]:
        async with self._lock:
            if self._tx_db is None:
                raise StoreError("store is not open; call migrate() first")
            db = self._tx_db
            await db.execute("BEGIN IMMEDIATE")
            try:
                yield SQLiteTx(db)
            except BaseException:
                await db.execute("ROLLBACK")
                raise
            await db.execute("COMMIT")

    async def create_account(self, account_id: str, now: float) -> None:
        async with self.transaction() as tx:
            await tx.execute("INSERT INTO accounts (id, created_at) VALUES (?, ?)", account_id, now)

    async def add_api_key(self, record: ApiKeyRecord, key_hash: str) -> None:
        async with self.transaction() as tx:
            await tx.execute(
                "INSERT INTO api_keys (id, account_id, key_hash, prefix, created_at) VALUES (?, ?, ?, ?, ?)",
                record.key_id,
                record.account_id,
                key_hash,
                record.prefix,
                record.created_at,
            )

    async def find_api_key(self, key_hash: str) -> ApiKeyRecord | None:
        async with self.transaction() as tx:
            row = await tx.fetchone(f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE key_hash = ? AND revoked = 0", key_hash)
        return None if row is None else _key_record(row)

    async def touch_api_key(self, key_id: str, now: float) -> None:
        async with self.transaction() as tx:
            await tx.execute("UPDATE api_keys SET last_used_at = ? WHERE id = ?", now, key_id)

    async def revoke_api_key(self, key_id: str) -> bool:
        async with self.transaction() as tx:
            return await tx.execute("UPDATE api_keys SET revoked = 1 WHERE id = ? AND revoked = 0", key_id) == 1

    async def list_api_keys(self, account_id: str | None = None) -> list[ApiKeyRecord]:
        sql = f"SELECT {_KEY_COLUMNS} FROM api_keys"
        async with self.transaction() as tx:
            if account_id is None:
                rows = await tx.fetchall(sql + " ORDER BY created_at")
            else:
                rows = await tx.fetchall(sql + " WHERE account_id = ? ORDER BY created_at", account_id)
        return [_key_record(r) for r in rows]
