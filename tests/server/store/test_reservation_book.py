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
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import uvicorn
import websockets

from darkbloom.protocol import Cancel, Capacity, ChatMessage, Chunk, Complete, InferenceRequest, ModelInfo, Register, SlotCapacity, Usage, decode, encode
from darkbloom.server.app import create_app
from darkbloom.server.auth.keys import create_api_key
from darkbloom.server.billing import ledger
from darkbloom.server.billing.audit import assert_books_balance
from darkbloom.server.billing.ledger import Leg
from darkbloom.server.billing.pricing import Price, worst_case
from darkbloom.server.settings import Settings
from darkbloom.server.store import money
from darkbloom.testing import free_port

PRICE = Price(input_per_m=1_000_000, output_per_m=1_000_000)
MESSAGES = [{"role": "user", "content": "hi"}]
PER_REQUEST = worst_case(PRICE, tuple(ChatMessage(**m) for m in MESSAGES), 20)


@asynccontextmanager
async def _coordinator(store_factory: Any, tmp_path: Path, credit: int, hold_write_delay_s: float | None = None) -> AsyncIterator[tuple[int, str, str]]:
    setup = store_factory()
    await setup.migrate()
    key, record = await create_api_key(setup)
    await money.set_price(setup, "m1", PRICE, 0.0)
    await money.credit(setup, record.account_id, credit, ledger.ADMIN_CREDIT, "grant", 0.0)
    await setup.close()
    port = free_port()
    app = create_app(Settings(home=tmp_path, port=port), store=store_factory())
    if hold_write_delay_s is not None:
        app.state.billing.hold_write_delay_s = hold_write_delay_s
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    serving = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.02)
    try:
        yield port, key, record.account_id
    finally:
        server.should_exit = True
        await serving


async def _node(port: int) -> websockets.ClientConnection:
    ws = await websockets.connect(f"ws://127.0.0.1:{port}/v1/provider/ws")
    cap = Capacity(capacity_seq=1, slots=(SlotCapacity(model="m1", max_concurrency=8),))
    await ws.send(encode(Register(node_id="node-b", models=(ModelInfo(id="m1"),), capacity=cap)))  # type: ignore[arg-type]
    decode(await ws.recv())
    return ws


async def _next(ws: websockets.ClientConnection) -> object:
    while True:
        frame = decode(await asyncio.wait_for(ws.recv(), 10))
        if isinstance(frame, (InferenceRequest, Cancel)):
            return frame


def _body(stream: bool) -> dict[str, Any]:
    return {"model": "m1", "messages": MESSAGES, "max_tokens": 20, "stream": stream}


async def _answer(ws: websockets.ClientConnection, http: httpx.AsyncClient) -> int:
    call = asyncio.create_task(http.post("/v1/chat/completions", json=_body(False)))
    req = await _next(ws)
    assert isinstance(req, InferenceRequest)
    await ws.send(encode(Chunk(request_id=req.request_id, seq=0, text="ok")))
    await ws.send(encode(Complete(request_id=req.request_id, usage=Usage(prompt_tokens=3, completion_tokens=1))))
    return (await call).status_code


def test_a_hold_the_ledger_refuses_mid_answer_ends_the_stream_with_402_and_charges_nothing(store_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    async def scenario() -> None:
        async with _coordinator(store_factory, tmp_path, credit=3 * PER_REQUEST) as (port, key, account):
            ws = await _node(port)
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {key}"}, timeout=30) as http:
                assert await _answer(ws, http) == 200  # the coordinator now knows this consumer

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
                            async with http.stream("POST", "/v1/chat/completions", json=_body(True)) as resp:
                                assert resp.status_code == 200
                                async for line in resp.aiter_lines():
                                    if line.startswith("data: "):
                                        events.append(line[6:])
                                        first_seen.set()
                            return events

                        consumer = asyncio.create_task(consume())
                        req = await _next(ws)  # dispatched with the database locked: admitted from the book
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
                cancel = await _next(ws)
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
        async with _coordinator(store_factory, tmp_path, credit=PER_REQUEST) as (port, key, account):
            ws = await _node(port)
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {key}"}, timeout=30) as http:
                assert await _answer(ws, http) == 200  # the book now has less than one request's worth left
                other = store_factory()
                await other.migrate()
                await money.credit(other, account, 5 * PER_REQUEST, ledger.ADMIN_CREDIT, "top-up", time.time())
                await other.close()
                assert await _answer(ws, http) == 200
            await ws.close()

    asyncio.run(scenario())


def test_a_consumer_hanging_up_cancels_the_node_at_once_even_before_its_hold_is_written(store_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    async def scenario() -> None:
        async with _coordinator(store_factory, tmp_path, credit=3 * PER_REQUEST) as (port, key, account):
            ws = await _node(port)
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {key}"}, timeout=30) as http:
                assert await _answer(ws, http) == 200
                other = store_factory()
                await other.migrate()
                try:
                    async with other.transaction() as tx:  # the database is locked: no hold can be written now
                        await tx.fetchone("SELECT balance FROM ledger_balances WHERE account = ?" + tx.lock, ledger.consumer(account))
                        await tx.execute("UPDATE ledger_balances SET balance = balance WHERE account = ?", ledger.consumer(account))
                        body = json.dumps(_body(False)).encode()
                        reader, writer = await asyncio.open_connection("127.0.0.1", port)
                        writer.write(
                            f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
                            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body
                        )
                        req = await _next(ws)
                        assert isinstance(req, InferenceRequest)
                        await ws.send(encode(Chunk(request_id=req.request_id, seq=0, text="partial")))
                        await asyncio.sleep(0.2)  # the coordinator has the first token and is collecting the rest
                        writer.transport.abort()  # the consumer hangs up
                        cancel = await _next(ws)  # heard while the hold still waits for the database
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
        async with _coordinator(store_factory, tmp_path, credit=3 * PER_REQUEST, hold_write_delay_s=60) as (port, key, account):
            ws = await _node(port)
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {key}"}, timeout=30) as http:
                assert await asyncio.wait_for(_answer(ws, http), 10) == 200
                assert await asyncio.wait_for(_answer(ws, http), 10) == 200
            await ws.close()
        check = store_factory()
        await check.migrate()
        try:
            await assert_books_balance(check)
            assert len(await money.usage_rows(check, account)) == 2
        finally:
            await check.close()

    asyncio.run(scenario())
