"""Where the coordinator's CPU goes per request, measured in process: intake (before the node has it) and in all.

    python -m bench.intake [--requests 3200] [--burst 32] [--profile FILE]

``bench.relay`` times whole requests over sockets, where a 32-stream burst's
TTFT is about 32 intakes deep: the coordinator takes in every request of the
burst before it relays any first token, so each microsecond of intake counts
twice at the median. This bench isolates that cost. It drives the real
coordinator app over ASGI (no uvicorn, no sockets: their cost is the same for
both rows) with API-key auth, a priced model, a funded key (every request
holds and settles in SQLite) and rate limits on, and a stand-in node on the
provider WebSocket route that answers each request with one chunk. The peer
row is ``bench.relay``'s direct stand-in app driven the same way.

Prints a markdown table: main-thread CPU per request (median of the bursts),
for the coordinator also its intake (from a burst's start until the node
holds all of it, per request), and the ratio to the direct app. With
``--profile FILE`` the coordinator's intake is also profiled (cProfile) into
FILE; ``python -m pstats FILE`` reads it.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from darkbloom.sim.report import table

BODY = json.dumps({"model": "bench", "messages": [{"role": "user", "content": "hi"}], "stream": True, "max_tokens": 10_000}).encode()
Send = Callable[[dict[str, Any]], Awaitable[None]]


def _scope(kind: str, path: str, headers: list[tuple[bytes, bytes]], **extra: Any) -> dict[str, Any]:
    return {
        "type": kind, "path": path, "raw_path": path.encode(), "headers": headers, "query_string": b"",
        "client": ("127.0.0.1", 40000), "server": ("127.0.0.1", 8420), "scheme": "http" if kind == "http" else "ws",
        "root_path": "", "asgi": {"version": "3.0"}, **extra,
    }  # fmt: skip


async def _request(app: Any, headers: list[tuple[bytes, bytes]]) -> None:
    """One streamed chat completion over ASGI, read to its end."""
    done = asyncio.Event()
    sent = False
    status: list[int] = []

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": BODY, "more_body": False}
        await done.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            status.append(message["status"])
        elif message["type"] == "http.response.body" and not message.get("more_body"):
            done.set()

    await app(_scope("http", "/v1/chat/completions", headers, method="POST", http_version="1.1"), receive, send)
    assert status == [200], status


async def _bursts(app: Any, headers: list[tuple[bytes, bytes]], requests: int, burst: int, on_burst: Callable[[], None]) -> list[float]:
    """Main-thread CPU per request of each burst (after three warm-up bursts)."""
    for _ in range(3):
        await asyncio.gather(*(_request(app, headers) for _ in range(burst)))
    per_request = []
    for _ in range(max(1, requests // burst)):
        on_burst()
        t0 = time.thread_time()
        await asyncio.gather(*(_request(app, headers) for _ in range(burst)))
        per_request.append((time.thread_time() - t0) / burst)
    return per_request


class StandInNode:
    """The provider WebSocket route driven over ASGI: registers, answers each request with one chunk.

    Notes the main thread's CPU time when the node holds every request of the current burst.
    """

    def __init__(self, app: Any, burst: int, profile: cProfile.Profile | None) -> None:
        self.app, self.burst, self.profile = app, burst, profile
        self.inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.registered = asyncio.Event()
        self.burst_started = 0.0
        self.seen = 0
        self.intake: list[float] = []
        self._pending: list[bytes] = []

    async def start(self) -> asyncio.Task[None]:
        from darkbloom.protocol import Capacity, ModelInfo, Register, SlotCapacity, encode

        cap = Capacity(capacity_seq=1, slots=(SlotCapacity(model="bench", max_concurrency=2000),))
        register = Register(node_id="standin", models=(ModelInfo(id="bench"),), capacity=cap, frame_batches=True)  # type: ignore[arg-type]
        self.inbox.put_nowait({"type": "websocket.connect"})
        self.inbox.put_nowait({"type": "websocket.receive", "bytes": encode(register)})
        task = asyncio.create_task(self.app(_scope("websocket", "/v1/provider/ws", [], subprotocols=[]), self.inbox.get, self._send))
        await self.registered.wait()
        return task

    def new_burst(self) -> None:
        self.burst_started = time.thread_time()
        if self.profile is not None:
            self.profile.enable()

    async def _send(self, message: dict[str, Any]) -> None:
        from darkbloom.protocol import Chunk, Complete, InferenceRequest, Usage, decode_many, encode

        if message["type"] != "websocket.send":
            return
        if not self.registered.is_set():
            self.registered.set()
            return
        for frame in decode_many(message.get("bytes") or message.get("text") or b""):
            if not isinstance(frame, InferenceRequest):
                continue
            self.seen += 1
            if self.seen % self.burst == 0:  # the node holds the whole burst: its intake is over
                self.intake.append((time.thread_time() - self.burst_started) / self.burst)
                if self.profile is not None:
                    self.profile.disable()
            if not self._pending:
                asyncio.get_running_loop().call_soon(self._flush)
            rid = frame.request_id
            self._pending += [
                encode(Chunk(request_id=rid, seq=0, text=" tok")),
                encode(Complete(request_id=rid, usage=Usage(prompt_tokens=8, completion_tokens=1))),
            ]

    def _flush(self) -> None:
        from darkbloom.protocol import join

        self.inbox.put_nowait({"type": "websocket.receive", "bytes": join(self._pending)})
        self._pending = []


async def coordinator_costs(requests: int, burst: int, profile: cProfile.Profile | None) -> tuple[list[float], list[float]]:
    from darkbloom.server.app import create_app
    from darkbloom.server.auth.admin import ensure_admin_key
    from darkbloom.server.auth.keys import create_key_in
    from darkbloom.server.billing.pricing import Price
    from darkbloom.server.settings import Settings
    from darkbloom.server.store import money, open_store

    home = Path(tempfile.mkdtemp(prefix="bench-intake-"))
    ensure_admin_key(home)  # made here, it is not printed when the app starts
    url = f"sqlite:///{home / 'c.db'}"
    key, _ = await create_key_in(url, credit_micro_usd=10**12)
    store = open_store(url)
    await store.migrate()
    await money.set_price(store, "bench", Price(500_000, 1_500_000), time.time())
    await store.close()
    app = create_app(Settings(home=home, db_url=url))
    headers = [
        (b"host", b"127.0.0.1"), (b"authorization", f"Bearer {key}".encode()),
        (b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode()),
    ]  # fmt: skip
    async with app.router.lifespan_context(app):
        node = StandInNode(app, burst, profile)
        task = await node.start()
        whole = await _bursts(app, headers, requests, burst, node.new_burst)
        task.cancel()
    return whole, node.intake[-len(whole) :]


async def direct_costs(requests: int, burst: int) -> list[float]:
    from bench.relay_standin import direct_app

    app = direct_app(rate=1e9, tokens=1)
    headers = [(b"host", b"127.0.0.1"), (b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())]
    return await _bursts(app, headers, requests, burst, lambda: None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=3200)
    ap.add_argument("--burst", type=int, default=32)
    ap.add_argument("--profile", type=Path, help="write a cProfile of the coordinator's intake here")
    args = ap.parse_args()
    # Rate limiting stays on (its cost is part of the path) but must not refuse the bench's own traffic.
    for name in ("RATE_LIMIT_RPS", "RATE_LIMIT_BURST", "INPUT_TOKENS_PER_MIN", "OUTPUT_TOKENS_PER_MIN"):
        os.environ[f"DARKBLOOM_{name}"] = "1000000000"
    from darkbloom import aio

    profile = cProfile.Profile() if args.profile else None

    async def both() -> tuple[list[float], list[float], list[float]]:
        whole, intake = await coordinator_costs(args.requests, args.burst, profile)
        return whole, intake, await direct_costs(args.requests, args.burst)

    whole, intake, direct = aio.run(both())  # uvloop and the GC tuning, as `darkbloom serve` runs
    med = statistics.median
    print(f"### Main-thread CPU per request, in process, bursts of {args.burst} one-chunk streams\n")
    print(table([
        {"app": "direct stand-in", "intake µs": "-", "whole request µs": f"{med(direct) * 1e6:.1f}", "ratio": "1.00x"},
        {
            "app": "coordinator", "intake µs": f"{med(intake) * 1e6:.1f}", "whole request µs": f"{med(whole) * 1e6:.1f}",
            "ratio": f"{med(whole) / med(direct):.2f}x",
        },
    ]))  # fmt: skip
    if profile is not None:
        profile.dump_stats(str(args.profile))
        print(f"\nintake profile: {args.profile} (python -m pstats {args.profile})")


if __name__ == "__main__":
    main()
