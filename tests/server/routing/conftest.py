"""A coordinator on a real localhost socket, and scriptable stand-in nodes speaking the real protocol."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn
from websockets.sync.client import ClientConnection, connect

from darkbloom.protocol import Capacity, Frame, Hardware, ModelInfo, Register, Registered, SlotCapacity, decode, encode
from darkbloom.server.app import create_app
from darkbloom.server.auth.keys import create_key_in
from darkbloom.server.settings import Settings
from darkbloom.testing import free_port
from tests.server.conftest import RecordingHook


@dataclass
class Live:
    base_url: str
    key: str
    hook: RecordingHook
    app: object

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    @property
    def fleet(self):  # type: ignore[no-untyped-def]
        return self.app.state.fleet  # type: ignore[attr-defined]

    def post(self, body: dict, timeout: float = 30) -> httpx.Response:  # type: ignore[type-arg]
        return httpx.post(f"{self.base_url}/v1/chat/completions", json=body, headers=self.auth, timeout=timeout)


def live_coordinator(tmp_path: Path, settings_kw: dict | None = None) -> Iterator[Live]:  # type: ignore[type-arg]
    port = free_port()
    settings = Settings(home=tmp_path, db_url=f"sqlite:///{tmp_path / 'c.db'}", port=port, **(settings_kw or {}))
    key, _ = asyncio.run(create_key_in(settings.db_url))
    hook = RecordingHook()
    app = create_app(settings, hooks=[hook])
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", timeout_graceful_shutdown=2))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline:
            raise TimeoutError("coordinator did not start")
        time.sleep(0.02)
    try:
        yield Live(f"http://127.0.0.1:{port}", key, hook, app)
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture
def live(tmp_path: Path) -> Iterator[Live]:
    yield from live_coordinator(tmp_path)


class StandIn:
    """A node that speaks the real protocol over a real WebSocket; the test scripts its answers."""

    def __init__(
        self,
        live: Live,
        node_id: str,
        model: str = "m1",
        max_concurrency: int = 4,
        budget: int = 0,
        *,
        on_disk: tuple[ModelInfo, ...] = (),
        free_for_load_gb: float | None = None,
    ) -> None:
        # Entered as a context manager, as websockets wants; ``close`` exits it.
        self.ws: ClientConnection = connect(live.base_url.replace("http", "ws") + "/v1/provider/ws").__enter__()
        slot = SlotCapacity(model=model, max_concurrency=max_concurrency, active_token_budget_max=budget)
        cap = Capacity(capacity_seq=1, slots=(slot,), free_for_load_gb=free_for_load_gb)
        models = (ModelInfo(id=model), *on_disk)
        self.send(Register(node_id=node_id, models=models, hardware=Hardware(memory_gb=64), capacity=cap))  # type: ignore[arg-type]
        assert isinstance(self.recv(), Registered)

    def send(self, frame: Frame) -> None:
        self.ws.send(encode(frame), text=True)

    def recv(self, timeout: float = 10) -> Frame:
        return decode(self.ws.recv(timeout=timeout))

    def try_recv(self, timeout: float) -> Frame | None:
        try:
            return self.recv(timeout)
        except TimeoutError:
            return None

    def close(self) -> None:
        self.ws.close()


def in_thread(fn: Callable[[], object]) -> tuple[threading.Thread, dict]:  # type: ignore[type-arg]
    out: dict = {}  # type: ignore[type-arg]

    def run() -> None:
        out["result"] = fn()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, out
