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
    record = ApiKeyRecord(key_id=f"key_{uuid.uuid4().hex[:16]}", account_id=account_id, prefix=key[:10], created_at=now)
    await store.add_api_key(record, hash_key(key))
    return key, record


async def authenticate(store: Store, key: str) -> ApiKeyRecord | None:
    """The live key record for ``key``, or ``None``."""
    if not key:
        return None
    return await store.find_api_key(hash_key(key))


async def create_key_in(
    db_url: str, credit_micro_usd: int = 0, account_id: str | None = None
) -> tuple[str, ApiKeyRecord]:
    """Open the database at ``db_url`` (migrating it), create a key, fund its account, close it.

    Args:
        db_url: The coordinator's database.
        credit_micro_usd: Credit to grant the new account (an ``admin_credit`` entry), if any.
        account_id: Add the key to this existing account instead of a new one.
    """
    from darkbloom.server.billing.ledger import ADMIN_CREDIT
    from darkbloom.server.store import StoreError, money, open_store, redact_url

    store = open_store(db_url)
    await store.migrate()
    try:
        if account_id is not None and not await money.account_exists(store, account_id):
            raise StoreError(f"no account {account_id} in {redact_url(db_url)}")
        key, record = await create_api_key(store, account_id)
        if credit_micro_usd > 0:
            await money.credit(
                store, record.account_id, credit_micro_usd, ADMIN_CREDIT, f"key:{record.key_id}", record.created_at
            )
        return key, record
    finally:
        await store.close()


async def revoke_key_in(db_url: str, key_id: str) -> bool:
    """Revoke a key by id (or by its visible prefix) in the database at ``db_url``."""
    from darkbloom.server.store import open_store

    store = open_store(db_url)
    await store.migrate()
    try:
        for record in await store.list_api_keys():
            if key_id in (record.key_id, record.prefix) and not record.revoked:
                return await store.revoke_api_key(record.key_id)
        return False
    finally:
        await store.close()


async def list_keys_in(db_url: str, account_id: str | None = None) -> list[ApiKeyRecord]:
    from darkbloom.server.store import open_store

    store = open_store(db_url)
    await store.migrate()
    try:
        return await store.list_api_keys(account_id)
    finally:
        await store.close()
