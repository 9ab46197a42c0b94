"""A live coordinator on the parametrized store, with one hand-driven node: for the billing tests on both backends."""

from __future__ import annotations

import asyncio
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
from darkbloom.server.billing.pricing import Price, worst_case
from darkbloom.server.settings import Settings
from darkbloom.server.store import money
from darkbloom.testing import free_port

PRICE = Price(input_per_m=1_000_000, output_per_m=1_000_000)
MESSAGES = [{"role": "user", "content": "hi"}]
PER_REQUEST = worst_case(PRICE, tuple(ChatMessage(**m) for m in MESSAGES), 20)


@asynccontextmanager
async def coordinator(
    store_factory: Any, tmp_path: Path, credit: int, hold_write_delay_s: float | None = None, settle_write_delay_s: float | None = None
) -> AsyncIterator[tuple[int, str, str]]:
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
    if settle_write_delay_s is not None:
        app.state.billing.settle_write_delay_s = settle_write_delay_s
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    serving = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.02)
    try:
        yield port, key, record.account_id
    finally:
        server.should_exit = True
        await serving


async def node(port: int) -> websockets.ClientConnection:
    ws = await websockets.connect(f"ws://127.0.0.1:{port}/v1/provider/ws")
    cap = Capacity(capacity_seq=1, slots=(SlotCapacity(model="m1", max_concurrency=8),))
    await ws.send(encode(Register(node_id="node-b", models=(ModelInfo(id="m1"),), capacity=cap)))  # type: ignore[arg-type]
    decode(await ws.recv())
    return ws


async def next_request(ws: websockets.ClientConnection) -> object:
    while True:
        frame = decode(await asyncio.wait_for(ws.recv(), 10))
        if isinstance(frame, (InferenceRequest, Cancel)):
            return frame


def body(stream: bool) -> dict[str, Any]:
    return {"model": "m1", "messages": MESSAGES, "max_tokens": 20, "stream": stream}


async def answer(ws: websockets.ClientConnection, http: httpx.AsyncClient) -> int:
    call = asyncio.create_task(http.post("/v1/chat/completions", json=body(False)))
    req = await next_request(ws)
    assert isinstance(req, InferenceRequest)
    await ws.send(encode(Chunk(request_id=req.request_id, seq=0, text="ok")))
    await ws.send(encode(Complete(request_id=req.request_id, usage=Usage(prompt_tokens=3, completion_tokens=1))))
    return (await call).status_code
