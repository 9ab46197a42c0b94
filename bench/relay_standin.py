"""A stand-in provider for the relay benchmark: no MLX, fixed-rate tokens, the real protocol.

    python -m bench.relay_standin node COORDINATOR_URL [--rate 50] [--tokens 100]
    python -m bench.relay_standin http PORT [--rate 50] [--tokens 100]

``node`` dials the coordinator's provider socket like ``darkbloom node``,
registers a model ``bench`` with room for 2,000 streams, heartbeats as a
real node does (a silent node is evicted), answers every
``inference_request`` with one chunk at once and then one every ``1/rate``
seconds, ``tokens`` in all, then ``complete``; a ``cancel`` stops the stream
and prints ``cancel <request_id> <time.monotonic()>`` on stdout. ``http``
serves the same stream straight over HTTP (SSE, the same chunk JSON the
coordinator sends): the "direct" baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

from darkbloom.protocol import (
    Cancel,
    Capacity,
    Chunk,
    Complete,
    Heartbeat,
    InferenceRequest,
    ModelInfo,
    Register,
    SlotCapacity,
    Usage,
    decode_many,
)
from darkbloom.node.sender import FrameSender


async def run_node(url: str, rate: float, tokens: int) -> None:
    import websockets

    ws_url = url.replace("http", "ws", 1).rstrip("/") + "/v1/provider/ws"
    cancelled: set[str] = set()
    async with websockets.connect(ws_url, max_size=16 * 1024 * 1024) as ws:
        cap = Capacity(capacity_seq=1, slots=(SlotCapacity(model="bench", max_concurrency=2000),))
        # As ``darkbloom node`` does: frames sent in one turn leave as one message.
        sender = FrameSender(lambda data: ws.send(data, text=True))
        await sender.send(Register(node_id="standin", models=(ModelInfo(id="bench"),), capacity=cap, frame_batches=True))  # type: ignore[arg-type]
        registered = decode_many(await ws.recv())[0]
        sender.batch = getattr(registered, "frame_batches", False)
        print("registered", flush=True)

        async def heartbeat() -> None:  # as a real node does: a silent node is evicted
            while True:
                await asyncio.sleep(getattr(registered, "heartbeat_interval_s", 5.0))
                await sender.send(Heartbeat(status="serving", capacity=cap))

        tasks: set[asyncio.Task[None]] = {asyncio.create_task(heartbeat())}

        async def stream(req: InferenceRequest) -> None:
            rid = req.request_id
            for seq in range(tokens):
                if rid in cancelled:
                    return
                await sender.send(Chunk(request_id=rid, seq=seq, text=" tok"))
                await asyncio.sleep(1 / rate)
            await sender.send(Complete(request_id=rid, usage=Usage(prompt_tokens=8, completion_tokens=tokens)))

        async for data in ws:
            for frame in decode_many(data):
                if isinstance(frame, InferenceRequest):
                    t = asyncio.create_task(stream(frame))
                    tasks.add(t)
                    t.add_done_callback(tasks.discard)
                elif isinstance(frame, Cancel):
                    cancelled.add(frame.request_id)
                    print(f"cancel {frame.request_id} {time.monotonic():.6f}", flush=True)


def direct_app(rate: float, tokens: int):  # type: ignore[no-untyped-def]
    """The direct baseline as an ASGI app: the same SSE stream, served by the stand-in itself."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import StreamingResponse
    from starlette.routing import Route

    from darkbloom.protocol.openai import chat_chunk
    from darkbloom.server.api.chat import sse

    async def chat(request: Request) -> StreamingResponse:
        await request.body()

        async def gen():  # type: ignore[no-untyped-def]
            for i in range(tokens):
                yield sse(chat_chunk("direct", "bench", 0, content=" tok", role=None if i else "assistant"))
                await asyncio.sleep(1 / rate)
            yield sse(chat_chunk("direct", "bench", 0, finish_reason="length"))
            yield b"data: [DONE]\n\n"

        return StreamingResponse(gen(), media_type="text/event-stream")

    return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])


def run_http(port: int, rate: float, tokens: int) -> None:
    import uvicorn

    app = direct_app(rate, tokens)
    print("listening", flush=True)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["node", "http"])
    ap.add_argument("target")
    ap.add_argument("--rate", type=float, default=50.0)
    ap.add_argument("--tokens", type=int, default=100)
    a = ap.parse_args()
    if a.mode == "node":
        import uvloop  # as the coordinator and the direct baseline (uvicorn) run on

        uvloop.run(run_node(a.target, a.rate, a.tokens))
    else:
        run_http(int(a.target), a.rate, a.tokens)


if __name__ == "__main__":
    sys.exit(main())
