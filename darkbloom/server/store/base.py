"""The one ``Store`` interface the coordinator uses, whatever the database.

Two real backends implement it: ``SQLiteStore`` (aiosqlite, the default, a
file under the darkbloom home) and ``PostgresStore`` (asyncpg). ``open_store``
picks one from a URL. Migrations are versioned per backend and applied on
start; a database newer than the code refuses to start.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar
from urllib.parse import urlsplit, urlunsplit

T = TypeVar("T")


class StoreError(RuntimeError):
    """The database cannot be used (bad URL, newer schema, unreachable)."""


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***``: database URLs go into errors and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


@dataclass(frozen=True, slots=True)
class ApiKeyRecord:
    """A consumer API key as stored: never the key itself, only its hash."""

    key_id: str
    account_id: str
    prefix: str
    created_at: float
    revoked: bool = False
    last_used_at: float | None = None


class Tx(Protocol):
    """One open database transaction, in dialect-neutral terms.

    SQL uses ``?`` placeholders on both backends (PostgreSQL's ``$n`` are
    substituted); ``lock`` is the row-lock suffix (`` FOR UPDATE`` on
    PostgreSQL, empty on SQLite, whose ``BEGIN IMMEDIATE`` already serializes writers).
    """

    dialect: str
    lock: str

    async def fetchone(self, sql: str, *args: Any) -> tuple[Any, ...] | None: ...

    async def fetchall(self, sql: str, *args: Any) -> list[tuple[Any, ...]]: ...

    async def execute(self, sql: str, *args: Any) -> int:
        """Run a statement; return the number of rows it changed."""


class Store(Protocol):
    """Persistence for the coordinator. Every method is one transaction."""

    url: str

    async def migrate(self) -> int:
        """Apply pending migrations; return the schema version now in force."""

    async def close(self) -> None:
        """Finish every op submitted before it (settlements written behind), then close the database."""

    def transaction(self) -> AbstractAsyncContextManager[Tx]:
        """A write transaction: committed when the block ends, rolled back if it raises.

        It begins once every op submitted before it (``submit``, ``run``)
        has run, so it sees their writes: a balance read after a request
        ends includes that request's settlement, although nobody waited for it.
        """

    async def run(self, op: Callable[[Tx], Awaitable[T]], *, durable: bool = True) -> T:
        """Run ``op(tx)`` as one transaction of its own and return what it returns.

        The hot path's postings (holds, settlements) go through here. ``op``
        may only await ``tx``'s methods and must not touch the event loop:
        SQLite runs it on its database thread, in one hop, group-committed
        with whatever other ops are waiting (each under its own savepoint,
        so one op raising rolls back only its own writes).

        ``durable=False`` lets a backend answer before the commit is on disk
        (SQLite does; PostgreSQL always commits first). Only for writes a
        crash may lose: a hold is one (a restart releases every hold of its
        coordinator, and a request outlives no crash); a settlement is not.
        """

    def submit(self, op: Callable[[Tx], Awaitable[T]], *, durable: bool = True, defer_s: float = 0.0) -> asyncio.Future[T]:
        """``run(op)``, queued now: the future of its result, for a caller that need not wait for it.

        On SQLite ops run in the order submitted (a later op sees an earlier
        one's writes), and ``defer_s`` lets a write that nobody waits for
        (a hold admitted from the reservation book, a settlement) wait up to that long to
        share a commit, so it stays off the busy moments of a burst.
        PostgreSQL runs each op on its own connection, side by side.
        """

    def flush(self) -> None:
        """Start every deferred op now (someone waits for one of them); a no-op where nothing is deferred."""

    async def revoke_api_key(self, key_id: str) -> bool:
        """Revoke a key; ``False`` when no live key has that id."""

    async def list_api_keys(self, account_id: str | None = None) -> list[ApiKeyRecord]: ...

    async def create_account(self, account_id: str, now: float) -> None: ...

    async def add_api_key(self, record: ApiKeyRecord, key_hash: str) -> None: ...

    async def find_api_key(self, key_hash: str) -> ApiKeyRecord | None:
        """The live (not revoked) key with this hash, or ``None``."""

    async def touch_api_key(self, key_id: str, now: float) -> None: ...
