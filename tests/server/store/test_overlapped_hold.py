"""A hold runs beside dispatch; if the ledger refuses it after all, the node stops and the consumer gets 402.

The coordinator learns a model's price from the store and from each hold.
A request for a model it last saw free is admitted from the reservation
book and dispatched while its hold is written. If the price changed
meanwhile (set from another process) and the consumer cannot pay, the hold
refuses: the node is told to cancel, the consumer of this non-streamed
request gets the 402 and nothing of the answer, and no hold is left open.
The next request knows the price and is refused before any node sees it.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import uvicorn
import websockets

from darkbloom.protocol import (
    Cancel,
    Capacity,
    Chunk,
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
from darkbloom.server.billing.audit import assert_books_balance
from darkbloom.server.billing.pricing import Price
from darkbloom.server.settings import Settings
from darkbloom.server.store import money
from darkbloom.testing import free_port


def test_a_hold_refused_after_dispatch_cancels_the_node_and_answers_402(store_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    async def scenario() -> None:
        setup = store_factory()
        await setup.migrate()
        key, record = await create_api_key(setup)  # no credit at all
        await setup.close()

        port = free_port()
        settings = Settings(home=tmp_path, port=port)
        server = uvicorn.Server(
            uvicorn.Config(create_app(settings, store=store_factory()), host="127.0.0.1", port=port, log_level="warning")
        )
        serving = asyncio.create_task(server.serve())
        while not server.started:
            await asyncio.sleep(0.02)
        try:
            cap = Capacity(capacity_seq=1, slots=(SlotCapacity(model="m1", max_concurrency=8),))
            async with websockets.connect(f"ws://127.0.0.1:{port}/v1/provider/ws") as ws:
                await ws.send(encode(Register(node_id="node-o", models=(ModelInfo(id="m1"),), capacity=cap)))  # type: ignore[arg-type]
                decode(await ws.recv())
                async with httpx.AsyncClient(
                    base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {key}"}, timeout=30
                ) as http:

                    def ask() -> asyncio.Task[httpx.Response]:
                        body = {"model": "m1", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 20}
                        return asyncio.create_task(http.post("/v1/chat/completions", json=body))

                    async def next_frame() -> object:
                        while True:
                            frame = decode(await asyncio.wait_for(ws.recv(), 10))
                            if isinstance(frame, (InferenceRequest, Cancel)):
                                return frame

                    # Free: answered, and the coordinator now believes m1 is free.
                    call = ask()
                    req = await next_frame()
                    assert isinstance(req, InferenceRequest)
                    await ws.send(encode(Chunk(request_id=req.request_id, seq=0, text="ok")))
                    await ws.send(encode(Complete(request_id=req.request_id, usage=Usage(prompt_tokens=3, completion_tokens=1))))
                    assert (await call).status_code == 200

                    # Priced behind its back; this request is dispatched while its hold is refused.
                    check = store_factory()
                    await check.migrate()
                    await money.set_price(check, "m1", Price(1_000_000, 1_000_000), time.time())
                    await check.close()
                    call = ask()
                    req = await next_frame()
                    assert isinstance(req, InferenceRequest)
                    await ws.send(encode(Chunk(request_id=req.request_id, seq=0, text="secret")))
                    cancel = await next_frame()
                    assert isinstance(cancel, Cancel) and cancel.request_id == req.request_id
                    refused = await call
                    assert refused.status_code == 402, refused.text
                    assert refused.json()["error"]["code"] == "insufficient_funds"
                    assert "secret" not in refused.text

                    # Now the price is known: refused before any node sees it.
                    refused = await ask()
                    assert refused.status_code == 402
                    try:
                        frame = decode(await asyncio.wait_for(ws.recv(), 0.5))
                    except asyncio.TimeoutError:
                        frame = None
                    assert not isinstance(frame, InferenceRequest), frame
        finally:
            server.should_exit = True
            await serving

        check = store_factory()
        await check.migrate()
        try:
            await assert_books_balance(check)
            assert await money.stale_holds(check, created_before=time.time() + 1) == []
            assert len(await money.usage_rows(check, record.account_id)) == 1
        finally:
            await check.close()

    asyncio.run(scenario())
