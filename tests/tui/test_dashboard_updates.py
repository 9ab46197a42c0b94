"""The dashboard folding live events into what it shows, with data the server's own code made."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncGenerator
from typing import Any

import pytest
from textual.widgets import DataTable

from darkbloom.tui.dashboard.app import DashboardApp
from darkbloom.tui.dashboard.data import DashboardData, short_id
from tests.tui.conftest import screen_text, until
from tests.tui.snapshot_data import dashboard_snapshot


class PushedSource:
    """Events the test hands over one at a time, as the coordinator's stream would."""

    url = "https://coordinator.example"

    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()

    async def events(self) -> AsyncGenerator[tuple[str, dict[str, Any]], None]:
        while True:
            yield await self.queue.get()


@pytest.fixture(scope="module")
def view() -> dict[str, Any]:
    return dashboard_snapshot()


def test_requests_are_deduplicated_across_reconnects(view: dict[str, Any]) -> None:
    data = DashboardData()
    data.apply("snapshot", view)
    data.apply("request", {**view["recent"][-1], "ts": view["ts"] + 1, "id": "chatcmpl-new"})
    assert data.stats["requests"] == view["stats"]["requests"] + 1  # counted locally until the next snapshot
    data.apply("request", view["recent"][-1])  # arrived live and in the snapshot: shown and counted once
    assert data.stats["requests"] == view["stats"]["requests"] + 1
    data.apply("snapshot", view)  # a reconnect sends the recent list again
    assert len(data.feed) == len(view["recent"]) + 1 == data.added
    assert data.stats == view["stats"]  # the snapshot's totals replace the local counting
    assert short_id("chatcmpl-0123456789abcdef") == "0123456789ab…" and short_id(None) == "—"


@pytest.mark.anyio
async def test_heartbeats_update_cells_in_place_and_departures_remove_rows(view: dict[str, Any]) -> None:
    source = PushedSource()
    app = DashboardApp(source)
    async with app.run_test(size=(150, 30)) as pilot:
        await source.queue.put(("snapshot", view))
        table = app.screen.query_one("#fleet", DataTable)
        await until(pilot, lambda: table.row_count == 3, "the fleet never showed")
        await pilot.press("down")  # onto node-pro-07
        pro = copy.deepcopy(next(n for n in view["nodes"] if n["id"] == "node-pro-07"))
        pro["decode_tps"], pro["heartbeat_age_s"] = 77.7, 0.0
        await source.queue.put(("node", {"type": "node", "kind": "heartbeat", "node": "node-pro-07", "view": pro}))
        await until(pilot, lambda: "77.7" in screen_text(app), "the heartbeat did not reach the row")
        assert table.cursor_row == 1 and table.get_row("node-pro-07")[5] == "77.7"
        await source.queue.put(("node", {"type": "node", "kind": "left", "node": "node-air-12", "view": None}))
        await until(pilot, lambda: table.row_count == 2, "the departed node stayed in the table")
        assert "node-air-12" not in screen_text(app) and "2 nodes" in screen_text(app)
        assert str(table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value) == "node-pro-07"
        rec = {**view["recent"][-1], "id": "chatcmpl-ffffffffffffffffffff", "ts": view["ts"] + 1}
        await source.queue.put(("request", rec))
        await pilot.press("l")
        await until(pilot, lambda: "ffffffffffff…" in screen_text(app), "a live request never reached the feed")


@pytest.mark.anyio
async def test_a_screen_still_mounting_draws_nothing_and_the_next_tick_draws_it(view: dict[str, Any]) -> None:
    """A fast coordinator's first snapshot can arrive before a screen's widgets exist (it crashed the app)."""
    from darkbloom.tui.dashboard.fleet import FleetScreen

    source = PushedSource()
    app = DashboardApp(source)
    async with app.run_test(size=(150, 30)) as pilot:
        app.data.apply("snapshot", view)
        assert FleetScreen().show(app.data) is False  # no widgets yet: nothing drawn, nothing raised
        app.redraw()
        table = app.screen.query_one("#fleet", DataTable)
        await until(pilot, lambda: table.row_count == 3, "the snapshot was never drawn")
