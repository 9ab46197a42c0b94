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
from darkbloom.server.settings import Settings


@dataclass
class Coordinator:
    client: TestClient
    key: str
    settings: Settings

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


@pytest.fixture
def coordinator(tmp_path: Path) -> Iterator[Coordinator]:
    settings = Settings(home=tmp_path, db_url=f"sqlite:///{tmp_path / 'c.db'}", max_body_bytes=64 * 1024)
    key, _ = asyncio.run(create_key_in(settings.db_url))
    with TestClient(create_app(settings)) as client:
        yield Coordinator(client, key, settings)


def register(ws, node_id: str = "node-a", model: str = "m1") -> None:  # type: ignore[no-untyped-def]
    ws.send_bytes(encode(Register(node_id=node_id, models=(ModelInfo(id=model),))))  # type: ignore[arg-type]
    reply = decode(ws.receive_bytes())
    assert type(reply).__name__ == "Registered"
