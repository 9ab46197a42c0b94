"""Persistence: one ``Store`` interface, SQLite and PostgreSQL backends."""

from __future__ import annotations

from pathlib import Path

from darkbloom.server.store.base import ApiKeyRecord, Store, StoreError, Tx, redact_url


def open_store(url: str, *, schema: str | None = None) -> Store:
    """Build (not yet connect) the store a database URL names.

    ``sqlite:///absolute/path.db`` or ``postgresql://user@host:port/db``.

    Raises:
        StoreError: the URL names no supported database.
    """
    if url.startswith("sqlite:///"):
        from darkbloom.server.store.sqlite import SQLiteStore

        return SQLiteStore(url, Path(url.removeprefix("sqlite:///")).expanduser())
    if url.startswith(("postgresql://", "postgres://")):
        from darkbloom.server.store.postgres import PostgresStore

        return PostgresStore(url, schema=schema)
    raise StoreError(
        f"unsupported database URL {redact_url(url)!r}: use sqlite:///absolute/path.db or postgresql://user@host:port/dbname"
    )


__all__ = ["ApiKeyRecord", "Store", "StoreError", "Tx", "open_store", "redact_url"]
