"""Every screen of both apps, pictured with deterministic data (pytest-textual-snapshot).

Update after an intended change with ``--snapshot-update`` and review the SVGs in ``__snapshots__``.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot

from darkbloom.client.history import ChatHistory, StoredMessage
from darkbloom.client.http import NotAuthorised
from darkbloom.tui.chat.app import ChatApp
from darkbloom.tui.chat.conversations import ConversationsScreen
from darkbloom.tui.chat.picker import ModelPicker
from darkbloom.tui.chat.system import SystemPromptScreen
from darkbloom.tui.dashboard.app import DashboardApp
from darkbloom.tui.dashboard.data import FixedSource
from darkbloom.tui.dashboard.node import NodeScreen
from darkbloom.tui.dashboard.routing import ModelPanel
from tests.tui.snapshot_data import (
    LLAMA,
    QWEN,
    WALL_START,
    Clock,
    ScriptedChatClient,
    dashboard_snapshot,
    stepping_clock,
)

DASH = (150, 34)
CHAT = (110, 34)


@pytest.fixture(autouse=True)
def utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Times of day on screen are local time; pin the zone so the pictures do not depend on the machine."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.fixture(scope="module")
def admin_view() -> dict[str, Any]:
    return dashboard_snapshot(admin=True)


def dashboard(view: dict[str, Any]) -> DashboardApp:
    return DashboardApp(FixedSource([("snapshot", view)], url="https://coordinator.example"))


async def shown(pilot: Pilot[Any]) -> None:
    app = pilot.app
    while app.data.snapshot is None and app.problem is None:  # type: ignore[attr-defined]
        await pilot.pause(0.02)
    await pilot.pause(0.1)


def then(*keys: str, ready: Callable[[Any], bool] = lambda app: True) -> Callable[[Pilot[Any]], Awaitable[None]]:
    """Wait for the data, press ``keys``, then wait until ``ready(app)``: pictures never race a redraw."""

    async def run(pilot: Pilot[Any]) -> None:
        await shown(pilot)
        await pilot.press(*keys)
        while not ready(pilot.app):
            await pilot.pause(0.02)
        await pilot.pause(0.1)

    return run


def test_fleet(snap_compare: Any, admin_view: dict[str, Any]) -> None:
    assert snap_compare(dashboard(admin_view), terminal_size=DASH, run_before=shown)


def test_fleet_sorted_by_speed_in_the_light_theme(snap_compare: Any, admin_view: dict[str, Any]) -> None:
    assert snap_compare(dashboard(admin_view), press=["s"] * 5 + ["o", "t"], terminal_size=DASH, run_before=shown)


def test_node_detail(snap_compare: Any, admin_view: dict[str, Any]) -> None:
    ready = then(
        "down",
        "enter",
        ready=lambda app: isinstance(app.screen, NodeScreen) and app.screen.query_one("#node-feed").row_count > 0,
    )
    assert snap_compare(dashboard(admin_view), terminal_size=DASH, run_before=ready)


def test_routing(snap_compare: Any, admin_view: dict[str, Any]) -> None:
    ready = then("r", ready=lambda app: len([p for p in app.screen.query(ModelPanel) if p._ready]) == 2)
    assert snap_compare(dashboard(admin_view), terminal_size=DASH, run_before=ready)


def test_live_feed(snap_compare: Any, admin_view: dict[str, Any]) -> None:
    ready = then("l", ready=lambda app: app.screen.query_one("#feed").row_count == 8)
    assert snap_compare(dashboard(admin_view), terminal_size=DASH, run_before=ready)


def test_network_stats(snap_compare: Any, admin_view: dict[str, Any]) -> None:
    ready = then("n", ready=lambda app: app.current_mode == "stats")
    assert snap_compare(dashboard(admin_view), terminal_size=DASH, run_before=ready)


def test_public_view(snap_compare: Any) -> None:
    assert snap_compare(dashboard(dashboard_snapshot(admin=False)), terminal_size=DASH, run_before=shown)


class RefusingSource:
    url = "https://coordinator.example"

    async def events(self) -> AsyncGenerator[tuple[str, dict[str, Any]], None]:
        raise NotAuthorised(f"{self.url} refused the key: this endpoint needs the admin credential", 403)
        yield  # an async generator, like the real source


def test_not_authorised(snap_compare: Any) -> None:
    assert snap_compare(DashboardApp(RefusingSource()), terminal_size=DASH, run_before=shown)


# ---- chat ------------------------------------------------------------------------------------


def chat(**kwargs: Any) -> ChatApp:
    return ChatApp(ScriptedChatClient(), model=LLAMA, clock=stepping_clock(), **kwargs)  # type: ignore[arg-type]


def steady(app: Any) -> None:
    """Stop every text cursor blinking: a picture must not depend on the blink phase."""
    for screen in app.screen_stack:
        for widget in screen.query("Input, TextArea"):
            widget.cursor_blink = False


def chat_after(*keys: str, ready: Callable[[Any], bool]) -> Callable[[Pilot[Any]], Awaitable[None]]:
    """Press ``keys``, wait until ``ready(app)``, then hold the cursors still."""

    async def run(pilot: Pilot[Any]) -> None:
        await pilot.press(*keys)
        while not ready(pilot.app):
            await pilot.pause(0.02)
        steady(pilot.app)
        await pilot.pause(0.1)

    return run


def test_chat_answer_with_stats_and_trust_badge(snap_compare: Any) -> None:
    # Done when the turn is recorded; its stats line is written just before.
    answered = chat_after(
        *"Explain continuous batching", "enter", ready=lambda app: bool(app.turns) and not app.generating
    )
    assert snap_compare(chat(system_prompt="You are terse."), terminal_size=CHAT, run_before=answered)


def test_chat_model_picker(snap_compare: Any) -> None:
    picker = chat_after("ctrl+o", ready=lambda app: isinstance(app.screen, ModelPicker))
    assert snap_compare(chat(), terminal_size=CHAT, run_before=picker)


def test_chat_system_prompt(snap_compare: Any) -> None:
    editor = chat_after("ctrl+s", ready=lambda app: isinstance(app.screen, SystemPromptScreen))
    assert snap_compare(chat(system_prompt="You are terse."), terminal_size=CHAT, run_before=editor)


def test_chat_saved_conversations(snap_compare: Any, tmp_path: Path) -> None:
    clock = Clock(WALL_START)

    def tick() -> float:
        clock.t += 3600
        return clock.t

    history = ChatHistory(tmp_path / "chats.db", clock=tick)
    for model, question in ((LLAMA, "What is unified memory?"), (QWEN, "Write a binary search in Rust")):
        cid = history.new_conversation(model)
        history.add_message(cid, StoredMessage("user", question))
        history.add_message(cid, StoredMessage("assistant", "…", model=model, completion_tokens=100))
    listed = chat_after("ctrl+l", ready=lambda app: isinstance(app.screen, ConversationsScreen))
    assert snap_compare(chat(history=history), terminal_size=CHAT, run_before=listed)
    history.close()
