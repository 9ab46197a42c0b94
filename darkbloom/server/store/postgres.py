"""PostgreSQL backend on asyncpg: for production coordinators."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import asyncpg

from darkbloom.server.store.base import ApiKeyRecord, StoreError, redact_url
from darkbloom.server.store.migrations import POSTGRES, newer_schema_message

log = logging.getLogger(__name__)

CLOSE_TIMEOUT_S = 10.0
"""How long ``close`` waits for running ops and busy connections before it cuts them off."""

_KEY_COLUMNS = "id, account_id, prefix, created_at, revoked, last_used_at"
_PLACEHOLDER = re.compile(r"\?")
T = TypeVar("T")


def _key_record(row: Any) -> ApiKeyRecord:
    return ApiKeyRecord(row[0], row[1], row[2], row[3], bool(row[4]), row[5])


def to_dollar(sql: str) -> str:
    """``?`` placeholders as PostgreSQL's ``$1, $2, ...`` (our SQL has no ``?`` in literals)."""
    counter = iter(range(1, 10_000))
    return _PLACEHOLDER.sub(lambda _: f"${next(counter)}", sql)


class PostgresTx:
    """A transaction on one pooled connection (see ``base.Tx``)."""

    dialect = "postgres"
    lock = " FOR UPDATE"

    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn

    async def fetchone(self, sql: str, *args: Any) -> tuple[Any, ...] | None:
        row = await self._conn.fetchrow(to_dollar(sql), *args)
        return tuple(row) if row is not None else None

    async def fetchall(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        return [tuple(r) for r in await self._conn.fetch(to_dollar(sql), *args)]

    async def execute(self, sql: str, *args: Any) -> int:
        status = await self._conn.execute(to_dollar(sql), *args)
        tail = status.rsplit(" ", 1)[-1]
        return int(tail) if tail.isdigit() else 0


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
        self._submitted: set[asyncio.Future[Any]] = set()  # ops submitted and still running
        self.close_timeout_s = CLOSE_TIMEOUT_S

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
            raise StoreError(f"cannot connect to {redact_url(self.url)}: {exc}") from exc
        async with self.pool.acquire() as conn:
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(727274)")
                await conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
                current = await conn.fetchval("SELECT COALESCE(MAX(version), 0) FROM schema_version")
                if current > len(POSTGRES):
                    raise StoreError(newer_schema_message(current, len(POSTGRES), redact_url(self.url)))
                for version in range(current + 1, len(POSTGRES) + 1):
                    for stmt in POSTGRES[version - 1]:
                        await conn.execute(stmt)
                    await conn.execute("INSERT INTO schema_version (version) VALUES ($1)", version)
        return len(POSTGRES)

    async def close(self) -> None:
        """Let running ops finish, then close the pool; within ``close_timeout_s`` in all.

        Ops submitted and still running (settlements written behind an
        answer) finish first: the pool refuses new work once it is closing,
        and a settlement lost here would leave its hold open. A database that
        stopped answering must not hang the coordinator's shutdown, though:
        past the time limit the pool is terminated. A hold left open that way
        is released (not charged) when the coordinator next starts.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.close_timeout_s
        while self._submitted and (left := deadline - loop.time()) > 0:
            await asyncio.wait(list(self._submitted), timeout=left)
        if self._submitted:
            log.error(
                "closing the store with %d ledger write(s) still running after %.0f s; "
                "their holds are released, not charged, at the next start",
                len(self._submitted), self.close_timeout_s,
            )
        pool, self._pool = self._pool, None
        if pool is None:
            return
        try:
            await asyncio.wait_for(pool.close(), max(0.1, deadline - loop.time()))
        except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
            log.warning("the database did not let its connections go (%s); cutting them off", type(exc).__name__)
            pool.terminate()

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[PostgresTx]:
        if self._submitted:  # ops submitted before this transaction come first: it sees their writes
            await asyncio.wait(list(self._submitted))
        async with self._transaction() as tx:
            yield tx

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[PostgresTx]:
        async with self.pool.acquire() as conn:
            async with conn.transaction():
                yield PostgresTx(conn)

    async def run(self, op: Callable[[Any], Awaitable[T]], *, durable: bool = True) -> T:
        """``op(tx)`` in a transaction of its own (see ``base.Store.run``); always answered after the commit."""
        async with self._transaction() as tx:
            return await op(tx)

    def submit(self, op: Callable[[Any], Awaitable[T]], *, durable: bool = True, defer_s: float = 0.0) -> asyncio.Future[T]:
        """``run(op)`` started now, on its own pooled connection (see ``base.Store.submit``).

        Each op is its own transaction here, so ops submitted together run
        side by side, not in order; ``defer_s`` is ignored (nothing to batch).
        """
        task = asyncio.ensure_future(self.run(op, durable=durable))
        self._submitted.add(task)
        task.add_done_callback(self._submitted.discard)
        return task

    def flush(self) -> None:
        """Nothing waits here: every op is started when submitted."""

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
            f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE key_hash = $1 AND NOT revoked", key_hash
        )
        return None if row is None else _key_record(row)

    async def touch_api_key(self, key_id: str, now: float) -> None:
        await self.pool.execute("UPDATE api_keys SET last_used_at = $1 WHERE id = $2", now, key_id)

    async def revoke_api_key(self, key_id: str) -> bool:
        status = await self.pool.execute("UPDATE api_keys SET revoked = TRUE WHERE id = $1 AND NOT revoked", key_id)
        return status.endswith(" 1")

    async def list_api_keys(self, account_id: str | None = None) -> list[ApiKeyRecord]:
        sql = f"SELECT {_KEY_COLUMNS} FROM api_keys"
        if account_id is None:
            rows = await self.pool.fetch(sql + " ORDER BY created_at")
        else:
            rows = await self.pool.fetch(sql + " WHERE account_id = $1 ORDER BY created_at", account_id)
        return [_key_record(r) for r in rows]
