"""``Store.run``: one transaction per op, on SQLite group-committed with the ops waiting beside it.

An op that fails rolls back its own writes and nothing else; overlapping
holds never overdraw; an op that awaits anything but its transaction is
refused with a clear error rather than hanging the database thread.
"""

from __future__ import annotations

import asyncio

import pytest

from darkbloom.server.auth.keys import create_api_key
from darkbloom.server.billing import ledger
from darkbloom.server.billing.audit import assert_books_balance
from darkbloom.server.billing.ledger import InsufficientFunds
from darkbloom.server.store import money

from .conftest import run


async def _write_price(tx, model: str) -> str:  # type: ignore[no-untyped-def]
    await tx.execute(
        "INSERT INTO prices (model, input_micro_usd_per_m, output_micro_usd_per_m, updated_at) VALUES (?, 1, 1, 0)", model
    )
    return model


async def _write_then_fail(tx) -> None:  # type: ignore[no-untyped-def]
    await _write_price(tx, "doomed")
    raise ValueError("this op changed its mind")


def test_a_failing_op_rolls_back_only_its_own_writes(store_factory) -> None:  # type: ignore[no-untyped-def]
    async def scenario() -> None:
        store = store_factory()
        await store.migrate()
        try:
            results = await asyncio.gather(
                store.run(lambda tx: _write_price(tx, "before")),
                store.run(_write_then_fail),
                store.run(lambda tx: _write_price(tx, "after")),
                return_exceptions=True,
            )
            assert results[0] == "before" and results[2] == "after"
            assert isinstance(results[1], ValueError) and "changed its mind" in str(results[1])
            assert set(await money.list_prices(store)) == {"before", "after"}
        finally:
            await store.close()

    run(scenario())


def test_overlapping_holds_never_overdraw(store_factory) -> None:  # type: ignore[no-untyped-def]
    async def scenario() -> None:
        store = store_factory()
        await store.migrate()
        try:
            _, record = await create_api_key(store)
            await money.credit(store, record.account_id, 20 * 1_000, ledger.ADMIN_CREDIT, "grant", 0.0)
            results = await asyncio.gather(
                *(money.place_hold(store, f"r{i}", record.account_id, "m", 1_000, "c", 0.0) for i in range(50)),
                return_exceptions=True,
            )
            assert sum(r is True for r in results) == 20
            assert all(isinstance(r, InsufficientFunds) for r in results if r is not True)
            assert await money.balance(store, ledger.consumer(record.account_id)) == 0
            assert len(await money.stale_holds(store, created_before=1.0)) == 20  # the refused left no hold row
            await assert_books_balance(store)
        finally:
            await store.close()

    run(scenario())


def test_sqlite_refuses_an_op_that_awaits_something_else(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from darkbloom.server.store import open_store

    async def naps(tx) -> None:  # type: ignore[no-untyped-def]
        await asyncio.sleep(0)

    async def scenario() -> None:
        store = open_store(f"sqlite:///{tmp_path / 's.db'}")
        await store.migrate()
        try:
            with pytest.raises(RuntimeError, match="awaited something other than its transaction"):
                await asyncio.wait_for(store.run(naps), 5)
            assert await store.run(lambda tx: _write_price(tx, "still works")) == "still works"
        finally:
            await store.close()

    run(scenario())
