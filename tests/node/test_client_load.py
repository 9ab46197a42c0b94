"""The node answers the coordinator's load_model / unload_model over a real socket.

The coordinator does not send these commands yet (its warm pool is another
issue), so a small server here speaks the real protocol on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import anyio
import msgspec
import pytest
import websockets

from darkbloom.node.client import NodeSession
from darkbloom.node.memory import GiB, MemoryPolicy
from darkbloom.node.models.local import describe
from darkbloom.node.slots import SlotManager, mlx_engine_factory
from darkbloom.protocol import (
    Cancel,
    Complete,
    Hardware,
    Heartbeat,
    InferenceRequest,
    LoadModel,
    LoadModelStatus,
    Register,
    Registered,
    UnloadModel,
    decode,
    encode,
)
from darkbloom.protocol.frames import ChatMessage, SamplingParams
from tests.node.conftest import copy_model

pytestmark = pytest.mark.anyio


async def test_load_and_unload_commands_are_answered_and_requests_load_on_demand(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    models = {}
    for name in ("alpha", "beta"):
        path = copy_model(tiny_model_dir, tmp_path / name)
        models[name] = (path, describe(path)[0])
    big = copy_model(tiny_model_dir, tmp_path / "huge")
    info = describe(big)[0]
    models["huge"] = (
        big,
        type(info)(**{**{f: getattr(info, f) for f in info.__struct_fields__}, "size_bytes": 100 * GiB}),
    )
    slots = SlotManager(models, 64 * GiB, mlx_engine_factory(2), policy=MemoryPolicy())
    frames: asyncio.Queue = asyncio.Queue()
    commands: asyncio.Queue = asyncio.Queue()

    async def coordinator(ws: websockets.ServerConnection) -> None:
        reg = decode(await ws.recv())
        assert isinstance(reg, Register)
        await ws.send(encode(Registered(node_id=reg.node_id, heartbeat_interval_s=60)), text=True)

        async def pump() -> None:
            while True:
                await ws.send(encode(await commands.get()), text=True)

        sender = asyncio.create_task(pump())
        try:
            async for data in ws:
                await frames.put(decode(data))
        finally:
            sender.cancel()

    async def expect(kind: type, model: str | None = None):  # type: ignore[no-untyped-def]
        with anyio.fail_after(30):
            while True:
                f = await frames.get()
                if isinstance(f, kind) and (model is None or getattr(f, "model", None) == model):
                    return f

    async with websockets.serve(coordinator, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        session = NodeSession(
            f"http://127.0.0.1:{port}", "node-1", slots, tuple(i for _p, i in models.values()), Hardware()
        )
        task = asyncio.create_task(session.run_forever())
        try:
            await commands.put(LoadModel(model="alpha"))
            assert (await expect(LoadModelStatus, "alpha")).status == "started"
            assert (await expect(LoadModelStatus, "alpha")).status == "loaded"
            hb = await expect(Heartbeat)
            assert [(s.model, s.state) for s in hb.capacity.slots] == [("alpha", "idle")]

            await commands.put(LoadModel(model="huge"))
            await expect(LoadModelStatus, "huge")  # started
            failed = await expect(LoadModelStatus, "huge")
            assert (
                failed.status == "load_failed"
                and "exceed the memory cap" in failed.reason
                and "100.00 GiB" in failed.reason
            )

            await commands.put(UnloadModel(model="alpha"))
            assert (await expect(LoadModelStatus, "alpha")).status == "unloaded"
            assert slots.slots["alpha"].state == "idle_shutdown"

            # A request for an unloaded model on disk loads it, then serves.
            req = InferenceRequest(
                request_id="r1",
                model="beta",
                messages=(ChatMessage(role="user", content="hi"),),  # type: ignore[arg-type]
                params=SamplingParams(max_tokens=3, temperature=0),
            )
            await commands.put(req)
            done = await expect(Complete)
            assert done.usage.completion_tokens == 3 and slots.slots["beta"].state in ("idle", "running")

            # A cancel that arrives while the request waits for its model to load still ends it.
            real = slots.factory

            def slow(*args):  # type: ignore[no-untyped-def]
                time.sleep(1.0)
                return real(*args)

            slots.factory = slow
            await commands.put(UnloadModel(model="beta"))
            await expect(LoadModelStatus, "beta")
            await commands.put(msgspec.structs.replace(req, request_id="r2"))
            await asyncio.sleep(0.2)
            await commands.put(Cancel(request_id="r2"))  # type: ignore[arg-type]
            cancelled = await expect(Complete)
            assert (cancelled.request_id, cancelled.finish_reason, cancelled.usage.completion_tokens) == (
                "r2",
                "cancelled",
                0,
            )
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await slots.close()
