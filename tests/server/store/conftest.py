"""Every store test runs against both backends: SQLite and the local PostgreSQL.

PostgreSQL must be reachable (127.0.0.1:5432, database ``test``, or
``DARKBLOOM_TEST_PG_URL``); a test fails rather than skips when it is not.
Each test gets a fresh schema, dropped afterwards.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from darkbloom.server.store import Store, open_store

PG_URL = os.environ.get("DARKBLOOM_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture(params=["sqlite", "postgres"])
def store_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[object]:
    """A callable returning a fresh, unopened Store of the parametrized backend (same DB each call)."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'store.db'}"
        yield lambda: open_store(url)
        return
    schema = f"t_{uuid.uuid4().hex[:12]}"
    yield lambda: open_store(PG_URL, schema=schema)

    async def drop() -> None:
        conn = await asyncpg.connect(PG_URL)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await conn.close()

    asyncio.run(drop())


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


__all__ = ["Store", "run"]
