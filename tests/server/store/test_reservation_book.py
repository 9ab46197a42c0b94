"""Admission from the reservation book, against the ledger as the authority, on both backends.

A consumer the coordinator already knows is admitted (and its request
dispatched) without a database round trip: here the database is even locked
by another process's transaction at the time. When that transaction had
taken the consumer's money, the hold written behind the request is refused:
the stream, already under way, ends with the 402, the node is told to
cancel, nothing is charged and the books balance. Money added from another
process is found before a 402: the book is re-read from the database first.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import httpx

from darkbloom.protocol import Cancel, Chunk, InferenceRequest, encode
from darkbloom.server.billing import ledger
from darkbloom.server.billing.audit import assert_books_balance
from darkbloom.server.billing.ledger import Leg
from darkbloom.server.store import money
from tests.server.store.live import PER_REQUEST, answer, body, coordinator, next_request, node

def test_a_hold_the_ledger_refuses_mid_answer_ends_the_stream_with_402_and_charges_nothing(store_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    async def scenario() -> None:
        async with coordinator(store_factory, tmp_path, credit=3 * PER_REQUEST) as (port, key, account):
            ws = await node(port)
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {key}"}, timeout=30) as http:
                assert await answer(ws, http) == 200  # the coordinator now knows this consumer

                other = store_factory()  # another process takes the money, holding the database meanwhile
                await other.migrate()
                try:
                    async with other.transaction() as tx:
                        left = await tx.fetchone("SELECT balance FROM ledger_balances WHERE account = ?" + tx.lock, ledger.consumer(account))
                        assert left is not None
                        legs = [Leg(ledger.consumer(account), -int(left[0]), ledger.ADMIN_CREDIT), Leg(ledger.EXTERNAL_GRANTS, int(left[0]), ledger.ADMIN_CREDIT)]
                        await money.post(tx, legs, "clawback", time.time())
                        first_seen = asyncio.Event()

                        async def consume() -> list[str]:
                            events: list[str] = []
                            async with http.stream("POST", "/v1/chat/completions", json=body(True)) as resp:
                                assert resp.status_code == 200
                                async for line in resp.aiter_lines():
                                    if line.startswith("data: "):
                                        events.append(line[6:])
                                        first_seen.set()
                            return events

                        consumer = asyncio.create_task(consume())
                        req = await next_request(ws)  # dispatched with the database locked: admitted from the book
                        assert isinstance(req, InferenceRequest)
                        await ws.send(encode(Chunk(request_id=req.request_id, seq=0, text="first")))
                        await asyncio.wait_for(first_seen.wait(), 10)
                    # The clawback commits as the block ends; the hold written behind the request then fails.
                    events = await asyncio.wait_for(consumer, 20)
                finally:
                    await other.close()
                assert json.loads(events[0])["choices"][0]["delta"]["content"] == "first"
                assert "[DONE]" not in events
                assert json.loads(events[-1])["error"]["code"] == "insufficient_funds"
                cancel = await next_request(ws)
                assert isinstance(cancel, Cancel) and cancel.request_id == req.request_id
            await ws.close()

        check = store_factory()
        await check.migrate()
        try:
            await assert_books_balance(check)
            assert await money.stale_holds(check, created_before=time.time() + 1) == []
            assert len(await money.usage_rows(check, account)) == 1  # only the first request was charged
        finally:
            await check.close()

    asyncio.run(scenario())


def test_money_added_from_another_process_is_found_before_a_402(store_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    async def scenario() -> None:
        async with coordinator(store_factory, tmp_path, credit=PER_REQUEST) as (port, key, account):
            ws = await node(port)
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {key}"}, timeout=30) as http:
                assert await answer(ws, http) == 200  # the book now has less than one request's worth left
                other = store_factory()
                await other.migrate()
                await money.credit(other, account, 5 * PER_REQUEST, ledger.ADMIN_CREDIT, "top-up", time.time())
                await other.close()
                assert await answer(ws, http) == 200
            await ws.close()

    asyncio.run(scenario())


def test_a_consumer_hanging_up_cancels_the_node_at_once_even_before_its_hold_is_written(store_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    async def scenario() -> None:
        async with coordinator(store_factory, tmp_path, credit=3 * PER_REQUEST) as (port, key, account):
            ws = await node(port)
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {key}"}, timeout=30) as http:
                assert await answer(ws, http) == 200
                other = store_factory()
                await other.migrate()
                try:
                    async with other.transaction() as tx:  # the database is locked: no hold can be written now
                        await tx.fetchone("SELECT balance FROM ledger_balances WHERE account = ?" + tx.lock, ledger.consumer(account))
                        await tx.execute("UPDATE ledger_balances SET balance = balance WHERE account = ?", ledger.consumer(account))
                        payload = json.dumps(body(False)).encode()
                        reader, writer = await asyncio.open_connection("127.0.0.1", port)
                        writer.write(
                            f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
                            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n".encode() + payload
                        )
                        req = await next_request(ws)
                        assert isinstance(req, InferenceRequest)
                        await ws.send(encode(Chunk(request_id=req.request_id, seq=0, text="partial")))
                        await asyncio.sleep(0.2)  # the coordinator has the first token and is collecting the rest
                        writer.transport.abort()  # the consumer hangs up
                        cancel = await next_request(ws)  # heard while the hold still waits for the database
                        assert isinstance(cancel, Cancel) and cancel.request_id == req.request_id
                finally:
                    await other.close()
            await ws.close()

        check = store_factory()
        await check.migrate()
        try:
            await assert_books_balance(check)
            assert await money.stale_holds(check, created_before=time.time() + 1) == []  # released once written
        finally:
            await check.close()

    asyncio.run(scenario())


def test_an_answer_that_ends_before_its_hold_is_written_has_it_written_at_once(store_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    async def scenario() -> None:
        # Holds may wait a minute for company here; an answer that is already complete must not.
        async with coordinator(store_factory, tmp_path, credit=3 * PER_REQUEST, hold_write_delay_s=60) as (port, key, account):
            ws = await node(port)
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {key}"}, timeout=30) as http:
                assert await asyncio.wait_for(answer(ws, http), 10) == 200
                assert await asyncio.wait_for(answer(ws, http), 10) == 200
            await ws.close()
        check = store_factory()
        await check.migrate()
        try:
            await assert_books_balance(check)
            assert len(await money.usage_rows(check, account)) == 2
        finally:
            await check.close()

    asyncio.run(scenario())
