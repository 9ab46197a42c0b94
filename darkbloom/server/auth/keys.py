"""Consumer API keys: generated once, shown once, stored only as a SHA-256 hash."""

from __future__ import annotations

import hashlib
import secrets
import time
import uuid

from darkbloom.server.store import ApiKeyRecord, Store

KEY_PREFIX = "dbk-"


def hash_key(key: str) -> str:
    """The at-rest form of a key. Keys are 256-bit random, so a plain hash suffices."""
    return hashlib.sha256(key.encode()).hexdigest()


async def create_api_key(store: Store, account_id: str | None = None) -> tuple[str, ApiKeyRecord]:
    """Create an API key (and its account when none is given).

    Returns:
        The key in clear, which is never stored, and its record.
    """
    now = time.time()
    if account_id is None:
        account_id = f"acct_{uuid.uuid4().hex[:16]}"
        await store.create_account(account_id, now)
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    record = ApiKeyRecord(
        key_id=f"key_{uuid.uuid4().hex[:16]}", account_id=account_id, prefix=key[:10], created_at=now
    )
    await store.add_api_key(record, hash_key(key))
    return key, record


async def authenticate(store: Store, key: str) -> ApiKeyRecord | None:
    """The live key record for ``key``, or ``None``."""
    if not key:
        return None
    return await store.find_api_key(hash_key(key))


async def create_key_in(db_url: str) -> tuple[str, ApiKeyRecord]:
    """Open the database at ``db_url`` (migrating it), create a key, close it."""
    from darkbloom.server.store import open_store

    store = open_store(db_url)
    await store.migrate()
    try:
        return await create_api_key(store)
    finally:
        await store.close()
