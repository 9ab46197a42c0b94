"""``darkbloom chat`` driven by a pilot against a real coordinator and a real node."""

from __future__ import annotations

from pathlib import Path

import pytest
from textual.widgets import Input, TextArea

from darkbloom.client.history import ChatHistory
from darkbloom.client.http import DarkbloomClient
from darkbloom.tui.chat.app import ChatApp
from darkbloom.tui.chat.conversations import ConversationsScreen
from darkbloom.tui.chat.messages import AssistantMessage
from darkbloom.tui.chat.picker import ModelPicker
from darkbloom.tui.chat.system import SystemPromptScreen
from tests.tui.conftest import LiveNetwork, screen_text, until

SIZE = (120, 40)


def _answers(app: ChatApp) -> list[AssistantMessage]:
    return list(app.query(AssistantMessage))


def _meta(app: ChatApp, i: int = -1) -> str:
    return str(_answers(app)[i].query_one(".meta").render())


async def _send(pilot, app: ChatApp, text: str) -> None:  # type: ignore[no-untyped-def]
    await pilot.click("#prompt")
    app.query_one("#prompt", Input).value = text
    await pilot.press("enter")


@pytest.mark.anyio
async def test_send_messages_with_a_system_prompt_and_reopen_the_conversation(
    live: LiveNetwork, tmp_path: Path
) -> None:
    history = ChatHistory(tmp_path / "chats.db")
    app = ChatApp(DarkbloomClient(live.url, api_key=live.key), history=history, max_tokens=12, temperature=0)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.model == live.model, "the only model served was not picked")
        await _send(pilot, app, "hello there")
        await until(pilot, lambda: "tokens ·" in _meta(app), "the first answer never finished")
        assert _meta(app).startswith("12 tokens · ") and "tok/s" in _meta(app) and "coordinator-visible" in _meta(app)
        first_answer = app.turns[1]["content"]
        assert first_answer and first_answer[:4] in screen_text(app)

        await pilot.press("ctrl+s")
        assert isinstance(app.screen, SystemPromptScreen)
        app.screen.query_one(TextArea).text = "Answer like a pirate."
        await pilot.press("ctrl+s")
        assert app.system_prompt == "Answer like a pirate." and "system prompt: Answer like a pirate." in screen_text(
            app
        )

        await _send(pilot, app, "and again")
        await until(
            pilot, lambda: len(_answers(app)) == 2 and "tokens ·" in _meta(app), "the second answer never finished"
        )
    records = live.recent()
    [second] = [r for r in records if r["id"] == history.load(1).messages[3].request_id]  # type: ignore[union-attr]
    [first] = [r for r in records if r["id"] == history.load(1).messages[1].request_id]  # type: ignore[union-attr]
    # The second request carried the system prompt and the whole first exchange.
    assert second["prompt_tokens"] > first["prompt_tokens"] + 12

    [conv] = history.list_conversations()
    assert conv.title == "hello there" and conv.messages == 4 and conv.model == live.model
    reopened = ChatApp(DarkbloomClient(live.url, api_key=live.key), history=history)
    async with reopened.run_test(size=SIZE) as pilot:
        await pilot.press("ctrl+l")
        assert isinstance(reopened.screen, ConversationsScreen)
        assert "hello there" in screen_text(reopened)
        await pilot.press("enter")
        await until(pilot, lambda: len(_answers(reopened)) == 2, "the saved conversation did not reopen")
        assert reopened.system_prompt == "Answer like a pirate." and len(reopened.turns) == 4
        assert reopened.turns[1]["content"] == first_answer
    history.close()


@pytest.mark.anyio
async def test_stop_generation_cancels_the_request_on_the_coordinator(live: LiveNetwork, tmp_path: Path) -> None:
    history = ChatHistory(tmp_path / "chats.db")
    app = ChatApp(
        DarkbloomClient(live.url, api_key=live.key), history=history, model=live.model, max_tokens=60_000, temperature=0
    )
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("ctrl+o")
        await until(pilot, lambda: isinstance(app.screen, ModelPicker), "Ctrl+O did not open the model picker")
        assert live.model in screen_text(app)
        await pilot.press("enter")
        assert not isinstance(app.screen, ModelPicker) and app.model == live.model
        await _send(pilot, app, "tell me everything")
        await until(
            pilot,
            lambda: bool(_answers(app)) and app.generating and len(app.query_one(".answer").source) > 20,
            "no text streamed",
        )
        await pilot.press("escape")
        await until(pilot, lambda: "stopped" in _meta(app), "Esc did not stop the answer")
        assert not app.generating
        partial = app.turns[-1]["content"]
        assert partial and _meta(app).startswith("~")
    conv = history.load(history.list_conversations()[0].id)
    assert conv is not None and conv.messages[-1].stopped and conv.messages[-1].content == partial
    rec = live.wait_recent(conv.messages[-1].request_id)
    assert rec["status"] == 499 and rec["outcome"] == "cancelled"
    history.close()
