"""SQLite backend on aiosqlite: the embedded default."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

from darkbloom.server.store.base import ApiKeyRecord, StoreError
from darkbloom.server.store.migrations import SQLITE, newer_schema_message

_KEY_COLUMNS = "id, account_id, prefix, created_at, revoked, last_used_at"
T = TypeVar("T")
log = logging.getLogger(__name__)
Op = Callable[[Any], Awaitable[Any]]


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


class ThreadTx:
    """A transaction driven on the database thread itself: plain ``sqlite3`` calls, no hops.

    Its methods are coroutines only so that the same ``op(tx)`` code runs on
    both backends; they never suspend, so ``_drive`` runs an op to the end
    with one ``send``.
    """

    dialect = "sqlite"
    lock = ""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    async def fetchone(self, sql: str, *args: Any) -> tuple[Any, ...] | None:
        row = self._conn.execute(sql, args).fetchone()
        return tuple(row) if row is not None else None

    async def fetchall(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        return [tuple(r) for r in self._conn.execute(sql, args).fetchall()]

    async def execute(self, sql: str, *args: Any) -> int:
        return self._conn.execute(sql, args).rowcount


def _drive(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine that never suspends to its result (see ``ThreadTx``)."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    coro.close()
    raise RuntimeError("a store op awaited something other than its transaction")


def _resolve(fut: asyncio.Future[Any], ok: bool, value: Any) -> None:
    if fut.done():
        return
    if ok:
        fut.set_result(value)
    else:
        fut.set_exception(value)


def _run_batch(conn: sqlite3.Connection, ops: list[Op], early: list[Callable[[bool, Any], None] | None]) -> list[tuple[bool, Any]]:
    """On the database thread: every op in one ``BEGIN IMMEDIATE`` .. ``COMMIT``, each under a savepoint.

    One commit (one fsync) for the whole batch is the point: concurrent
    requests' holds and settlements share it. An op with an ``early``
    callback hears its outcome as soon as it has run, before the commit
    (``run(op, durable=False)``).
    """
    results: list[tuple[bool, Any]] = []
    conn.execute("BEGIN IMMEDIATE")
    try:
        for op, tell in zip(ops, early):
            conn.execute("SAVEPOINT op")
            try:
                result: tuple[bool, Any] = (True, _drive(op(ThreadTx(conn))))
            except Exception as exc:  # the op's own failure (insufficient funds, a constraint): its writes only
                conn.execute("ROLLBACK TO op")
                result = (False, exc)
            conn.execute("RELEASE op")
            results.append(result)
            if tell is not None:
                tell(*result)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        if any(early):
            log.error("a ledger batch failed to commit after %d of its ops were answered early", sum(map(bool, early)))
        raise
    return results


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
        self._pending: list[tuple[Op, asyncio.Future[Any], Callable[[bool, Any], object] | None]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._urgent = asyncio.Event()  # an op that must not wait is queued: ship now

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
        flusher = self._flusher
        if flusher is not None:  # deferred writes still queued go out first
            self._urgent.set()
            with contextlib.suppress(Exception):
                await flusher
        for conn in (self._tx_db, self._db):
            if conn is not None:
                await conn.close()
        self._db = self._tx_db = None

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[SQLiteTx]:
        if self._pending:  # ops submitted before this transaction come first: it sees their writes
            last = self._pending[-1][1]
            self.flush()
            await asyncio.wait([last])
        async with self._lock:  # (a batch already shipped holds it until its commit)
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

    async def run(self, op: Callable[[Any], Awaitable[T]], *, durable: bool = True) -> T:
        """``op(tx)`` in a transaction on the database thread, group-committed (see ``base.Store.run``).

        ``durable=False`` answers as soon as the op has run inside the batch,
        without waiting for the commit's fsync.
        """
        return await self.submit(op, durable=durable)  # type: ignore[no-any-return]

    def submit(self, op: Callable[[Any], Awaitable[T]], *, durable: bool = True, defer_s: float = 0.0) -> asyncio.Future[T]:
        """Queue ``op`` now and return the future of its result (see ``base.Store.submit``).

        Ops run in the order submitted. A deferred op waits up to
        ``defer_s`` for company; any op submitted without deferral ships
        at once, taking every op queued before it along.
        """
        if self._tx_db is None:
            raise StoreError("store is not open; call migrate() first")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        tell = None if durable else (lambda ok, value: loop.call_soon_threadsafe(_resolve, fut, ok, value))
        self._pending.append((op, fut, tell))
        if self._flusher is None:
            self._urgent = asyncio.Event()  # one per flusher: a store may outlive an event loop (tests, the CLI)
            self._flusher = loop.create_task(self._flush(defer_s))
        if defer_s <= 0:
            self._urgent.set()
        return fut

    def flush(self) -> None:
        """Ship deferred ops now: someone is waiting for one of them."""
        if self._flusher is not None:
            self._urgent.set()

    async def _flush(self, defer_s: float) -> None:
        """Ship whatever ops are waiting to the database thread, one batch per hop, until none are."""
        try:
            if not self._urgent.is_set():
                # Deferred writes (holds) wait for company, or for an urgent op, whichever comes first.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(defer_s):
                        await self._urgent.wait()
            while self._pending:
                self._urgent.clear()
                batch, self._pending = self._pending, []
                try:
                    async with self._lock:  # never inside someone's ``transaction()``
                        db = self._tx_db
                        if db is None:
                            raise StoreError("store is closed")
                        # aiosqlite's own queue to its thread: the whole batch is one hop, not one per statement.
                        results = await db._execute(
                            _run_batch, db._conn, [op for op, _, _ in batch], [tell for _, _, tell in batch]
                        )
                except BaseException as exc:  # the batch could not commit: every op in it fails
                    results = [(False, exc)] * len(batch)
                    if not isinstance(exc, Exception):
                        for _, fut, _ in batch:
                            if not fut.done():
                                fut.cancel()
                        raise
                for (_, fut, _), (ok, value) in zip(batch, results):
                    _resolve(fut, ok, value)  # a no-op for those answered early
        finally:
            self._flusher = None

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
        # On the reading connection: a key lookup waits neither for the writer nor for postings queued before it.
        async with self.db.execute(f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE key_hash = ? AND revoked = 0", (key_hash,)) as cur:
            row = await cur.fetchone()
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
