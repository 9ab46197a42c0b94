"""SQLite backend on aiosqlite: the embedded default."""

from __future__ import annotations

from pathlib import Path

import aiosqlite

from darkbloom.server.store.base import ApiKeyRecord, StoreError
from darkbloom.server.store.migrations import SQLITE, newer_schema_message


class SQLiteStore:
    """A ``Store`` in one SQLite file (WAL mode, so readers never block the writer)."""

    def __init__(self, url: str, path: Path) -> None:
        self.url = url
        self.path = path
        self._db: aiosqlite.Connection | None = None

    @property
    def db(self) -> aiosqlite.Connection:
        if self._db is None:
            raise StoreError("store is not open; call migrate() first")
        return self._db

    async def migrate(self) -> int:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = await aiosqlite.connect(self.path, isolation_level=None)
        await self._db.execute("PRAGMA journal_mode=WAL")
        await self._db.execute("PRAGMA foreign_keys=ON")
        await self._db.execute("PRAGMA busy_timeout=5000")
        await self._db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        async with self._db.execute("SELECT MAX(version) FROM schema_version") as cur:
            row = await cur.fetchone()
        current = (row[0] if row else None) or 0
        if current > len(SQLITE):
            raise StoreError(newer_schema_message(current, len(SQLITE), self.url))
        for version in range(current + 1, len(SQLITE) + 1):
            await self._db.execute("BEGIN IMMEDIATE")
            try:
                for stmt in SQLITE[version - 1]:
                    await self._db.execute(stmt)
                await self._db.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))
                await self._db.execute("COMMIT")
            except BaseException:
                await self._db.execute("ROLLBACK")
                raise
        return len(SQLITE)

    async def close(self) -> None:
        if self._db is not None:
            await self._db.close()
            self._db = None

    async def create_account(self, account_id: str, now: float) -> None:
        await self.db.execute("INSERT INTO accounts (id, created_at) VALUES (?, ?)", (account_id, now))

    async def add_api_key(self, record: ApiKeyRecord, key_hash: str) -> None:
        await self.db.execute(
            "INSERT INTO api_keys (id, account_id, key_hash, prefix, created_at) VALUES (?, ?, ?, ?, ?)",
            (record.key_id, record.account_id, key_hash, record.prefix, record.created_at),
        )

    async def find_api_key(self, key_hash: str) -> ApiKeyRecord | None:
        async with self.db.execute(
            "SELECT id, account_id, prefix, created_at, revoked, last_used_at FROM api_keys "
            "WHERE key_hash = ? AND revoked = 0",
            (key_hash,),
        ) as cur:
            row = await cur.fetchone()
        if row is None:
            return None
        return ApiKeyRecord(row[0], row[1], row[2], row[3], bool(row[4]), row[5])

    async def touch_api_key(self, key_id: str, now: float) -> None:
        await self.db.execute("UPDATE api_keys SET last_used_at = ? WHERE id = ?", (now, key_id))
