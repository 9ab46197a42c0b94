"""A real coordinator on a localhost socket (uvicorn in a thread) and a scripted node speaking the real protocol."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import websockets

from darkbloom.protocol import Chunk, Complete, ModelInfo, Register, Usage, decode, encode
from darkbloom.protocol.frames import InferenceRequest
from darkbloom.server.auth.admin import read_admin_key
from darkbloom.server.auth.keys import create_key_in
from darkbloom.server.runner import uvicorn_server
from darkbloom.server.settings import Settings
from darkbloom.testing import free_port, wait_http


@dataclass
class Served:
    url: str
    key: str
    admin_key: str
    app: Any


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    settings = Settings(home=tmp_path, db_url=f"sqlite:///{tmp_path / 'c.db'}", port=free_port())
    key, _ = asyncio.run(create_key_in(settings.db_url))
    server = uvicorn_server(settings, log_level="warning")
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{settings.port}"
    try:
        wait_http(f"{url}/health", timeout=30)
        deadline = time.monotonic() + 10
        while read_admin_key(tmp_path) is None and time.monotonic() < deadline:
            time.sleep(0.05)
        yield Served(url, key, read_admin_key(tmp_path) or "", server.config.app)
    finally:
        server.should_exit = True
        thread.join(15)


@contextlib.asynccontextmanager
async def scripted_node(
    url: str, node_id: str = "node-scripted", model: str = "m1", reply: tuple[str, ...] = ("Hel", "lo")
) -> AsyncIterator[None]:
    """A node that answers every request with ``reply`` and a ``complete``."""
    ws_url = url.replace("http://", "ws://") + "/v1/provider/ws"
    async with websockets.connect(ws_url) as ws:
        await ws.send(encode(Register(node_id=node_id, models=(ModelInfo(id=model),))))  # type: ignore[arg-type]
        decode(await ws.recv())

        async def serve() -> None:
            async for data in ws:
                frame = decode(data)
                if isinstance(frame, InferenceRequest):
                    for i, piece in enumerate(reply):
                        await ws.send(encode(Chunk(request_id=frame.request_id, seq=i, text=piece)))
                    await ws.send(
                        encode(
                            Complete(
                                request_id=frame.request_id, usage=Usage(prompt_tokens=3, completion_tokens=len(reply))
                            )
                        )
                    )

        task = asyncio.create_task(serve())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, websockets.ConnectionClosed):
                await task
