"""API keys and migrations on both store backends."""

from __future__ import annotations

import asyncio

import pytest

from darkbloom.server.auth.keys import authenticate, create_api_key, hash_key
from darkbloom.server.store import StoreError


def test_key_round_trip_and_only_the_hash_is_stored(store_factory) -> None:  # type: ignore[no-untyped-def]
    async def scenario() -> None:
        store = store_factory()
        await store.migrate()
        try:
            key, record = await create_api_key(store)
            assert key.startswith("dbk-") and record.prefix == key[:10]
            found = await authenticate(store, key)
            assert found is not None and found.account_id == record.account_id
            assert await authenticate(store, key + "x") is None
            assert await authenticate(store, "") is None
            assert await store.find_api_key(key) is None, "the clear key must not be a lookup value"
            assert (await store.find_api_key(hash_key(key))) == found
            await store.touch_api_key(record.key_id, 123.0)
            touched = await authenticate(store, key)
            assert touched is not None and touched.last_used_at == 123.0
        finally:
            await store.close()

    asyncio.run(scenario())


def test_migrations_are_idempotent_and_survive_restart(store_factory) -> None:  # type: ignore[no-untyped-def]
    async def scenario() -> None:
        store = store_factory()
        v1 = await store.migrate()
        key, _ = await create_api_key(store)
        await store.close()
        again = store_factory()
        assert await again.migrate() == v1
        assert await authenticate(again, key) is not None
        await again.close()

    asyncio.run(scenario())


def test_a_newer_database_refuses_to_start(store_factory) -> None:  # type: ignore[no-untyped-def]
    async def scenario() -> None:
        store = store_factory()
        version = await store.migrate()
        if hasattr(store, "db"):
            await store.db.execute("INSERT INTO schema_version (version) VALUES (?)", (version + 5,))
        else:
            await store.pool.execute("INSERT INTO schema_version (version) VALUES ($1)", version + 5)
        await store.close()
        newer = store_factory()
        with pytest.raises(StoreError, match="schema version"):
            await newer.migrate()
        await newer.close()

    asyncio.run(scenario())


def test_revoke_and_list_keep_the_prefix_and_last_use(store_factory) -> None:  # type: ignore[no-untyped-def]
    async def scenario() -> None:
        store = store_factory()
        await store.migrate()
        try:
            key, record = await create_api_key(store)
            other, _ = await create_api_key(store, record.account_id)
            listed = await store.list_api_keys(record.account_id)
            assert [r.prefix for r in listed] == [key[:10], other[:10]]
            assert await store.revoke_api_key(record.key_id)
            assert not await store.revoke_api_key(record.key_id), "revoking twice reports nothing to do"
            assert await authenticate(store, key) is None
            assert await authenticate(store, other) is not None, "the account's other key still works"
            states = {r.key_id: r.revoked for r in await store.list_api_keys()}
            assert states[record.key_id] is True and list(states.values()).count(False) == 1
        finally:
            await store.close()

    asyncio.run(scenario())
