"""Real processes: a ``darkbloom serve`` coordinator and ``darkbloom node`` providers."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from darkbloom.node.models.tiny import build_tiny_model
from darkbloom.server.billing.audit import check_database
from darkbloom.testing import Proc, create_key, free_port, start, wait_http, wait_model


@dataclass
class Network:
    base_url: str
    key: str
    db_url: str
    home: Path
    coordinator: Proc
    nodes: list[Proc]
    model_dir: Path
    model: str = "tiny-e2e"

    def add_node(self, name: str) -> Proc:
        home = self.home / name
        proc = start(["node", "--coordinator", self.base_url, "--model", str(self.model_dir), "--home", str(home)], home / "node.log")
        self.nodes.append(proc)
        return proc

    def logs(self) -> str:
        return "\n".join(p.text() for p in [self.coordinator, *self.nodes])


def pg_schema_url(request: pytest.FixtureRequest) -> str:
    """A database URL on a fresh PostgreSQL schema (asyncpg takes ``search_path`` from the URL)."""
    import asyncio
    import uuid

    import asyncpg

    from tests.server.store.conftest import PG_URL

    schema = f"e2e_{uuid.uuid4().hex[:12]}"

    async def ddl(sql: str) -> None:
        conn = await asyncpg.connect(PG_URL)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(ddl(f'CREATE SCHEMA "{schema}"'))
    request.addfinalizer(lambda: asyncio.run(ddl(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')))
    return f"{PG_URL}?search_path={schema}"


@pytest.fixture(scope="session")
def e2e_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-e2e")


@contextlib.contextmanager
def run_network(home: Path, model_dir: Path, db_url: str | None = None) -> Iterator[Network]:
    """Start a coordinator (on SQLite under ``home`` unless ``db_url`` says otherwise) and one node; stop both on exit."""
    port = free_port()
    db_url = db_url or f"sqlite:///{home / 'coord.db'}"
    coord = start(["serve", "--port", str(port), "--db", db_url, "--home", str(home / "coord")], home / "coord.log")
    base = f"http://127.0.0.1:{port}"
    net = Network(base, "", db_url, home, coord, [], model_dir)
    try:
        wait_http(f"{base}/health", proc=coord)
        net.key = create_key(db_url, home / "coord")
        net.add_node("node1")
        wait_model(base, net.key, net.model)
        yield net
    finally:
        for proc in [*net.nodes, net.coordinator]:
            proc.stop()
    # The accounting check after every scenario, as the original's tests do.
    check_database(db_url)


@pytest.fixture
def network(request: pytest.FixtureRequest, tmp_path: Path, e2e_model_dir: Path) -> Iterator[Network]:
    """A real coordinator process and one real node process serving the tiny model.

    On SQLite by default; parametrize indirectly with ``"postgres"`` for a fresh
    schema in the local PostgreSQL (dropped afterwards).
    """
    db_url = pg_schema_url(request) if getattr(request, "param", "sqlite") == "postgres" else None
    with run_network(tmp_path, e2e_model_dir, db_url) as net:
        yield net


@pytest.fixture(scope="session")
def shared_network(tmp_path_factory: pytest.TempPathFactory, e2e_model_dir: Path) -> Iterator[Network]:
    """One coordinator and node for every test that neither kills nor restarts them (saves start-up time)."""
    with run_network(tmp_path_factory.mktemp("shared"), e2e_model_dir) as net:
        yield net
