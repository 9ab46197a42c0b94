"""``darkbloom tui`` driven by a pilot against a real coordinator and a real node."""

from __future__ import annotations

import pytest
from textual.widgets import DataTable

from darkbloom.client.http import DarkbloomClient, StreamStart
from darkbloom.testing import free_port
from darkbloom.tui.dashboard.app import DashboardApp
from darkbloom.tui.dashboard.data import short_id
from darkbloom.tui.dashboard.fleet import FleetScreen
from darkbloom.tui.dashboard.node import NodeScreen
from tests.tui.conftest import LiveNetwork, screen_text, until

SIZE = (150, 36)


async def _ask(live: LiveNetwork, max_tokens: int = 8) -> str:
    """One real chat request; returns its id."""
    async with DarkbloomClient(live.url, api_key=live.key) as client:
        rid = ""
        async for event in client.chat_stream(
            live.model, [{"role": "user", "content": "hello"}], max_tokens=max_tokens
        ):
            if isinstance(event, StreamStart):
                rid = event.request_id
        return rid


def _short(rid: str) -> str:
    return short_id(rid)


@pytest.mark.anyio
async def test_select_a_node_to_see_its_slots_and_requests(live: LiveNetwork) -> None:
    rid = await _ask(live)
    app = DashboardApp(DarkbloomClient(live.url, admin_key=live.admin_key))
    async with app.run_test(size=SIZE) as pilot:
        table = app.screen.query_one("#fleet", DataTable)
        await until(pilot, lambda: table.row_count == 1, "the node never showed in the fleet table")
        assert live.node_id in screen_text(app) and "admin view · 1 node" in app.sub_title
        await pilot.press("s", "s")  # sort by another column, and back the other way
        assert "sorted by Attested" in screen_text(app)
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, NodeScreen), "Enter did not open the node")
        await until(
            pilot,
            lambda: app.screen.query_one("#node-feed", DataTable).row_count >= 1,
            "the node's requests never showed",
        )
        text = screen_text(app)
        assert f"Node {live.node_id}" in text and _short(rid) in text
        slots = app.screen.query_one("#slots", DataTable)
        assert slots.row_count == 1 and slots.get_row_at(0)[0] == live.model
        await pilot.press("escape")
        assert isinstance(app.screen, FleetScreen)


@pytest.mark.anyio
async def test_switch_screens_and_watch_a_request_land(live: LiveNetwork) -> None:
    app = DashboardApp(DarkbloomClient(live.url, admin_key=live.admin_key))
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.data.snapshot is not None, "no snapshot arrived")
        await pilot.press("l")
        assert app.current_mode == "feed"
        rid = await _ask(live)
        await until(pilot, lambda: _short(rid) in screen_text(app), "the finished request never reached the live feed")
        row = [line for line in screen_text(app).splitlines() if _short(rid) in line][0]
        assert live.model in row and live.node_id in row and " ok " in row and "coordinator-visible" in row
        await pilot.press("r")
        await until(pilot, lambda: "1 node (" in screen_text(app), "the routing screen never showed the model")
        assert "requests / 10 s" in screen_text(app)
        await pilot.press("n")
        await until(pilot, lambda: "Tokens served" in screen_text(app), "the stats screen never showed")
        assert app.current_mode == "stats"
        await pilot.press("t")
        assert app.theme == "textual-light"
        await pilot.press("f")
        assert app.current_mode == "fleet"


@pytest.mark.anyio
async def test_a_consumer_key_gets_the_public_view(live: LiveNetwork) -> None:
    app = DashboardApp(DarkbloomClient(live.url, api_key=live.key))
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.data.snapshot is not None, "no snapshot arrived")
        await pilot.pause(0.3)
        text = screen_text(app)
        assert "Public view: 1 model" in text and "public view · 1 node" in app.sub_title
        assert live.node_id not in text


@pytest.mark.anyio
async def test_clear_messages_when_unreachable_or_not_authorised(live: LiveNetwork) -> None:
    down = DashboardApp(DarkbloomClient(f"http://127.0.0.1:{free_port()}", admin_key="dba-x"))
    async with down.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: "Cannot reach the coordinator" in screen_text(down), "no unreachable message")
        assert "disconnected" in down.sub_title
    wrong = DashboardApp(DarkbloomClient(live.url, admin_key="dba-wrong"))
    async with wrong.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: "Not authorised" in screen_text(wrong), "no not-authorised message")
        assert "needs the admin credential" in screen_text(wrong)
