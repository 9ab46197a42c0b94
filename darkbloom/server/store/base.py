"""The one ``Store`` interface the coordinator uses, whatever the database.

Two real backends implement it: ``SQLiteStore`` (aiosqlite, the default, a
file under the darkbloom home) and ``PostgresStore`` (asyncpg). ``open_store``
picks one from a URL. Migrations are versioned per backend and applied on
start; a database newer than the code refuses to start.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


class StoreError(RuntimeError):
    """The database cannot be used (bad URL, newer schema, unreachable)."""


@dataclass(frozen=True, slots=True)
class ApiKeyRecord:
    """A consumer API key as stored: never the key itself, only its hash."""

    key_id: str
    account_id: str
    prefix: str
    created_at: float
    revoked: bool = False
    last_used_at: float | None = None


class Store(Protocol):
    """Persistence for the coordinator. Every method is one transaction."""

    url: str

    async def migrate(self) -> int:
        """Apply pending migrations; return the schema version now in force."""

    async def close(self) -> None: ...

    async def create_account(self, account_id: str, now: float) -> None: ...

    async def add_api_key(self, record: ApiKeyRecord, key_hash: str) -> None: ...

    async def find_api_key(self, key_hash: str) -> ApiKeyRecord | None:
        """The live (not revoked) key with this hash, or ``None``."""

    async def touch_api_key(self, key_id: str, now: float) -> None: ...
