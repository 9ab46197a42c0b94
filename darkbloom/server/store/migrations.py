"""Versioned schema migrations, one list per backend dialect.

A migration is appended, never edited: version N is ``MIGRATIONS[N - 1]``.
The applied version is recorded in ``schema_version``.
"""

from __future__ import annotations

# v2: accounts and money. Amounts are integer micro-USD (BIGINT); times are unix seconds.
_V2 = [
    "CREATE TABLE ledger_balances (account TEXT PRIMARY KEY, balance BIGINT NOT NULL DEFAULT 0)",
    """CREATE TABLE ledger_entries (
        id {serial},
        txn_id TEXT NOT NULL,
        account TEXT NOT NULL,
        type TEXT NOT NULL,
        amount BIGINT NOT NULL,
        balance_after BIGINT NOT NULL,
        reference TEXT NOT NULL,
        created_at {real} NOT NULL
    )""",
    "CREATE INDEX ledger_entries_account ON ledger_entries (account, id)",
    "CREATE INDEX ledger_entries_reference ON ledger_entries (reference)",
    """CREATE TABLE holds (
        request_id TEXT PRIMARY KEY,
        account_id TEXT NOT NULL,
        model TEXT NOT NULL,
        amount BIGINT NOT NULL,
        state TEXT NOT NULL,
        owner TEXT NOT NULL,
        created_at {real} NOT NULL,
        finished_at {real}
    )""",
    "CREATE INDEX holds_state ON holds (state, created_at)",
    """CREATE TABLE usage_records (
        request_id TEXT PRIMARY KEY,
        account_id TEXT NOT NULL,
        model TEXT NOT NULL,
        prompt_tokens BIGINT NOT NULL,
        completion_tokens BIGINT NOT NULL,
        cost_micro_usd BIGINT NOT NULL,
        provider_micro_usd BIGINT NOT NULL,
        fee_micro_usd BIGINT NOT NULL,
        node_id TEXT,
        provider_account TEXT,
        created_at {real} NOT NULL
    )""",
    "CREATE INDEX usage_records_account ON usage_records (account_id, created_at)",
    "CREATE INDEX usage_records_provider ON usage_records (provider_account, created_at)",
    """CREATE TABLE prices (
        model TEXT PRIMARY KEY,
        input_micro_usd_per_m BIGINT NOT NULL,
        output_micro_usd_per_m BIGINT NOT NULL,
        updated_at {real} NOT NULL
    )""",
    """CREATE TABLE provider_tokens (
        token_hash TEXT PRIMARY KEY,
        account_id TEXT NOT NULL REFERENCES accounts(id),
        created_at {real} NOT NULL
    )""",
    """CREATE TABLE node_links (
        node_id TEXT PRIMARY KEY,
        account_id TEXT NOT NULL REFERENCES accounts(id),
        linked_at {real} NOT NULL
    )""",
    """CREATE TABLE device_codes (
        device_code_hash TEXT PRIMARY KEY,
        user_code TEXT NOT NULL UNIQUE,
        status TEXT NOT NULL,
        account_id TEXT,
        token TEXT,
        created_at {real} NOT NULL,
        expires_at {real} NOT NULL,
        interval_s BIGINT NOT NULL,
        last_poll_at {real}
    )""",
    """CREATE TABLE invites (
        code TEXT PRIMARY KEY,
        credit_micro_usd BIGINT NOT NULL,
        max_uses BIGINT NOT NULL,
        uses BIGINT NOT NULL DEFAULT 0,
        created_at {real} NOT NULL
    )""",
    """CREATE TABLE invite_redemptions (
        account_id TEXT PRIMARY KEY REFERENCES accounts(id),
        code TEXT NOT NULL REFERENCES invites(code),
        redeemed_at {real} NOT NULL
    )""",
    """CREATE TABLE referral_codes (
        code TEXT PRIMARY KEY,
        account_id TEXT NOT NULL UNIQUE REFERENCES accounts(id),
        created_at {real} NOT NULL
    )""",
    """CREATE TABLE referrals (
        account_id TEXT PRIMARY KEY REFERENCES accounts(id),
        referrer_id TEXT NOT NULL REFERENCES accounts(id),
        created_at {real} NOT NULL
    )""",
    """CREATE TABLE stripe_events (
        event_id TEXT PRIMARY KEY,
        type TEXT NOT NULL,
        received_at {real} NOT NULL
    )""",
    """CREATE TABLE deposits (
        session_id TEXT PRIMARY KEY,
        account_id TEXT NOT NULL REFERENCES accounts(id),
        amount_micro_usd BIGINT NOT NULL,
        status TEXT NOT NULL,
        created_at {real} NOT NULL,
        completed_at {real}
    )""",
    """CREATE TABLE connect_accounts (
        account_id TEXT PRIMARY KEY REFERENCES accounts(id),
        stripe_account TEXT NOT NULL,
        created_at {real} NOT NULL
    )""",
    """CREATE TABLE payouts (
        id TEXT PRIMARY KEY,
        account_id TEXT NOT NULL,
        amount_micro_usd BIGINT NOT NULL,
        transfer_id TEXT,
        status TEXT NOT NULL,
        created_at {real} NOT NULL
    )""",
]


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
    [stmt.format(serial="INTEGER PRIMARY KEY AUTOINCREMENT", real="REAL") for stmt in _V2],
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
    [stmt.format(serial="BIGSERIAL PRIMARY KEY", real="DOUBLE PRECISION") for stmt in _V2],
]


def newer_schema_message(db_version: int, code_version: int, url: str) -> str:
    return (
        f"database {url} is at schema version {db_version}, but this darkbloom only knows "
        f"versions up to {code_version}; upgrade darkbloom (pip install -U darkbloom) or point --db at another database"
    )
