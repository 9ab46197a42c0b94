"""A real network for the terminal apps: a ``darkbloom serve`` process and a ``darkbloom node`` process.

Started once per session (a few seconds) and shared by the pilot and terminal tests.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from textual.app import App
from textual.pilot import Pilot

from darkbloom.testing import Proc, create_key, free_port, start, wait_http, wait_model


@dataclass
class LiveNetwork:
    url: str
    key: str
    admin_key: str
    model: str
    node_id: str
    root: Path
    procs: list[Proc]

    def recent(self) -> list[dict]:  # type: ignore[type-arg]
        """The coordinator's recent requests, as the admin API reports them."""
        resp = httpx.get(
            f"{self.url}/v1/admin/fleet", headers={"Authorization": f"Bearer {self.admin_key}"}, timeout=10
        )
        return resp.json()["recent"]  # type: ignore[no-any-return]

    def wait_recent(self, request_id: str, timeout: float = 15.0) -> dict:  # type: ignore[type-arg]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for rec in self.recent():
                if rec["id"] == request_id:
                    return rec
            time.sleep(0.1)
        raise AssertionError(f"request {request_id} never settled on the coordinator")

    def logs(self) -> str:
        return "\n".join(p.text() for p in self.procs)


@pytest.fixture(scope="session")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveNetwork]:
    from darkbloom.node.models.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("live")
    # A long context, so an answer can run far longer than any test takes to press Esc (~1,000 tokens/s here).
    tiny_model_dir = build_tiny_model(root / "models" / "tiny", name="tiny", context_length=65536)
    port = free_port()
    db = f"sqlite:///{root / 'coord.db'}"
    url = f"http://127.0.0.1:{port}"
    coord = start(
        ["serve", "--port", str(port), "--db", db, "--home", str(root / "coord")],
        root / "coord.log",
        env={"DARKBLOOM_ADMIN_KEY": ""},
    )
    procs = [coord]
    try:
        wait_http(f"{url}/health", proc=coord)
        key = create_key(db, root / "coord")
        procs.append(
            start(
                ["node", "--coordinator", url, "--model", str(tiny_model_dir), "--home", str(root / "node")],
                root / "node.log",
            )
        )
        wait_model(url, key, "tiny")
        admin_key = (root / "coord" / "admin_key").read_text().strip()
        fleet = httpx.get(f"{url}/v1/admin/fleet", headers={"Authorization": f"Bearer {admin_key}"}, timeout=10).json()
        yield LiveNetwork(url, key, admin_key, "tiny", fleet["nodes"][0]["id"], root, procs)
    finally:
        for proc in reversed(procs):
            proc.stop()


async def until(pilot: Pilot[object], check: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    """Let the app run until ``check()`` holds; fail saying ``what`` did not happen, with the screen."""
    loop_deadline = time.monotonic() + timeout
    while time.monotonic() < loop_deadline:
        if check():
            return
        await pilot.pause(0.05)
    raise AssertionError(f"{what} within {timeout} s; screen:\n{screen_text(pilot.app)}")


def screen_text(app: App[object]) -> str:
    """The visible screen as plain text, one line per row."""
    return "\n".join(strip.text.rstrip() for strip in app.screen._compositor.render_strips())
