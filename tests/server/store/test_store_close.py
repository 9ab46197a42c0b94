"""Closing the PostgreSQL store cannot hang the coordinator's shutdown on a database that stops answering."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any

import asyncpg
import pytest

from darkbloom.server.store import open_store
from tests.server.store.conftest import PG_URL


async def _drop(schema: str) -> None:
    conn = await asyncpg.connect(PG_URL)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


def test_close_cuts_off_a_stuck_write_and_a_connection_never_given_back(caplog: pytest.LogCaptureFixture) -> None:
    schema = f"t_{uuid.uuid4().hex[:12]}"

    async def stuck(tx: Any) -> None:
        await tx.execute("SELECT pg_sleep(60)")  # a write the database never finishes

    async def scenario() -> float:
        store = open_store(PG_URL, schema=schema)
        await store.migrate()
        store.close_timeout_s = 1.0  # type: ignore[attr-defined]
        write = store.submit(stuck)
        held = await store.pool.acquire()  # type: ignore[attr-defined]  # and one connection never released
        await asyncio.sleep(0.1)
        start = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="darkbloom.server.store.postgres"):
            await store.close()
        took = time.monotonic() - start
        with pytest.raises(Exception):
            await write  # cut off, not left running
        del held
        return took

    try:
        took = asyncio.run(scenario())
    finally:
        asyncio.run(_drop(schema))
    assert took < 5, f"close took {took:.1f} s"
    text = caplog.text
    assert "1 ledger write(s) still running after 1 s" in text
    assert "cutting them off" in text


def test_close_waits_for_writes_that_finish_in_time() -> None:
    schema = f"t_{uuid.uuid4().hex[:12]}"

    async def slow(tx: Any) -> int:
        await tx.execute("SELECT pg_sleep(0.3)")
        return 7

    async def scenario() -> int:
        store = open_store(PG_URL, schema=schema)
        await store.migrate()
        write = store.submit(slow)
        await store.close()
        return await write

    try:
        assert asyncio.run(scenario()) == 7
    finally:
        asyncio.run(_drop(schema))
