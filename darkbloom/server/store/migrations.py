"""Versioned schema migrations, one list per backend dialect.

A migration is appended, never edited: version N is ``MIGRATIONS[N - 1]``.
The applied version is recorded in ``schema_version``.
"""

from __future__ import annotations

SQLITE: list[list[str]] = [
    [
        "CREATE TABLE accounts (id TEXT PRIMARY KEY, created_at REAL NOT NULL)",
        """CREATE TABLE api_keys (
            id TEXT PRIMARY KEY,
            account_id TEXT NOT NULL REFERENCES accounts(id),
            key_hash TEXT NOT NULL UNIQUE,
            prefix TEXT NOT NULL,
            created_at REAL NOT NULL,
            revoked INTEGER NOT NULL DEFAULT 0,
            last_used_at REAL
        )""",
    ],
]

POSTGRES: list[list[str]] = [
    [
        "CREATE TABLE accounts (id TEXT PRIMARY KEY, created_at DOUBLE PRECISION NOT NULL)",
        """CREATE TABLE api_keys (
            id TEXT PRIMARY KEY,
            account_id TEXT NOT NULL REFERENCES accounts(id),
            key_hash TEXT NOT NULL UNIQUE,
            prefix TEXT NOT NULL,
            created_at DOUBLE PRECISION NOT NULL,
            revoked BOOLEAN NOT NULL DEFAULT FALSE,
            last_used_at DOUBLE PRECISION
        )""",
    ],
]


def newer_schema_message(db_version: int, code_version: int, url: str) -> str:
    return (
        f"database {url} is at schema version {db_version}, but this darkbloom only knows "
        f"versions up to {code_version}; upgrade darkbloom (pip install -U darkbloom) or point --db at another database"
    )
