"""200 simultaneous requests from one key whose balance covers 100, over real sockets, on both backends.

A real coordinator (uvicorn on a free port) and a node speaking the real
WebSocket protocol that holds every request until all 200 have been
answered or dispatched, so all holds overlap: at most 100 may get in, the
balance never goes below zero, and the books balance afterwards.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import uvicorn
import websockets

from darkbloom.protocol import (
    Capacity,
    ChatMessage,
    Complete,
    InferenceRequest,
    ModelInfo,
    Register,
    SlotCapacity,
    Usage,
    decode,
    encode,
)
from darkbloom.server.app import create_app
from darkbloom.server.auth.keys import create_api_key
from darkbloom.server.billing import ledger
from darkbloom.server.billing.audit import assert_books_balance
from darkbloom.server.billing.pricing import Price, cost, worst_case
from darkbloom.server.settings import Settings
from darkbloom.server.store import money
from darkbloom.testing import free_port

PRICE = Price(input_per_m=1_000_000, output_per_m=3_000_000)
MESSAGES = [{"role": "user", "content": "hello there"}]
MAX_TOKENS = 40


def test_200_simultaneous_requests_with_money_for_100(store_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    async def scenario() -> None:
        setup = store_factory()
        await setup.migrate()
        key, record = await create_api_key(setup)
        per_request = worst_case(PRICE, tuple(ChatMessage(**m) for m in MESSAGES), MAX_TOKENS)
        await money.set_price(setup, "m1", PRICE, 0.0)
        await money.credit(setup, record.account_id, per_request * 100, ledger.ADMIN_CREDIT, "grant", 0.0)
        await setup.close()

        port = free_port()
        settings = Settings(home=tmp_path, port=port, rate_limit_rps=10_000, rate_limit_burst=10_000)
        server = uvicorn.Server(
            uvicorn.Config(
                create_app(settings, store=store_factory()), host="127.0.0.1", port=port, log_level="warning"
            )
        )
        serving = asyncio.create_task(server.serve())
        while not server.started:
            await asyncio.sleep(0.02)
        try:
            capacity = Capacity(
                capacity_seq=1,
                slots=(SlotCapacity(model="m1", max_concurrency=256, active_token_budget_max=10**7),),
                total_memory_gb=512,
            )
            async with websockets.connect(f"ws://127.0.0.1:{port}/v1/provider/ws") as ws:
                await ws.send(encode(Register(node_id="node-c", models=(ModelInfo(id="m1"),), capacity=capacity)))  # type: ignore[arg-type]
                decode(await ws.recv())
                received: list[str] = []
                statuses: list[int] = []
                auth = {"Authorization": f"Bearer {key}"}
                limits = httpx.Limits(max_connections=250, max_keepalive_connections=250)
                async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", limits=limits, timeout=120) as http:

                    async def one() -> None:
                        r = await http.post(
                            "/v1/chat/completions",
                            json={"model": "m1", "messages": MESSAGES, "max_tokens": MAX_TOKENS},
                            headers=auth,
                        )
                        statuses.append(r.status_code)

                    calls = [asyncio.create_task(one()) for _ in range(200)]

                    async def collect() -> None:
                        # Hold every admitted request until each of the 200 is dispatched here or refused.
                        while len(received) + len(statuses) < 200:
                            try:
                                frame = decode(await asyncio.wait_for(ws.recv(), 0.2))
                            except asyncio.TimeoutError:
                                continue
                            if isinstance(frame, InferenceRequest):
                                received.append(frame.request_id)

                    await asyncio.wait_for(collect(), 120)
                    assert len(received) <= 100, f"{len(received)} requests admitted with money for 100"
                    for rid in received:
                        await ws.send(
                            encode(Complete(request_id=rid, usage=Usage(prompt_tokens=5, completion_tokens=10)))
                        )
                    await asyncio.gather(*calls)
            assert len(received) == 100 and statuses.count(200) == 100
            assert statuses.count(402) == 100, sorted(set(statuses))
        finally:
            server.should_exit = True
            await serving

        check = store_factory()
        await check.migrate()
        try:
            await assert_books_balance(check)
            left = await money.balance(check, ledger.consumer(record.account_id))
            assert left == per_request * 100 - 100 * cost(PRICE, 5, 10)
            assert len(await money.usage_rows(check, record.account_id, 1000)) == 100
        finally:
            await check.close()

    asyncio.run(scenario())
