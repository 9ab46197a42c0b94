"""Settlements are written behind the answer, and every later read comes after them, on both backends.

A consumer's answer does not wait for its charge to reach the ledger: here
the database is even locked by another process when the node finishes, and
the answer still arrives; the charge lands once the lock is gone. A balance
or usage read sent after an answer ends includes that answer's charge,
although the settlement may wait (here: a minute) to share a commit.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx

from darkbloom.protocol import Chunk, Complete, InferenceRequest, Usage, encode
from darkbloom.server.billing import ledger
from darkbloom.server.billing.audit import assert_books_balance
from darkbloom.server.billing.pricing import cost
from darkbloom.server.store import Store, money
from tests.server.store.live import PER_REQUEST, PRICE, answer, body, coordinator, next_request, node


async def _poll(check: Any, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (found := await check()):
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)
    return found


def _grant(amount: int, *, pg_sleep_s: float) -> Callable[[Any], Awaitable[None]]:
    """An op crediting consumer ``a`` with ``amount``; on PostgreSQL it sleeps ``pg_sleep_s`` first."""

    async def op(tx: Any) -> None:
        if tx.dialect == "postgres":
            await tx.execute(f"SELECT pg_sleep({pg_sleep_s})")
        legs = [ledger.Leg(ledger.consumer("a"), amount, ledger.ADMIN_CREDIT), ledger.Leg(ledger.EXTERNAL_GRANTS, -amount, ledger.ADMIN_CREDIT)]
        await money.post(tx, legs, f"grant-{amount}", 1.0)

    return op


def test_a_transaction_sees_every_op_submitted_before_it(store_factory) -> None:  # type: ignore[no-untyped-def]
    async def scenario() -> None:
        store: Store = store_factory()
        await store.migrate()
        try:
            # On PostgreSQL the op starts at once: it sleeps so that it is still running when the read begins.
            written = store.submit(_grant(7, pg_sleep_s=0.3), defer_s=60)  # on SQLite it may wait a minute for company
            started = time.monotonic()
            assert await money.balance(store, ledger.consumer("a")) == 7
            assert time.monotonic() - started < 10, "the read pushed the queued write out instead of waiting out its delay"
            assert written.done() and written.exception() is None
        finally:
            await store.close()

    asyncio.run(scenario())


def test_closing_the_store_writes_every_op_submitted_before_it(store_factory) -> None:  # type: ignore[no-untyped-def]
    """A coordinator shutting down right after its last answers still books their settlements."""

    async def scenario() -> None:
        store: Store = store_factory()
        await store.migrate()
        # More ops than the pool has connections, those on PostgreSQL still running when close() begins.
        written = [store.submit(_grant(n, pg_sleep_s=0.05), defer_s=60) for n in range(1, 41)]
        await store.close()
        assert all(w.done() and w.exception() is None for w in written), [w.exception() for w in written if w.done() and w.exception()]
        again: Store = store_factory()
        await again.migrate()
        try:
            assert await money.balance(again, ledger.consumer("a")) == sum(range(1, 41))
            await assert_books_balance(again)
        finally:
            await again.close()

    asyncio.run(scenario())


def test_an_answer_does_not_wait_for_its_settlement_to_be_written(store_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    async def scenario() -> None:
        async with coordinator(store_factory, tmp_path, credit=3 * PER_REQUEST) as (port, key, account):
            ws = await node(port)
            other = store_factory()
            await other.migrate()
            try:
                async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {key}"}, timeout=30) as http:
                    call = asyncio.create_task(http.post("/v1/chat/completions", json=body(False)))
                    req = await next_request(ws)
                    assert isinstance(req, InferenceRequest)
                    await ws.send(encode(Chunk(request_id=req.request_id, seq=0, text="ok")))

                    async def held() -> bool:
                        async with other.transaction() as tx:
                            return await tx.fetchone("SELECT state FROM holds WHERE request_id = ?", req.request_id) == ("held",)

                    await _poll(held)
                    async with other.transaction() as tx:  # another process holds the database (and the hold's row)
                        await tx.fetchone("SELECT state FROM holds WHERE request_id = ?" + tx.lock, req.request_id)
                        await tx.execute("UPDATE holds SET state = state WHERE request_id = ?", req.request_id)
                        await ws.send(encode(Complete(request_id=req.request_id, usage=Usage(prompt_tokens=3, completion_tokens=1))))
                        resp = await asyncio.wait_for(call, 5)  # answered while the charge cannot be written
                        assert resp.status_code == 200
                        assert resp.json()["choices"][0]["message"]["content"] == "ok"

                    async def settled() -> list[dict[str, Any]]:
                        return await money.usage_rows(other, account)

                    rows = await _poll(settled)  # written once the lock is gone
                    assert [r["request_id"] for r in rows] == [req.request_id]
                    charge = cost(PRICE, 3, 1, 100)
                    assert await money.balance(other, ledger.consumer(account)) == 3 * PER_REQUEST - charge
                    await assert_books_balance(other)
            finally:
                await other.close()
            await ws.close()

    asyncio.run(scenario())


def test_a_balance_read_after_the_answer_includes_its_charge(store_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    async def scenario() -> None:
        # Settlements may wait a minute for company here; a read must not see the ledger without them.
        async with coordinator(store_factory, tmp_path, credit=3 * PER_REQUEST, settle_write_delay_s=60) as (port, key, account):
            ws = await node(port)
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {key}"}, timeout=30) as http:
                before = (await http.get("/v1/balance")).json()["balance_micro_usd"]

                async def consume() -> list[str]:
                    async with http.stream("POST", "/v1/chat/completions", json=body(True)) as resp:
                        return [line async for line in resp.aiter_lines() if line.startswith("data: ")]

                consumer = asyncio.create_task(consume())
                req = await next_request(ws)
                assert isinstance(req, InferenceRequest)
                await ws.send(encode(Chunk(request_id=req.request_id, seq=0, text="ok")))
                await ws.send(encode(Complete(request_id=req.request_id, usage=Usage(prompt_tokens=3, completion_tokens=1))))
                assert (await asyncio.wait_for(consumer, 10))[-1] == "data: [DONE]"
                started = time.monotonic()
                after = (await http.get("/v1/balance")).json()["balance_micro_usd"]
                usage = (await http.get("/v1/usage")).json()["data"]
                assert time.monotonic() - started < 10
                assert before - after == cost(PRICE, 3, 1, 100) > 0
                assert [row["request_id"] for row in usage] == [req.request_id]
            await ws.close()

    asyncio.run(scenario())


_REFUSE_USAGE = {
    "sqlite": ["CREATE TRIGGER refuse BEFORE INSERT ON usage_records BEGIN SELECT RAISE(ABORT, 'the disk says no'); END"],
    "postgres": [
        "CREATE FUNCTION refuse() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION 'the disk says no'; END $$ LANGUAGE plpgsql",
        "CREATE TRIGGER refuse BEFORE INSERT ON usage_records FOR EACH ROW EXECUTE FUNCTION refuse()",
    ],
}


def test_a_settlement_the_database_refuses_is_logged_and_its_hold_released_later(store_factory, tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    async def scenario() -> None:
        async with coordinator(store_factory, tmp_path, credit=3 * PER_REQUEST) as (port, key, account):
            ws = await node(port)
            other = store_factory()
            await other.migrate()
            try:
                async with other.transaction() as tx:
                    for stmt in _REFUSE_USAGE[tx.dialect]:
                        await tx.execute(stmt)
                async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {key}"}, timeout=30) as http:
                    assert await answer(ws, http) == 200  # the consumer has the answer; its charge cannot be written

                    async def logged() -> bool:
                        return any("failed; its hold stays open" in r.getMessage() for r in caplog.records)

                    await _poll(logged)
                    held = await money.stale_holds(other, created_before=time.time() + 1)
                    assert len(held) == 1, "the refused settlement rolled back whole: the hold is still open"
                    async with other.transaction() as tx:
                        await tx.execute("DROP TRIGGER refuse" + (" ON usage_records" if tx.dialect == "postgres" else ""))
                    # The book forgot the account; the next request reloads it and is charged as usual.
                    assert await answer(ws, http) == 200
                    rows = await _poll(lambda: money.usage_rows(other, account))
                    assert len(rows) == 1
                for rid in held:  # what the stale-hold sweep does once the hold is old enough
                    assert await money.release_hold(other, rid, time.time())
                charge = cost(PRICE, 3, 1, 100)
                assert await money.balance(other, ledger.consumer(account)) == 3 * PER_REQUEST - charge  # the first was free
                await assert_books_balance(other)
            finally:
                await other.close()
            await ws.close()

    caplog.set_level("ERROR", logger="darkbloom.server.billing.hook")
    asyncio.run(scenario())
