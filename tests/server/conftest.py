"""The coordinator app in process (Starlette TestClient runs its lifespan and speaks WebSocket)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from darkbloom.protocol import ModelInfo, Register, decode, encode
from darkbloom.server.app import create_app
from darkbloom.server.auth.keys import create_key_in
from darkbloom.server.billing.audit import check_database
from darkbloom.server.settings import Settings


@dataclass
class Coordinator:
    client: TestClient
    key: str
    settings: Settings

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


class RecordingHook:
    """A request hook that records every admit and settle call."""

    def __init__(self) -> None:
        self.admitted: list[str] = []
        self.settled: list[tuple[str, str, object, object]] = []

    async def admit(self, job) -> None:  # type: ignore[no-untyped-def]
        self.admitted.append(job.request_id)

    async def settle(self, job, outcome, usage, node_id) -> None:  # type: ignore[no-untyped-def]
        self.settled.append((job.request_id, outcome, usage, node_id))


@pytest.fixture
def hook() -> RecordingHook:
    return RecordingHook()


@pytest.fixture
def coordinator(tmp_path: Path, hook: RecordingHook) -> Iterator[Coordinator]:
    settings = Settings(home=tmp_path, db_url=f"sqlite:///{tmp_path / 'c.db'}", max_body_bytes=64 * 1024)
    key, _ = asyncio.run(create_key_in(settings.db_url))
    with TestClient(create_app(settings, hooks=[hook])) as client:
        yield Coordinator(client, key, settings)
    check_database(settings.db_url)  # the accounting check after every scenario


def register(ws, node_id: str = "node-a", model: str = "m1") -> None:  # type: ignore[no-untyped-def]
    ws.send_bytes(encode(Register(node_id=node_id, models=(ModelInfo(id=model),))))  # type: ignore[arg-type]
    reply = decode(ws.receive_bytes())
    assert type(reply).__name__ == "Registered"
