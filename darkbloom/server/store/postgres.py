"""PostgreSQL backend on asyncpg: for production coordinators."""

from __future__ import annotations

import asyncpg

from darkbloom.server.store.base import ApiKeyRecord, StoreError
from darkbloom.server.store.migrations import POSTGRES, newer_schema_message


class PostgresStore:
    """A ``Store`` in a PostgreSQL database, through an asyncpg pool.

    Args:
        url: ``postgresql://`` connection URL.
        schema: Optional schema to create and use (tests use a fresh one each).
    """

    def __init__(self, url: str, schema: str | None = None) -> None:
        self.url = url
        self.schema = schema
        self._pool: asyncpg.Pool | None = None

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise StoreError("store is not open; call migrate() first")
        return self._pool

    async def migrate(self) -> int:
        settings = {"search_path": self.schema} if self.schema else None
        try:
            if self.schema:
                conn = await asyncpg.connect(self.url)
                try:
                    await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
                finally:
                    await conn.close()
            self._pool = await asyncpg.create_pool(self.url, min_size=1, max_size=10, server_settings=settings)
        except (OSError, asyncpg.PostgresError) as exc:
            raise StoreError(f"cannot connect to {self.url}: {exc}") from exc
        async with self.pool.acquire() as conn:
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(727274)")
                await conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
                current = await conn.fetchval("SELECT COALESCE(MAX(version), 0) FROM schema_version")
                if current > len(POSTGRES):
                    raise StoreError(newer_schema_message(current, len(POSTGRES), self.url))
                for version in range(current + 1, len(POSTGRES) + 1):
                    for stmt in POSTGRES[version - 1]:
                        await conn.execute(stmt)
                    await conn.execute("INSERT INTO schema_version (version) VALUES ($1)", version)
        return len(POSTGRES)

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def create_account(self, account_id: str, now: float) -> None:
        await self.pool.execute("INSERT INTO accounts (id, created_at) VALUES ($1, $2)", account_id, now)

    async def add_api_key(self, record: ApiKeyRecord, key_hash: str) -> None:
        await self.pool.execute(
            "INSERT INTO api_keys (id, account_id, key_hash, prefix, created_at) VALUES ($1, $2, $3, $4, $5)",
            record.key_id,
            record.account_id,
            key_hash,
            record.prefix,
            record.created_at,
        )

    async def find_api_key(self, key_hash: str) -> ApiKeyRecord | None:
        row = await self.pool.fetchrow(
            "SELECT id, account_id, prefix, created_at, revoked, last_used_at FROM api_keys "
            "WHERE key_hash = $1 AND NOT revoked",
            key_hash,
        )
        if row is None:
            return None
        return ApiKeyRecord(row[0], row[1], row[2], row[3], bool(row[4]), row[5])

    async def touch_api_key(self, key_id: str, now: float) -> None:
        await self.pool.execute("UPDATE api_keys SET last_used_at = $1 WHERE id = $2", now, key_id)
